package watcher

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"

	"haproxy-config/assemble"
	"haproxy-config/fragments"
	"haproxy-config/reconcile"
)

// watchedStore is a store at dir whose watched file cache hears of the
// events of a watcher on dir and its parent, as the daemon sets them up,
// while no loop takes the queued events (a loop busy with a reload).
func watchedStore(t *testing.T, dir string) *fragments.Store {
	t.Helper()
	s := &fragments.Store{Dir: dir, StateDir: filepath.Join(t.TempDir(), "state"), Files: fragments.NewFileCache()}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsw.Close() })
	s.Files.Watch(dir)
	forwardEvents(fsw, s.Files, dir)
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := fsw.Add(d); err != nil {
			t.Fatal(err)
		}
	}
	s.Files.Rewatched(true)
	return s
}

// eventually polls ReadAll for 3 s until ok accepts what it returns.
func eventually(t *testing.T, s *fragments.Store, what string, ok func(confs map[string]string, ps assemble.Problems) bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		all, ps, err := s.ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		confs := map[string]string{}
		for _, st := range all {
			confs[st.Name] = string(st.Conf)
		}
		if ok(confs, ps) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen within 3 s: read %v, problems %v", what, confs, ps)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o640); err != nil {
		t.Fatal(err)
	}
}

// TestWatchedStoreParentSwapped: the store's parent is a symlink that a
// deploy points at a new release (ln -s + rename, as Capistrano-style
// deploys do): no watched directory gets an event for it, and the next
// reads must still see the new release's fragments, not the cached ones.
func TestWatchedStoreParentSwapped(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "rel1", "fragments", "a.cfg"), "backend a1\n")
	write(t, filepath.Join(root, "rel2", "fragments", "a.cfg"), "backend a2\n")
	current := filepath.Join(root, "current")
	if err := os.Symlink("rel1", current); err != nil {
		t.Fatal(err)
	}
	s := watchedStore(t, filepath.Join(current, "fragments"))
	eventually(t, s, "release 1", func(c map[string]string, _ assemble.Problems) bool { return c["a"] == "backend a1\n" })
	tmp := filepath.Join(root, ".current.new")
	if err := os.Symlink("rel2", tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, current); err != nil {
		t.Fatal(err)
	}
	eventually(t, s, "release 2 switched to", func(c map[string]string, _ assemble.Problems) bool { return c["a"] == "backend a2\n" })
}

// TestWatchedStoreReplacedBeforeRewatch: the store directory replaced by
// a rename is reported (the parent's watch sees it) and read whole; a
// file copied into the new directory before the busy loop re-adds the
// watch gets no event (the watch is gone with the old directory), and a
// read by the API's writer meanwhile must still see it.
func TestWatchedStoreReplacedBeforeRewatch(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "fragments")
	write(t, filepath.Join(dir, "a.cfg"), "backend a1\n")
	s := watchedStore(t, dir)
	eventually(t, s, "the first store", func(c map[string]string, _ assemble.Problems) bool { return c["a"] == "backend a1\n" })
	next := filepath.Join(root, "fragments.new")
	write(t, filepath.Join(next, "a.cfg"), "backend a2\n")
	if err := os.Rename(dir, filepath.Join(root, "fragments.old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(next, dir); err != nil {
		t.Fatal(err)
	}
	eventually(t, s, "the new store", func(c map[string]string, _ assemble.Problems) bool { return c["a"] == "backend a2\n" })
	write(t, filepath.Join(dir, "b.cfg"), "backend b\n")
	eventually(t, s, "b.cfg copied into the new store", func(c map[string]string, _ assemble.Problems) bool { return c["b"] == "backend b\n" })
}

// TestWatchFailingLeavesTheStoreUntrusted: when the store's own watch
// cannot be added (here: the directory is missing when watch runs), the
// cache trusts no listing, and files written later without any report
// are read all the same.
func TestWatchFailingLeavesTheStoreUntrusted(t *testing.T) {
	d := burstDaemon(t)
	withWatcher(t, d)
	d.parses = reconcile.NewParseCache()
	d.parses.Files.Watch(d.s.FragmentsDir)
	if err := os.RemoveAll(d.s.FragmentsDir); err != nil {
		t.Fatal(err)
	}
	if err := d.watch(); err != nil {
		t.Fatalf("watch: %v", err)
	}
	s := &fragments.Store{Dir: d.s.FragmentsDir, StateDir: d.s.StateDir, Files: d.parses.Files}
	write(t, filepath.Join(d.s.FragmentsDir, "a.cfg"), "backend a1\n")
	eventually(t, s, "a.cfg", func(c map[string]string, _ assemble.Problems) bool { return c["a"] == "backend a1\n" })
	write(t, filepath.Join(d.s.FragmentsDir, "a.cfg"), "backend a2\n")
	write(t, filepath.Join(d.s.FragmentsDir, "b.cfg"), "backend b\n")
	all, _, err := s.ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || string(all[0].Conf) != "backend a2\n" {
		t.Fatalf("unreported writes to an unwatched store were not read: %v", all)
	}
}
