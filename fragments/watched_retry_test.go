package fragments

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// readOutcome is ReadAll as text: each fragment's paths and parts, then
// each problem.
func readOutcome(t *testing.T, s *Store) string {
	t.Helper()
	all, ps, err := s.ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, f := range all {
		fmt.Fprintf(&b, "%s %s %q %s %q\n", f.Name, f.ConfPath, f.Conf, f.MapPath, f.Map)
	}
	for _, p := range ps {
		fmt.Fprintf(&b, "problem %s: %s\n", p.File, p.Msg)
	}
	return b.String()
}

// matchesWhole fails the test unless the watched store reads what the
// whole one does, when saying when; it returns that read.
func matchesWhole(t *testing.T, watched, whole *Store, when string) string {
	t.Helper()
	got, want := readOutcome(t, watched), readOutcome(t, whole)
	if got != want {
		t.Fatalf("%s: watched\n%s\nwhole\n%s", when, got, want)
	}
	return got
}

// watchedAndWhole returns a watched store, read once, and an unwatched
// store of the same directory.
func watchedAndWhole(t *testing.T) (watched, whole *Store) {
	t.Helper()
	s := newStore(t)
	if err := os.MkdirAll(s.Dir, 0o750); err != nil {
		t.Fatal(err)
	}
	s.Files = NewFileCache()
	s.Files.Watch(s.Dir)
	return s, &Store{Dir: s.Dir, StateDir: s.StateDir}
}

// TestWatchedReadAllRetriesHardLinkedPart: a part refused for a second
// link is looked at again by the next read, as a whole read does: the
// other link removed outside the store is no event in it (inotify sends
// the link count's IN_ATTRIB to the file's own watches only), so the
// refusal must not be kept until the part is reported.
func TestWatchedReadAllRetriesHardLinkedPart(t *testing.T) {
	s, whole := watchedAndWhole(t)
	writeRaw(t, s.Dir, "a.cfg", "backend a\n")
	other := filepath.Join(filepath.Dir(s.Dir), "a-link")
	if err := os.Link(filepath.Join(s.Dir, "a.cfg"), other); err != nil {
		t.Fatal(err)
	}
	if got := matchesWhole(t, s, whole, "with the second link"); !strings.Contains(got, "hard links") {
		t.Fatalf("with the second link: read\n%s", got)
	}
	if err := os.Remove(other); err != nil {
		t.Fatal(err)
	}
	matchesWhole(t, s, whole, "after the second link was removed")
}

// TestWatchedReadAllRetriesTransientError: a part that could not be
// opened for a passing reason (out of file descriptors) is read again by
// the next read, as a whole read does, not kept out until it is reported.
func TestWatchedReadAllRetriesTransientError(t *testing.T) {
	s, whole := watchedAndWhole(t)
	writeRaw(t, s.Dir, "a.cfg", "backend a\n")
	readOutcome(t, s)
	s.Files.Changed(filepath.Join(s.Dir, "a.cfg"))
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	next := f.Fd()
	f.Close()
	// no descriptor can be opened while the soft limit is the lowest free one
	low := lim
	low.Cur = uint64(next)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Skip("cannot lower RLIMIT_NOFILE:", err)
	}
	_, ps, rerr := s.ReadAll()
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if rerr != nil || len(ps) == 0 || !strings.Contains(ps[0].Msg, "too many open files") {
		t.Fatalf("the read out of descriptors: %v %v", rerr, ps)
	}
	matchesWhole(t, s, whole, "once descriptors are free again")
}

// TestWatchedReadAllHonoursMaxBytes: stores sharing a watched cache may
// differ in MaxBytes (the daemon's engine after SIGHUP has the new
// MAX_FRAGMENT_BYTES); each read applies its own store's limit to every
// part, as a whole read does, whatever the limit of the read before.
func TestWatchedReadAllHonoursMaxBytes(t *testing.T) {
	s, whole := watchedAndWhole(t)
	writeRaw(t, s.Dir, "a.cfg", "backend aaaaaaaaaaaaaaaa\n")
	writeRaw(t, s.Dir, "b.cfg", "backend b\n")
	s.MaxBytes, whole.MaxBytes = 10, 10
	if got := matchesWhole(t, s, whole, "at 10 bytes"); !strings.Contains(got, "over the limit") {
		t.Fatalf("at 10 bytes: read\n%s", got)
	}
	raised := &Store{Dir: s.Dir, StateDir: s.StateDir, MaxBytes: 1000, Files: s.Files}
	whole.MaxBytes = 1000
	matchesWhole(t, raised, whole, "at 1000 bytes")
	lowered := &Store{Dir: s.Dir, StateDir: s.StateDir, MaxBytes: 5, Files: s.Files}
	whole.MaxBytes = 5
	matchesWhole(t, lowered, whole, "at 5 bytes")
}

// TestWatchedReadAllOtherDirSharingCache: a store of another directory
// sharing the watched cache reads whole and must not leave its result for
// the watched store's next read to continue.
func TestWatchedReadAllOtherDirSharingCache(t *testing.T) {
	s, whole := watchedAndWhole(t)
	writeRaw(t, s.Dir, "a.cfg", "backend a\n")
	readOutcome(t, s)
	other := &Store{Dir: t.TempDir(), StateDir: s.StateDir, Files: s.Files}
	writeRaw(t, other.Dir, "z.cfg", "backend z\n")
	readOutcome(t, other)
	writeRaw(t, s.Dir, "b.cfg", "backend b\n")
	s.Files.Changed(filepath.Join(s.Dir, "b.cfg"))
	matchesWhole(t, s, whole, "after a read of another directory")
}

// TestWatchedReadAllRetriesHardLinkedSibling: two parts in the store
// linked to each other are both refused; removing one is an event for it
// alone (the other's link count changes without one), and the next read
// finds the other readable, as a whole read does.
func TestWatchedReadAllRetriesHardLinkedSibling(t *testing.T) {
	s, whole := watchedAndWhole(t)
	writeRaw(t, s.Dir, "a.cfg", "backend a\n")
	if err := os.Link(filepath.Join(s.Dir, "a.cfg"), filepath.Join(s.Dir, "b.cfg")); err != nil {
		t.Fatal(err)
	}
	if got := matchesWhole(t, s, whole, "linked"); strings.Count(got, "hard links") != 2 {
		t.Fatalf("linked: read\n%s", got)
	}
	if err := os.Remove(filepath.Join(s.Dir, "b.cfg")); err != nil {
		t.Fatal(err)
	}
	s.Files.Changed(filepath.Join(s.Dir, "b.cfg"))
	matchesWhole(t, s, whole, "after b.cfg was removed")
}
