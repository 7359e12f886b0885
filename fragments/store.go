package fragments

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/renameio/v2"
	"golang.org/x/sync/errgroup"

	"haproxy-config/assemble"
	"haproxy-config/statedir"
)

// ErrNotFound is returned for a fragment that is not in the store.
var ErrNotFound = errors.New("no such fragment")

// Part suffixes of the two files a fragment is stored as.
const (
	ConfSuffix = ".cfg"
	MapSuffix  = ".map"
)

// Store is the fragment directory (NAME.cfg + NAME.map per tenant, which
// Ansible may also write directly) plus the state directory holding the
// lock and the history. Writers hold the lock. A file written alone is a
// temp file in the same directory, fsync, rename, then an fsync of the
// directory; the changes of several files go through the journal (see
// Commit).
type Store struct {
	Dir      string
	StateDir string
	// LockPoll is how often a waiting Lock tries again (5 ms when zero).
	// The daemon polls faster than the CLI so that a queue of writers
	// cannot keep it from publishing their changes.
	LockPoll time.Duration
	// MaxBytes caps each part's size, checked before the file is read;
	// 0 means no limit. It has the meaning of Policy.MaxBytes
	// (MAX_FRAGMENT_BYTES), which Parse applies to what was read.
	MaxBytes int64
	// Files, when set, keeps the parts read before, so that ReadAll reads
	// again only the files that changed (the daemon's stores share one).
	Files *FileCache
	// Later, when set, settles each Commit in the background, still under
	// the store lock (the daemon's stores share one; see Settler).
	Later *Settler
}

// FileCache holds fragment parts as they were read, with what lstat says
// identifies that version of the file: device, inode, size, modification
// and change times. A part whose change time is within racyWindow of when
// it was read is not trusted (a write in the same clock tick would leave
// its times as they were): it is read again until it has been quiet that
// long.
type FileCache struct {
	mu sync.Mutex
	m  map[string]cachedPart

	// listing is the directory as ReadAll last found it, kept once Watch
	// was called; see watched.go.
	listing listing
	// readMu makes ReadAlls sharing the cache take turns
	readMu sync.Mutex
}

// NewFileCache returns an empty cache.
func NewFileCache() *FileCache { return &FileCache{m: map[string]cachedPart{}} }

const racyWindow = time.Second

type cachedPart struct {
	id      FileID
	readAt  time.Time
	data    []byte
	modTime time.Time
}

// FileID is what lstat says identifies one version of a file: device,
// inode, size, modification and change times.
type FileID struct {
	dev, ino           uint64
	size, mtime, ctime int64
}

// IdentityOf returns fi's FileID; false when fi has no stat data.
func IdentityOf(fi fs.FileInfo) (FileID, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return FileID{}, false
	}
	return FileID{dev: uint64(st.Dev), ino: st.Ino, size: st.Size, mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}, true
}

// idOf is IdentityOf for a fragment part: a regular file with one link.
func idOf(fi fs.FileInfo) (FileID, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.Mode().IsRegular() || st.Nlink != 1 {
		return FileID{}, false
	}
	return IdentityOf(fi)
}

// lookup returns the cached bytes of path when the file there is still the
// version that was read.
func (c *FileCache) lookup(path string) (cachedPart, bool) {
	c.mu.Lock()
	cp, ok := c.m[path]
	c.mu.Unlock()
	if !ok || time.Unix(0, cp.id.ctime).Add(racyWindow).After(cp.readAt) {
		return cachedPart{}, false
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return cachedPart{}, false
	}
	id, ok := idOf(fi)
	return cp, ok && id == cp.id
}

func (c *FileCache) store(path string, cp cachedPart) {
	c.mu.Lock()
	c.m[path] = cp
	c.mu.Unlock()
}

func (c *FileCache) drop(path string) {
	c.mu.Lock()
	delete(c.m, path)
	c.mu.Unlock()
}

// keep forgets every part not in paths.
func (c *FileCache) keep(paths map[string]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for path := range c.m {
		if !paths[path] {
			delete(c.m, path)
		}
	}
}

