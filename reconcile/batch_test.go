package reconcile

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"haproxy-config/assemble"
	"haproxy-config/fragments"
)

// fakeTrials is a tryFunc over members some of which are bad: a set with
// a bad member fails, naming it when named says haproxy gives its line.
type fakeTrials struct {
	bad   map[int]bool
	named bool
	runs  int
	err   error // returned by every trial when set
}

func (f *fakeTrials) try(accepted, trial []int) (assemble.Problems, map[int]assemble.Problems, error) {
	f.runs++
	if f.err != nil {
		return nil, nil, f.err
	}
	if slices.ContainsFunc(accepted, func(m int) bool { return f.bad[m] }) {
		return nil, nil, fmt.Errorf("accepted %v holds a bad member", accepted)
	}
	var errs assemble.Problems
	blamed := map[int]assemble.Problems{}
	for _, m := range trial {
		if !f.bad[m] {
			continue
		}
		p := &assemble.Problem{Location: assemble.Location{File: "haproxy -c"}, Msg: fmt.Sprintf("bad %d", m)}
		if f.named {
			p.Location = assemble.Location{Fragment: fmt.Sprint(m), File: fmt.Sprintf("%d.cfg", m), Line: 2}
			blamed[m] = assemble.Problems{p}
		}
		errs = append(errs, p)
	}
	return errs, blamed, nil
}

func TestGroupCommit(t *testing.T) {
	for _, tc := range []struct {
		name     string
		n        int
		bad      []int
		named    bool
		maxRuns  int
		wantRuns int // 0: only bounded by maxRuns
	}{
		{name: "all good: one check", n: 20, wantRuns: 1},
		{name: "one bad, named: two checks", n: 20, bad: []int{7}, named: true, wantRuns: 2},
		{name: "three bad, named: two checks", n: 20, bad: []int{0, 7, 19}, named: true, wantRuns: 2},
		{name: "one bad, unnamed: bisected", n: 20, bad: []int{7}, maxRuns: 2*5 + 1},
		{name: "two bad, unnamed: bisected", n: 20, bad: []int{3, 16}, maxRuns: 4*5 + 1},
		{name: "all bad, unnamed", n: 4, bad: []int{0, 1, 2, 3}, maxRuns: 7},
		{name: "alone and bad", n: 1, bad: []int{0}, wantRuns: 1},
		{name: "nothing", n: 0, wantRuns: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeTrials{bad: map[int]bool{}, named: tc.named}
			for _, m := range tc.bad {
				f.bad[m] = true
			}
			accepted, rejected, err := groupCommit(tc.n, f.try)
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(accepted)
			var want []int
			for m := range tc.n {
				if !f.bad[m] {
					want = append(want, m)
				}
			}
			if !slices.Equal(accepted, want) {
				t.Errorf("accepted %v, want %v", accepted, want)
			}
			if len(rejected) != len(tc.bad) {
				t.Errorf("rejected %v, want %v", rejected, tc.bad)
			}
			for _, m := range tc.bad {
				ps := rejected[m]
				if len(ps) != 1 || ps[0].Msg != fmt.Sprintf("bad %d", m) {
					t.Errorf("member %d rejected with %v, want its own problem alone", m, ps)
				}
			}
			if tc.wantRuns > 0 && f.runs != tc.wantRuns || tc.maxRuns > 0 && f.runs > tc.maxRuns || tc.n == 0 && f.runs != 0 {
				t.Errorf("%d checks, want %d (at most %d)", f.runs, tc.wantRuns, tc.maxRuns)
			}
		})
	}
}

func TestGroupCommitError(t *testing.T) {
	boom := errors.New("haproxy missing")
	f := &fakeTrials{err: boom}
	accepted, _, err := groupCommit(5, f.try)
	if !errors.Is(err, boom) || len(accepted) != 0 {
		t.Errorf("groupCommit = %v, %v; want nothing accepted and the error", accepted, err)
	}
}

