package fragments

// The journal that carries a group's parts, and the Settler (#12), under
// crashes at every step, torn and corrupted journals, concurrent stores,
// errors, and kill -9 of real writer processes. Written by a hostile
// review; each break it found is one of these tests.

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"haproxy-config/assemble"
	"haproxy-config/statedir"
)

// ---- helpers

// rvRemoveOld adds to tx the removal of fragment old and the events of
// rvNewHistory.
func rvRemoveOld(s *Store, tx *Txn) {
	tx.Removes = []string{s.path("old", true), s.path("old", false)}
	for i, line := range rvNewHistory {
		f := strings.Fields(line)
		tx.Events = append(tx.Events, rvEv(f[0], f[1], f[2], 10+i))
	}
}

func rvFrag(t *testing.T, name string, v int) *assemble.Fragment {
	t.Helper()
	return mustParse(t, name, fmt.Sprintf("backend %s_v%d\n", name, v), fmt.Sprintf("%s.example.com %s_v%d\n", name, name, v))
}

// rvNum is the version a part holds: the number after its last 'v'; -1
// when the file is missing, -2 when it is there but garbled (empty).
func rvNum(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return -1
	}
	s := strings.TrimSpace(string(data))
	i := strings.LastIndexByte(s, 'v')
	if i < 0 {
		return -2
	}
	n, err := strconv.Atoi(s[i+1:])
	if err != nil {
		return -2
	}
	return n
}

// rvVersion returns the versions of a fragment's two parts.
func rvVersion(s *Store, name string) (conf, hostMap int) {
	return rvNum(s.path(name, true)), rvNum(s.path(name, false))
}

func rvEv(action, name, actor string, i int) Event {
	return Event{Time: time.Unix(1700000000+int64(i), int64(i)).UTC(), Action: action, Name: name, Actor: actor}
}

func rvHistory(t *testing.T, s *Store) []string {
	t.Helper()
	events, err := s.History()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range events {
		out = append(out, e.Action+" "+e.Name+" "+e.Actor)
	}
	return out
}

func rvStaged(dir string) []string {
	var left []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), stagedMark) {
			left = append(left, e.Name())
		}
	}
	return left
}

func rvJournal(t *testing.T, s *Store) []byte {
	t.Helper()
	data, err := os.ReadFile(s.journalPath())
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if string(data) == clearedJournal {
		return nil
	}
	return data
}

// rvOther is the same store as another process sees it.
func rvOther(s *Store) *Store { return &Store{Dir: s.Dir, StateDir: s.StateDir} }

// ---- 1. crash consistency at every step of Commit

// rvScenario: shop, blog and old at v1 with their history; the change
// stages shop v2 (Stage, as the live files are), puts blog v2 and fresh
// v2 (Put, as WriteGroup does), removes old; four events.
type rvScenario struct {
	s      *Store
	tx     *Txn
	legacy string // "" new format; "events" or "event": plain JSON of the previous releases
}

var rvOldHistory = []string{"apply shop v1", "apply blog v1", "apply old v1"}
var rvNewHistory = []string{"apply shop v2", "apply blog v2", "remove old v2", "apply fresh v2"}

func rvSetup(t *testing.T, root string, legacy string) *rvScenario {
	t.Helper()
	s := &Store{Dir: filepath.Join(root, "fragments"), StateDir: filepath.Join(root, "state")}
	for i, name := range []string{"shop", "blog", "old"} {
		ev := rvEv("apply", name, "v1", i)
		if err := s.Write(rvFrag(t, name, 1), &ev); err != nil {
			t.Fatal(err)
		}
	}
	tx := &Txn{}
	shop := rvFrag(t, "shop", 2)
	if err := tx.Stage(s.path("shop", true), shop.Conf, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := tx.Stage(s.path("shop", false), shop.MapText, 0o640); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"blog", "fresh"} {
		f := rvFrag(t, name, 2)
		if legacy != "" {
			// the previous releases staged every file
			if err := tx.Stage(s.path(name, true), f.Conf, 0o640); err != nil {
				t.Fatal(err)
			}
			if err := tx.Stage(s.path(name, false), f.MapText, 0o640); err != nil {
				t.Fatal(err)
			}
			continue
		}
		tx.Put(s.path(name, true), f.Conf, 0o640)
		tx.Put(s.path(name, false), f.MapText, 0o640)
	}
	rvRemoveOld(s, tx)
	if legacy == "event" {
		// a journal of before group commits: one event
		ev := tx.Events[0]
		tx.Events, tx.Event = nil, &ev
	}
	return &rvScenario{s: s, tx: tx, legacy: legacy}
}

func (sc *rvScenario) events() []Event {
	if sc.tx.Event != nil {
		return []Event{*sc.tx.Event}
	}
	return sc.tx.Events
}

func (sc *rvScenario) wantNewHistory() []string {
	if sc.legacy == "event" {
		return append(slices.Clone(rvOldHistory), rvNewHistory[0])
	}
	return append(slices.Clone(rvOldHistory), rvNewHistory...)
}

