package fragments

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
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
// two parts, the fragments of a group, or the live config and its host
// map. A new file is either staged beside its destination (Stage: a
// hidden file, fsynced before the journal names it) or carried by the
// journal itself (Put). Commit writes the plan to the journal and carries
// it out. A crash before the journal is written changes nothing; a crash
// after it is finished by the next Lock.
type Txn struct {
	Writes  []TxnWrite `json:"writes,omitempty"`
	Removes []string   `json:"removes,omitempty"`
	Events  []Event    `json:"events,omitempty"` // for the history
	// Event is where a journal written before group commits (#12) has
	// its one event; recover reads it into Events
	Event *Event `json:"event,omitempty"`
}

// TxnWrite puts a file at Path: the staged file Staged renamed over it,
// or, with Staged empty, Data written there with Perm.
type TxnWrite struct {
	Path   string      `json:"path"`
	Staged string      `json:"staged,omitempty"`
	Data   []byte      `json:"data,omitempty"`
	Perm   os.FileMode `json:"perm,omitempty"`
	// temp is where Commit wrote Data before the journal, for apply to
	// rename; recovery writes Data again
	temp string
	// inPlace: the file at Path held Data already (see keep); apply
	// looks again
	inPlace bool
}

// stagedMark is part of every staged file's name, so that leftovers of a
// commit that never reached its journal can be recognised and removed.
const stagedMark = ".hc-staged-"

// Stage writes data to a hidden file next to path and adds the rename to
// t; Commit fsyncs it. For large files, which the journal would carry a
// second time.
func (t *Txn) Stage(path string, data []byte, perm os.FileMode) error {
	staged, err := writeTemp(path, data, perm, 0o755)
	if err != nil {
		return fmt.Errorf("stage %s: %w", path, err)
	}
	t.Writes = append(t.Writes, TxnWrite{Path: path, Staged: staged})
	return nil
}

// Put adds a write of data to path that the journal carries. Commit
// writes it beside path before the journal, so that a full disk refuses
// the change whole, but fsyncs it only after: the journal's fsync is the
// one wait for the disk before the change is durable. Path's directory,
// when missing, is made private (fragment parts may hold credentials).
func (t *Txn) Put(path string, data []byte, perm os.FileMode) {
	t.Writes = append(t.Writes, TxnWrite{Path: path, Data: data, Perm: perm})
}

// keep is Put for a file that holds data with perm already, which Commit
// leaves as it is: the journal carries data all the same, until settling
// has fsynced the file (it may have been copied in without an fsync), and
// recovery writes it again.
func (t *Txn) keep(path string, data []byte, perm os.FileMode) {
	t.Writes = append(t.Writes, TxnWrite{Path: path, Data: data, Perm: perm, inPlace: true})
}

// writeTemp writes data with perm to a hidden file beside path, made
// with path's directory (dirPerm) when that is missing, without an
// fsync, and returns its name; on failure nothing is left.
func writeTemp(path string, data []byte, perm, dirPerm os.FileMode) (string, error) {
	dir := filepath.Dir(path)
	if err := MkdirAll(dir, dirPerm); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+stagedMark+"*")
	if err != nil {
		return "", err
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
		return "", err
	}
	return f.Name(), nil
}

// putDirPerm is the mode of a directory a Put or WriteFiles creates.
const putDirPerm = 0o750

// SyncAll fsyncs paths (files or directories) at once, up to syncers at
// a time, each in its own goroutine: the file system commits them
// together, where one after the other each waits for its own commit. It
// returns the first error.
func SyncAll(paths ...string) error {
	if len(paths) == 1 {
		return Sync(paths[0])
	}
	var g errgroup.Group
	g.SetLimit(syncers)
	for _, path := range paths {
		g.Go(func() error { return Sync(path) })
	}
	return g.Wait()
}

// syncers bounds SyncAll's goroutines: a daemon's first publish at
// 10,000 fragments saves 20,000 version copies, and as many goroutines
// left its RSS 20 MB higher for good.
const syncers = 32

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
		if w.Staged != "" {
			os.Remove(w.Staged)
		}
	}
	t.dropTemps()
}

// dropTemps removes the files written for Puts and not renamed into
// place. Once the journal is written only those go: it names the staged
// files, which recovery renames.
func (t *Txn) dropTemps() {
	for i := range t.Writes {
		if w := &t.Writes[i]; w.temp != "" {
			os.Remove(w.temp)
			w.temp = ""
		}
	}
}

func (s *Store) journalPath() string { return statedir.Layout(s.StateDir).Journal() }

