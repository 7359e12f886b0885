package fragments

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"

	"haproxy-config/assemble"
)

// listing is what a watched FileCache knows of the fragment directory: its
// entries as ReadAll last listed them, and the paths in it changed since.
// With it, a ReadAll of a store that changed in one fragment looks at that
// fragment's files alone, not at the thousands of others: the daemon's API
// answers in the time its own change takes.
type listing struct {
	// mu is held while a listing is brought up to date, so that two
	// readers do not undo each other's updates.
	mu      sync.Mutex
	watched bool
	dir     string          // the watched directory
	dirID   dirID           // what stat said of it when files was listed
	files   []string        // its entries, sorted; nil until a listing was read whole
	changed map[string]bool // paths in dir reported changed since files was listed or brought up to date
	epoch   int             // counts the times everything was reported changed
	result  *readResult     // the last ReadAll's, for the next to continue
	// suspended: the directory was replaced, or its path leads elsewhere
	// now; its watch may be on the old one, so nothing is trusted (every
	// read is whole, as without a watch) until Rewatched(true)
	suspended bool
}

// dirID identifies a directory: the one the store's path leads to.
type dirID struct{ dev, ino uint64 }

func statDir(dir string) (dirID, bool) {
	fi, err := os.Stat(dir)
	if err != nil {
		return dirID{}, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return dirID{}, false
	}
	return dirID{dev: uint64(st.Dev), ino: st.Ino}, true
}

// Watch makes the cache trust what it was told: from now on every change
// in the fragment directory dir, and of dir itself, is reported to
// Changed (or, when the reports may have missed some, to ChangedAll) as it
// happens, by the process's file watcher and by the store's own writes. A
// ReadAll then lists the directory and looks at the files again only where
// a change was reported; a file reported unchanged is taken from the cache
// without a system call. Nothing is trusted before the first whole read.
func (c *FileCache) Watch(dir string) {
	l := &c.listing
	l.mu.Lock()
	defer l.mu.Unlock()
	l.watched, l.dir, l.suspended = true, dir, false
	l.forget()
}

// Rewatched reports that the directory's watch was (re)added, or with
// added false that it could not be. What changed before went unreported:
// the next ReadAll lists and looks at everything. Once added, the
// directory now watched is the one the path leads to, and that listing is
// trusted again; until then every read is whole.
func (c *FileCache) Rewatched(added bool) {
	l := &c.listing
	l.mu.Lock()
	defer l.mu.Unlock()
	l.suspended = !added
	l.forget()
}

// Changed reports that path, a file in the fragment directory or the
// directory itself, changed: was created, written, renamed or removed, or
// had its mode or links changed. Other paths are ignored.
func (c *FileCache) Changed(path string) {
	l := &c.listing
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case !l.watched:
	case path == l.dir:
		// created, removed, moved or replaced: trusted again once the
		// watch is on the directory that is there now
		l.forget()
		l.suspended = true
	case l.changed != nil && filepath.Dir(path) == l.dir && !Ignored(filepath.Base(path)):
		// (with no listing and no read under way, the next read is
		// whole anyway)
		l.changed[path] = true
	}
}

// ChangedAll reports that changes may have gone unreported (the watcher's
// queue overflowed, a directory was watched anew, a periodic rescan): the
// next ReadAll lists and looks at everything.
func (c *FileCache) ChangedAll() {
	l := &c.listing
	l.mu.Lock()
	defer l.mu.Unlock()
	l.forget()
}

// listed reports whether the cache holds a trusted listing of dir.
func (c *FileCache) listed(dir string) bool {
	l := &c.listing
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.trusts(dir)
}

// trusts reports whether l holds a listing of dir to trust. The caller
// holds mu.
func (l *listing) trusts(dir string) bool { return l.watched && l.dir == dir && l.files != nil }

// forget drops the listing. The caller holds mu.
func (l *listing) forget() {
	l.files, l.changed, l.result = nil, nil, nil
	l.epoch++
}

// dirView is the fragment directory as a ReadAll sees it.
type dirView struct {
	files []string // its entries, sorted
	// changed are the paths reported changed since the last read, which
	// this one continues; nil for a whole read
	changed map[string]bool
	epoch   int
}