func (sc *rvScenario) journal(t *testing.T) {
	t.Helper()
	s := sc.s
	if err := SyncAll(s.Dir); err != nil {
		t.Fatal(err)
	}
	plan, err := json.Marshal(sc.tx)
	if err != nil {
		t.Fatal(err)
	}
	if sc.legacy != "" {
		if err := WriteFile(s.journalPath(), plan, 0o640); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err := s.writeJournal(plan); err != nil {
		t.Fatal(err)
	}
}

// applySteps are apply's steps one at a time, a Put in two (its temp
// file written, then renamed), so that a crash can come between any two.
func (sc *rvScenario) applySteps() []func() error {
	var steps []func() error
	for _, w := range sc.tx.Writes {
		if w.Staged != "" {
			steps = append(steps, func() error { return os.Rename(w.Staged, w.Path) })
			continue
		}
		var temp string
		steps = append(steps, func() (err error) {
			temp, err = writeTemp(w.Path, w.Data, w.Perm, putDirPerm)
			return err
		}, func() error { return os.Rename(temp, w.Path) })
	}
	for _, path := range sc.tx.Removes {
		steps = append(steps, func() error { return os.Remove(path) })
	}
	return steps
}

// applyFirst carries out the first k of applySteps, all of them when k
// is -1.
func (sc *rvScenario) applyFirst(t *testing.T, k int) {
	t.Helper()
	steps := sc.applySteps()
	if k >= 0 {
		steps = steps[:k]
	}
	for _, step := range steps {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
}

// check takes the lock as another process would and checks that the
// store holds the old or the new version whole, each event once, no
// journal, nothing staged.
func (sc *rvScenario) check(t *testing.T, wantNew bool) {
	t.Helper()
	other := rvOther(sc.s)
	unlock, err := other.Lock(context.Background())
	if err != nil {
		t.Fatalf("Lock after the crash: %v", err)
	}
	want := map[string][2]int{"shop": {1, 1}, "blog": {1, 1}, "old": {1, 1}, "fresh": {-1, -1}}
	wantHistory := rvOldHistory
	if wantNew {
		want = map[string][2]int{"shop": {2, 2}, "blog": {2, 2}, "old": {-1, -1}, "fresh": {2, 2}}
		wantHistory = sc.wantNewHistory()
	}
	for name, v := range want {
		if c, m := rvVersion(other, name); c != v[0] || m != v[1] {
			t.Errorf("%s after recovery: conf v%d map v%d, want v%d v%d (-1 missing)", name, c, m, v[0], v[1])
		}
	}
	if got := rvHistory(t, other); !slices.Equal(got, wantHistory) {
		t.Errorf("history after recovery:\n  %q\nwant\n  %q", got, wantHistory)
	}
	if j := rvJournal(t, other); len(j) > 0 {
		t.Errorf("journal after recovery: %.100q", j)
	}
	if left := rvStaged(other.Dir); len(left) > 0 {
		t.Errorf("staged files left: %v", left)
	}
	unlock()
	// and the store goes on
	unlock, err = other.Lock(context.Background())
	if err != nil {
		t.Fatalf("second Lock: %v", err)
	}
	defer unlock()
	if err := other.Write(rvFrag(t, "next", 3), nil); err != nil {
		t.Errorf("a write after recovery: %v", err)
	}
}

func TestCommitCrashAtEveryStep(t *testing.T) {
	for _, legacy := range []string{"", "events", "event"} {
		format := cmp.Or(legacy, "checksummed")
		t.Run(format+"/before the journal", func(t *testing.T) {
			sc := rvSetup(t, t.TempDir(), legacy)
			sc.check(t, false)
		})
		n := len(rvSetup(t, t.TempDir(), legacy).applySteps())
		for k := 0; k <= n; k++ {
			t.Run(fmt.Sprintf("%s/journal and %d of %d apply steps", format, k, n), func(t *testing.T) {
				sc := rvSetup(t, t.TempDir(), legacy)
				sc.journal(t)
				sc.applyFirst(t, k)
				sc.check(t, true)
			})
		}
		events := len(rvSetup(t, t.TempDir(), legacy).events())
		for j := 0; j <= events; j++ {
			t.Run(fmt.Sprintf("%s/applied, %d of %d events recorded, journal not emptied", format, j, events), func(t *testing.T) {
				sc := rvSetup(t, t.TempDir(), legacy)
				sc.journal(t)
				sc.applyFirst(t, -1)
				if err := sc.s.Record(sc.events()[:j]...); err != nil {
					t.Fatal(err)
				}
				sc.check(t, true)
			})
		}
		t.Run(format+"/history append torn mid-line", func(t *testing.T) {
			sc := rvSetup(t, t.TempDir(), legacy)
			sc.journal(t)
			sc.applyFirst(t, -1)
			var lines []byte
			for _, e := range sc.events() {
				l, _ := json.Marshal(e)
				lines = append(append(lines, l...), '\n')
			}
			f, err := os.OpenFile(statedir.Layout(sc.s.StateDir).History(), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write(lines[:len(lines)*2/3])
			f.Close()
			sc.check(t, true)
		})
		if legacy == "" {
			t.Run(format+"/put files lost by a power cut (empty), journal whole", func(t *testing.T) {
				sc := rvSetup(t, t.TempDir(), legacy)
				sc.journal(t)
				sc.applyFirst(t, -1)
				for _, w := range sc.tx.Writes {
					if w.Staged == "" {
						os.Truncate(w.Path, 0)
					}
				}
				sc.check(t, true)
			})
		}
	}
}

// ---- 2. torn and corrupted journals

// rvTornBase writes the scenario's old state into root afresh (no fsync,
// fast) and stages the new files under fixed names, so that one journal
// fits every iteration.
func rvTornBase(t *testing.T, root string) (*Store, *Txn) {
	t.Helper()
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	s := &Store{Dir: filepath.Join(root, "fragments"), StateDir: filepath.Join(root, "state")}
	for _, dir := range []string{s.Dir, s.StateDir} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	var history []byte
	for i, name := range []string{"shop", "blog", "old"} {
		f := rvFrag(t, name, 1)
		os.WriteFile(s.path(name, true), f.Conf, 0o640)
		os.WriteFile(s.path(name, false), f.MapText, 0o640)
		l, _ := json.Marshal(rvEv("apply", name, "v1", i))
		history = append(append(history, l...), '\n')
	}
	os.WriteFile(statedir.Layout(s.StateDir).History(), history, 0o640)
	tx := &Txn{}
	shop := rvFrag(t, "shop", 2)
	for _, p := range []struct {
		conf bool
		data []byte
	}{{true, shop.Conf}, {false, shop.MapText}} {
		path := s.path("shop", p.conf)
		staged := filepath.Join(s.Dir, "."+filepath.Base(path)+stagedMark+"fixed")
		if err := os.WriteFile(staged, p.data, 0o640); err != nil {
			t.Fatal(err)
		}
		tx.Writes = append(tx.Writes, TxnWrite{Path: path, Staged: staged})
	}
	for _, name := range []string{"blog", "fresh"} {
		f := rvFrag(t, name, 2)
		tx.Put(s.path(name, true), f.Conf, 0o640)
		tx.Put(s.path(name, false), f.MapText, 0o640)
	}
	rvRemoveOld(s, tx)
	return s, tx
}

// rvOldOrNew says which version the store holds whole: "old", "new", or
// what is wrong.
func rvOldOrNew(t *testing.T, s *Store) string {
	t.Helper()
	var got []string
	for _, name := range []string{"shop", "blog", "old", "fresh"} {
		c, m := rvVersion(s, name)
		got = append(got, fmt.Sprintf("%s:%d/%d", name, c, m))
	}
	h := rvHistory(t, s)
	switch strings.Join(got, " ") {
	case "shop:1/1 blog:1/1 old:1/1 fresh:-1/-1":
		if slices.Equal(h, rvOldHistory) {
			return "old"
		}
	case "shop:2/2 blog:2/2 old:-1/-1 fresh:2/2":
		if slices.Equal(h, append(slices.Clone(rvOldHistory), rvNewHistory...)) {
			return "new"
		}
	}
	return fmt.Sprintf("neither: %v history %q", got, h)
}

// sweepStep is the step of the sweeps over a journal's bytes: every byte,
// or with -short every 13th (the unit tests' minute).
func sweepStep() int {
	if testing.Short() {
		return 13
	}
	return 1
}

// rvWholeJournal writes the journal of rvTornBase's change under root
// and returns it, with its plan's length.
func rvWholeJournal(t *testing.T, root string) (journal []byte, planLen int) {
	t.Helper()
	s, tx := rvTornBase(t, root)
	plan, _ := json.Marshal(tx)
	if err := s.writeJournal(plan); err != nil {
		t.Fatal(err)
	}
	return rvJournal(t, s), len(plan)
}

func TestJournalTornAtEveryOffset(t *testing.T) {
	root := filepath.Join(t.TempDir(), "r")
	full, planLen := rvWholeJournal(t, root)
	var applied []int
	for k := 0; k < len(full); k += sweepStep() {
		s, _ := rvTornBase(t, root)
		if err := os.WriteFile(s.journalPath(), full[:k], 0o640); err != nil {
			t.Fatal(err)
		}
		unlock, err := s.Lock(context.Background())
		if err != nil {
			t.Fatalf("journal cut at %d of %d: Lock: %v", k, len(full), err)
		}
		got := rvOldOrNew(t, s)
		if got == "new" {
			applied = append(applied, k)
		} else if got != "old" {
			t.Errorf("journal cut at %d of %d: %s", k, len(full), got)
		}
		if j := rvJournal(t, s); len(j) > 0 {
			t.Errorf("journal cut at %d: not emptied", k)
		}
		if left := rvStaged(s.Dir); len(left) > 0 {
			t.Errorf("journal cut at %d: staged left %v", k, left)
		}
		unlock()
	}
	t.Logf("journal of %d bytes (plan %d): cuts carried out whole at %v, the others left the old version", len(full), planLen, applied)
}

// overwrite writes data over the start of path's bytes, as rewrite does
// before it cuts the file to data's length.
func overwrite(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestJournalRewrittenInPlaceTorn: the journal is written over its old
// bytes, then cut to length. A crash in between leaves a plan's start
// over the cleared journal's {}, or the cleared journal's start over a
// settled plan: the first is carried out whole or not at all, the second
// leaves the settled change as it is; the journal is emptied after both.
// A cut before the plan's end must not be carried out.
func TestJournalRewrittenInPlaceTorn(t *testing.T) {
	root := filepath.Join(t.TempDir(), "r")
	full, planLen := rvWholeJournal(t, root)
	for k := 0; k <= len(full); k += sweepStep() {
		s, _ := rvTornBase(t, root)
		if err := os.WriteFile(s.journalPath(), []byte(clearedJournal), 0o640); err != nil {
			t.Fatal(err)
		}
		overwrite(t, s.journalPath(), full[:k])
		unlock, err := s.Lock(context.Background())
		if err != nil {
			t.Fatalf("plan cut at %d over {}: Lock: %v", k, err)
		}
		// a cut at the plan's end holds it whole (see readJournal)
		if got := rvOldOrNew(t, s); got != "old" && (got != "new" || k < planLen) {
			t.Errorf("plan cut at %d of %d over {}: %s", k, len(full), got)
		}
		if j := rvJournal(t, s); len(j) > 0 {
			t.Errorf("plan cut at %d over {}: journal not emptied: %q", k, j)
		}
		unlock()
	}
	for k := 0; k <= len(clearedJournal); k++ {
		s, _ := rvTornBase(t, root)
		if err := os.WriteFile(s.journalPath(), full, 0o640); err != nil {
			t.Fatal(err)
		}
		unlock, err := s.Lock(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		unlock()
		// the change settled; its clearing was cut at k
		overwrite(t, s.journalPath(), append([]byte(clearedJournal[:k]), full[k:]...))
		unlock, err = s.Lock(context.Background())
		if err != nil {
			t.Fatalf("clearing cut at %d: Lock: %v", k, err)
		}
		if got := rvOldOrNew(t, s); got != "new" {
			t.Errorf("clearing cut at %d: %s; want the settled change", k, got)
		}
		if j := rvJournal(t, s); len(j) > 0 {
			t.Errorf("clearing cut at %d: journal not emptied: %q", k, j)
		}
		unlock()
	}
}

func TestJournalCorruptAtEveryByte(t *testing.T) {
	root := filepath.Join(t.TempDir(), "r")
	full, _ := rvWholeJournal(t, root)
	outcomes := map[string]int{}
	for k := 0; k < len(full); k += sweepStep() {
		for _, flip := range []byte{0x01, 0x20} {
			s, _ := rvTornBase(t, root)
			bad := slices.Clone(full)
			bad[k] ^= flip
			if err := os.WriteFile(s.journalPath(), bad, 0o640); err != nil {
				t.Fatal(err)
			}
			unlock, err := s.Lock(context.Background())
			if err != nil {
				// a refusal is fine once; forever is not
				if unlock2, err2 := s.Lock(context.Background()); err2 != nil {
					t.Errorf("byte %d ^%#x: every Lock fails: %v", k, flip, err2)
				} else {
					unlock2()
				}
				outcomes["refused"]++
				continue
			}
			got := rvOldOrNew(t, s)
			if got != "old" && got != "new" {
				t.Errorf("byte %d (%q) ^%#x: a garbled plan was carried out: %s", k, full[k], flip, got)
			}
			outcomes[got]++
			unlock()
		}
	}
	t.Logf("single-byte corruptions: %v", outcomes)
}

// ---- 3. concurrency

// TestStoresSharingASettler: two stores share a Settler, one has none,
// one has its own (another process's); each loops Lock, WriteGroup,
// unlock. Under the lock no settling may be in flight and the journal
// must be empty; the history must hold every commit once, in the order
// the lock was held.
func TestStoresSharingASettler(t *testing.T) {
	root := t.TempDir()
	shared := NewSettler()
	own := NewSettler()
	mk := func(l *Settler) *Store {
		return &Store{Dir: filepath.Join(root, "fragments"), StateDir: filepath.Join(root, "state"), Later: l, LockPoll: time.Millisecond}
	}
	stores := map[string]*Store{"sa": mk(shared), "sb": mk(shared), "sc": mk(nil), "sd": mk(own)}
	settlers := []*Settler{shared, own}
	var seq atomic.Int64
	var inside atomic.Int32
	iterations := 20
	if n, err := strconv.Atoi(os.Getenv("REVIEW_ITERATIONS")); err == nil {
		iterations = n
	}
	if testing.Short() {
		iterations = 5
	}
	var wg sync.WaitGroup
	errs := make(chan error, 1000)
	for name, s := range stores {
		for g := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				frag := fmt.Sprintf("%s%d", name, g)
				for range iterations {
					unlock, err := s.Lock(context.Background())
					if err != nil {
						errs <- fmt.Errorf("%s: Lock: %w", frag, err)
						return
					}
					if n := inside.Add(1); n != 1 {
						errs <- fmt.Errorf("%s: %d holders of the lock at once", frag, n)
					}
					for i, l := range settlers {
						l.mu.Lock()
						busy := l.done != nil
						l.mu.Unlock()
						if busy {
							errs <- fmt.Errorf("%s: took the lock while settler %d still settles", frag, i)
						}
					}
					if data := rvJournal(t, s); len(data) > 0 {
						errs <- fmt.Errorf("%s: took the lock with a change pending in the journal", frag)
					}
					n := int(seq.Add(1))
					ev := rvEv("apply", frag, fmt.Sprintf("seq%d", n), n)
					if _, err := s.WriteGroup([]GroupChange{{Name: frag, Fragment: rvFrag(t, frag, n), Event: &ev}}); err != nil {
						errs <- fmt.Errorf("%s: WriteGroup: %w", frag, err)
					}
					if c, m := rvVersion(s, frag); c != n || m != n {
						errs <- fmt.Errorf("%s: after WriteGroup v%d: conf v%d map v%d", frag, n, c, m)
					}
					inside.Add(-1)
					unlock()
				}
			}()
		}
	}
	// a Lock with a ctx that ends soon, now and then, while the others work
	stop := make(chan struct{})
	var quick sync.WaitGroup
	quick.Add(1)
	go func() {
		defer quick.Done()
		s := mk(shared)
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.Intn(3000))*time.Microsecond)
			unlock, err := s.Lock(ctx)
			cancel()
			if err == nil {
				if n := inside.Add(1); n != 1 {
					errs <- fmt.Errorf("quick: %d holders of the lock at once", n)
				}
				inside.Add(-1)
				unlock()
			}
		}
	}()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Minute):
		t.Fatal("deadlock: the workers did not finish in 3 minutes")
	}
	close(stop)
	quick.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	shared.Wait()
	own.Wait()
	s := mk(nil)
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	events, _ := s.History()
	total := int(seq.Load())
	if len(events) != total {
		t.Errorf("history has %d events, %d commits were made", len(events), total)
	}
	for i, e := range events {
		if want := fmt.Sprintf("seq%d", i+1); e.Actor != want {
			t.Errorf("history event %d is %s, want %s (out of order, lost or twice)", i, e.Actor, want)
			break
		}
	}
	if j := rvJournal(t, s); len(j) > 0 {
		t.Error("journal not empty at the end")
	}
}