// Commit carries out t. The staged files and their directories are
// fsynced at once, and the Puts written beside their paths; the journal
// is written and fsynced: from here on the change is durable. The files
// are then put in place and the events appended to the history, and the
// change settles: the files written, the directories touched and the
// history are fsynced, then the journal is emptied. A Store with a
// Settler returns before the settling, which finishes in the background
// under the store lock (see Settler); without one, Commit returns once
// the change has settled. A Txn is for one Commit, failed or not. The
// caller holds the lock.
func (s *Store) Commit(t *Txn) error {
	if err := s.settled(); err != nil {
		t.Discard()
		return err
	}
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
	var staged []string
	for _, w := range t.Writes {
		if w.Staged != "" {
			staged = append(staged, w.Staged)
		}
	}
	if len(staged) > 0 {
		if err := SyncAll(append(staged, dirsOf(staged)...)...); err != nil {
			t.Discard()
			return err
		}
	}
	for i := range t.Writes {
		w := &t.Writes[i]
		if w.Staged != "" || w.inPlace {
			continue
		}
		temp, err := writeTemp(w.Path, w.Data, w.Perm, putDirPerm)
		if err != nil {
			t.Discard()
			return fmt.Errorf("write %s: %w", w.Path, err)
		}
		w.temp = temp
	}
	if err := s.writeJournal(plan); err != nil {
		t.Discard()
		return err
	}
	written, touched, err := s.apply(t)
	if err != nil {
		// the journal stays: the next Lock finishes the change
		t.dropTemps()
		return err
	}
	// the history shows the change once it is answered, as the files do
	appended, historySize := false, int64(0)
	if len(t.Events) > 0 {
		historySize, err = s.appendHistory(t.Events)
		appended = err == nil
	}
	settle := func() error { return s.settle(t, written, touched, appended, historySize) }
	if s.Later != nil {
		s.Later.start(settle)
		return nil
	}
	return settle()
}

// settled waits for the change of this lock's last Commit to settle in
// the background, and finishes the journal's change if settling failed:
// a journal must not be written over one still needed.
func (s *Store) settled() error {
	// a failure left the journal, which is finished here
	_ = s.Later.Wait()
	return s.finishPending()
}

// Settled waits for this process's last change to settle, and reports
// whether the journal still holds a change: one whose settling failed,
// which the next Lock finishes.
func (s *Store) Settled() (pending bool, err error) {
	_ = s.Later.Wait()
	t, torn, err := s.readJournal()
	return t != nil || torn, err
}

// journalSum starts the journal's last line: the SHA-256 of the plan
// before it, which tells a journal written whole from one a crash tore.
const journalSum = "sha256 "

// writeJournal writes plan to the journal and fsyncs it. The journal
// file stays once made, holding {} between changes: rewriting it needs
// no fsync of its directory.
func (s *Store) writeJournal(plan []byte) error {
	path := s.journalPath()
	_, statErr := os.Stat(path)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o640)
	if err != nil {
		return fmt.Errorf("write journal: %w", err)
	}
	sum := sha256.Sum256(plan)
	err = rewrite(f, append(append(plan, '\n'), journalSum+hex.EncodeToString(sum[:])+"\n"...))
	if err == nil && statErr != nil {
		err = Sync(s.StateDir)
	}
	if err != nil {
		// it must not outlive the staged files it names
		_ = os.Truncate(path, 0)
		return fmt.Errorf("write journal: %w", err)
	}
	return nil
}

// readJournal returns the change the journal holds: nil when it is
// missing or empty (cleared); nil and torn when a crash tore it while it
// was written (a change never carried out, nor reported durable). A
// journal cut exactly at the end of its plan holds the plan whole, and
// is carried out. A journal written before this format (#12), plain
// JSON, is read as well: it was renamed into place whole, and only while
// its change was in progress.
func (s *Store) readJournal() (t *Txn, torn bool, err error) {
	data, err := os.ReadFile(s.journalPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read journal: %w", err)
	}
	if len(data) == 0 || string(data) == clearedJournal {
		return nil, false, nil
	}
	plan := data
	if body, last, ok := bytes.Cut(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"+journalSum)); ok {
		sum := sha256.Sum256(body)
		if string(last) != hex.EncodeToString(sum[:]) {
			return nil, true, nil
		}
		plan = body
	}
	t = &Txn{}
	if err := json.Unmarshal(plan, t); err != nil {
		return nil, true, nil
	}
	if t.Event != nil {
		t.Events, t.Event = append(t.Events, *t.Event), nil
	}
	return t, false, nil
}

// clearedJournal is what a journal holds between changes: a change that
// changes nothing, which the release before this format (#12), finding
// the file, finishes rather than refusing as damaged.
const clearedJournal = "{}\n"

