package watcher

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"

	"haproxy-config/fragments"
)

// TestForwardEventsReportsToTheCache: a file copied into the store is
// reported to the watched file cache by the forwarder itself, while no
// loop takes the queued events: a busy loop does not leave the API's
// writer reading a stale store.
func TestForwardEventsReportsToTheCache(t *testing.T) {
	root := t.TempDir()
	s := &fragments.Store{Dir: filepath.Join(root, "fragments"), StateDir: filepath.Join(root, "state"), Files: fragments.NewFileCache()}
	if err := os.MkdirAll(s.Dir, 0o750); err != nil {
		t.Fatal(err)
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsw.Close() })
	s.Files.Watch(s.Dir)
	q := forwardEvents(fsw, s.Files, s.Dir)
	if err := fsw.Add(s.Dir); err != nil {
		t.Fatal(err)
	}
	if all, _, err := s.ReadAll(); err != nil || len(all) != 0 {
		t.Fatalf("empty store: %v %v", all, err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "shop.cfg"), []byte("backend shop\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		all, _, err := s.ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if len(all) == 1 && string(all[0].Conf) == "backend shop\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("shop.cfg not seen 5 s after it was written: %v", all)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// and the loop gets the events, queued
	evs, errs, closed := q.take()
	if len(evs) == 0 || len(errs) > 0 || closed {
		t.Fatalf("queued: %v events, errors %v, closed %v", len(evs), errs, closed)
	}
	if err := fsw.Close(); err != nil {
		t.Fatal(err)
	}
	timeout := time.After(5 * time.Second)
	for {
		select {
		case <-q.ready:
		case <-timeout:
			t.Fatal("closing the watcher was not signalled within 5 s")
		}
		if _, _, closed := q.take(); closed {
			return
		}
	}
}

// TestFileEventsQueueBounded: past maxQueuedEvents the events are dropped
// for one error, which makes the loop rescan.
func TestFileEventsQueueBounded(t *testing.T) {
	q := &fileEvents{ready: make(chan struct{}, 1)}
	for i := range maxQueuedEvents + 10 {
		q.add(&fsnotify.Event{Name: filepath.Join("/x", string(rune('a'+i%26)))}, nil, false)
	}
	evs, errs, _ := q.take()
	if len(evs) != maxQueuedEvents || len(errs) != 1 || errs[0] != errEventsDropped {
		t.Fatalf("queued %d events and errors %v, want %d and one drop", len(evs), errs, maxQueuedEvents)
	}
	if evs, errs, _ := q.take(); len(evs) != 0 || len(errs) != 0 {
		t.Fatalf("a second take: %d events, %v", len(evs), errs)
	}
}
