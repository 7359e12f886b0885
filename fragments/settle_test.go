package fragments

import (
	"context"
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"haproxy-config/statedir"
)

// TestSettlerReleasesOnceSettled: a lock released while its change
// settles is let go only when the settling ends, before a waiter hears
// that it ended; a waiter gives up when its ctx ends; the settling's
// error is kept for Wait.
func TestSettlerReleasesOnceSettled(t *testing.T) {
	l := NewSettler()
	gate := make(chan struct{})
	l.start(func() error {
		<-gate
		return errors.New("disk full")
	})
	released := make(chan struct{})
	l.release(func() { close(released) })
	select {
	case <-released:
		t.Fatal("the lock was released while its change settled")
	default:
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.wait(ctx); err == nil {
		t.Fatal("wait with its ctx ended returned nil while a change settled")
	}
	close(gate)
	if err := l.Wait(); err == nil || err.Error() != "disk full" {
		t.Fatalf("Wait: %v, want the settling's error", err)
	}
	select {
	case <-released:
	default:
		t.Fatal("Wait returned before the lock was released")
	}
	now := false
	l.release(func() { now = true })
	if !now {
		t.Error("with nothing settling, release did not release at once")
	}
	var none *Settler
	if err := none.Wait(); err != nil {
		t.Errorf("a nil Settler's Wait: %v", err)
	}
}

// historyInTheWay makes the history a directory, so that settling fails,
// and returns the function that takes it away.
func historyInTheWay(t *testing.T, s *Store) func() {
	t.Helper()
	path := statedir.Layout(s.StateDir).History()
	if err := os.MkdirAll(path, 0o750); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBackgroundSettlingThatFails: a group committed with a Settler is
// in place when WriteGroup returns; when its settling fails, the journal
// keeps the change, another process's Lock fails while it cannot finish
// it, and the next Lock finishes it once it can, each event recorded
// once; Settled then finds nothing pending.
func TestBackgroundSettlingThatFails(t *testing.T) {
	s := newStore(t)
	s.Later = NewSettler()
	ctx := context.Background()
	clear := historyInTheWay(t, s)
	unlock, err := s.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	shop := mustParse(t, "shop", "backend shop_web\n", "shop.example.com shop_web\n")
	ev := &Event{Time: time.Unix(1700000000, 0).UTC(), Action: "apply", Name: "shop", Actor: "test"}
	if _, err := s.WriteGroup([]GroupChange{{Name: "shop", Fragment: shop, Event: ev}}); err != nil {
		t.Fatalf("WriteGroup: %v, want the change durable in the journal", err)
	}
	if st, err := s.Read("shop"); err != nil || string(st.Conf) != "backend shop_web\n" {
		t.Fatalf("shop once WriteGroup returned: %v %+v", err, st)
	}
	unlock()
	if err := s.Later.Wait(); err == nil {
		t.Fatal("settling with the history in the way succeeded")
	}
	if pending, err := s.Settled(); !pending || err != nil {
		t.Fatalf("Settled: %v %v: the journal was emptied though the change did not settle", pending, err)
	}
	other := &Store{Dir: s.Dir, StateDir: s.StateDir}
	if unlock, err := other.Lock(ctx); err == nil {
		unlock()
		t.Fatal("another process's Lock succeeded without finishing the change")
	}
	clear()
	unlock, err = s.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if pending, err := s.Settled(); pending || err != nil {
		t.Errorf("Settled once the change was finished from the journal: %v %v, want nothing pending", pending, err)
	}
	if got := rvHistory(t, s); !slices.Equal(got, []string{"apply shop test"}) {
		t.Errorf("history %v, want shop's apply once", got)
	}
	assertJournalEmpty(t, s)
}

// TestCommitFinishesTheChangeLeftBefore: a Commit under the lock whose
// last change failed to settle finishes that change before it writes the
// journal again: neither change is lost.
func TestCommitFinishesTheChangeLeftBefore(t *testing.T) {
	s := newStore(t)
	s.Later = NewSettler()
	clear := historyInTheWay(t, s)
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	for i, name := range []string{"shop", "blog"} {
		f := mustParse(t, name, "backend "+name+"_web\n", name+".example.com "+name+"_web\n")
		ev := &Event{Time: time.Unix(1700000000+int64(i), 0).UTC(), Action: "apply", Name: name, Actor: "test"}
		if _, err := s.WriteGroup([]GroupChange{{Name: name, Fragment: f, Event: ev}}); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := s.Later.Wait(); err == nil {
				t.Fatal("settling with the history in the way succeeded")
			}
			clear()
		}
	}
	if err := s.Later.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := rvHistory(t, s); !slices.Equal(got, []string{"apply shop test", "apply blog test"}) {
		t.Errorf("history %v, want shop's apply, then blog's", got)
	}
	assertJournalEmpty(t, s)
}