// unchanged reports whether path is known unchanged since the last read.
func (v *dirView) unchanged(path string) bool { return v.changed != nil && !v.changed[path] }

// list returns the fragment directory's entries and what changed since
// the last read, when a watched cache knows.
func (s *Store) list() (*dirView, error) {
	if s.Files == nil {
		files, err := readDirNames(s.Dir)
		return &dirView{files: files}, err
	}
	l := &s.Files.listing
	l.mu.Lock()
	if l.trusts(s.Dir) {
		if id, ok := statDir(s.Dir); !ok || id != l.dirID {
			// the path leads to another directory (a parent renamed or
			// a symlink on the way retargeted), which no watch reports
			l.forget()
			l.suspended = true
		}
	}
	if l.trusts(s.Dir) {
		defer l.mu.Unlock()
		changed := l.changed
		l.changed = map[string]bool{}
		if len(changed) > 0 {
			files := slices.Clone(l.files)
			for path := range changed {
				name := filepath.Base(path)
				i, listed := slices.BinarySearch(files, name)
				_, err := os.Lstat(path)
				switch {
				case errors.Is(err, fs.ErrNotExist):
					if listed {
						files = slices.Delete(files, i, i+1)
					}
				case !listed:
					// present, or not lstat-able: read, it says which
					files = slices.Insert(files, i, name)
				}
			}
			l.files = files
		}
		return &dirView{files: l.files, changed: changed, epoch: l.epoch}, nil
	}
	epoch := l.epoch
	keep := l.watched && l.dir == s.Dir && !l.suspended
	if keep {
		// changes reported from now on are looked at by the next read,
		// whether or not this one saw them
		l.files, l.changed = nil, map[string]bool{}
	}
	l.mu.Unlock()
	id, idOK := statDir(s.Dir)
	files, err := readDirNames(s.Dir)
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	if keep && idOK && l.epoch == epoch && !l.suspended {
		l.files, l.dirID = files, id
	}
	l.mu.Unlock()
	return &dirView{files: files, epoch: epoch}, nil
}

// readResult is what a ReadAll of a watched store found, kept so that the
// next one rebuilds only the fragments whose files were reported changed.
type readResult struct {
	epoch    int                          // the listing's it was read from
	dir      string                       // the directory it was read from
	maxBytes int64                        // the size limit it was read under
	frags    map[string]*nameResult       // every valid fragment name listed
	troubled map[string]bool              // those with problems
	order    []*Stored                    // the readable fragments, by name
	strays   map[string]*assemble.Problem // file -> why its name is refused
}

// nameResult is one fragment name's outcome.
type nameResult struct {
	st       *Stored           // nil when a part is unreadable, or none was found
	problems assemble.Problems // its parts' read problems
}

// lastResult returns the last read's result when the read of view v, of
// s, continues it: the same listing, the same directory, the same limit.
func (c *FileCache) lastResult(s *Store, v *dirView) *readResult {
	l := &c.listing
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.result
	if v.changed == nil || r == nil || r.epoch != v.epoch || r.dir != s.Dir || r.maxBytes != s.MaxBytes {
		return nil
	}
	return r
}

// keepResult keeps res for the next read, unless the listing it came from
// was dropped meanwhile or is of another directory.
func (c *FileCache) keepResult(res *readResult) {
	l := &c.listing
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.watched && l.files != nil && l.epoch == res.epoch && l.dir == res.dir {
		l.result = res
	}
}

// readDirNames lists dir's entries, sorted; an empty directory gives an
// empty, not a nil, slice.
func readDirNames(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names, nil
}

// fill gives the parts known unchanged their cached bytes, under one lock,
// and returns the others, which must be read.
func (c *FileCache) fill(parts []*part, maxBytes int64, unchanged func(path string) bool) (toRead []*part) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range parts {
		cp, ok := c.m[p.path]
		if !ok || !unchanged(p.path) || (maxBytes > 0 && cp.id.size > maxBytes) {
			toRead = append(toRead, p)
			continue
		}
		p.data, p.modTime, p.found = cp.data, cp.modTime, true
	}
	return toRead
}