// Lock takes the store's exclusive lock, waiting until ctx is done, and
// finishes any change a crash interrupted. The returned function releases
// it, once the last change has settled.
func (s *Store) Lock(ctx context.Context) (func(), error) {
	if err := MkdirAll(s.StateDir, 0o750); err != nil {
		return nil, fmt.Errorf("create state directory (HAPROXY_CONFIG_STATE): %w", err)
	}
	path := statedir.Layout(s.StateDir).StoreLock()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open store lock: %w", err)
	}
	// a change of this process settling still holds the lock
	if err := s.Later.wait(ctx); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			if err := s.recover(); err != nil {
				f.Close()
				return nil, err
			}
			return func() { s.Later.release(func() { f.Close() }) }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, ctx.Err())
		case <-time.After(cmp.Or(s.LockPoll, 5*time.Millisecond)):
		}
	}
}

// Stored is one fragment as found on disk.
type Stored struct {
	Name     string
	ConfPath string // "" when the fragment has no config part on disk
	MapPath  string // "" when the fragment has no map part on disk
	Conf     []byte
	Map      []byte
	ModTime  time.Time // newest of the two parts
}

// SameFiles reports whether a and b hold the same parts at the same paths
// with the same bytes; nil is a fragment with neither part on disk.
func SameFiles(a, b *Stored) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.ConfPath == b.ConfPath && a.MapPath == b.MapPath && bytes.Equal(a.Conf, b.Conf) && bytes.Equal(a.Map, b.Map)
}

// Parse checks a stored fragment; messages name the stored files.
func (st *Stored) Parse(pol Policy) (*assemble.Fragment, assemble.Problems) {
	return Parse(st.Name, st.ConfPath, st.Conf, st.MapPath, st.Map, pol)
}

// Ignored reports whether a file in the fragment directory is not a
// fragment part: hidden files (our own temp files among them), editor
// backups and swap files, package-manager leftovers, other suffixes.
func Ignored(file string) bool {
	if strings.HasPrefix(file, ".") || isBackupName(file) {
		return true
	}
	return !strings.HasSuffix(file, ConfSuffix) && !strings.HasSuffix(file, MapSuffix)
}

