package assemble

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
)

// checkerWorld makes random fragments from small pools of names, so that
// sections, domains and routes collide often.
type checkerWorld struct {
	r       *rand.Rand
	version int
}

// fragment is a new version of name. Its sections and domains are its own
// unless risky, when some come from pools every fragment draws from.
func (w *checkerWorld) fragment(name string, risky bool) *Fragment {
	w.version++
	f := &Fragment{Name: name, ConfFile: fmt.Sprintf("%s-v%d.cfg", name, w.version), MapFile: fmt.Sprintf("%s-v%d.map", name, w.version)}
	pick := func(own, pool string, n int) string {
		if risky && w.r.IntN(3) == 0 {
			return fmt.Sprintf("%s%d", pool, w.r.IntN(n))
		}
		return fmt.Sprintf("%s-%s%d", name, own, w.r.IntN(n))
	}
	kinds := []string{"backend", "backend", "listen", "frontend", "userlist"}
	for i := range 1 + w.r.IntN(3) {
		f.Sections = append(f.Sections, Section{Kind: kinds[w.r.IntN(len(kinds))], Name: pick(fmt.Sprint("s", i), "s", 20), Line: 1 + 5*i})
	}
	for i := range w.r.IntN(4) {
		var backend string
		switch w.r.IntN(4) {
		case 0:
			backend = fmt.Sprintf("f%02d-s0%d", w.r.IntN(70), w.r.IntN(20)) // another's, maybe
		case 1:
			backend = []string{"exported", "private", "www"}[w.r.IntN(3)]
		default:
			backend = f.Sections[w.r.IntN(len(f.Sections))].Name
		}
		f.Map = append(f.Map, MapEntry{Domain: pick(fmt.Sprint("d", i), "d", 40) + ".example", Backend: backend, Line: i + 1})
	}
	return f
}

// TestCheckerAnswersAsCheck follows a random history of sets, each a few
// changes from the one before, and compares every answer of one Checker
// with Check's, problem for problem; the set that goes on is the one
// before when the answer had problems, as a daemon drops a bad change.
func TestCheckerAnswersAsCheck(t *testing.T) {
	w := &checkerWorld{r: rand.New(rand.NewPCG(12, 1))}
	bases := []*Base{
		{File: "base.cfg", Sections: []Section{{Kind: "frontend", Name: "www", Line: 3}, {Kind: "backend", Name: "exported", Line: 9}, {Kind: "backend", Name: "private", Line: 12}}},
		{File: "base.cfg", Sections: []Section{{Kind: "frontend", Name: "www", Line: 3}, {Kind: "backend", Name: "exported", Line: 10}}},
	}
	opts := []Options{{}, {CrossRefs: true}, {Exports: map[string]bool{"exported": true}}, {CrossRefs: true, Exports: map[string]bool{"exported": true}}}
	var c Checker
	var set []*Fragment
	for i := range 60 {
		f := w.fragment(fmt.Sprintf("f%02d", i), false)
		if len(Check(bases[0], append(set, f), opts[0])) == 0 {
			set = append(set, f)
		}
	}
	base, opt := bases[0], opts[0]
	passed := 0
	for step := range 3000 {
		if w.r.IntN(40) == 0 {
			// the operator changes the base or the rules, keeping the set valid
			b, o := bases[w.r.IntN(len(bases))], opts[w.r.IntN(len(opts))]
			if len(Check(b, set, o)) == 0 {
				base, opt = b, o
			}
		}
		next := slices.Clone(set)
		for range 1 + w.r.IntN(3) {
			name := fmt.Sprintf("f%02d", w.r.IntN(70))
			next = slices.DeleteFunc(next, func(f *Fragment) bool { return f.Name == name })
			if w.r.IntN(4) > 0 {
				next = append(next, w.fragment(name, w.r.IntN(2) == 0))
			}
		}
		if w.r.IntN(20) == 0 {
			w.r.Shuffle(len(next), func(i, j int) { next[i], next[j] = next[j], next[i] })
		}
		want := Check(base, next, opt)
		got := c.Check(base, next, opt)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d: Checker says\n%v\nCheck says\n%v", step, got, want)
		}
		if len(want) == 0 {
			set = next
			passed++
		}
	}
	if passed < 300 {
		t.Fatalf("only %d of 3000 sets passed: the history tries too few valid sets", passed)
	}
	// the point of it: most sets were checked from the index
	if c.whole > 600 {
		t.Fatalf("%d of 3000 sets were checked whole", c.whole)
	}
	t.Logf("%d sets passed, %d checked whole", passed, c.whole)
}

// TestCheckerSetWithANameTwice: Check passes a set in which two fragments
// have one name (it does not compare names); the Checker does not keep
// such a set's index, whose entries it could not take out by name. Found
// by a review: a later set was blamed for colliding with the fragment
// that had gone.
func TestCheckerSetWithANameTwice(t *testing.T) {
	base := &Base{File: "base.cfg"}
	frag := func(name, file, backend, domain string) *Fragment {
		return &Fragment{Name: name, ConfFile: file + ".cfg", MapFile: file + ".map",
			Sections: []Section{{Kind: "backend", Name: backend, Line: 1}},
			Map:      []MapEntry{{Domain: domain, Backend: backend, Line: 1}}}
	}
	a1, a2 := frag("a", "a1", "be_x", "x.example"), frag("a", "a2", "be_y", "y.example")
	b := frag("b", "b", "be_x", "x.example")
	var c Checker
	for i, set := range [][]*Fragment{{a1, a2}, {a2}, {a2, b}} {
		want := Check(base, set, Options{})
		if got := c.Check(base, set, Options{}); !reflect.DeepEqual(got, want) {
			t.Fatalf("set %d: Checker says\n%v\nCheck says\n%v", i, got, want)
		}
	}
}
