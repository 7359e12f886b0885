package fragments

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"haproxy-config/statedir"
)

// The journal's history lines and mixed transactions: what the crash
// tests of journal_crash_test.go do not cover, found by a second review.

// TestCrashAfterAppendRecordsOnce: Commit appends the history lines (no
// fsync) before it returns; a crash before the journal is cleared makes
// recovery look for them from the events it decodes from the journal.
// An actor that is not valid UTF-8 (HAPROXY_CONFIG_ACTOR or SUDO_USER in
// a Latin-1 locale) gives the same line both ways (Event.line), so the
// event is recorded once.
func TestCrashAfterAppendRecordsOnce(t *testing.T) {
	for _, actor := range []string{"ascii-actor", "caf\xe9"} {
		t.Run(actor, func(t *testing.T) {
			s := newStore(t)
			if err := s.Write(rvFrag(t, "shop", 1), nil); err != nil {
				t.Fatal(err)
			}
			tx := &Txn{}
			f := rvFrag(t, "shop", 2)
			tx.Put(s.path("shop", true), f.Conf, 0o640)
			tx.Put(s.path("shop", false), f.MapText, 0o640)
			tx.Events = []Event{rvEv("apply", "shop", actor, 1)}
			// Commit's steps up to the history append, then a crash
			plan, err := json.Marshal(tx)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.writeJournal(plan); err != nil {
				t.Fatal(err)
			}
			if _, _, err := s.apply(tx); err != nil {
				t.Fatal(err)
			}
			if _, err := s.appendHistory(tx.Events); err != nil {
				t.Fatal(err)
			}
			u, err := rvOther(s).Lock(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer u()
			if got := rvHistory(t, s); len(got) != 1 {
				t.Errorf("history after recovery: %q, want the one event once", got)
			}
		})
	}
}

// TestMixedCommitFailsWhole: a Txn with Stage writes (live files),
// Puts and Removes whose last Put cannot be written: Commit fails before
// the journal, removes every staged and temp file, and nothing is
// carried out then or by the next Lock.
func TestMixedCommitFailsWhole(t *testing.T) {
	s := newStore(t)
	s.Later = NewSettler()
	if err := s.Write(rvFrag(t, "old", 1), nil); err != nil {
		t.Fatal(err)
	}
	writeRaw(t, s.Dir, "blocker", "a file where a directory goes")
	live := filepath.Join(filepath.Dir(s.Dir), "live")
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tx := &Txn{Events: []Event{rvEv("apply", "shop", "test", 0)}}
	if err := tx.Stage(filepath.Join(live, "haproxy.cfg"), []byte("cfg v1\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	f := rvFrag(t, "shop", 1)
	tx.Put(s.path("shop", true), f.Conf, 0o640)
	tx.Put(s.path("shop", false), f.MapText, 0o640)
	tx.Removes = []string{s.path("old", true), s.path("old", false)}
	tx.Put(filepath.Join(s.Dir, "blocker", "x"), []byte("x"), 0o640)
	if err := s.Commit(tx); err == nil {
		t.Fatal("Commit succeeded")
	}
	unlock()
	s.Later.Wait()
	for _, dir := range []string{s.Dir, live} {
		if left := rvStaged(dir); len(left) > 0 {
			t.Errorf("%s: staged or temp files left: %q", dir, left)
		}
	}
	os.Remove(filepath.Join(s.Dir, "blocker"))
	u, err := rvOther(s).Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer u()
	if c, m := rvVersion(s, "shop"); c != -1 || m != -1 {
		t.Errorf("shop half or wholly stored: %d %d", c, m)
	}
	if c, m := rvVersion(s, "old"); c != 1 || m != 1 {
		t.Errorf("old removed: %d %d", c, m)
	}
	if _, err := os.Stat(filepath.Join(live, "haproxy.cfg")); err == nil {
		t.Error("the staged live config was put in place")
	}
	if got := rvHistory(t, s); len(got) != 0 {
		t.Errorf("history %q", got)
	}
}

// bigHistory fills the history past historyMax with n events of
// fragment "f".
func bigHistory(t *testing.T, s *Store) {
	t.Helper()
	if err := os.MkdirAll(s.StateDir, 0o750); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(statedir.Layout(s.StateDir).History())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pad := strings.Repeat("x", 200)
	enc := json.NewEncoder(f)
	for i := 0; ; i++ {
		if err := enc.Encode(Event{Time: time.Unix(1600000000+int64(i), 0).UTC(), Action: "apply", Name: "f", Actor: pad}); err != nil {
			t.Fatal(err)
		}
		if fi, _ := f.Stat(); fi.Size() > historyMax-300 {
			return
		}
	}
}

// TestTrimBeforeTheNextCommit: with a Settler, the first Commit's append
// takes the history past historyMax, so its background settling trims it
// (History, then a rename over it); the lock holder commits again at
// once, in the same lock. That Commit waits for the trim: its line is not
// lost under the rename.
func TestTrimBeforeTheNextCommit(t *testing.T) {
	s := newStore(t)
	s.Later = NewSettler()
	bigHistory(t, s)
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"shop", "blog", "wiki"} {
		ev := rvEv("apply", name, "test", i)
		if _, err := s.WriteGroup([]GroupChange{{Name: name, Fragment: rvFrag(t, name, 1), Event: &ev}}); err != nil {
			t.Fatal(err)
		}
	}
	unlock()
	if err := s.Later.Wait(); err != nil {
		t.Fatal(err)
	}
	got := rvHistory(t, s)
	if len(got) > historyKeep+3 {
		t.Errorf("history not trimmed: %d events", len(got))
	}
	tail := got[len(got)-3:]
	if !slices.Equal(tail, []string{"apply shop test", "apply blog test", "apply wiki test"}) {
		t.Errorf("history ends %q, want shop, blog, wiki once each", tail)
	}
	assertJournalEmpty(t, s)
}

// TestCrashAfterTrim: a crash after settling trimmed the history
// (its events in the tail) but before the journal was cleared: recovery
// records nothing again.
func TestCrashAfterTrim(t *testing.T) {
	s := newStore(t)
	bigHistory(t, s)
	tx := &Txn{}
	f := rvFrag(t, "shop", 1)
	tx.Put(s.path("shop", true), f.Conf, 0o640)
	tx.Put(s.path("shop", false), f.MapText, 0o640)
	tx.Events = []Event{rvEv("apply", "shop", "test", 1), rvEv("apply", "shop2", "test", 2)}
	plan, _ := json.Marshal(tx)
	if err := s.writeJournal(plan); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.apply(tx); err != nil {
		t.Fatal(err)
	}
	size, err := s.appendHistory(tx.Events)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.syncHistory(size); err != nil { // trims
		t.Fatal(err)
	}
	u, err := rvOther(s).Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer u()
	got := rvHistory(t, s)
	if n := len(got); n != historyKeep || got[n-2] != "apply shop test" || got[n-1] != "apply shop2 test" {
		t.Errorf("history after recovery: %d events ending %q", n, got[max(0, n-3):])
	}
}