// clearJournal empties the journal (to clearedJournal) once its change
// has settled.
func (s *Store) clearJournal() error {
	f, err := os.OpenFile(s.journalPath(), os.O_WRONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err == nil {
		err = rewrite(f, []byte(clearedJournal))
	}
	if err != nil {
		return fmt.Errorf("clear journal: %w", err)
	}
	return nil
}

// rewrite replaces the journal f's content with data, fsyncs and closes
// it. It writes over the old bytes and then cuts the file to data's
// length, rather than truncating it first: the journal's block stays
// allocated, where freeing it (and, on a disk mounted with discard,
// trimming it) cost 150 us a write here. A crash in between leaves
// data's start before the old bytes' end, which readJournal finds torn
// (the sum of the plan does not match); the journal held {} before a
// plan, and a settled change before {}.
func rewrite(f *os.File, data []byte) error {
	_, err := f.WriteAt(data, 0)
	if err == nil {
		err = f.Truncate(int64(len(data)))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// apply puts a journaled transaction's files in place and removes what it
// removes, without waiting for the disk; running it twice is harmless.
// It returns the files it wrote (to fsync) and every path it touched
// (whose directories to fsync). A watched file cache hears of every path
// it touches (see Watch) as soon as it is touched, not when the file
// watcher gets to it.
func (s *Store) apply(t *Txn) (written, touched []string, err error) {
	if s.Files != nil {
		defer func() {
			for _, path := range touched {
				s.Files.Changed(path)
			}
		}()
	}
	for i := range t.Writes {
		w := &t.Writes[i]
		// a rename made before a crash still has its directory fsynced
		touched = append(touched, w.Path)
		if w.inPlace {
			// still what keep found there, or written after all
			if fi, err := os.Lstat(w.Path); err == nil && holds(w.Path, fi, w.Data, w.Perm) {
				written = append(written, w.Path)
				continue
			}
			w.inPlace = false
		}
		if w.Staged == "" {
			if err := put(w); err != nil {
				return nil, touched, fmt.Errorf("install %s: %w", w.Path, err)
			}
			written = append(written, w.Path)
			continue
		}
		err := os.Rename(w.Staged, w.Path)
		if errors.Is(err, fs.ErrNotExist) {
			if _, statErr := os.Stat(w.Path); statErr == nil {
				continue // renamed before a crash
			}
		}
		if err != nil {
			return nil, touched, fmt.Errorf("install %s: %w", w.Path, err)
		}
	}
	for _, path := range t.Removes {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, touched, fmt.Errorf("remove %s: %w", path, err)
		}
		touched = append(touched, path)
	}
	return written, touched, nil
}

// put renames the file Commit wrote for w into place, or, recovering
// from the journal, writes w's data beside its path first; no fsync.
func put(w *TxnWrite) error {
	if w.temp == "" {
		temp, err := writeTemp(w.Path, w.Data, w.Perm, putDirPerm)
		if err != nil {
			return err
		}
		w.temp = temp
	}
	if err := os.Rename(w.temp, w.Path); err != nil {
		return err
	}
	w.temp = ""
	return nil
}

// settle makes an applied transaction last: the files it wrote and the
// directories it touched are fsynced with the history, then the journal
// is emptied. Its events were appended to the history already (appended,
// leaving it historySize bytes long), or are appended here: after a
// crash, those not there yet. Until the journal is emptied it holds the
// change, and a failure leaves it for the next Lock to finish.
func (s *Store) settle(t *Txn, written, touched []string, appended bool, historySize int64) error {
	var g errgroup.Group
	g.Go(func() error { return SyncAll(append(written, dirsOf(touched)...)...) })
	switch {
	case appended:
		g.Go(func() error { return s.syncHistory(historySize) })
	case len(t.Events) > 0:
		g.Go(func() error {
			events, err := s.unrecorded(t.Events)
			if err != nil {
				return err
			}
			return s.Record(events...)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return s.clearJournal()
}

// finishPending finishes the change the journal holds, if any, and
// empties a torn journal.
func (s *Store) finishPending() error {
	t, torn, err := s.readJournal()
	if torn {
		return s.clearJournal()
	}
	if err != nil || t == nil {
		return err
	}
	written, touched, err := s.apply(t)
	if err == nil {
		err = s.settle(t, written, touched, false, 0)
	}
	if err != nil {
		t.dropTemps()
		return fmt.Errorf("finish interrupted change: %w", err)
	}
	return nil
}

// recover finishes a transaction a crash interrupted, then removes staged
// files that never made it into a journal. Called with the lock held.
func (s *Store) recover() error {
	if err := s.finishPending(); err != nil {
		return err
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

// IsStaged tells whether a file name is a staged file's: one a write in
// progress made beside its destination, left over when the writer was
// killed before the rename.
func IsStaged(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, stagedMark)
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
		if IsStaged(e.Name()) {
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
		line, err := e.line()
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
