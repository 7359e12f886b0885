package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/acme/api"
	"github.com/go-acme/lego/v4/challenge/resolver"
)

func TestChallengesAnswerOnlyTokensInFlight(t *testing.T) {
	c := NewChallenges()
	if err := c.Present("Shop.Example.com", "tok1", "tok1.thumb"); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		method, host, path string
		code               int
		body               string
	}{
		{"GET", "shop.example.com", ChallengePath + "tok1", 200, "tok1.thumb"},
		{"GET", "shop.example.com:80", ChallengePath + "tok1", 200, "tok1.thumb"},
		{"HEAD", "shop.example.com", ChallengePath + "tok1", 200, ""},
		{"GET", "other.example.com", ChallengePath + "tok1", 404, ""},
		{"GET", "shop.example.com", ChallengePath + "tok2", 404, ""},
		{"GET", "shop.example.com", ChallengePath + "tok1/x", 404, ""},
		{"GET", "shop.example.com", "/tok1", 404, ""},
		{"POST", "shop.example.com", ChallengePath + "tok1", 404, ""},
	}
	for _, tc := range cases {
		req := httptest.NewRequest(tc.method, "http://"+tc.host+tc.path, nil)
		w := httptest.NewRecorder()
		c.ServeHTTP(w, req)
		if w.Code != tc.code || (tc.code == 200 && tc.method == "GET" && w.Body.String() != tc.body) {
			t.Errorf("%s %s%s: %d %q, want %d %q", tc.method, tc.host, tc.path, w.Code, w.Body.String(), tc.code, tc.body)
		}
	}
	if err := c.CleanUp("shop.example.com", "tok1", "tok1.thumb"); err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	c.ServeHTTP(w, httptest.NewRequest("GET", "http://shop.example.com"+ChallengePath+"tok1", nil))
	if w.Code != 404 {
		t.Errorf("after CleanUp: %d, want 404", w.Code)
	}
}

func TestChallengesServeOneListener(t *testing.T) {
	c := NewChallenges()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	stop, err := c.Serve(addr, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if _, err := c.Serve(addr, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
		t.Error("a second listener on the same address started")
	}
	for i, tok := range []string{"a", "b", "c"} {
		_ = c.Present("x.example.com", tok, tok+".k")
		req, _ := http.NewRequest("GET", "http://"+addr+ChallengePath+tok, nil)
		req.Host = "x.example.com"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != tok+".k" {
			t.Errorf("challenge %d: %d %q", i, resp.StatusCode, body)
		}
	}
}

// TestPresentFailureIsTheStorages runs lego's resolver with a Challenges
// whose storage fails: the error lego returns is the storage's.
func TestPresentFailureIsTheStorages(t *testing.T) {
	dir := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		base := "https://" + r.Host
		_ = json.NewEncoder(w).Encode(map[string]string{"newNonce": base + "/nonce", "newAccount": base + "/account", "newOrder": base + "/order"})
	}))
	t.Cleanup(dir.Close)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	core, err := api.New(dir.Client(), "test", dir.URL, "", key)
	if err != nil {
		t.Fatal(err)
	}
	src := newWatchedTokens()
	src.down.Store(true)
	solvers := resolver.NewSolversManager(core)
	if err := solvers.SetHTTP01Provider(ChallengesIn(src)); err != nil {
		t.Fatal(err)
	}
	err = resolver.NewProber(solvers).Solve([]acme.Authorization{{
		Status:     acme.StatusPending,
		Identifier: acme.Identifier{Type: "dns", Value: "a.example.com"},
		Challenges: []acme.Challenge{{Type: "http-01", Status: acme.StatusPending, Token: "t1", URL: dir.URL + "/chall"}},
	}})
	if !errors.Is(err, ErrSharedUnavailable) || !errors.Is(err, errDown) {
		t.Errorf("lego's error %v: not the shared storage's (%v)", err, ErrSharedUnavailable)
	}
}

// failingIssuer fails its orders with what lego returns when the
// challenge provider failed.
type failingIssuer struct {
	*fakeIssuer
	err error
}

func (f failingIssuer) Obtain([]string, string, string) (*Issued, error) {
	f.fakeIssuer.mu.Lock()
	f.orders = append(f.orders, "failed")
	f.fakeIssuer.mu.Unlock()
	return nil, f.err
}

func TestFleetBacksOffAnOrderWhoseTokenWasNotKept(t *testing.T) {
	nodes, _ := fleetOf(t, 1, policy())
	r := nodes[0]
	lost := fmt.Errorf("error: one or more domains had a problem:\n[a.example.com] acme: error presenting token: %w",
		fmt.Errorf("http-01 token for a.example.com: %w: %w", ErrSharedUnavailable, errDown))
	r.m.Issuer = func(context.Context) (Issuer, error) { return failingIssuer{fakeIssuer: r.iss, err: lost}, nil }
	r.m.SetDomains([]string{"a.example.com"}, nil, nil)
	r.step()
	if got := r.iss.count(); got != 1 {
		t.Fatalf("orders = %d, want 1", got)
	}
	// the order reached the CA: backed off as a failure, not tried again
	// every FleetRetry, and the error says the storage failed
	d := r.domain("a.example.com")
	if d.Failures != 1 || !strings.Contains(d.LastError, ErrSharedUnavailable.Error()) || d.NextAttempt.Before(t0.Add(policy().BackoffMin/2)) {
		t.Errorf("failures %d (%q), next attempt +%v; want one failure naming the storage, backed off", d.Failures, d.LastError, d.NextAttempt.Sub(t0))
	}
	if sched, err := r.m.loadSchedule(context.Background(), "a.example.com"); err != nil || sched == nil || sched.Failures != 1 {
		t.Errorf("the fleet's failure state %+v (%v), want one failure", sched, err)
	}
}
