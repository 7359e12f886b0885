package certs

import (
	"context"
	"fmt"
	"io/fs"
	"maps"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// TokenWatcher is a Tokens whose content can be followed: what a
// TokenCache keeps a copy of.
type TokenWatcher interface {
	Tokens
	// TokenKey is the key token is kept under, as WatchTokens names it.
	TokenKey(token string) string
	// WatchTokens sends, until ctx ends, every token kept (a change with
	// All set, at the start and whenever changes may have been missed)
	// and each change after it; then it closes the channel.
	WatchTokens(ctx context.Context) <-chan TokenChange
}

// TokenChange is one report of a TokenWatcher.
type TokenChange struct {
	// All, when not nil, is every token kept, by key: it replaces what
	// was known.
	All map[string]Token
	// Otherwise Key is the key of a token put (Token) or deleted
	// (Deleted).
	Key     string
	Token   Token
	Deleted bool
}

// The reads a TokenCache makes on a miss, by default. A real CA asks a
// handful of times per challenge (Let's Encrypt validates from a primary
// and a few remote perspectives, within a second), and only a request
// that comes in the milliseconds between a put and the watch delivering
// it misses: a burst of 10 lets every perspective of one challenge miss
// at once, 20 a second several challenges a second on one node. A flood
// of random tokens then costs the shared storage at most 20 reads a
// second per node, however many requests it makes; beyond that a miss is
// answered as an unknown token without asking the storage.
//
// A miss beyond the rate waits up to TokenMissWait for the watch to bring
// the token before it is answered as unknown: during a flood, the token
// another node put an instant ago is still answered once its change
// arrives (within milliseconds), and each random token holds its request
// that long, which slows a flood down rather than the storage.
const (
	TokenMissRate  rate.Limit = 20
	TokenMissBurst            = 10
	TokenMissWait             = time.Second
)

// TokenCache is a Tokens that answers GetToken from a copy of a
// TokenWatcher's tokens that Run keeps up to date, so that the requests
// of anyone to the challenge handler do not reach the shared storage. A
// token not in the copy (put an instant ago, and not yet reported) is
// read from the storage, at a rate limited on this node. PutToken and
// DeleteToken go to the storage, and to the copy once the storage took
// them.
type TokenCache struct {
	src      TokenWatcher
	misses   *rate.Limiter
	missWait time.Duration

	mu      sync.RWMutex
	tokens  map[string]Token // by key
	updated chan struct{}    // closed and replaced at each change of tokens
}

var _ Tokens = (*TokenCache)(nil)

// NewTokenCache returns a cache of src's tokens, empty until Run runs,
// that reads a token it lacks from src at most missRate times a second
// (missBurst at once), and beyond that waits missWait for the watch to
// bring it: TokenMissRate, TokenMissBurst and TokenMissWait, but for
// tests.
func NewTokenCache(src TokenWatcher, missRate rate.Limit, missBurst int, missWait time.Duration) *TokenCache {
	return &TokenCache{src: src, misses: rate.NewLimiter(missRate, missBurst), missWait: missWait,
		tokens: map[string]Token{}, updated: make(chan struct{})}
}

// changed wakes the misses waiting for the watch; c.mu is held.
func (c *TokenCache) changed() {
	close(c.updated)
	c.updated = make(chan struct{})
}

// Run keeps the copy up to date until ctx ends.
func (c *TokenCache) Run(ctx context.Context) {
	for ch := range c.src.WatchTokens(ctx) {
		c.mu.Lock()
		switch {
		case ch.All != nil:
			c.tokens = maps.Clone(ch.All)
		case ch.Deleted:
			delete(c.tokens, ch.Key)
		default:
			c.tokens[ch.Key] = ch.Token
		}
		c.changed()
		c.mu.Unlock()
	}
}

// PutToken keeps t in the storage, then in the copy.
func (c *TokenCache) PutToken(ctx context.Context, token string, t Token) error {
	if err := c.src.PutToken(ctx, token, t); err != nil {
		return err
	}
	c.mu.Lock()
	c.tokens[c.src.TokenKey(token)] = t
	c.changed()
	c.mu.Unlock()
	return nil
}

// GetToken answers from the copy, or else from the storage while misses
// are within their rate; beyond it, from the copy if the watch brings the
// token within the miss wait, else as an unknown token (fs.ErrNotExist).
func (c *TokenCache) GetToken(ctx context.Context, token string) (Token, error) {
	key := c.src.TokenKey(token)
	c.mu.RLock()
	t, ok := c.tokens[key]
	c.mu.RUnlock()
	if ok {
		return t, nil
	}
	if c.misses.Allow() {
		return c.src.GetToken(ctx, token)
	}
	wait := time.NewTimer(c.missWait)
	defer wait.Stop()
	for {
		c.mu.RLock()
		t, ok := c.tokens[key]
		updated := c.updated
		c.mu.RUnlock()
		if ok {
			return t, nil
		}
		select {
		case <-updated:
		case <-wait.C:
			return Token{}, fmt.Errorf("token not cached, and more than %v misses a second are not looked up: %w", c.misses.Limit(), fs.ErrNotExist)
		case <-ctx.Done():
			return Token{}, fmt.Errorf("token not cached: %w (%w)", fs.ErrNotExist, ctx.Err())
		}
	}
}

// DeleteToken removes token from the storage, then from the copy.
func (c *TokenCache) DeleteToken(ctx context.Context, token string) error {
	if err := c.src.DeleteToken(ctx, token); err != nil {
		return err
	}
	c.mu.Lock()
	delete(c.tokens, c.src.TokenKey(token))
	c.changed()
	c.mu.Unlock()
	return nil
}
