package fragments

import (
	"context"
	"sync"
)

// Settler lets a Store's Commit return once its change is durable (the
// journal fsynced, the files in place) and settle in the background: the
// files' and directories' fsyncs, the history, the journal emptied. The
// settling keeps the store lock: the Lock that made the change releases
// it only once the change has settled, so another process finds the
// journal empty or finishes it; a Lock of this process waits for it, and
// a Commit waits for the last one before it writes the journal again. A
// crash while settling leaves the journal, and the next Lock finishes the
// change. Stores that share a Settler must be of one state directory.
type Settler struct {
	mu       sync.Mutex
	done     chan struct{} // closed when the settling in flight ends; nil when none
	releases []func()      // locks to release once it ends
	err      error         // of the last settling
}

// NewSettler returns a Settler with nothing settling.
func NewSettler() *Settler { return &Settler{} }

// start runs settle in the background.
func (l *Settler) start(settle func() error) {
	done := make(chan struct{})
	l.mu.Lock()
	l.done = done
	l.mu.Unlock()
	go func() {
		err := settle()
		l.mu.Lock()
		l.err, l.done = err, nil
		releases := l.releases
		l.releases = nil
		l.mu.Unlock()
		// released before done: a Lock waiting for done finds it free
		for _, release := range releases {
			release()
		}
		close(done)
	}()
}

// Wait waits for the settling in flight, if any, and returns the last
// settling's error: its change is then left in the journal, for the next
// Lock or Commit to finish. A nil Settler has nothing to wait for.
func (l *Settler) Wait() error {
	_ = l.wait(context.Background())
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// wait waits for the settling in flight until ctx ends.
func (l *Settler) wait(ctx context.Context) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	done := l.done
	l.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// release runs unlock now, or once the settling in flight has ended.
func (l *Settler) release(unlock func()) {
	if l != nil {
		l.mu.Lock()
		if l.done != nil {
			l.releases = append(l.releases, unlock)
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()
	}
	unlock()
}