// ReadAll loads every fragment in the store, sorted by name. Files with a
// fragment suffix but an invalid name, and files that cannot or may not be
// read (see part.read), directories among them, come back as problems, so a
// bad file copied in by hand is reported rather than silently skipped, and
// keeps only its own fragment out. With a watched cache the Stored values
// and problems of fragments that did not change are the very ones the read
// before returned: callers only read them.
func (s *Store) ReadAll() ([]*Stored, assemble.Problems, error) {
	if s.Files != nil {
		// a read continues the one before: one at a time
		s.Files.readMu.Lock()
		defer s.Files.readMu.Unlock()
	}
	v, err := s.list()
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read fragment directory: %w", err)
	}
	var res *readResult
	if s.Files != nil {
		res = s.Files.lastResult(s, v)
	}
	// names are the fragments to read again; nil when all are
	var names map[string]bool
	if res == nil {
		res = &readResult{epoch: v.epoch, dir: s.Dir, maxBytes: s.MaxBytes, frags: map[string]*nameResult{}, troubled: map[string]bool{}, strays: map[string]*assemble.Problem{}}
	} else {
		names = map[string]bool{}
		// a part refused or not read is looked at again on every read, as
		// a whole read does: what made it fail (a second hard link, too
		// many open files) may be gone without an event for it
		for name := range res.troubled {
			names[name] = true
		}
		for path := range v.changed {
			file := filepath.Base(path)
			name, _ := PartOf(file)
			if err := ValidName(name); err != nil {
				if _, listed := slices.BinarySearch(v.files, file); listed {
					res.strays[file] = stray(name, path, err)
				} else {
					delete(res.strays, file)
				}
				continue
			}
			names[name] = true
		}
	}
	var parts []*part
	results := map[string]*nameResult{} // the names read, by name
	add := func(name, file string, conf bool) {
		r := results[name]
		if r == nil {
			r = &nameResult{st: &Stored{Name: name}}
			results[name] = r
		}
		parts = append(parts, &part{st: r.st, path: filepath.Join(s.Dir, file), conf: conf})
	}
	if names == nil {
		for _, file := range v.files {
			if Ignored(file) {
				continue
			}
			name, conf := PartOf(file)
			if err := ValidName(name); err != nil {
				res.strays[file] = stray(name, filepath.Join(s.Dir, file), err)
				continue
			}
			add(name, file, conf)
		}
	} else {
		for name := range names {
			for _, file := range []string{name + ConfSuffix, name + MapSuffix} {
				if _, listed := slices.BinarySearch(v.files, file); listed {
					add(name, file, file == name+ConfSuffix)
				}
			}
		}
	}
	// Reading thousands of small files is syscall-bound: spread it over a
	// few goroutines, then fill in the fragments in one place. What a
	// watched cache knows unchanged is taken from it here and now.
	toRead := parts
	if s.Files != nil {
		toRead = s.Files.fill(parts, s.MaxBytes, v.unchanged)
	}
	var g errgroup.Group
	g.SetLimit(readers)
	for _, p := range toRead {
		g.Go(func() error { p.err = p.read(s.MaxBytes, s.Files); return nil })
	}
	_ = g.Wait() // errors are per part, below
	if s.Files != nil {
		if names == nil {
			listed := make(map[string]bool, len(parts))
			for _, p := range parts {
				listed[p.path] = true
			}
			s.Files.keep(listed)
		} else {
			for path := range v.changed {
				if _, listed := slices.BinarySearch(v.files, filepath.Base(path)); !listed {
					s.Files.drop(path)
				}
			}
		}
	}
	for _, p := range parts {
		r := results[p.st.Name]
		if p.err != nil {
			// one unreadable or refused file (a symlink, a FIFO, a wrong
			// mode, too big) keeps its own fragment out, not every tenant
			r.problems = append(r.problems, &assemble.Problem{Location: assemble.Location{Fragment: p.st.Name, File: p.path}, Msg: p.err.Error()})
			continue
		}
		p.st.set(p)
	}
	for _, r := range results {
		if len(r.problems) > 0 || r.st.ConfPath == "" && r.st.MapPath == "" {
			r.st = nil
		}
	}
	if names == nil {
		res.frags = results
		res.order = make([]*Stored, 0, len(results))
		for name, r := range results {
			if r.st != nil {
				res.order = append(res.order, r.st)
			}
			if len(r.problems) > 0 {
				res.troubled[name] = true
			}
		}
		slices.SortFunc(res.order, func(a, b *Stored) int { return strings.Compare(a.Name, b.Name) })
	} else {
		for name := range names {
			r := results[name]
			if r == nil {
				delete(res.frags, name)
			} else {
				res.frags[name] = r
			}
			if r != nil && len(r.problems) > 0 {
				res.troubled[name] = true
			} else {
				delete(res.troubled, name)
			}
			i, found := slices.BinarySearchFunc(res.order, name, func(st *Stored, name string) int { return strings.Compare(st.Name, name) })
			switch {
			case r != nil && r.st != nil && found:
				res.order[i] = r.st
			case r != nil && r.st != nil:
				res.order = slices.Insert(res.order, i, r.st)
			case found:
				res.order = slices.Delete(res.order, i, i+1)
			}
		}
	}
	if s.Files != nil {
		s.Files.keepResult(res)
	}
	return slices.Clone(res.order), res.problems(), nil
}

// problems are the strays' and the unreadable parts' problems, in the
// order of their files.
func (res *readResult) problems() assemble.Problems {
	var strays, unreadable assemble.Problems
	for _, p := range res.strays {
		strays = append(strays, p)
	}
	for name := range res.troubled {
		unreadable = append(unreadable, res.frags[name].problems...)
	}
	byFile := func(a, b *assemble.Problem) int { return strings.Compare(a.File, b.File) }
	slices.SortFunc(strays, byFile)
	slices.SortFunc(unreadable, byFile)
	return append(strays, unreadable...)
}

// PartOf returns the fragment a file in the store would be part of, and
// whether it is the config part. Only the suffix the file has is
// stripped: "x.map.cfg" is not fragment x.
func PartOf(file string) (name string, conf bool) {
	if name, ok := strings.CutSuffix(file, ConfSuffix); ok {
		return name, true
	}
	return strings.TrimSuffix(file, MapSuffix), false
}

// stray is the problem of a file whose name no fragment may have.
func stray(name, path string, err error) *assemble.Problem {
	return &assemble.Problem{Location: assemble.Location{Fragment: name, File: path}, Msg: err.Error()}
}

// readers bounds the goroutines reading fragment files at once.
const readers = 8

// part is one file of a fragment being read.
type part struct {
	st      *Stored
	path    string
	conf    bool
	data    []byte
	modTime time.Time
	found   bool
	err     error
}

