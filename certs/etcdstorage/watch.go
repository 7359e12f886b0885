package etcdstorage

import (
	"context"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"haproxy-config/certs"
)

var _ certs.Watcher = (*Storage)(nil)

// watchBuffer is how many keys a Watch holds for a consumer that has not
// read them yet.
const watchBuffer = 256

// A Watch pauses watchRetryMin after its etcd watch broke, and twice as
// long after each watch that broke within watchRetryMax, up to
// watchRetryMax: a watch that the cluster refuses or cancels at once is
// not made again more often than that.
const (
	watchRetryMin = 100 * time.Millisecond
	watchRetryMax = 3 * time.Second
)

// Watch sends the key of every value stored or deleted under prefix (at
// any depth), by this node or another, until ctx ends or the Storage is
// closed, then closes the channel. It never blocks on its consumer.
//
// It sends "" (everything under prefix is to be read again):
//   - once its etcd watch is made, at the start and after each break:
//     what changed before then is not sent as keys;
//   - when its etcd watch broke: canceled by the member it was made on,
//     for instance one that lost its leader (the watch requires one, so
//     a member cut off from the quorum does not keep it waiting for
//     changes it will never hear of), or its revision compacted. It is
//     made again after a pause, from the revision after the last one
//     it saw, or from the current one after a compaction;
//   - instead of the keys a slow consumer has no room for (watchBuffer
//     keys are held): those keys are dropped, a single "" is sent once
//     there is room, and keys are sent again after it.
//
// While none of the endpoints is reached, the etcd client tries to
// connect again and, once it does, resumes from the revision after the
// last one it saw: no change is missed, though no "" may be sent either
// (Ping tells of the outage).
//
// A prefix that is not a key (see Keys) watches nothing: the channel is
// closed at once.
func (s *Storage) Watch(ctx context.Context, prefix string) <-chan string {
	out := make(chan string, watchBuffer)
	if checkKey(prefix) != nil {
		close(out)
		return out
	}
	w := &watch{s: s, under: s.values + prefix + "/", out: out}
	go w.run(ctx)
	return out
}

// watch is one Watch's state, owned by its goroutine.
type watch struct {
	s     *Storage
	under string // the etcd prefix watched
	out   chan string
	owed  bool  // a "" is to be sent as soon as out has room
	next  int64 // the revision to watch from; 0: the current one
}

// run makes etcd watches until ctx ends or the client is closed, then
// closes out.
func (w *watch) run(ctx context.Context) {
	defer close(w.out)
	pause := watchRetryMin
	for {
		started := time.Now()
		w.follow(ctx)
		if ctx.Err() != nil || w.s.cli.Ctx().Err() != nil {
			return
		}
		w.owed = true
		if time.Since(started) >= watchRetryMax {
			pause = watchRetryMin
		}
		if !w.wait(ctx, pause) {
			return
		}
		pause = min(2*pause, watchRetryMax)
	}
}

// follow makes one etcd watch and sends its keys until it ends. It
// returns once the etcd client is done with the watch.
func (w *watch) follow(ctx context.Context) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCreatedNotify()}
	if w.next > 0 {
		opts = append(opts, clientv3.WithRev(w.next))
	}
	events := w.s.cli.Watch(wctx, w.under, opts...)
	defer func() {
		cancel()
		for range events {
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case w.resync() <- "":
			w.owed = false
		case wr, ok := <-events:
			switch {
			case !ok:
				return
			case wr.CompactRevision != 0:
				w.next = 0
				return
			case wr.Err() != nil:
				return
			case wr.Created:
				w.owed = true
				if w.next == 0 {
					// an event of this very revision may come after
					// the header was read: resume at it, as the etcd
					// client does
					w.next = wr.Header.Revision
				}
			}
			for _, ev := range wr.Events {
				w.send(strings.TrimPrefix(string(ev.Kv.Key), w.s.values))
				w.next = ev.Kv.ModRevision + 1
			}
		}
	}
}

// wait pauses d, sending the "" owed when out has room; false if ctx
// ended.
func (w *watch) wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case w.resync() <- "":
			w.owed = false
		case <-t.C:
			return true
		}
	}
}

// resync is out while a "" is owed, nil (a send never chosen) otherwise.
func (w *watch) resync() chan<- string {
	if w.owed {
		return w.out
	}
	return nil
}

// send sends key if out has room, or owes a "" instead; a key that comes
// while one is owed is dropped, as the "" covers it.
func (w *watch) send(key string) {
	if w.owed {
		return
	}
	select {
	case w.out <- key:
	default:
		w.owed = true
	}
}

// Ping makes one linearizable read, in a call's time bound: it succeeds
// once a member that has a leader answered it after a quorum confirmed
// the leader.
func (s *Storage) Ping(ctx context.Context) error {
	c, cancel := s.call(clientv3.WithRequireLeader(ctx))
	defer cancel()
	if _, err := s.cli.Get(c, s.values, clientv3.WithCountOnly()); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("etcd: ping %s: %w", strings.Join(s.cli.Endpoints(), ","), err)
		}
		return fmt.Errorf("etcd: no quorum of %s answered a read (in %v at most): %w", strings.Join(s.cli.Endpoints(), ","), s.requestTimeout, err)
	}
	return nil
}
