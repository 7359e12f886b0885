package fragments

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"haproxy-config/statedir"
)

// crashAt stages a new version of fragment "shop", writes the journal, and
// performs only the first n renames, as a kill -9 in the middle would. The
// journal has the shape of those written before group commits (one
// "event"), which a daemon upgraded after a crash finds.
func crashAt(t *testing.T, s *Store, n int, record bool) {
	t.Helper()
	f := mustParse(t, "shop", "backend shop_v2\n", "shop.example.com shop_v2\n")
	ev := &Event{Time: time.Unix(1700000000, 0).UTC(), Action: "apply", Name: "shop", Checksum: f.Checksum, Actor: "test"}
	tx := &Txn{Event: ev}
	if err := tx.Stage(s.path("shop", true), f.Conf, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := tx.Stage(s.path("shop", false), f.MapText, 0o644); err != nil {
		t.Fatal(err)
	}
	plan, _ := json.Marshal(tx)
	if err := WriteFile(s.journalPath(), plan, 0o640); err != nil {
		t.Fatal(err)
	}
	for _, w := range tx.Writes[:n] {
		if err := os.Rename(w.Staged, w.Path); err != nil {
			t.Fatal(err)
		}
	}
	if record {
		if err := s.Record(*ev); err != nil {
			t.Fatal(err)
		}
	}
}

func TestJournalFinishesAnInterruptedWrite(t *testing.T) {
	for _, tc := range []struct {
		name    string
		renames int
		record  bool
	}{
		{"crash before any rename", 0, false},
		{"crash between the two parts", 1, false},
		{"crash after the history line, before clearing the journal", 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			if err := s.Write(mustParse(t, "shop", "backend shop_web\n", "shop.example.com shop_web\n"), nil); err != nil {
				t.Fatal(err)
			}
			crashAt(t, s, tc.renames, tc.record)

			unlock, err := s.Lock(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer unlock()
			st, err := s.Read("shop")
			if err != nil {
				t.Fatal(err)
			}
			if string(st.Conf) != "backend shop_v2\n" || string(st.Map) != "shop.example.com shop_v2\n" {
				t.Fatalf("after recovery: conf %q map %q, want both parts of the new version", st.Conf, st.Map)
			}
			assertJournalEmpty(t, s)
			events, _ := s.History()
			if len(events) != 1 || events[0].Name != "shop" {
				t.Errorf("history = %+v, want the apply once", events)
			}
			assertNoStaged(t, s.Dir)
		})
	}
}

func TestUnjournaledStagingLeavesEverythingAsItWas(t *testing.T) {
	s := newStore(t)
	if err := s.Write(mustParse(t, "shop", "backend shop_web\n", "shop.example.com shop_web\n"), nil); err != nil {
		t.Fatal(err)
	}
	tx := &Txn{}
	if err := tx.Stage(s.path("shop", true), []byte("backend half\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// crash here: staged, no journal
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	st, err := s.Read("shop")
	if err != nil || string(st.Conf) != "backend shop_web\n" {
		t.Fatalf("old version not intact: %q %v", st.Conf, err)
	}
	assertNoStaged(t, s.Dir)
}

// assertJournalEmpty fails t unless the journal holds no change.
func assertJournalEmpty(t *testing.T, s *Store) {
	t.Helper()
	data, err := os.ReadFile(s.journalPath())
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if len(data) > 0 && string(data) != clearedJournal {
		t.Errorf("the journal still holds a change: %.200q", data)
	}
}

func assertNoStaged(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), stagedMark) {
			t.Errorf("staged file left behind: %s", filepath.Join(dir, e.Name()))
		}
	}
}