// openFlags open a fragment part without following a symlink, without
// waiting for a writer when it is a FIFO, and without leaking the
// descriptor into the processes the daemon starts.
const openFlags = os.O_RDONLY | syscall.O_NOFOLLOW | syscall.O_NONBLOCK | syscall.O_CLOEXEC

// read loads the file, checking what the open descriptor's fstat says
// before reading any of it: the daemon reads as root what tenants may have
// put in the store, so only a regular file with a single link and at most
// maxBytes bytes (when maxBytes > 0) is read. A file removed since the
// directory was listed is simply not found.
//
// With a cache, a file still the version read before (see FileCache) is
// not opened again; what that read checked holds for it still.
func (p *part) read(maxBytes int64, cache *FileCache) error {
	if cache != nil {
		if cp, ok := cache.lookup(p.path); ok && (maxBytes <= 0 || cp.id.size <= maxBytes) {
			p.data, p.modTime, p.found = cp.data, cp.modTime, true
			return nil
		}
	}
	if cache != nil {
		// whatever this read finds, the version cached before is gone: a
		// watched cache must not hand it out once this read refused the
		// file (a symlink, a second link, too big) or found it missing
		cache.drop(p.path)
	}
	readAt := time.Now()
	f, err := os.OpenFile(p.path, openFlags, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		// O_NOFOLLOW fails on a symlink (ELOOP) and a socket cannot be
		// opened (ENXIO): name what is there rather than the errno.
		if fi, lerr := os.Lstat(p.path); lerr == nil && !fi.Mode().IsRegular() {
			return notRegular(p.path, fi.Mode())
		}
		return fmt.Errorf("read fragment: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("read fragment: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return notRegular(p.path, fi.Mode())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
		return fmt.Errorf("read fragment %s: has %d hard links; copy the file instead of linking it", p.path, st.Nlink)
	}
	if maxBytes > 0 && fi.Size() > maxBytes {
		return fmt.Errorf("read fragment %s: file is %d bytes, over the limit of %d", p.path, fi.Size(), maxBytes)
	}
	if p.data, err = readAtMost(f, fi.Size(), maxBytes); err != nil {
		return fmt.Errorf("read fragment %s: %w", p.path, err)
	}
	p.modTime, p.found = fi.ModTime(), true
	if cache != nil {
		// every reader of a cached part gets these very bytes: without
		// room to spare, an append (Normalize's last newline) copies them
		p.data = slices.Clip(p.data)
		// the descriptor's fstat before and after the read agree unless a
		// write came in between, whatever the clock did meanwhile
		before, _ := idOf(fi)
		if after, err := f.Stat(); err == nil {
			if id, ok := idOf(after); ok && id == before && id.size == int64(len(p.data)) {
				cache.store(p.path, cachedPart{id: id, readAt: readAt, data: p.data, modTime: p.modTime})
			}
		}
	}
	return nil
}

// readAtMost reads r to its end in one allocation when it holds the size
// bytes expected, but never more than maxBytes+1 of them (when maxBytes >
// 0), so that a file growing while it is read is refused, not read whole.
func readAtMost(r io.Reader, size, maxBytes int64) ([]byte, error) {
	if maxBytes > 0 {
		r = io.LimitReader(r, maxBytes+1)
	}
	// room for the size fstat gave and one byte to see the end: a whole
	// store stays in memory, so no read buffer's slack is kept with it
	buf := make([]byte, 0, size+1)
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, max(len(buf), 512)) // it grew while read
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if maxBytes > 0 && int64(len(buf)) > maxBytes {
		return nil, fmt.Errorf("file grew past the limit of %d bytes while being read", maxBytes)
	}
	return buf, nil
}

// notRegular refuses a fragment part that is not a regular file.
func notRegular(path string, mode fs.FileMode) error {
	kind := "a file of unknown type"
	switch mode.Type() {
	case fs.ModeSymlink:
		return fmt.Errorf("read fragment %s: is a symbolic link; copy the file instead of linking it", path)
	case fs.ModeDir:
		kind = "a directory"
	case fs.ModeNamedPipe:
		kind = "a named pipe (FIFO)"
	case fs.ModeSocket:
		kind = "a socket"
	case fs.ModeDevice | fs.ModeCharDevice:
		kind = "a character device"
	case fs.ModeDevice:
		kind = "a block device"
	}
	return fmt.Errorf("read fragment %s: is %s, not a regular file", path, kind)
}