// TestLockWhileSettling: while a change of this process settles
// (held back here), a Lock of a store sharing its Settler, one without a
// Settler and one of "another process" all give up when their ctx ends
// and none gets the lock; once the settling ends they get it.
func TestLockWhileSettling(t *testing.T) {
	s := newStore(t)
	s.Later = NewSettler()
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ev := rvEv("apply", "shop", "test", 0)
	if _, err := s.WriteGroup([]GroupChange{{Name: "shop", Fragment: rvFrag(t, "shop", 1), Event: &ev}}); err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	s.Later.Wait()
	s.Later.start(func() error { <-gate; return nil }) // a slow settling
	unlock()
	for what, other := range map[string]*Store{
		"sharing the Settler": {Dir: s.Dir, StateDir: s.StateDir, Later: s.Later},
		"without a Settler":   rvOther(s),
		"with its own":        {Dir: s.Dir, StateDir: s.StateDir, Later: NewSettler()},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		start := time.Now()
		u, err := other.Lock(ctx)
		cancel()
		if err == nil {
			u()
			t.Errorf("%s: got the lock while a change settled", what)
		} else if time.Since(start) > 10*time.Second {
			t.Errorf("%s: took %v to give up", what, time.Since(start))
		}
	}
	close(gate)
	u, err := rvOther(s).Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	u()
}