// TestApplyBatch runs a group through real haproxy: two fragments haproxy
// refuses at their lines, one the policy refuses, a remove of a fragment
// that is not there, one remove that goes through, and a fragment named
// twice; every other change is stored, and each answer is its own.
func TestApplyBatch(t *testing.T) {
	e := newEngine(t, nil)
	mustApply(t, e, "old", backendConf("old_web", "old"), "old.example.com old_web\n")
	var ops []Op
	for i := range 8 {
		name := fmt.Sprintf("t%d", i)
		ops = append(ops, Op{Change: Change{Name: name, ConfFile: name + ".cfg", Conf: []byte(backendConf("b_"+name, name)),
			MapFile: name + ".map", Map: []byte(fmt.Sprintf("%s.example.com b_%s\n", name, name))}, Actor: "tester"})
	}
	ops[2].Conf = []byte("backend b_t2\n    server s1 127.0.0.1:abc\n")
	ops[5].Conf = []byte("backend b_t5\n    hash-type bogus\n")
	ops[6].Map = []byte("t6.example.com nowhere\n")
	ops = append(ops,
		Op{Change: Change{Name: "gone"}, Remove: true},
		Op{Change: Change{Name: "old"}, Remove: true},
		Op{Change: Change{Name: "t0", ConfFile: "t0.cfg", Conf: []byte(backendConf("b_t0", "t0 v2")), MapFile: "t0.map",
			Map: []byte("t0.example.com b_t0\n")}})
	results := e.ApplyBatch(t.Context(), ops)
	if len(results) != len(ops) {
		t.Fatalf("%d results for %d ops", len(results), len(ops))
	}
	wantErr := map[int]string{
		2: `t2.cfg:2: fragment "t2": 'server b_t2/s1' : invalid character 'a' in port number`,
		5: `t5.cfg:2: fragment "t5": 'hash-type' only supports`,
		6: `t6.map:1: fragment "t6"`,
		8: `fragment "gone": no such fragment`,
	}
	for i, r := range results {
		want, bad := wantErr[i]
		switch {
		case bad && (r.Err == nil || !strings.Contains(r.Err.Error(), want)):
			t.Errorf("op %d (%s): %v, want an error with %q", i, ops[i].Name, r.Err, want)
		case !bad && r.Err != nil:
			t.Errorf("op %d (%s): %v, want it accepted", i, ops[i].Name, r.Err)
		case !bad && !ops[i].Remove && (r.Apply == nil || r.Apply.Fragment.Name != ops[i].Name):
			t.Errorf("op %d (%s): accepted as %+v", i, ops[i].Name, r.Apply)
		}
	}
	if !errors.Is(results[8].Err, fragments.ErrNotFound) {
		t.Errorf("remove of a fragment that is not there: %v, want ErrNotFound", results[8].Err)
	}
	if !results[10].Apply.Replaced {
		t.Errorf("the second apply of t0 was not a replacement: %+v", results[10].Apply)
	}
	entries, err := os.ReadDir(e.S.FragmentsDir)
	if err != nil {
		t.Fatal(err)
	}
	var stored []string
	for _, ent := range entries {
		stored = append(stored, ent.Name())
	}
	want := []string{"t0.cfg", "t0.map", "t1.cfg", "t1.map", "t3.cfg", "t3.map", "t4.cfg", "t4.map", "t7.cfg", "t7.map"}
	if !slices.Equal(stored, want) {
		t.Errorf("stored %v, want %v", stored, want)
	}
	if data, _ := os.ReadFile(filepath.Join(e.S.FragmentsDir, "t0.cfg")); !strings.Contains(string(data), "t0 v2") {
		t.Errorf("t0.cfg = %q, want the second version", data)
	}
	history, err := e.Store.History()
	if err != nil {
		t.Fatal(err)
	}
	if last := history[len(history)-1]; last.Name != "t0" || history[1].Actor != "tester" {
		t.Errorf("history %+v: want the first round's events by tester, then t0 again", history)
	}
	for _, ev := range history[1:] { // after the apply of old
		if ev.Via != fragments.ViaAPI {
			t.Errorf("history event %+v: want it marked as the API's (%q)", ev, fragments.ViaAPI)
		}
	}
	if _, err := e.Check(t.Context()); err != nil {
		t.Errorf("check after the batch: %v", err)
	}
}

// backendConf is a config part whose backend answers with body.
func backendConf(backend, body string) string {
	return fmt.Sprintf("backend %s\n    http-request return status 200 content-type text/plain string \"%s\"\n", backend, body)
}