func (st *Stored) set(p *part) {
	if !p.found {
		return
	}
	if p.modTime.After(st.ModTime) {
		st.ModTime = p.modTime
	}
	if p.conf {
		st.ConfPath, st.Conf = p.path, p.data
	} else {
		st.MapPath, st.Map = p.path, p.data
	}
}

// Read loads one fragment.
func (s *Store) Read(name string) (*Stored, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	st := &Stored{Name: name}
	for _, conf := range []bool{true, false} {
		p := &part{st: st, path: s.path(name, conf), conf: conf}
		if err := p.read(s.MaxBytes, nil); err != nil {
			return nil, err
		}
		st.set(p)
	}
	if st.ConfPath == "" && st.MapPath == "" {
		return nil, fmt.Errorf("fragment %q: %w", name, ErrNotFound)
	}
	return st, nil
}

// Paths returns where fragment name's parts are stored.
func (s *Store) Paths(name string) (conf, hostMap string) {
	return s.path(name, true), s.path(name, false)
}

func (s *Store) path(name string, conf bool) string {
	if conf {
		return filepath.Join(s.Dir, name+ConfSuffix)
	}
	return filepath.Join(s.Dir, name+MapSuffix)
}

// Write stores a checked fragment, both parts or neither, and records ev
// (when not nil) in the history. The caller holds the lock.
func (s *Store) Write(f *assemble.Fragment, ev *Event) error {
	_, err := s.WriteGroup([]GroupChange{{Name: f.Name, Fragment: f, Event: ev}})
	return err
}

// Delete removes a fragment's files, both or neither, and records ev (when
// not nil). The caller holds the lock.
func (s *Store) Delete(name string, ev *Event) error {
	gone, err := s.WriteGroup([]GroupChange{{Name: name, Event: ev}})
	if err == nil && len(gone) > 0 {
		err = fmt.Errorf("fragment %q: %w", name, ErrNotFound)
	}
	return err
}

// GroupChange is one change of a group: a fragment's new version, or with
// Fragment nil the removal of fragment Name; Event (when not nil) is
// recorded.
type GroupChange struct {
	Name     string
	Fragment *assemble.Fragment
	Event    *Event
}

// WriteGroup makes the changes in one transaction, all of them or none
// (see Commit): the journal carries the parts, and one fsync of it makes
// the group durable; the files, the directory and one append to the
// history then settle together. A group
// changes a fragment once at most. A removal of a fragment that has no
// file left changes nothing: its name is returned in gone, and the others
// go ahead. The caller holds the lock.
func (s *Store) WriteGroup(changes []GroupChange) (gone []string, err error) {
	t := &Txn{}
	fail := func(err error) ([]string, error) {
		t.Discard()
		return nil, err
	}
	named := make(map[string]bool, len(changes))
	for _, c := range changes {
		if err := ValidName(c.Name); err != nil {
			return fail(err)
		}
		if named[c.Name] {
			// the renames come before the removals: no order among
			// the changes of one fragment
			return fail(fmt.Errorf("fragment %q changed twice in one group", c.Name))
		}
		named[c.Name] = true
		if c.Fragment == nil {
			removes := len(t.Removes)
			for _, conf := range []bool{true, false} {
				path := s.path(c.Name, conf)
				// a removal that fails once the journal is written would
				// leave every Lock after failing
				if fi, err := os.Lstat(path); err == nil && fi.IsDir() {
					return fail(fmt.Errorf("remove %s: a directory is in the way", path))
				} else if err == nil {
					t.Removes = append(t.Removes, path)
				} else if !errors.Is(err, fs.ErrNotExist) {
					return fail(fmt.Errorf("remove fragment: %w", err))
				}
			}
			if len(t.Removes) == removes {
				gone = append(gone, c.Name)
				continue
			}
		} else {
			if err := MkdirAll(s.Dir, 0o750); err != nil {
				return fail(fmt.Errorf("create fragment directory (HAPROXY_CONFIG_FRAGMENTS): %w", err))
			}
			for _, part := range []struct {
				conf bool
				data []byte
			}{{true, c.Fragment.Conf}, {false, c.Fragment.MapText}} {
				path := s.path(c.Name, part.conf)
				fi, err := os.Lstat(path)
				// a rename that fails once the journal is written would
				// leave the group half made, and every Lock after failing
				if err == nil && fi.IsDir() {
					return fail(fmt.Errorf("store %s: a directory is in the way", path))
				}
				if err == nil && holds(path, fi, part.data, partPerm) {
					// a map-only change leaves the config part be
					t.keep(path, part.data, partPerm)
					continue
				}
				t.Put(path, part.data, partPerm)
			}
		}
		if c.Event != nil {
			t.Events = append(t.Events, *c.Event)
		}
	}
	if len(t.Writes) == 0 && len(t.Removes) == 0 && len(t.Events) == 0 {
		return gone, nil
	}
	return gone, s.Commit(t)
}