// ---- 4. errors

// TestRemoveRefusesADirectoryInTheWay: removing a fragment whose config
// part is a directory holding a file is refused before its journal, as a
// write is (TestWriteGroupRefusesWhatItCannotFinish): journaled, its
// removal would fail in apply, and every Lock after it.
func TestRemoveRefusesADirectoryInTheWay(t *testing.T) {
	for _, later := range []bool{false, true} {
		t.Run(fmt.Sprintf("settler=%v", later), func(t *testing.T) {
			s := newStore(t)
			if later {
				s.Later = NewSettler()
			}
			if err := s.Write(rvFrag(t, "shop", 1), nil); err != nil {
				t.Fatal(err)
			}
			writeRaw(t, s.path("blog", true), "stray", "x") // blog.cfg/stray
			writeRaw(t, s.Dir, "blog.map", "blog.example.com blog_web\n")
			unlock, err := s.Lock(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			ev := rvEv("remove", "blog", "test", 1)
			_, err = s.WriteGroup([]GroupChange{{Name: "blog", Event: &ev}})
			t.Logf("removing blog: %v", err)
			if err != nil && len(rvJournal(t, s)) > 0 {
				t.Errorf("the removal failed after its journal: the journal stays, to be retried for ever")
			}
			unlock()
			s.Later.Wait()
			u, err := rvOther(s).Lock(context.Background())
			if err != nil {
				t.Errorf("the next Lock: %v", err)
				return
			}
			defer u()
			if err := rvOther(s).Write(rvFrag(t, "shop", 2), nil); err != nil {
				t.Errorf("the next write: %v", err)
			}
		})
	}
}

// TestJournalReadErrorFailsTheLock: a journal that cannot be read (here
// a directory) fails the Lock rather than being passed over as none: it
// may hold an acknowledged change.
func TestJournalReadErrorFailsTheLock(t *testing.T) {
	s := newStore(t)
	if err := os.MkdirAll(filepath.Join(s.journalPath(), "x"), 0o750); err != nil {
		t.Fatal(err)
	}
	_, torn, err := s.readJournal()
	t.Logf("readJournal of a journal that cannot be read: torn=%v err=%v", torn, err)
	if err == nil {
		t.Error("readJournal returned no error for a journal it could not read")
	}
	if u, err := s.Lock(context.Background()); err == nil {
		u()
		t.Error("Lock succeeded over a journal it could not read")
	}
}

// settleFailing commits shop v1 with a Settler whose settling fails (the
// history in the way), under the lock unlock releases; clear takes the
// obstacle away.
func settleFailing(t *testing.T) (s *Store, unlock, clear func()) {
	t.Helper()
	s = newStore(t)
	s.Later = NewSettler()
	clear = historyInTheWay(t, s)
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ev := rvEv("apply", "shop", "test", 0)
	if _, err := s.WriteGroup([]GroupChange{{Name: "shop", Fragment: rvFrag(t, "shop", 1), Event: &ev}}); err != nil {
		t.Fatal(err)
	}
	return s, unlock, clear
}

// TestSettledAfterAnotherProcessFinished: once another process (or a
// store without the Settler) has finished from the journal a change whose
// settling failed, Settled reports nothing pending, though the Settler
// keeps the failure: the daemon's exit does not warn of a change that did
// settle.
func TestSettledAfterAnotherProcessFinished(t *testing.T) {
	s, unlock, clear := settleFailing(t)
	unlock()
	if err := s.Later.Wait(); err == nil {
		t.Fatal("settling with the history in the way succeeded")
	}
	clear()
	u, err := rvOther(s).Lock(context.Background()) // finishes it
	if err != nil {
		t.Fatal(err)
	}
	u()
	if j := rvJournal(t, s); len(j) > 0 {
		t.Fatal("the other process did not finish the change")
	}
	if pending, err := s.Settled(); pending || err != nil {
		t.Errorf("Settled after the change was finished by another store: %v %v, want nothing pending", pending, err)
	}
}

// TestCommitRefusesOverAPendingJournal: the history in the way
// makes every settling fail; Commits in the same lock must refuse rather
// than write the journal over the change still pending, and the pending
// change must survive into the next Lock.
func TestCommitRefusesOverAPendingJournal(t *testing.T) {
	s, unlock, clear := settleFailing(t)
	first := rvJournal(t, s)
	s.Later.Wait()
	for i := range 3 {
		ev := rvEv("apply", "blog", "test", 1+i)
		if _, err := s.WriteGroup([]GroupChange{{Name: "blog", Fragment: rvFrag(t, "blog", 1+i), Event: &ev}}); err == nil {
			t.Errorf("commit %d went through while the first change could not settle", i)
		}
		s.Later.Wait()
		if j := rvJournal(t, s); !bytes.Equal(j, first) {
			t.Errorf("commit %d: the pending journal was replaced: %.80q", i, j)
		}
	}
	unlock()
	s.Later.Wait()
	clear()
	u, err := rvOther(s).Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer u()
	if got := rvHistory(t, s); !slices.Contains(got, "apply shop test") {
		t.Errorf("history %q: the first (acknowledged) change's event is lost", got)
	}
	if c, m := rvVersion(s, "shop"); c != 1 || m != 1 {
		t.Errorf("shop: v%d v%d", c, m)
	}
}

// ---- 5. compatibility and docs

// TestClearedJournalReadByThePreviousRelease: the journal stays after
// every change. The previous release's recover reads any journal.json as
// JSON and fails with "journal ... is damaged" on one that is not: after
// a downgrade (the Debian package reinstalled at the previous version)
// every Lock would fail. This mimics that reader.
func TestClearedJournalReadByThePreviousRelease(t *testing.T) {
	s := newStore(t)
	if err := s.Write(rvFrag(t, "shop", 1), nil); err != nil {
		t.Fatal(err)
	}
	plan, err := os.ReadFile(s.journalPath())
	if os.IsNotExist(err) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	var tx Txn
	if err := json.Unmarshal(plan, &tx); err != nil {
		t.Errorf("after a successful write, journal.json (%d bytes) is there and the previous release's recover refuses it: %v", len(plan), err)
	}
}

// TestHistoryShowsAnAcknowledgedWrite: with a Settler, WriteGroup
// returns before the history is fsynced but after its lines are
// appended: a History read without the lock (Engine.List does that) right
// after an acknowledged apply sees it.
func TestHistoryShowsAnAcknowledgedWrite(t *testing.T) {
	s := newStore(t)
	s.Later = NewSettler()
	misses := 0
	const n = 50
	for i := range n {
		unlock, err := s.Lock(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		ev := rvEv("apply", "shop", fmt.Sprint("a", i), i)
		if _, err := s.WriteGroup([]GroupChange{{Name: "shop", Fragment: rvFrag(t, "shop", i), Event: &ev}}); err != nil {
			t.Fatal(err)
		}
		events, _ := s.History()
		if len(events) != i+1 {
			misses++
		}
		unlock()
	}
	s.Later.Wait()
	if misses > 0 {
		t.Errorf("%d of %d acknowledged applies were not in the history when WriteGroup returned", misses, n)
	}
}

// ---- 6. kill -9 of a real process in the middle of its commits

// TestStoreKill9Child is the writer TestStoreKill9 kills; it does
// nothing on its own.
func TestStoreKill9Child(t *testing.T) {
	root := os.Getenv("HC_KILL9_ROOT")
	if root == "" {
		t.Skip("the helper process of TestStoreKill9")
	}
	later := NewSettler()
	s := &Store{Dir: filepath.Join(root, "fragments"), StateDir: filepath.Join(root, "state"), Later: later, LockPoll: time.Millisecond}
	live := &Store{Dir: s.Dir, StateDir: s.StateDir, Later: later}
	liveDir := filepath.Join(root, "live")
	big := strings.Repeat("# padding of a large live config\n", 2000)
	prefix := os.Getenv("HC_KILL9_PREFIX")
	v := max(0, rvNum(s.path(prefix+"a", true)))
	for i := v + 1; ; i++ {
		unlock, err := s.Lock(context.Background())
		if err != nil {
			fmt.Printf("error lock %v\n", err)
			os.Exit(3)
		}
		actor := fmt.Sprintf("v%d", i)
		var changes []GroupChange
		for _, name := range []string{prefix + "a", prefix + "b", prefix + "c"} {
			if name == prefix+"c" && i%4 == 0 {
				ev := rvEv("remove", name, actor, i)
				changes = append(changes, GroupChange{Name: name, Event: &ev})
				continue
			}
			ev := rvEv("apply", name, actor, i)
			changes = append(changes, GroupChange{Name: name, Fragment: rvFrag(t, name, i), Event: &ev})
		}
		if _, err := s.WriteGroup(changes); err != nil {
			fmt.Printf("error group %v\n", err)
			os.Exit(3)
		}
		fmt.Printf("group %d\n", i)
		if prefix != "" {
			unlock()
			continue
		}
		tx := &Txn{}
		if err := tx.Stage(filepath.Join(liveDir, "live.map"), []byte(fmt.Sprintf("%slive v%d\n", big, i)), 0o640); err != nil {
			os.Exit(3)
		}
		if err := tx.Stage(filepath.Join(liveDir, "live.cfg"), []byte(fmt.Sprintf("%slive v%d\n", big, i)), 0o640); err != nil {
			os.Exit(3)
		}
		if err := live.Commit(tx); err != nil {
			fmt.Printf("error live %v\n", err)
			os.Exit(3)
		}
		fmt.Printf("live %d\n", i)
		unlock()
	}
}

func TestStoreKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("kills a writer process many times")
	}
	root := t.TempDir()
	s := &Store{Dir: filepath.Join(root, "fragments"), StateDir: filepath.Join(root, "state")}
	liveDir := filepath.Join(root, "live")
	rounds := 30
	lastV, lastLive := 0, -1
	for round := range rounds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestStoreKill9Child$", "-test.count=1")
		cmd.Env = append(os.Environ(), "HC_KILL9_ROOT="+root)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan []string, 1)
		go func() {
			var got []string
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				got = append(got, sc.Text())
			}
			lines <- got
		}()
		time.Sleep(time.Duration(30+rand.Intn(300)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		got := <-lines
		ackGroup, ackLive := -1, -1
		for _, l := range got {
			var n int
			if _, err := fmt.Sscanf(l, "group %d", &n); err == nil {
				ackGroup = n
			} else if _, err := fmt.Sscanf(l, "live %d", &n); err == nil {
				ackLive = n
			} else if strings.HasPrefix(l, "error") {
				t.Fatalf("round %d: the writer failed: %s", round, l)
			}
		}
		unlock, err := s.Lock(context.Background())
		if err != nil {
			t.Fatalf("round %d: Lock after kill -9: %v", round, err)
		}
		V := rvGroupWhole(t, s, "", fmt.Sprintf("round %d", round))
		if V < lastV || (ackGroup >= 0 && V < ackGroup) {
			t.Errorf("round %d: group v%d after recovery; acknowledged v%d (last round v%d): an acknowledged change was lost", round, V, ackGroup, lastV)
		}
		if ackGroup >= 0 && V > ackGroup+1 {
			t.Errorf("round %d: group v%d after recovery, only v%d acknowledged", round, V, ackGroup)
		}
		lc, lm := rvNum(filepath.Join(liveDir, "live.cfg")), rvNum(filepath.Join(liveDir, "live.map"))
		if lc != lm {
			t.Errorf("round %d: live config v%d, live map v%d", round, lc, lm)
		}
		// each group is followed by its live change; a round killed
		// before its first live change leaves the last round's
		if lc >= 0 && lc != V && lc != V-1 && lc != lastLive {
			t.Errorf("round %d: live v%d with group v%d (last round's live v%d)", round, lc, V, lastLive)
		}
		if ackLive >= 0 && lc < ackLive {
			t.Errorf("round %d: live v%d, acknowledged v%d", round, lc, ackLive)
		}
		var want []string
		for i := 1; i <= V; i++ {
			want = append(want, fmt.Sprintf("apply a v%d", i), fmt.Sprintf("apply b v%d", i))
			if i%4 == 0 {
				want = append(want, fmt.Sprintf("remove c v%d", i))
			} else {
				want = append(want, fmt.Sprintf("apply c v%d", i))
			}
		}
		if h := rvHistory(t, s); !slices.Equal(h, want) {
			t.Errorf("round %d: history of %d events, want %d (each group's once, in order)", round, len(h), len(want))
			for i := range max(len(h), len(want)) {
				var a, b string
				if i < len(h) {
					a = h[i]
				}
				if i < len(want) {
					b = want[i]
				}
				if a != b {
					t.Errorf("  first difference at %d: %q, want %q", i, a, b)
					break
				}
			}
		}
		if j := rvJournal(t, s); len(j) > 0 {
			t.Errorf("round %d: journal not emptied", round)
		}
		if left := rvStaged(s.Dir); len(left) > 0 {
			t.Errorf("round %d: staged left in the store: %v", round, left)
		}
		// the engine's clearLeftovers does this for the live files
		RemoveStaged(liveDir)
		unlock()
		t.Logf("round %d: acknowledged group v%d live v%d; recovered group v%d live v%d", round, ackGroup, ackLive, V, lc)
		lastV, lastLive = V, lc
		if t.Failed() {
			return
		}
	}
}

