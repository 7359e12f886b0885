package certs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"
)

// ChallengePath is where HTTP-01 tokens are served (RFC 8555 section 8.3);
// the base config routes it on the HTTP frontend to the challenge handler.
const ChallengePath = "/.well-known/acme-challenge/"

// Challenges answers HTTP-01 challenges of the orders in flight. It is a
// lego challenge.Provider (Present adds a token, CleanUp removes it) and an
// http.Handler; one long-lived listener serves every order. The tokens are
// kept in a Tokens: shared ones let any balancer answer any order's.
type Challenges struct {
	tokens Tokens
}

// NewChallenges returns a handler that keeps its tokens in memory and
// knows none yet.
func NewChallenges() *Challenges { return ChallengesIn(newMemTokens()) }

// ChallengesIn returns a handler that keeps its tokens in t.
func ChallengesIn(t Tokens) *Challenges { return &Challenges{tokens: t} }

// Present makes the handler answer token with keyAuth for domain. A
// token not kept is the storage's failure, not the CA's: the error wraps
// ErrSharedUnavailable, which lego's error from the order wraps in turn.
func (c *Challenges) Present(domain, token, keyAuth string) error {
	if err := c.tokens.PutToken(context.Background(), token, Token{Domain: strings.ToLower(domain), KeyAuth: keyAuth}); err != nil {
		return fmt.Errorf("http-01 token for %s: %w: %w", domain, ErrSharedUnavailable, err)
	}
	return nil
}

// CleanUp forgets token once its authorization is decided.
func (c *Challenges) CleanUp(domain, token, _ string) error {
	if err := c.tokens.DeleteToken(context.Background(), token); err != nil {
		return fmt.Errorf("http-01 token for %s: %w", domain, err)
	}
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
	ch, err := c.tokens.GetToken(r.Context(), token)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		http.Error(w, "challenge tokens unavailable", http.StatusServiceUnavailable)
		return
	}
	if err != nil || !strings.EqualFold(strings.TrimSuffix(host, "."), ch.Domain) {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	_, _ = w.Write([]byte(ch.KeyAuth))
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