// partPerm is a stored part's mode: parts may hold credentials.
const partPerm = 0o640

// holds reports whether the part at path, whose Lstat is fi, is already
// what a Put of data with perm would leave: a regular file of its own (one
// link) owned by this process's user and group, with that mode and those
// bytes. Writing it again would cost a new file, a rename and the old
// file's blocks freed, for nothing.
func holds(path string, fi fs.FileInfo, data []byte, perm os.FileMode) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || int(st.Uid) != os.Geteuid() || int(st.Gid) != os.Getegid() {
		return false
	}
	id, ok := idOf(fi)
	if !ok || id.size != int64(len(data)) || fi.Mode() != perm {
		return false
	}
	// the file fi describes, not a pipe or a link put there since: the
	// open file's type, mode, links, size and times as fi has them (an
	// inode number is reused at once)
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	now, err := f.Stat()
	if err != nil || now.Mode() != fi.Mode() {
		return false
	}
	if nowID, ok := idOf(now); !ok || nowID != id {
		return false
	}
	have := make([]byte, len(data)+1)
	n, _ := io.ReadFull(f, have)
	return n == len(data) && bytes.Equal(have[:n], data)
}

// WriteFile replaces path atomically and durably: renameio writes a hidden
// temp file in the same directory, fsyncs and renames it; the directory is
// then fsynced so the rename itself survives a power cut.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	if err := Replace(path, data, perm); err != nil {
		return err
	}
	return Sync(filepath.Dir(path))
}