// TestWriteGroup: a group of writes and removes is made whole, with one
// history line each in order; a removal of a fragment whose files went is
// returned, and the rest go ahead; a group that fails before its journal
// (a bad name) changes nothing and leaves nothing staged.
func TestWriteGroup(t *testing.T) {
	s := newStore(t)
	ev := func(action, name string) *Event {
		return &Event{Time: time.Unix(1700000000, 0).UTC(), Action: action, Name: name, Actor: "test"}
	}
	old := mustParse(t, "old", "backend old_web\n", "old.example.com old_web\n")
	if err := s.Write(old, ev("apply", "old")); err != nil {
		t.Fatal(err)
	}
	shop := mustParse(t, "shop", "backend shop_web\n", "shop.example.com shop_web\n")
	blog := mustParse(t, "blog", "backend blog_web\n", "blog.example.com blog_web\n")
	gone, err := s.WriteGroup([]GroupChange{
		{Name: "shop", Fragment: shop, Event: ev("apply", "shop")},
		{Name: "old", Event: ev("remove", "old")},
		{Name: "never", Event: ev("remove", "never")},
		{Name: "blog", Fragment: blog, Event: ev("apply", "blog")},
	})
	if err != nil || !slices.Equal(gone, []string{"never"}) {
		t.Fatalf("WriteGroup: gone %v, %v; want [never]", gone, err)
	}
	stored, _, err := s.ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, st := range stored {
		names = append(names, st.Name)
	}
	if !slices.Equal(names, []string{"blog", "shop"}) {
		t.Fatalf("stored %v, want blog and shop", names)
	}
	events, err := s.History()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, e := range events {
		lines = append(lines, e.Action+" "+e.Name)
	}
	if want := []string{"apply old", "apply shop", "remove old", "apply blog"}; !slices.Equal(lines, want) {
		t.Fatalf("history %v, want %v", lines, want)
	}
	assertJournalEmpty(t, s)

	before, _ := os.ReadFile(s.path("shop", true))
	changed := mustParse(t, "shop", "backend shop_v2\n", "shop.example.com shop_v2\n")
	if _, err := s.WriteGroup([]GroupChange{{Name: "shop", Fragment: changed}, {Name: "Bad Name", Fragment: changed}}); err == nil {
		t.Fatal("a group with a bad name was written")
	}
	if after, _ := os.ReadFile(s.path("shop", true)); !slices.Equal(after, before) {
		t.Errorf("a failed group changed shop: %q", after)
	}
	assertNoStaged(t, s.Dir)
}

// TestWriteGroupLeavesAnUnchangedPartBe: a part that already holds what
// a change writes is not written again (a map-only change leaves the
// config part's file as it is); one with another mode, or that shares
// its inode through a hard link, or another owner, is; the change's
// event is recorded either way.
func TestWriteGroupLeavesAnUnchangedPartBe(t *testing.T) {
	s := newStore(t)
	conf := "backend shop_web\n"
	write := func(mapLine string) {
		t.Helper()
		f := mustParse(t, "shop", conf, mapLine+" shop_web\n")
		if err := s.Write(f, &Event{Time: time.Unix(1700000000, 0).UTC(), Action: "apply", Name: "shop", Actor: "test"}); err != nil {
			t.Fatal(err)
		}
		for _, part := range []struct {
			conf bool
			want string
		}{{true, conf}, {false, mapLine + " shop_web\n"}} {
			path := s.path("shop", part.conf)
			if got, err := os.ReadFile(path); err != nil || string(got) != part.want {
				t.Fatalf("%s holds %q, %v; want %q", path, got, err, part.want)
			}
			if fi, err := os.Stat(path); err != nil || fi.Mode() != 0o640 {
				t.Fatalf("%s: mode %v, %v; want 0640", path, fi.Mode(), err)
			}
		}
	}
	inode := func(conf bool) uint64 {
		t.Helper()
		fi, err := os.Lstat(s.path("shop", conf))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	write("a.example.com")
	confIno, mapIno := inode(true), inode(false)
	write("b.example.com")
	if inode(true) != confIno {
		t.Error("a map-only change wrote the unchanged config part again")
	}
	if inode(false) == mapIno {
		t.Error("a map-only change did not write the map part")
	}
	mapIno = inode(false)
	write("b.example.com")
	if inode(true) != confIno || inode(false) != mapIno {
		t.Error("an identical apply wrote a part again")
	}

	if err := os.Chmod(s.path("shop", true), 0o644); err != nil {
		t.Fatal(err)
	}
	write("c.example.com")
	if inode(true) == confIno {
		t.Error("a config part of mode 0644 was kept; want it written again with 0640")
	}
	confIno = inode(true)
	sibling := filepath.Join(t.TempDir(), "sibling")
	if err := os.Link(s.path("shop", true), sibling); err != nil {
		t.Fatal(err)
	}
	write("d.example.com")
	if inode(true) == confIno {
		t.Error("a hard-linked config part was kept; want a file of its own")
	}
	applies := 5
	if os.Geteuid() == 0 {
		// another owner keeps write access to it, another group read
		confIno = inode(true)
		if err := os.Chown(s.path("shop", true), 65534, 65534); err != nil {
			t.Fatal(err)
		}
		write("e.example.com")
		fi, err := os.Lstat(s.path("shop", true))
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); inode(true) == confIno || st.Uid != 0 || st.Gid != 0 {
			t.Errorf("a config part owned by 65534:65534 was kept (now %d:%d); want it written again", st.Uid, st.Gid)
		}
		applies++
	}

	events, err := s.History()
	if err != nil || len(events) != applies {
		t.Fatalf("history: %d events, %v; want one for each of the %d applies", len(events), err, applies)
	}
	assertJournalEmpty(t, s)
	assertNoStaged(t, s.Dir)
}