// rvGroupWhole checks that the writer of prefix left its last group
// whole: a and b both parts at one version V, c at V too, or removed when
// V is a multiple of 4 (the writer's removals). It returns V, -1 when a
// is missing; what names the check in its errors.
func rvGroupWhole(t *testing.T, s *Store, prefix, what string) int {
	t.Helper()
	ca, ma := rvVersion(s, prefix+"a")
	cb, mb := rvVersion(s, prefix+"b")
	cc, mc := rvVersion(s, prefix+"c")
	V := ca
	if ma != V || cb != V || mb != V {
		t.Errorf("%s: a v%d/v%d b v%d/v%d: a group split", what, ca, ma, cb, mb)
	}
	if V%4 == 0 && V > 0 {
		if cc != -1 || mc != -1 {
			t.Errorf("%s: c at v%d/v%d, removed in group %d", what, cc, mc, V)
		}
	} else if V > 0 && (cc != V || mc != V) {
		t.Errorf("%s: c at v%d/v%d, want v%d", what, cc, mc, V)
	}
	return V
}

// rvCheckWriter checks the fragments and history of the writer with
// prefix, whose last acknowledged group is ack, with runsSince runs
// killed since that acknowledged none (each may have journaled one group
// more); it returns the version found.
func rvCheckWriter(t *testing.T, s *Store, prefix string, ack, runsSince int) int {
	t.Helper()
	V := max(rvGroupWhole(t, s, prefix, prefix), 0)
	if V < ack || V > ack+1+runsSince {
		t.Errorf("%s: v%d after recovery, v%d acknowledged, %d runs since", prefix, V, ack, runsSince)
	}
	var want, got []string
	for i := 1; i <= V; i++ {
		want = append(want, fmt.Sprintf("apply %sa v%d", prefix, i), fmt.Sprintf("apply %sb v%d", prefix, i))
		if i%4 == 0 {
			want = append(want, fmt.Sprintf("remove %sc v%d", prefix, i))
		} else {
			want = append(want, fmt.Sprintf("apply %sc v%d", prefix, i))
		}
	}
	for _, h := range rvHistory(t, s) {
		if strings.HasPrefix(strings.Fields(h)[1], prefix) {
			got = append(got, h)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s: history of %d events, want %d", prefix, len(got), len(want))
	}
	return V
}

// TestStoreKill9TwoWriters: two writer processes compete for the lock;
// one is killed now and then and started again while the other goes on,
// so that a journal a killed writer left is finished by the other.
func TestStoreKill9TwoWriters(t *testing.T) {
	if testing.Short() {
		t.Skip("kills writer processes many times")
	}
	root := t.TempDir()
	s := &Store{Dir: filepath.Join(root, "fragments"), StateDir: filepath.Join(root, "state")}
	type writer struct {
		cmd   *exec.Cmd
		lines chan int
		ack   int
	}
	start := func(prefix string) *writer {
		cmd := exec.Command(os.Args[0], "-test.run=^TestStoreKill9Child$", "-test.count=1")
		cmd.Env = append(os.Environ(), "HC_KILL9_ROOT="+root, "HC_KILL9_PREFIX="+prefix)
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		w := &writer{cmd: cmd, lines: make(chan int, 1)}
		go func() {
			ack := -1
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				var n int
				if _, err := fmt.Sscanf(sc.Text(), "group %d", &n); err == nil {
					ack = n
				} else {
					fmt.Fprintln(os.Stderr, "writer:", sc.Text())
				}
			}
			w.lines <- ack
		}()
		return w
	}
	// the last group each writer acknowledged, and the runs it made since:
	// each may have journaled one group more than it acknowledged
	acks := map[string]int{"p": 0, "q": 0}
	runsSince := map[string]int{"p": 0, "q": 0}
	kill := func(prefix string, w *writer) {
		w.cmd.Process.Signal(syscall.SIGKILL)
		w.cmd.Wait()
		if a := <-w.lines; a > 0 {
			acks[prefix], runsSince[prefix] = a, 0
		} else {
			runsSince[prefix]++
		}
	}
	p, q := start("p"), start("q")
	for round := range 20 {
		time.Sleep(time.Duration(20+rand.Intn(150)) * time.Millisecond)
		if round%2 == 0 {
			kill("p", p)
			p = start("p")
		} else {
			kill("q", q)
			q = start("q")
		}
	}
	kill("p", p)
	kill("q", q)
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatalf("Lock after the kills: %v", err)
	}
	defer unlock()
	vp := rvCheckWriter(t, s, "p", acks["p"], runsSince["p"])
	vq := rvCheckWriter(t, s, "q", acks["q"], runsSince["q"])
	t.Logf("writer p at v%d (acknowledged v%d), writer q at v%d (v%d)", vp, acks["p"], vq, acks["q"])
	if j := rvJournal(t, s); len(j) > 0 {
		t.Error("journal not emptied")
	}
	if left := rvStaged(s.Dir); len(left) > 0 {
		t.Errorf("staged left: %v", left)
	}
}