// Replace is WriteFile without the fsync of the directory: for several
// files of one directory, which the caller fsyncs once after the last.
func Replace(path string, data []byte, perm os.FileMode) error {
	if err := renameio.WriteFile(path, data, perm, renameio.WithTempDir(filepath.Dir(path))); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// WriteFiles replaces each of files (Data at Path, with Perm) atomically
// and all of them durably, waiting for the disk once for every
// writeBatch of them and once more: each is written to a hidden file
// beside it, those are fsynced at once and renamed, and once all are,
// their directories are fsynced at once. They are not one change: a failure can leave some
// replaced and the rest not.
func WriteFiles(files []TxnWrite) error {
	for batch := range slices.Chunk(files, writeBatch) {
		if err := writeBatchOf(batch); err != nil {
			return err
		}
	}
	paths := make([]string, len(files))
	for i, w := range files {
		paths[i] = w.Path
	}
	return SyncAll(dirsOf(paths)...)
}

// writeBatch is how many files WriteFiles has written and not renamed at
// most: a daemon's first publish at 10,000 fragments saves 20,000 version
// copies, which all at once left its RSS 20 MB higher.
const writeBatch = 64

// writeBatchOf writes and renames one batch of WriteFiles.
func writeBatchOf(files []TxnWrite) error {
	var temps []string
	defer func() {
		for _, temp := range temps {
			os.Remove(temp)
		}
	}()
	for _, w := range files {
		temp, err := writeTemp(w.Path, w.Data, w.Perm, putDirPerm)
		if err != nil {
			return fmt.Errorf("write %s: %w", w.Path, err)
		}
		temps = append(temps, temp)
	}
	if err := SyncAll(temps...); err != nil {
		return err
	}
	for i, w := range files {
		if err := os.Rename(temps[i], w.Path); err != nil {
			temps = temps[i:]
			return fmt.Errorf("write %s: %w", w.Path, err)
		}
	}
	temps = nil
	return nil
}

// Sync fsyncs a file or a directory, so that what was written to it, or
// renamed into it, survives a power cut.
func Sync(path string) error {
	// not blocking: a named pipe put where a file was must fail the sync,
	// not wait for a writer
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}

// Event is one accepted change, as recorded in the history.
type Event struct {
	Time     time.Time `json:"time"`
	Action   string    `json:"action"` // "apply" or "remove"
	Name     string    `json:"name"`
	Checksum string    `json:"checksum,omitempty"`
	Actor    string    `json:"actor"`
	// Via is ViaAPI for a change the daemon's API stored, "" for one the
	// command line stored itself
	Via string `json:"via,omitempty"`
}

// ViaAPI is Event.Via for a change stored through the daemon's API. The
// daemon learns of those from its API as they are committed, so it
// skips their history lines.
const ViaAPI = "api"

// line is e as the history records it: JSON of e with every string made
// valid UTF-8 first, so that an event read back from a journal (where
// JSON turned invalid bytes into U+FFFD) gives the same line.
func (e Event) line() ([]byte, error) {
	valid := func(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }
	e.Action, e.Name, e.Checksum, e.Actor = valid(e.Action), valid(e.Name), valid(e.Checksum), valid(e.Actor)
	return json.Marshal(e)
}

const (
	historyMax  = 8 << 20 // trim the history file past this size
	historyKeep = 10000   // events kept when trimming
)

// Record appends events to the history, in one write, and fsyncs it. The
// caller holds the lock. A crash can at worst leave a torn last line, which
// History skips.
func (s *Store) Record(events ...Event) error {
	if len(events) == 0 {
		return nil
	}
	size, err := s.appendHistory(events)
	if err != nil {
		return err
	}
	return s.syncHistory(size)
}

// appendHistory appends events to the history in one write, without an
// fsync, and returns the history's size after it.
func (s *Store) appendHistory(events []Event) (int64, error) {
	var line []byte
	for _, e := range events {
		l, err := e.line()
		if err != nil {
			return 0, err
		}
		line = append(append(line, l...), '\n')
	}
	f, err := os.OpenFile(statedir.Layout(s.StateDir).History(), os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return 0, fmt.Errorf("open history: %w", err)
	}
	// After a crash the file may end in a torn line: end it, or this event
	// would be glued to it and skipped by History as well.
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
		last := []byte{0}
		if _, err := f.ReadAt(last, fi.Size()-1); err == nil && last[0] != '\n' {
			line = append([]byte{'\n'}, line...)
		}
	}
	_, err = f.Write(line)
	var size int64
	if fi, statErr := f.Stat(); statErr == nil {
		size = fi.Size()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("record history: %w", err)
	}
	return size, nil
}

// syncHistory fsyncs the history, and trims it when the last append left
// it size bytes long, past historyMax.
func (s *Store) syncHistory(size int64) error {
	path := statedir.Layout(s.StateDir).History()
	if err := Sync(path); err != nil {
		return fmt.Errorf("record history: %w", err)
	}
	if size > historyMax {
		return s.trimHistory(path)
	}
	return nil
}

func (s *Store) trimHistory(path string) error {
	events, err := s.History()
	if err != nil {
		return err
	}
	events = events[max(0, len(events)-historyKeep):]
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, e := range events {
		if err := enc.Encode(e); err != nil {
			return err
		}
	}
	return WriteFile(path, buf.Bytes(), 0o640)
}

// openHistory opens the history for reading; nil, nil when there is none.
func (s *Store) openHistory() (*os.File, error) {
	f, err := os.Open(statedir.Layout(s.StateDir).History())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read history: %w", err)
	}
	return f, nil
}

// History returns the recorded events, oldest first.
func (s *Store) History() ([]Event, error) {
	f, err := s.openHistory()
	if f == nil || err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read history: %w", err)
	}
	return ParseEvents(data), nil
}

// ParseEvents reads history lines, skipping any that do not parse (a line
// torn by a crash).
func ParseEvents(data []byte) []Event {
	var events []Event
	for line := range bytes.Lines(data) {
		var e Event
		if json.Unmarshal(line, &e) == nil {
			events = append(events, e)
		}
	}
	return events
}

// Actor describes who is making a change: HAPROXY_CONFIG_ACTOR when set
// (an instance manager can name the tenant it acts for), else the user, with
// the sudo caller when there is one.
func Actor() string {
	if a := os.Getenv("HAPROXY_CONFIG_ACTOR"); a != "" {
		return a
	}
	name := "uid " + fmt.Sprint(os.Getuid())
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	if su := os.Getenv("SUDO_USER"); su != "" {
		name += " (sudo by " + su + ")"
	}
	return name
}