// TestKeptPartIsJournaled: a part a change leaves as it is is in the
// journal all the same, until settling has fsynced it: a crash that loses
// the file (copied in, never fsynced) before then has it written again.
func TestKeptPartIsJournaled(t *testing.T) {
	s := newStore(t)
	for _, dir := range []string{s.Dir, s.StateDir} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	path, data := s.path("shop", true), []byte("backend shop_web\n")
	tx := &Txn{}
	tx.keep(path, data, partPerm)
	plan, err := json.Marshal(tx)
	if err != nil {
		t.Fatal(err)
	}
	// the crash: the journal durable, the kept file lost with the page cache
	if err := s.writeJournal(plan); err != nil {
		t.Fatal(err)
	}
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if got, err := os.ReadFile(path); err != nil || string(got) != string(data) {
		t.Fatalf("after recovery %s holds %q, %v; want %q", path, got, err, data)
	}
	assertJournalEmpty(t, s)
}

// TestKeptPartChangedBeforeApply (from a review): a part WriteGroup found
// holding the change's bytes (keep) and that someone changes before the
// change is applied is written after all, with a Settler (the daemon) or
// without (the CLI); a directory put there fails the change, which stays
// in the journal, rather than being answered and forgotten.
func TestKeptPartChangedBeforeApply(t *testing.T) {
	const conf, hostMap = "backend shop_web\n", "shop.example.com shop_web\n"
	elsewhere := filepath.Join(t.TempDir(), "other.cfg")
	if err := os.WriteFile(elsewhere, []byte("backend shop_xyz\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		meddle func(path string) error
	}{
		{"removed", os.Remove},
		{"rewritten", func(p string) error { return os.WriteFile(p, []byte("backend shop_xyz\n"), 0o640) }},
		{"a symlink", func(p string) error { os.Remove(p); return os.Symlink(elsewhere, p) }},
		{"a named pipe", func(p string) error { os.Remove(p); return syscall.Mkfifo(p, 0o640) }},
		{"a directory", func(p string) error { os.Remove(p); return os.Mkdir(p, 0o750) }},
	} {
		for _, daemon := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/settler=%v", tc.name, daemon), func(t *testing.T) {
				s := newStore(t)
				f := mustParse(t, "shop", conf, hostMap)
				if err := s.Write(f, nil); err != nil {
					t.Fatal(err)
				}
				if daemon {
					s.Later = NewSettler()
				}
				path := s.path("shop", true)
				tx := &Txn{}
				tx.keep(path, f.Conf, partPerm)
				if err := tc.meddle(path); err != nil {
					t.Fatal(err)
				}
				done := make(chan error, 1)
				go func() {
					err := s.Commit(tx)
					_ = s.Later.Wait()
					done <- err
				}()
				var err error
				select {
				case err = <-done:
				case <-time.After(10 * time.Second):
					t.Fatal("the change has not settled 10 s after its commit")
				}
				pending, perr := s.Settled()
				if perr != nil {
					t.Fatal(perr)
				}
				if tc.name == "a directory" {
					if err == nil && !pending {
						t.Fatal("a directory where the part goes: answered and the journal emptied; want a failure that leaves the change in the journal")
					}
					return
				}
				fi, lerr := os.Lstat(path)
				got, rerr := os.ReadFile(path)
				if err != nil || pending || lerr != nil || !fi.Mode().IsRegular() || rerr != nil || string(got) != conf {
					t.Fatalf("Commit %v, journal pending %v; the part: %v %v, holds %q %v; want %q in a file of its own, settled", err, pending, fi, lerr, got, rerr, conf)
				}
			})
		}
	}
}

