package watcher

import (
	"errors"
	"sync"

	"github.com/fsnotify/fsnotify"

	"haproxy-config/fragments"
)

// maxQueuedEvents bounds the events waiting for a busy loop; beyond it
// they are dropped and the loop reads everything again, as after an
// overflow of the kernel's queue.
const maxQueuedEvents = 1 << 16

// errEventsDropped is what the loop hears when the queue was full.
var errEventsDropped = errors.New("more file events than the daemon could queue")

// fileEvents takes the file watcher's events as they come and queues them
// for the loop. The fragments' file cache hears of each change at once
// (see fragments.FileCache.Watch): the API's writer reads the store while
// the loop may be busy with a reload for seconds, and must not miss a
// file copied in meanwhile.
type fileEvents struct {
	ready chan struct{} // gets a value when the queue became non-empty

	mu     sync.Mutex
	events []fsnotify.Event
	errs   []error
	closed bool
}

// forwardEvents starts taking fsw's events, telling files of each, until
// fsw is closed. store is the fragment directory: a change of its own
// attributes (a chmod, a touch) changes none of its files.
func forwardEvents(fsw *fsnotify.Watcher, files *fragments.FileCache, store string) *fileEvents {
	q := &fileEvents{ready: make(chan struct{}, 1)}
	go func() {
		for {
			select {
			case ev, ok := <-fsw.Events:
				if !ok {
					q.add(nil, nil, true)
					return
				}
				if ev.Op != fsnotify.Chmod || ev.Name != store {
					files.Changed(ev.Name)
				}
				q.add(&ev, nil, false)
			case err, ok := <-fsw.Errors:
				if !ok {
					q.add(nil, nil, true)
					return
				}
				// events may be lost: look at every file again
				files.ChangedAll()
				q.add(nil, err, false)
			}
		}
	}()
	return q
}

func (q *fileEvents) add(ev *fsnotify.Event, err error, closed bool) {
	q.mu.Lock()
	switch {
	case ev != nil && len(q.events) < maxQueuedEvents:
		q.events = append(q.events, *ev)
	case ev != nil:
		if len(q.errs) == 0 || q.errs[len(q.errs)-1] != errEventsDropped {
			q.errs = append(q.errs, errEventsDropped)
		}
	case err != nil:
		q.errs = append(q.errs, err)
	}
	q.closed = q.closed || closed
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take returns what was queued since the last take, and whether the
// watcher was closed.
func (q *fileEvents) take() (events []fsnotify.Event, errs []error, closed bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	events, errs = q.events, q.errs
	q.events, q.errs = nil, nil
	return events, errs, q.closed
}
