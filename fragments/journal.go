package fragments

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sync/errgroup"

	"haproxy-config/statedir"
)

// Txn is a change to several files that must happen whole: a fragment's
// two parts, or the live config and its host map. Every new file is first
// staged beside its destination (a hidden file, fsynced); Commit then writes
// the plan to the journal and carries it out. A crash before the journal is
// written changes nothing; a crash after it is finished by the next Lock.
type Txn struct {
	Writes  []StagedWrite `json:"writes,omitempty"`
	Removes []string      `json:"removes,omitempty"`
	Events  []Event       `json:"events,omitempty"` // for the history
	// Event is where a journal written before group commits (#12) has
	// its one event; recover reads it into Events
	Event *Event `json:"event,omitempty"`
}

// StagedWrite renames Staged over Path.
type StagedWrite struct {
	Path   string `json:"path"`
	Staged string `json:"staged"`
}

// stagedMark is part of every staged file's name, so that leftovers of a
// commit that never reached its journal can be recognised and removed.
const stagedMark = ".hc-staged-"

// Stage writes data to a hidden file next to path and adds the rename to
// t; Commit fsyncs it.
func (t *Txn) Stage(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+stagedMark+"*")
	if err != nil {
		return fmt.Errorf("stage %s: %w", path, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("stage %s: %w", path, err)
	}
	t.Writes = append(t.Writes, StagedWrite{Path: path, Staged: f.Name()})
	return nil
}

// SyncAll fsyncs paths (files or directories) at once, each in its own
// goroutine: the file system commits them together, where one after the
// other each waits for its own commit. It returns the first error.
func SyncAll(paths ...string) error {
	if len(paths) == 1 {
		return Sync(paths[0])
	}
	var g errgroup.Group
	for _, path := range paths {
		g.Go(func() error { return Sync(path) })
	}
	return g.Wait()
}

// dirsOf returns the directories of paths, each once.
func dirsOf(paths []string) []string {
	var dirs []string
	for _, path := range paths {
		if dir := filepath.Dir(path); !slices.Contains(dirs, dir) {
			dirs = append(dirs, dir)
		}
	}
	return dirs
}

// Discard removes the staged files of a transaction that will not commit.
func (t *Txn) Discard() {
	for _, w := range t.Writes {
		os.Remove(w.Staged)
	}
}

func (s *Store) journalPath() string { return statedir.Layout(s.StateDir).Journal() }

// Commit carries out t: the staged files and their directories are
// fsynced at once, then the journal is written (the file, then its
// directory), the renames and removals made, their directories fsynced
// while the events are appended to the history, and the journal removed:
// five fsyncs one after the other, however many files. The caller holds
// the lock.
func (s *Store) Commit(t *Txn) error {
	plan, err := json.Marshal(t)
	if err != nil {
		t.Discard()
		return err
	}
	if err := MkdirAll(s.StateDir, 0o750); err != nil {
		t.Discard()
		return fmt.Errorf("create state directory (HAPROXY_CONFIG_STATE): %w", err)
	}
	// the staged files, and their names, are durable before the journal
	// names them: recovery takes a staged file that is missing for one
	// renamed
	var paths []string
	for _, w := range t.Writes {
		paths = append(paths, w.Staged)
	}
	if err := SyncAll(append(paths, dirsOf(paths)...)...); err != nil {
		t.Discard()
		return err
	}
	if err := WriteFile(s.journalPath(), plan, 0o640); err != nil {
		// it may be in place, its directory not synced: it must not
		// outlive the staged files it names
		os.Remove(s.journalPath())
		t.Discard()
		return err
	}
	return s.finish(t)
}

// finish performs a journaled transaction; running it twice is harmless.
// A watched file cache hears of every path it touches (see Watch) as soon
// as it is touched, not when the file watcher gets to it.
func (s *Store) finish(t *Txn) error {
	if s.Files != nil {
		defer func() {
			for _, w := range t.Writes {
				s.Files.Changed(w.Path)
			}
			for _, path := range t.Removes {
				s.Files.Changed(path)
			}
		}()
	}
	var touched []string
	for _, w := range t.Writes {
		// a rename made before a crash still has its directory fsynced
		touched = append(touched, w.Path)
		err := os.Rename(w.Staged, w.Path)
		if errors.Is(err, fs.ErrNotExist) {
			if _, statErr := os.Stat(w.Path); statErr == nil {
				continue // renamed before a crash
			}
		}
		if err != nil {
			return fmt.Errorf("install %s: %w", w.Path, err)
		}
	}
	for _, path := range t.Removes {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", path, err)
		}
		touched = append(touched, path)
	}
	// the directories and the history at once: both before the journal
	// goes
	var g errgroup.Group
	g.Go(func() error { return SyncAll(dirsOf(touched)...) })
	if len(t.Events) > 0 {
		g.Go(func() error {
			missing, err := s.unrecorded(t.Events)
			if err != nil {
				return err
			}
			return s.Record(missing...)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := os.Remove(s.journalPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("clear journal: %w", err)
	}
	return Sync(s.StateDir)
}

// recover finishes a transaction a crash interrupted, then removes staged
// files that never made it into a journal. Called with the lock held.
func (s *Store) recover() error {
	plan, err := os.ReadFile(s.journalPath())
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("read journal: %w", err)
	default:
		var t Txn
		if err := json.Unmarshal(plan, &t); err != nil {
			return fmt.Errorf("journal %s is damaged: %w", s.journalPath(), err)
		}
		if t.Event != nil {
			t.Events, t.Event = append(t.Events, *t.Event), nil
		}
		if err := s.finish(&t); err != nil {
			return fmt.Errorf("finish interrupted change: %w", err)
		}
	}
	// Leftovers are rare (a writer killed while staging) and harmless
	// (hidden files): a watched store sweeps them only when it reads the
	// directory whole anyway, at the start and after every rescan, not on
	// each change, which at 10,000 fragments lists 20,000 files.
	if s.Files != nil && s.Files.listed(s.Dir) {
		return nil
	}
	return RemoveStaged(s.Dir)
}

// RemoveStaged deletes leftover staged files in dir. Only call it with the
// lock held and no journal pending.
func RemoveStaged(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") && strings.Contains(e.Name(), stagedMark) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// unrecorded returns those of events that are not among the last lines
// of the history yet: all of them but where a crash came between
// recording them and clearing the journal.
func (s *Store) unrecorded(events []Event) ([]Event, error) {
	lines := make([][]byte, len(events))
	size := int64(16 << 10)
	for i, e := range events {
		line, err := json.Marshal(e)
		if err != nil {
			return nil, err
		}
		lines[i] = append(line, '\n')
		size += int64(len(lines[i]))
	}
	f, err := s.openHistory()
	if err != nil {
		return nil, err
	}
	if f == nil {
		return events, nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(0, fi.Size()-size)
	buf, err := io.ReadAll(io.NewSectionReader(f, off, fi.Size()-off))
	if err != nil {
		return nil, err
	}
	var missing []Event
	for i, e := range events {
		// a write torn just before a line's newline left the line whole
		if !bytes.Contains(buf, lines[i]) && !bytes.HasSuffix(buf, lines[i][:len(lines[i])-1]) {
			missing = append(missing, e)
		}
	}
	return missing, nil
}

// MkdirAll creates dir with perm, and the directories above it that are
// missing with 0755 as install -d does: only the leaf is private, so that
// the unprivileged haproxy -c can pass through to what it must read.
func MkdirAll(dir string, perm os.FileMode) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, perm); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return nil
}
