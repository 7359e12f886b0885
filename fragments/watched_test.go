package fragments

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// readConfs is ReadAll as name -> config part.
func readConfs(t *testing.T, s *Store) map[string]string {
	t.Helper()
	all, ps, err := s.ReadAll()
	if err != nil || len(ps) > 0 {
		t.Fatal(err, ps)
	}
	confs := map[string]string{}
	for _, st := range all {
		confs[st.Name] = string(st.Conf)
	}
	return confs
}

// TestWatchedFileCache: a watched cache looks again only at what was
// reported changed, trusts the rest without a look (a file written behind
// its back keeps its old bytes until reported), and reads everything again
// after ChangedAll or a change of the directory itself.
func TestWatchedFileCache(t *testing.T) {
	s := newStore(t)
	s.Files = NewFileCache()
	s.Files.Watch(s.Dir)
	for _, name := range []string{"a", "b"} {
		writeRaw(t, s.Dir, name+".cfg", "backend "+name+"\n")
	}
	if got := readConfs(t, s); got["a"] != "backend a\n" || got["b"] != "backend b\n" {
		t.Fatalf("first read: %v", got)
	}
	// unreported: the cache is trusted, nothing is looked at
	writeRaw(t, s.Dir, "a.cfg", "backend A\n")
	writeRaw(t, s.Dir, "new.cfg", "backend new\n")
	if err := os.Remove(filepath.Join(s.Dir, "b.cfg")); err != nil {
		t.Fatal(err)
	}
	if got := readConfs(t, s); got["a"] != "backend a\n" || got["b"] != "backend b\n" || got["new"] != "" {
		t.Fatalf("unreported changes were looked at: %v", got)
	}
	// reported one by one
	s.Files.Changed(filepath.Join(s.Dir, "a.cfg"))
	if got := readConfs(t, s); got["a"] != "backend A\n" || got["b"] != "backend b\n" || got["new"] != "" {
		t.Fatalf("after a.cfg was reported: %v", got)
	}
	s.Files.Changed(filepath.Join(s.Dir, "b.cfg"))
	s.Files.Changed(filepath.Join(s.Dir, "new.cfg"))
	if got := readConfs(t, s); !maps.Equal(got, map[string]string{"a": "backend A\n", "new": "backend new\n"}) {
		t.Fatalf("after b.cfg and new.cfg were reported: %v", got)
	}
	// a path elsewhere, or an ignored file, changes nothing
	s.Files.Changed(filepath.Join(t.TempDir(), "a.cfg"))
	s.Files.Changed(filepath.Join(s.Dir, ".a.cfg.swp"))
	writeRaw(t, s.Dir, "a.cfg", "backend A2\n")
	if got := readConfs(t, s); got["a"] != "backend A\n" {
		t.Fatalf("a report of another path refreshed a.cfg: %v", got)
	}
	s.Files.ChangedAll()
	if got := readConfs(t, s); got["a"] != "backend A2\n" {
		t.Fatalf("after ChangedAll: %v", got)
	}
	// the directory replaced: everything is read again, each time, until
	// the watch is said to be on the new one
	writeRaw(t, s.Dir, "a.cfg", "backend A3\n")
	s.Files.Changed(s.Dir)
	if got := readConfs(t, s); got["a"] != "backend A3\n" {
		t.Fatalf("after the directory was reported: %v", got)
	}
	writeRaw(t, s.Dir, "a.cfg", "backend A4\n")
	if got := readConfs(t, s); got["a"] != "backend A4\n" {
		t.Fatalf("a listing was trusted before the directory was watched again: %v", got)
	}
	s.Files.Rewatched(true)
	readConfs(t, s)
	writeRaw(t, s.Dir, "a.cfg", "backend A5\n")
	if got := readConfs(t, s); got["a"] != "backend A4\n" {
		t.Fatalf("after Rewatched the listing is not trusted again: %v", got)
	}
	// a watch that could not be added: every read is whole again
	s.Files.Rewatched(false)
	if got := readConfs(t, s); got["a"] != "backend A5\n" {
		t.Fatalf("after Rewatched(false): %v", got)
	}
	writeRaw(t, s.Dir, "a.cfg", "backend A6\n")
	if got := readConfs(t, s); got["a"] != "backend A6\n" {
		t.Fatalf("a listing was trusted while the directory was not watched: %v", got)
	}
}

