package etcdstorage

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"haproxy-config/certs"
)

// answer asks h for token as the CA would for host.
func answer(h http.Handler, host, token string) (int, string) {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "http://"+host+certs.ChallengePath+token, nil))
	return w.Code, w.Body.String()
}

// answers polls h until it answers token with code (and body for 200),
// for 20 s at most.
func answers(t *testing.T, h http.Handler, host, token string, code int, body string) {
	t.Helper()
	end := time.Now().Add(20 * time.Second)
	for {
		got, gotBody := answer(h, host, token)
		if got == code && (code != 200 || gotBody == body) {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%s for %s: %d %q after 20s, want %d %q", token, host, got, gotBody, code, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cachedChallenges is a challenge handler answering from a cache of s's
// tokens that never reads a token it lacks, run until the test ends.
func cachedChallenges(t *testing.T, s *Storage) *certs.Challenges {
	cache := certs.NewTokenCache(s, 0, 0, 0)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		cache.Run(ctx)
	}()
	t.Cleanup(func() {
		stop()
		<-done
	})
	return certs.ChallengesIn(cache)
}

// TestTokenCacheOfAnotherNode: a token one node puts is answered by
// another node's cache, with no read of etcd on a miss (the cache is
// made to look none up), and forgotten there once deleted.
func TestTokenCacheOfAnotherNode(t *testing.T) {
	c := cluster(t)
	cfg := fleet(t, c)
	orderer := open(t, cfg)
	cfg.Owner = "node-2"
	other := open(t, cfg)
	ctx := context.Background()
	if err := orderer.PutToken(ctx, "early", certs.Token{Domain: "a.example.com", KeyAuth: "early.k"}); err != nil {
		t.Fatal(err)
	}
	h := cachedChallenges(t, other)
	answers(t, h, "a.example.com", "early", 200, "early.k") // read at the start
	if err := orderer.PutToken(ctx, "tok", certs.Token{Domain: "b.example.com", KeyAuth: "tok.k"}); err != nil {
		t.Fatal(err)
	}
	answers(t, h, "b.example.com", "tok", 200, "tok.k") // watched
	if code, _ := answer(h, "a.example.com", "tok"); code != 404 {
		t.Errorf("tok for another host: %d, want 404", code)
	}
	if err := orderer.DeleteToken(ctx, "tok"); err != nil {
		t.Fatal(err)
	}
	answers(t, h, "b.example.com", "tok", 404, "")
	answers(t, h, "a.example.com", "early", 200, "early.k")
}

// TestWatchTokensEndsWithCtx: the channel is closed once ctx ends.
func TestWatchTokensEndsWithCtx(t *testing.T) {
	c := cluster(t)
	s := open(t, fleet(t, c))
	ctx, cancel := context.WithCancel(context.Background())
	ch := s.WatchTokens(ctx)
	select {
	case first := <-ch:
		if first.All == nil || len(first.All) != 0 {
			t.Errorf("first report %+v, want every token: none", first)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no report of the tokens after 5s")
	}
	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			t.Error("a report after ctx ended")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the channel is still open 5s after ctx ended")
	}
}

// TestTokenCacheAcrossQuorumLoss: with 2 of 3 members stopped a node's
// cache still answers what it holds, and once they are back it follows
// the tokens put again.
func TestTokenCacheAcrossQuorumLoss(t *testing.T) {
	c := cluster(t)
	cfg := fleet(t, c)
	orderer := open(t, cfg)
	cfg.Owner = "node-2"
	other := open(t, cfg)
	h := cachedChallenges(t, other)
	ctx := context.Background()
	if err := orderer.PutToken(ctx, "before", certs.Token{Domain: "a.example.com", KeyAuth: "before.k"}); err != nil {
		t.Fatal(err)
	}
	answers(t, h, "a.example.com", "before", 200, "before.k")
	c.Stop(0)
	c.Stop(1)
	if err := other.Ping(ctx); err == nil {
		t.Fatal("a read answered with 2 of 3 members stopped")
	}
	if code, body := answer(h, "a.example.com", "before"); code != 200 || body != "before.k" {
		t.Errorf("with 2 of 3 members stopped: %d %q, want 200 before.k", code, body)
	}
	c.Start(0)
	c.Start(1)
	for i := range c.Members {
		c.WaitHealthy(i)
	}
	back := time.Now()
	if err := orderer.PutToken(ctx, "after", certs.Token{Domain: "a.example.com", KeyAuth: "after.k"}); err != nil {
		t.Fatal(err)
	}
	answers(t, h, "a.example.com", "after", 200, "after.k")
	t.Logf("the members back, a token put is answered %v after", time.Since(back).Round(time.Millisecond))
	answers(t, h, "a.example.com", "before", 200, "before.k")
}

// TestDeleteTokenRevokesItsLease: a token's lease goes with it, rather
// than outliving it by TokenTTL, one per order. The lease is looked up
// by its ID (TimeToLive answers from the leader) and polled for: a
// member's own list of leases may lag the grant or the revoke.
func TestDeleteTokenRevokesItsLease(t *testing.T) {
	c := cluster(t)
	s := open(t, fleet(t, c))
	ctx := context.Background()
	if err := s.PutToken(ctx, "tok", certs.Token{Domain: "a.example.com", KeyAuth: "tok.k"}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.cli.Get(ctx, s.tokens+s.seal.tokenName("tok"))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("the token's key after a put: %v, want one key on a lease", resp.Kvs)
	}
	id := clientv3.LeaseID(resp.Kvs[0].Lease)
	ttl := func() int64 {
		r, err := s.cli.TimeToLive(ctx, id)
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return -1
		}
		if err != nil {
			t.Fatal(err)
		}
		return r.TTL
	}
	if got := ttl(); got <= 0 {
		t.Fatalf("the token's lease has TTL %d after the put, want > 0", got)
	}
	if err := s.DeleteToken(ctx, "tok"); err != nil {
		t.Fatal(err)
	}
	// TokenTTL is 30 min: within these 10 s only the revoke ends it
	for end := time.Now().Add(10 * time.Second); ttl() != -1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the token's lease still has TTL %d 10s after the delete: it outlives the token", ttl())
		}
	}
	if err := s.DeleteToken(ctx, "tok"); err != nil {
		t.Errorf("a second delete: %v, want none", err)
	}
}