// TestSettleWithTheDirectoryGone: the store directory removed
// between apply and settle (settle called here as Commit would): settling
// fails, the journal stays, and the next Lock puts the parts back, the
// directory made again 0750 as WriteGroup makes it (parts may hold
// credentials).
func TestSettleWithTheDirectoryGone(t *testing.T) {
	s := newStore(t)
	if err := s.Write(rvFrag(t, "shop", 1), nil); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(s.Dir)
	t.Logf("store directory made by WriteGroup: %v", fi.Mode().Perm())
	tx := &Txn{}
	f := rvFrag(t, "shop", 2)
	tx.Put(s.path("shop", true), f.Conf, 0o640)
	tx.Put(s.path("shop", false), f.MapText, 0o640)
	tx.Events = []Event{rvEv("apply", "shop", "test", 1)}
	plan, _ := json.Marshal(tx)
	if err := s.writeJournal(plan); err != nil {
		t.Fatal(err)
	}
	written, touched, err := s.apply(tx)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(s.Dir); err != nil {
		t.Fatal(err)
	}
	if err := s.settle(tx, written, touched, false, 0); err == nil {
		t.Fatal("settling with the directory gone succeeded")
	}
	u, err := rvOther(s).Lock(context.Background())
	if err != nil {
		t.Fatalf("Lock after the failed settling: %v", err)
	}
	defer u()
	if c, m := rvVersion(s, "shop"); c != 2 || m != 2 {
		t.Errorf("shop v%d v%d after recovery", c, m)
	}
	if got := rvHistory(t, s); !slices.Equal(got, []string{"apply shop test"}) {
		t.Errorf("history %q", got)
	}
	if fi, err := os.Stat(s.Dir); err == nil && fi.Mode().Perm() != 0o750 {
		t.Errorf("recovery made the store directory %v; WriteGroup makes it 0750", fi.Mode().Perm())
	}
}

