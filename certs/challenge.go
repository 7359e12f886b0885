package certs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// ChallengePath is where HTTP-01 tokens are served (RFC 8555 section 8.3);
// the base config routes it on the HTTP frontend to the challenge handler.
const ChallengePath = "/.well-known/acme-challenge/"

// Challenges answers HTTP-01 challenges of the orders in flight. It is a
// lego challenge.Provider (Present adds a token, CleanUp removes it) and an
// http.Handler; one long-lived listener serves every order.
type Challenges struct {
	mu     sync.Mutex
	tokens map[string]challenge // token -> what to answer
}

type challenge struct {
	domain  string
	keyAuth string
}

// NewChallenges returns a handler that knows no token yet.
func NewChallenges() *Challenges { return &Challenges{tokens: map[string]challenge{}} }

// Present makes the handler answer token with keyAuth for domain.
func (c *Challenges) Present(domain, token, keyAuth string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tokens[token] = challenge{domain: strings.ToLower(domain), keyAuth: keyAuth}
	return nil
}

// CleanUp forgets token once its authorization is decided.
func (c *Challenges) CleanUp(_, token, _ string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.tokens, token)
	return nil
}

// ServeHTTP answers a token of an order in flight for the host it was
// issued for, and 404 to everything else.
func (c *Challenges) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	token, ok := strings.CutPrefix(r.URL.Path, ChallengePath)
	if !ok || token == "" || strings.Contains(token, "/") || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		http.NotFound(w, r)
		return
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	c.mu.Lock()
	ch, known := c.tokens[token]
	c.mu.Unlock()
	if !known || !strings.EqualFold(strings.TrimSuffix(host, "."), ch.domain) {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	_, _ = w.Write([]byte(ch.keyAuth))
}

// Serve listens on addr and answers challenges; the returned function
// stops the server and waits for it.
func (c *Challenges) Serve(addr string, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("challenge handler on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: c, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("challenge handler stopped", "addr", addr, "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}