// TestHoldsChecksTheFileItOpens (from a review): holds answers for the
// file its Lstat described; a chmod, a hard link or a replacement made
// between the Lstat and the open (the replacement may reuse the inode
// number at once) is not that file.
func TestHoldsChecksTheFileItOpens(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "shop.cfg")
	data := []byte("backend shop_web\n")
	fresh := func(mode os.FileMode) os.FileInfo {
		t.Helper()
		os.Remove(path)
		if err := os.WriteFile(path, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	fi := fresh(0o640)
	if !holds(path, fi, data, 0o640) {
		t.Fatal("holds is false for the file as its Lstat saw it")
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if holds(path, fi, data, 0o640) {
		t.Error("holds is true after a chmod to 0644 since the Lstat")
	}
	fi = fresh(0o640)
	if err := os.Link(path, filepath.Join(dir, "elsewhere")); err != nil {
		t.Fatal(err)
	}
	if holds(path, fi, data, 0o640) {
		t.Error("holds is true after a hard link made since the Lstat")
	}
	os.Remove(filepath.Join(dir, "elsewhere"))
	fi = fresh(0o640)
	for range 50 {
		if now := fresh(0o666); os.SameFile(fi, now) {
			break // the inode number was reused
		}
	}
	if holds(path, fi, data, 0o640) {
		t.Error("holds is true for a replacement of mode 0666 made since the Lstat")
	}
}

// TestSyncFailsOnANamedPipe: a named pipe where a file was makes Sync
// fail at once; it must not wait for a writer while the store's lock is
// held.
func TestSyncFailsOnANamedPipe(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pipe")
	if err := syscall.Mkfifo(path, 0o640); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Sync(path) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Sync of a named pipe succeeded")
		}
	case <-time.After(10 * time.Second):
		if w, err := os.OpenFile(path, os.O_WRONLY, 0); err == nil {
			w.Close()
		}
		t.Fatal("Sync of a named pipe still waits after 10 s")
	}
}