// TestCommitRefusesWhatItCannotWrite: a Put that cannot be written (here
// its directory cannot be made; on a full disk, ENOSPC writing the part)
// fails Commit before its journal: WriteGroup's callers are told "not
// stored", and nothing of the change is in place or carried out later.
func TestCommitRefusesWhatItCannotWrite(t *testing.T) {
	s := newStore(t)
	s.Later = NewSettler()
	writeRaw(t, s.Dir, "blocker", "a file where a directory goes")
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tx := &Txn{Events: []Event{rvEv("apply", "shop", "test", 0)}}
	f := rvFrag(t, "shop", 1)
	tx.Put(s.path("shop", true), f.Conf, 0o640)
	tx.Put(filepath.Join(s.Dir, "blocker", "x"), []byte("x"), 0o640)
	tx.Put(s.path("shop", false), f.MapText, 0o640)
	err = s.Commit(tx)
	t.Logf("Commit: %v", err)
	if err == nil {
		t.Fatal("Commit succeeded")
	}
	if c, m := rvVersion(s, "shop"); c != -1 || m != -1 {
		t.Errorf("Commit failed, yet shop is half stored: conf v%d map v%d", c, m)
	}
	unlock()
	os.Remove(filepath.Join(s.Dir, "blocker"))
	u, err := rvOther(s).Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer u()
	if c, m := rvVersion(s, "shop"); c != -1 || m != -1 {
		t.Errorf("a change whose Commit failed was carried out by the next Lock: shop conf v%d map v%d, history %q", c, m, rvHistory(t, s))
	}
}

var _ = errors.New
