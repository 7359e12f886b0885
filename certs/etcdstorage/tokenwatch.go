package etcdstorage

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"haproxy-config/certs"
)

var _ certs.TokenWatcher = (*Storage)(nil)

// TokenKey is the name token is kept under: an HMAC of it.
func (s *Storage) TokenKey(token string) string { return s.seal.tokenName(token) }

// WatchTokens sends every token in etcd, then each token put or deleted,
// by this node or another (or expired with its lease), until ctx ends or
// the Storage is closed; then it closes the channel. It waits for its
// consumer.
//
// Each round reads every token (one linearizable read, on a member with
// a leader) and sends them with All set, then follows the changes after
// that read's revision until its etcd watch breaks: canceled by the
// member it was made on (one that lost its leader: the watch requires
// one), or its revision compacted. The next round starts after a pause,
// as a Watch's does. A value that does not open with the seal key is no
// token: it is left out, or reported deleted.
func (s *Storage) WatchTokens(ctx context.Context) <-chan certs.TokenChange {
	out := make(chan certs.TokenChange)
	go func() {
		defer close(out)
		pause := watchRetryMin
		for {
			started := time.Now()
			s.followTokens(ctx, out)
			if ctx.Err() != nil || s.cli.Ctx().Err() != nil {
				return
			}
			if time.Since(started) >= watchRetryMax {
				pause = watchRetryMin
			}
			t := time.NewTimer(pause)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			pause = min(2*pause, watchRetryMax)
		}
	}()
	return out
}

// followTokens is one round of WatchTokens.
func (s *Storage) followTokens(ctx context.Context, out chan<- certs.TokenChange) {
	c, cancel := s.call(clientv3.WithRequireLeader(ctx))
	resp, err := s.cli.Get(c, s.tokens, clientv3.WithPrefix())
	cancel()
	if err != nil {
		return
	}
	all := make(map[string]certs.Token, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if name, t, ok := s.openToken(kv); ok {
			all[name] = t
		}
	}
	if !sendToken(ctx, out, certs.TokenChange{All: all}) {
		return
	}
	wctx, cancelWatch := context.WithCancel(clientv3.WithRequireLeader(ctx))
	events := s.cli.Watch(wctx, s.tokens, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	defer func() {
		cancelWatch()
		for range events {
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case wr, ok := <-events:
			if !ok || wr.Err() != nil || wr.Canceled {
				return
			}
			for _, ev := range wr.Events {
				ch := certs.TokenChange{Key: strings.TrimPrefix(string(ev.Kv.Key), s.tokens), Deleted: true}
				if _, t, ok := s.openToken(ev.Kv); ok && ev.Type == mvccpb.PUT {
					ch.Token, ch.Deleted = t, false
				}
				if !sendToken(ctx, out, ch) {
					return
				}
			}
		}
	}
}

// openToken decrypts a token's value; false if it does not open.
func (s *Storage) openToken(kv *mvccpb.KeyValue) (name string, t certs.Token, ok bool) {
	value, err := s.seal.open(string(kv.Key), kv.Value)
	if err != nil || json.Unmarshal(value, &t) != nil {
		return "", certs.Token{}, false
	}
	return strings.TrimPrefix(string(kv.Key), s.tokens), t, true
}

// sendToken sends ch unless ctx ends first.
func sendToken(ctx context.Context, out chan<- certs.TokenChange, ch certs.TokenChange) bool {
	select {
	case out <- ch:
		return true
	case <-ctx.Done():
		return false
	}
}