// TestJournalFinishesAnInterruptedGroup: a group's journal is finished by
// the next Lock however far the group got, and each of its events is in
// the history once.
func TestJournalFinishesAnInterruptedGroup(t *testing.T) {
	for _, tc := range []struct {
		name     string
		renames  int
		recorded int
	}{
		{"crash before any rename", 0, 0},
		{"crash between the fragments", 3, 0},
		{"crash after the history lines, before clearing the journal", 4, 2},
		{"crash after one history line", 4, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			tx := &Txn{}
			for _, name := range []string{"shop", "blog"} {
				f := mustParse(t, name, "backend "+name+"_v2\n", name+".example.com "+name+"_v2\n")
				if err := tx.Stage(s.path(name, true), f.Conf, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := tx.Stage(s.path(name, false), f.MapText, 0o644); err != nil {
					t.Fatal(err)
				}
				tx.Events = append(tx.Events, Event{Time: time.Unix(1700000000, 0).UTC(), Action: "apply", Name: name, Checksum: f.Checksum, Actor: "test"})
			}
			plan, _ := json.Marshal(tx)
			if err := os.MkdirAll(s.StateDir, 0o750); err != nil {
				t.Fatal(err)
			}
			if err := WriteFile(s.journalPath(), plan, 0o640); err != nil {
				t.Fatal(err)
			}
			for _, w := range tx.Writes[:tc.renames] {
				if err := os.Rename(w.Staged, w.Path); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Record(tx.Events[:tc.recorded]...); err != nil {
				t.Fatal(err)
			}

			unlock, err := s.Lock(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer unlock()
			for _, name := range []string{"shop", "blog"} {
				if st, err := s.Read(name); err != nil || string(st.Conf) != "backend "+name+"_v2\n" {
					t.Fatalf("after recovery, %s: %v %+v", name, err, st)
				}
			}
			events, _ := s.History()
			if len(events) != 2 || events[0].Name != "shop" || events[1].Name != "blog" {
				t.Errorf("history = %+v, want shop's and blog's applies once each", events)
			}
			assertNoStaged(t, s.Dir)
		})
	}
}

// TestWriteGroupRefusesWhatItCannotFinish: a directory where a part goes,
// or a fragment changed twice, is refused before the journal is written:
// nothing of the group is stored, nothing is left staged, and the next
// change goes through. Found by a review: a rename failing after the
// journal left the group half made and every later Lock failing.
func TestWriteGroupRefusesWhatItCannotFinish(t *testing.T) {
	s := newStore(t)
	if err := os.MkdirAll(s.path("blog", true), 0o755); err != nil { // blog.cfg is a directory
		t.Fatal(err)
	}
	shop := mustParse(t, "shop", "backend shop_web\n", "shop.example.com shop_web\n")
	blog := mustParse(t, "blog", "backend blog_web\n", "blog.example.com blog_web\n")
	for what, group := range map[string][]GroupChange{
		"a directory in the way": {{Name: "shop", Fragment: shop}, {Name: "blog", Fragment: blog}},
		"a fragment twice":       {{Name: "shop", Fragment: shop}, {Name: "shop"}},
	} {
		if _, err := s.WriteGroup(group); err == nil {
			t.Fatalf("%s: the group was written", what)
		}
		if _, err := s.Read("shop"); err == nil {
			t.Errorf("%s: shop is stored from a group that failed", what)
		}
		assertJournalEmpty(t, s)
		assertNoStaged(t, s.Dir)
	}
	if err := s.Write(shop, nil); err != nil {
		t.Fatalf("the next change: %v", err)
	}
}

// TestJournalHistoryTornBeforeANewline: a history append cut just before
// a line's newline left that event whole: recovery records the others,
// not it a second time. Found by a review.
func TestJournalHistoryTornBeforeANewline(t *testing.T) {
	s := newStore(t)
	tx := &Txn{}
	for i, name := range []string{"shop", "blog", "wiki"} {
		f := mustParse(t, name, "backend "+name+"_v2\n", name+".example.com "+name+"_v2\n")
		if err := tx.Stage(s.path(name, true), f.Conf, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := tx.Stage(s.path(name, false), f.MapText, 0o644); err != nil {
			t.Fatal(err)
		}
		tx.Events = append(tx.Events, Event{Time: time.Unix(1700000000+int64(i), 0).UTC(), Action: "apply", Name: name, Actor: "test"})
	}
	plan, _ := json.Marshal(tx)
	if err := os.MkdirAll(s.StateDir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(s.journalPath(), plan, 0o640); err != nil {
		t.Fatal(err)
	}
	var history []byte
	for _, e := range tx.Events[:2] {
		line, _ := json.Marshal(e)
		history = append(append(history, line...), '\n')
	}
	if err := os.WriteFile(statedir.Layout(s.StateDir).History(), history[:len(history)-1], 0o640); err != nil {
		t.Fatal(err)
	}
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	events, _ := s.History()
	var names []string
	for _, e := range events {
		names = append(names, e.Name)
	}
	if !slices.Equal(names, []string{"shop", "blog", "wiki"}) {
		t.Fatalf("history after recovery %v, want shop, blog and wiki once each", names)
	}
}

// TestSyncAllReportsAFailure: one path that cannot be fsynced among
// others fails the whole call, so no journal follows it.
func TestSyncAllReportsAFailure(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "a")
	if err := os.WriteFile(file, []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := SyncAll(file, dir); err != nil {
		t.Fatal(err)
	}
	if err := SyncAll(file, filepath.Join(dir, "missing"), dir); err == nil {
		t.Fatal("a missing path was fsynced")
	}
}

// putGroup journals a group that puts new versions of shop and blog, as
// WriteGroup does, and carries out only the first n writes: a kill -9
// after the journal was fsynced.
func putGroup(t *testing.T, s *Store, n int) *Txn {
	t.Helper()
	tx := &Txn{}
	for i, name := range []string{"shop", "blog"} {
		f := mustParse(t, name, "backend "+name+"_v2\n", name+".example.com "+name+"_v2\n")
		tx.Put(s.path(name, true), f.Conf, 0o640)
		tx.Put(s.path(name, false), f.MapText, 0o640)
		tx.Events = append(tx.Events, Event{Time: time.Unix(1700000000+int64(i), 0).UTC(), Action: "apply", Name: name, Checksum: f.Checksum, Actor: "test"})
	}
	plan, _ := json.Marshal(tx)
	if err := os.MkdirAll(s.StateDir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := s.writeJournal(plan); err != nil {
		t.Fatal(err)
	}
	for i := range tx.Writes[:n] {
		if err := put(&tx.Writes[i]); err != nil {
			t.Fatal(err)
		}
	}
	return tx
}

// TestJournalFinishesAnInterruptedPut: a journal that carries its files
// is finished by the next Lock however many of them were written: each
// file whole with its mode, each event once.
func TestJournalFinishesAnInterruptedPut(t *testing.T) {
	for _, n := range []int{0, 1, 3, 4} {
		t.Run(fmt.Sprintf("%d of 4 files written", n), func(t *testing.T) {
			s := newStore(t)
			if err := s.Write(mustParse(t, "shop", "backend shop_web\n", "shop.example.com shop_web\n"), nil); err != nil {
				t.Fatal(err)
			}
			putGroup(t, s, n)
			unlock, err := s.Lock(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer unlock()
			for _, name := range []string{"shop", "blog"} {
				st, err := s.Read(name)
				if err != nil {
					t.Fatal(err)
				}
				if string(st.Conf) != "backend "+name+"_v2\n" || string(st.Map) != name+".example.com "+name+"_v2\n" {
					t.Errorf("after recovery, %s: conf %q map %q, want the new version", name, st.Conf, st.Map)
				}
				if fi, err := os.Stat(st.ConfPath); err != nil || fi.Mode().Perm() != 0o640 {
					t.Errorf("%s's config part after recovery: %v %v, want mode 0640", name, fi.Mode(), err)
				}
			}
			events, _ := s.History()
			if len(events) != 2 || events[0].Name != "shop" || events[1].Name != "blog" {
				t.Errorf("history = %+v, want shop's and blog's applies once each", events)
			}
			assertJournalEmpty(t, s)
			assertNoStaged(t, s.Dir)
		})
	}
}

// TestJournalTornIsNotCarriedOut: a journal a crash tore while it was
// written (its checksum line wrong or missing) is a change never carried
// out nor reported durable: the next Lock leaves the store as it was and
// empties the journal.
func TestJournalTornIsNotCarriedOut(t *testing.T) {
	for what, tear := range map[string]func([]byte) []byte{
		"cut in the plan":         func(j []byte) []byte { return j[:len(j)/2] },
		"cut in the checksum":     func(j []byte) []byte { return j[:len(j)-10] },
		"a byte of the plan lost": func(j []byte) []byte { return append(j[:20:20], j[21:]...) },
	} {
		t.Run(what, func(t *testing.T) {
			s := newStore(t)
			if err := s.Write(mustParse(t, "shop", "backend shop_web\n", "shop.example.com shop_web\n"), nil); err != nil {
				t.Fatal(err)
			}
			putGroup(t, s, 0)
			journal, err := os.ReadFile(s.journalPath())
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(s.journalPath(), tear(journal), 0o640); err != nil {
				t.Fatal(err)
			}
			unlock, err := s.Lock(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer unlock()
			if st, err := s.Read("shop"); err != nil || string(st.Conf) != "backend shop_web\n" {
				t.Errorf("shop after a torn journal: %v %+v, want the old version", err, st)
			}
			if _, err := s.Read("blog"); err == nil {
				t.Error("blog is stored from a torn journal")
			}
			if events, _ := s.History(); len(events) != 0 {
				t.Errorf("history after a torn journal: %+v, want none", events)
			}
			assertJournalEmpty(t, s)
		})
	}
}

// TestStagedKeptWhenApplyFails: a rename that fails after the journal
// leaves the staged files the journal names: once what was in the way is
// gone, the next Lock puts both files in place.
func TestStagedKeptWhenApplyFails(t *testing.T) {
	s := newStore(t)
	live := filepath.Join(filepath.Dir(s.Dir), "live")
	cfg, hostMap := filepath.Join(live, "haproxy.cfg"), filepath.Join(live, "hosts.map")
	if err := os.MkdirAll(filepath.Join(cfg, "in-the-way"), 0o755); err != nil {
		t.Fatal(err)
	}
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tx := &Txn{}
	if err := tx.Stage(hostMap, []byte("new map\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := tx.Stage(cfg, []byte("new config\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(tx); err == nil {
		t.Fatal("Commit renamed a file over a directory that is not empty")
	}
	unlock()
	if err := os.RemoveAll(cfg); err != nil {
		t.Fatal(err)
	}
	unlock, err = s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	for path, want := range map[string]string{hostMap: "new map\n", cfg: "new config\n"} {
		if got, err := os.ReadFile(path); err != nil || string(got) != want {
			t.Errorf("%s after recovery: %q %v, want %q", path, got, err, want)
		}
	}
	assertJournalEmpty(t, s)
}