// TestWatchedFileCacheOwnWrites: the store's own writes and removes report
// their paths themselves, before the file watcher could: the next read
// sees them without any other report.
func TestWatchedFileCacheOwnWrites(t *testing.T) {
	s := newStore(t)
	s.Files = NewFileCache()
	s.Files.Watch(s.Dir)
	if err := s.Write(mustParse(t, "a", "backend a\n", "a.example.com a\n"), nil); err != nil {
		t.Fatal(err)
	}
	readConfs(t, s)
	if err := s.Write(mustParse(t, "a", "backend A\n", "a.example.com A\n"), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(mustParse(t, "b", "backend b\n", "b.example.com b\n"), nil); err != nil {
		t.Fatal(err)
	}
	if got := readConfs(t, s); !maps.Equal(got, map[string]string{"a": "backend A\n", "b": "backend b\n"}) {
		t.Fatalf("after Write: %v", got)
	}
	if err := s.Delete("a", nil); err != nil {
		t.Fatal(err)
	}
	if got := readConfs(t, s); !maps.Equal(got, map[string]string{"b": "backend b\n"}) {
		t.Fatalf("after Delete: %v", got)
	}
}

// TestWatchedFileCacheNotBeforeFirstRead: what a cache read before Watch
// is not trusted: the first read after it lists the directory whole.
func TestWatchedFileCacheNotBeforeFirstRead(t *testing.T) {
	s := newStore(t)
	s.Files = NewFileCache()
	writeRaw(t, s.Dir, "a.cfg", "backend a\n")
	readConfs(t, s) // unwatched: cached, not listed
	s.Files.Watch(s.Dir)
	writeRaw(t, s.Dir, "b.cfg", "backend b\n")
	if got := readConfs(t, s); !maps.Equal(got, map[string]string{"a": "backend a\n", "b": "backend b\n"}) {
		t.Fatalf("first read after Watch: %v", got)
	}
	s.Files.listing.mu.Lock()
	files := slices.Clone(s.Files.listing.files)
	s.Files.listing.mu.Unlock()
	if !slices.Equal(files, []string{"a.cfg", "b.cfg"}) {
		t.Fatalf("listing after the first read: %v", files)
	}
}

// TestWatchedFileCacheMissingDirectory: a store directory that is missing
// is never remembered as empty: once it is back, it is read.
func TestWatchedFileCacheMissingDirectory(t *testing.T) {
	s := newStore(t)
	s.Files = NewFileCache()
	s.Files.Watch(s.Dir)
	if got := readConfs(t, s); len(got) != 0 {
		t.Fatalf("missing directory: %v", got)
	}
	writeRaw(t, s.Dir, "a.cfg", "backend a\n")
	if got := readConfs(t, s); got["a"] != "backend a\n" {
		t.Fatalf("the directory created after a read of it missing: %v", got)
	}
}

// TestWatchedStoreSweepsLeftoversOnWholeReads: a staged file a killed
// writer left behind is removed by the next Lock of an unwatched store;
// a watched one leaves it while its listing is trusted and removes it at
// the Lock after a rescan.
func TestWatchedStoreSweepsLeftoversOnWholeReads(t *testing.T) {
	s := newStore(t)
	s.Files = NewFileCache()
	s.Files.Watch(s.Dir)
	writeRaw(t, s.Dir, "a.cfg", "backend a\n")
	leftover := filepath.Join(s.Dir, ".a.cfg"+stagedMark+"123")
	lockAndRead := func() {
		t.Helper()
		unlock, err := s.Lock(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		readConfs(t, s)
		unlock()
	}
	lockAndRead()
	writeRaw(t, s.Dir, filepath.Base(leftover), "half")
	lockAndRead()
	if _, err := os.Lstat(leftover); err != nil {
		t.Fatalf("swept while the listing was trusted: %v", err)
	}
	s.Files.ChangedAll()
	lockAndRead()
	if _, err := os.Lstat(leftover); !os.IsNotExist(err) {
		t.Fatalf("the leftover after a rescan: %v, want it removed", err)
	}
	unwatched := &Store{Dir: s.Dir, StateDir: s.StateDir, Files: NewFileCache()}
	writeRaw(t, s.Dir, filepath.Base(leftover), "half")
	unlock, err := unwatched.Lock(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	if _, err := os.Lstat(leftover); !os.IsNotExist(err) {
		t.Fatalf("the leftover after an unwatched Lock: %v, want it removed", err)
	}
}

// TestWatchedReadAllMatchesWholeRead: after every change of a random run
// (parts written, removed, replaced by a symlink or a directory, files
// with names no fragment may have), each reported as the file watcher
// would, a watched store's ReadAll, which rebuilds only the fragments
// reported, returns what an unwatched store reading everything returns.
func TestWatchedReadAllMatchesWholeRead(t *testing.T) {
	s, whole := watchedAndWhole(t)
	rng := rand.New(rand.NewPCG(1, 2))
	files := []string{"a.cfg", "a.map", "b.cfg", "b.map", "c.cfg", "c0.map", "c-d.cfg", "c-d.map", "Bad.cfg", "x.map.cfg", "e.map"}
	for step := range 300 {
		file := files[rng.IntN(len(files))]
		path := filepath.Join(s.Dir, file)
		if err := os.RemoveAll(path); err != nil {
			t.Fatal(err)
		}
		var what string
		switch rng.IntN(5) {
		case 0:
			what = "removed"
		case 1:
			what = "a symlink"
			if err := os.Symlink("/etc/hostname", path); err != nil {
				t.Fatal(err)
			}
		case 2:
			what = "a directory"
			if err := os.Mkdir(path, 0o750); err != nil {
				t.Fatal(err)
			}
		default:
			what = "written"
			body := fmt.Sprintf("backend v%d\n", step)
			if strings.HasSuffix(file, ".map") {
				body = fmt.Sprintf("d%d.example.com v%d\n", step, step)
			}
			if err := os.WriteFile(path, []byte(body), 0o640); err != nil {
				t.Fatal(err)
			}
		}
		s.Files.Changed(path)
		matchesWhole(t, s, whole, fmt.Sprintf("step %d, %s %s", step, file, what))
	}
}
