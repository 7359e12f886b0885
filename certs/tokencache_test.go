package certs

import (
	"context"
	"crypto/rand"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// watchedTokens is a shared Tokens that counts its reads and whose
// changes the test reports through feed.
type watchedTokens struct {
	mu     sync.Mutex
	tokens map[string]Token // by key
	reads  atomic.Int64
	down   atomic.Bool
	feed   chan TokenChange
}

func newWatchedTokens() *watchedTokens {
	return &watchedTokens{tokens: map[string]Token{}, feed: make(chan TokenChange)}
}

func (w *watchedTokens) TokenKey(token string) string { return "key-" + token }

func (w *watchedTokens) PutToken(_ context.Context, token string, t Token) error {
	if w.down.Load() {
		return errDown
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tokens[w.TokenKey(token)] = t
	return nil
}

func (w *watchedTokens) GetToken(_ context.Context, token string) (Token, error) {
	w.reads.Add(1)
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.tokens[w.TokenKey(token)]
	if !ok {
		return Token{}, fs.ErrNotExist
	}
	return t, nil
}

func (w *watchedTokens) DeleteToken(_ context.Context, token string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.tokens, w.TokenKey(token))
	return nil
}

func (w *watchedTokens) WatchTokens(ctx context.Context) <-chan TokenChange {
	out := make(chan TokenChange)
	go func() {
		defer close(out)
		for {
			select {
			case <-ctx.Done():
				return
			case ch := <-w.feed:
				select {
				case out <- ch:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}

// runCache runs c until the test ends.
func runCache(t *testing.T, c *TokenCache) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// ask requests token from h for host and returns the status and body.
func ask(h http.Handler, host, token string) (int, string) {
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "http://"+host+ChallengePath+token, nil))
	return w.Code, w.Body.String()
}

// until polls cond for 5 s at most.
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("still not %s after 5s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestTokenCacheAnswersFromItsCopy(t *testing.T) {
	src := newWatchedTokens()
	cache := NewTokenCache(src, 0, 0, 0) // no miss is read: every answer is the copy's
	runCache(t, cache)
	c := ChallengesIn(cache)
	another := Token{Domain: "a.example.com", KeyAuth: "t1.k"}
	_ = src.PutToken(context.Background(), "t1", another) // by another node
	src.feed <- TokenChange{All: map[string]Token{src.TokenKey("t1"): another}}
	until(t, "answered from the copy", func() bool { code, body := ask(c, "a.example.com", "t1"); return code == 200 && body == "t1.k" })
	src.feed <- TokenChange{Key: src.TokenKey("t2"), Token: Token{Domain: "b.example.com", KeyAuth: "t2.k"}}
	until(t, "a change answered", func() bool { code, _ := ask(c, "b.example.com", "t2"); return code == 200 })
	src.feed <- TokenChange{Key: src.TokenKey("t1"), Deleted: true}
	until(t, "a deletion answered", func() bool { code, _ := ask(c, "a.example.com", "t1"); return code == 404 })
	if code, _ := ask(c, "a.example.com", "t2"); code != 404 {
		t.Errorf("t2 for another host: %d, want 404", code)
	}
	// this node's own token is in the copy once put, before any report
	if err := c.Present("c.example.com", "t3", "t3.k"); err != nil {
		t.Fatal(err)
	}
	if code, body := ask(c, "c.example.com", "t3"); code != 200 || body != "t3.k" {
		t.Errorf("a token this node put: %d %q, want 200", code, body)
	}
	if err := c.CleanUp("c.example.com", "t3", "t3.k"); err != nil {
		t.Fatal(err)
	}
	if code, _ := ask(c, "c.example.com", "t3"); code != 404 {
		t.Errorf("a token this node deleted: %d, want 404", code)
	}
	// a resync replaces the copy
	src.feed <- TokenChange{All: map[string]Token{}}
	until(t, "a resync answered", func() bool { code, _ := ask(c, "b.example.com", "t2"); return code == 404 })
	if n := src.reads.Load(); n != 0 {
		t.Errorf("reads of the storage = %d, want 0", n)
	}
}

func TestTokenCacheMissReadsTheStorage(t *testing.T) {
	src := newWatchedTokens()
	cache := NewTokenCache(src, TokenMissRate, TokenMissBurst, TokenMissWait)
	runCache(t, cache)
	c := ChallengesIn(cache)
	// put by another node an instant ago: not reported yet
	_ = src.PutToken(context.Background(), "t1", Token{Domain: "a.example.com", KeyAuth: "t1.k"})
	if code, body := ask(c, "a.example.com", "t1"); code != 200 || body != "t1.k" {
		t.Errorf("a token not yet reported: %d %q, want 200 t1.k", code, body)
	}
	if n := src.reads.Load(); n != 1 {
		t.Errorf("reads of the storage = %d, want 1", n)
	}
}

func TestTokenCacheLimitsAFlood(t *testing.T) {
	src := newWatchedTokens()
	// a short wait: the flood's misses beyond the rate each wait it
	cache := NewTokenCache(src, TokenMissRate, TokenMissBurst, time.Millisecond)
	runCache(t, cache)
	c := ChallengesIn(cache)
	start := time.Now()
	requests := 0
	for time.Since(start) < 300*time.Millisecond {
		if code, _ := ask(c, "a.example.com", rand.Text()); code != 404 {
			t.Fatalf("a random token: %d, want 404", code)
		}
		requests++
	}
	elapsed := time.Since(start)
	most := int64(TokenMissBurst) + int64(float64(TokenMissRate)*elapsed.Seconds()) + 1
	reads := src.reads.Load()
	if reads > most || reads < TokenMissBurst {
		t.Errorf("%d requests in %v made %d reads of the storage, want from %d (the burst) to %d", requests, elapsed, reads, TokenMissBurst, most)
	}
	if requests < 10*int(most) {
		t.Fatalf("only %d requests in %v: no flood", requests, elapsed)
	}
}

// TestTokenCacheFloodSparesARealValidation: with the misses' rate spent
// by a flood of random tokens, a token another node put an instant ago
// is still answered once the watch brings it, within the miss wait, and
// without a read of the storage.
func TestTokenCacheFloodSparesARealValidation(t *testing.T) {
	src := newWatchedTokens()
	// the burst alone, never refilled: the flood below spends it for good
	cache := NewTokenCache(src, 0, TokenMissBurst, 5*time.Second)
	runCache(t, cache)
	c := ChallengesIn(cache)
	for range TokenMissBurst {
		if code, _ := ask(c, "a.example.com", rand.Text()); code != 404 {
			t.Fatalf("a random token: %d, want 404", code)
		}
	}
	reads := src.reads.Load()
	real := Token{Domain: "b.example.com", KeyAuth: "real.k"}
	if err := src.PutToken(context.Background(), "real", real); err != nil {
		t.Fatal(err)
	}
	delivered := make(chan struct{})
	go func() {
		defer close(delivered)
		time.Sleep(50 * time.Millisecond) // the watch's delay, under test
		src.feed <- TokenChange{Key: src.TokenKey("real"), Token: real}
	}()
	start := time.Now()
	code, body := ask(c, "b.example.com", "real")
	<-delivered
	if code != 200 || body != "real.k" {
		t.Errorf("the real token after a flood: %d %q, want 200 %q", code, body, real.KeyAuth)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("answered after %v: not when the watch brought it", took)
	}
	if got := src.reads.Load(); got != reads {
		t.Errorf("%d reads of the storage for it, want none: the rate was spent", got-reads)
	}
}