// TestApplyBatchMemoryBounded: the daemon's writer keeps one engine for as
// long as it runs, so what the engine remembers per change must not grow
// with the number of changes: only with what is stored.
func TestApplyBatchMemoryBounded(t *testing.T) {
	e := newEngine(t, nil)
	const changes = 12
	for i := range changes {
		op := Op{Change: Change{Name: "shop", ConfFile: "shop.cfg", Conf: []byte(backendConf("b_shop", "shop")),
			MapFile: "shop.map", Map: []byte(fmt.Sprintf("v%d.example.com b_shop\n", i))}}
		if r := e.ApplyBatch(t.Context(), []Op{op}); r[0].Err != nil {
			t.Fatalf("change %d: %v", i, r[0].Err)
		}
		// a refused version is not remembered either
		bad := Op{Change: Change{Name: "bad", ConfFile: "bad.cfg", Conf: []byte(fmt.Sprintf("backend b_bad\n    hash-type bogus%d\n", i))}}
		if r := e.ApplyBatch(t.Context(), []Op{bad}); r[0].Err == nil {
			t.Fatalf("bad version %d accepted", i)
		}
	}
	if n := len(e.hostsOK); n > 2 {
		t.Errorf("after %d versions of one fragment the engine remembers %d checksums, want at most 2", changes, n)
	}
}

// TestGroupStoredWholeOrNot: an accepted group that cannot be stored (a
// directory where one of its parts goes) stores none of its changes and
// says so to each, and the next change is stored. Found by a review: the
// first fragment was stored while both were answered failed, and the
// journal left behind failed every change after.
func TestGroupStoredWholeOrNot(t *testing.T) {
	e := newEngine(t, nil)
	if err := os.MkdirAll(filepath.Join(e.S.FragmentsDir, "blog.map"), 0o755); err != nil {
		t.Fatal(err)
	}
	change := func(name string) Op {
		return Op{Change: Change{Name: name, ConfFile: name + ".cfg", Conf: []byte(backendConf("b_"+name, name)),
			MapFile: name + ".map", Map: []byte(name + ".example.com b_" + name + "\n")}}
	}
	for i, r := range e.ApplyBatch(t.Context(), []Op{change("shop"), change("blog")}) {
		if r.Err == nil {
			t.Errorf("change %d was answered stored", i)
		}
	}
	if _, err := e.Store.Read("shop"); err == nil {
		t.Error("shop is stored from a group that was not")
	}
	if r := e.ApplyBatch(t.Context(), []Op{change("wiki")}); r[0].Err != nil {
		t.Fatalf("the next change: %v", r[0].Err)
	}
}

// TestGroupLooksHostsUpWithoutTheLock (from a review): the changes of a
// group are checked, host lookups included, before the store's lock is
// taken, those of a later round (a fragment named twice) too; the lock
// is free once the group is answered.
func TestGroupLooksHostsUpWithoutTheLock(t *testing.T) {
	e := newEngine(t, nil)
	lockFree := func() bool {
		other := &fragments.Store{Dir: e.S.FragmentsDir, StateDir: e.S.StateDir}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		unlock, err := other.Lock(ctx)
		if err != nil {
			return false
		}
		unlock()
		return true
	}
	var lookups []bool
	e.Resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
		lookups = append(lookups, lockFree())
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}
	op := func(conf string) Op {
		return Op{Change: Change{Name: "shop", ConfFile: "shop.cfg", Conf: []byte(conf), MapFile: "shop.map",
			Map: []byte("shop.example.com shop_web\n")}}
	}
	results := e.ApplyBatch(t.Context(), []Op{
		op("backend shop_web\n    server s1 one.example.com:80\n"),
		op("backend shop_web\n    server s1 two.example.com:80\n"),
	})
	for i, r := range results {
		if r.Err != nil {
			t.Fatalf("op %d: %v", i, r.Err)
		}
	}
	if len(lookups) != 2 || slices.Contains(lookups, false) {
		t.Errorf("lock free during the host lookups: %v; want [true true]", lookups)
	}
	if !lockFree() {
		t.Error("the lock is still held once the group is answered")
	}
}
