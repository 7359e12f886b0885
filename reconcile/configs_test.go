package reconcile

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"time"

	"haproxy-config/assemble"
)

// TestConfigIDIdentifiesTheConfig: two sets have one configID exactly when
// assemble.Build makes the same config of them, whatever else differs
// (order, map parts, file names) and whatever is changed.
func TestConfigIDIdentifiesTheConfig(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	bases := []*assemble.Base{
		{File: "base.cfg", Text: []byte("global\n# " + assemble.MarkerPlaceholder + "\n")},
		{File: "other.cfg", Text: []byte("global\n# " + assemble.MarkerPlaceholder + "\n")},
		{File: "base.cfg", Text: []byte("global\n    maxconn 10\n")},
		{File: "base.cfg", Text: []byte("global\n    maxconn 20\n")},
	}
	frag := func(name string) *assemble.Fragment {
		return &assemble.Fragment{Name: name, ConfFile: name + ".cfg", MapFile: name + ".map",
			Conf: fmt.Appendf(nil, "backend be_%s\n    server s%d 127.0.0.1:%d\n", name, r.IntN(3), 8000+r.IntN(3)),
			Map:  []assemble.MapEntry{{Domain: fmt.Sprintf("%s-%d.example", name, r.IntN(3)), Backend: "be_" + name, Line: 1}}}
	}
	same, differ := 0, 0
	for range 2000 {
		baseA, baseB := bases[r.IntN(len(bases))], bases[r.IntN(len(bases))]
		var a []*assemble.Fragment
		for i := range 1 + r.IntN(6) {
			a = append(a, frag(fmt.Sprintf("f%d", i)))
		}
		b := slices.Clone(a)
		for range r.IntN(3) {
			if len(b) == 0 {
				break
			}
			i := r.IntN(len(b))
			c := *b[i]
			switch r.IntN(6) {
			case 0:
				r.Shuffle(len(b), func(i, j int) { b[i], b[j] = b[j], b[i] })
				continue
			case 1:
				c.Conf = frag(c.Name).Conf // maybe the same bytes
			case 2:
				c.Map, c.ConfFile = frag(c.Name).Map, "elsewhere.cfg"
			case 3:
				c.Name += "x"
			case 4:
				b = slices.Delete(b, i, i+1)
				continue
			case 5:
				c.Conf = append(bytes.Clone(c.Conf), '\n')
			}
			b[i] = &c
		}
		idA, okA := configID(baseA, a)
		idB, okB := configID(baseB, b)
		if !okA || !okB {
			t.Fatal("a set without two fragments of one name was not identified")
		}
		equal := bytes.Equal(assemble.Build(baseA, a).Config, assemble.Build(baseB, b).Config)
		if (idA == idB) != equal {
			t.Fatalf("configs equal %v, IDs equal %v:\n%v\n%v", equal, idA == idB, names(a), names(b))
		}
		if equal {
			same++
		} else {
			differ++
		}
	}
	if same < 200 || differ < 200 {
		t.Fatalf("%d pairs made the same config, %d different ones: too few of one", same, differ)
	}
	if _, ok := configID(bases[0], []*assemble.Fragment{frag("a"), frag("a")}); ok {
		t.Error("a set with two fragments named a was identified")
	}
}

// TestKnownConfigNotAssembled: a set whose config haproxy -c accepted is
// found valid again without being assembled, map changes included; its
// output is assembled once asked for, byte for byte what Build makes. A
// certificate file that changed, or a config not seen yet, is checked by
// haproxy -c again.
func TestKnownConfigNotAssembled(t *testing.T) {
	env, runs := countingHaproxy(t)
	e := newEngine(t, env)
	ctx := context.Background()
	mustApply(t, e, "shop", shopV1, shopMap)
	publish(t, e)
	sel, err := e.load()
	if err != nil {
		t.Fatal(err)
	}
	set := sel.candidates()
	mapOnly := slices.Clone(set)
	changed := *mapOnly[0]
	changed.Map = append(slices.Clone(changed.Map), assemble.MapEntry{Domain: "new.shop.example.com", Backend: "shop_web", Line: 2})
	mapOnly[0] = &changed
	before := runs()
	for what, frags := range map[string][]*assemble.Fragment{"the live set": set, "a map-only change": mapOnly} {
		v, err := e.build(ctx, sel.Base, frags, true)
		if err != nil || len(v.Errors) > 0 {
			t.Fatalf("%s: %v %v", what, err, v.Errors)
		}
		if v.Output != nil {
			t.Errorf("%s was assembled", what)
		}
		want := assemble.Build(sel.Base, frags)
		if got := v.built(); !bytes.Equal(got.Config, want.Config) || !bytes.Equal(got.Map, want.Map) {
			t.Errorf("%s: the output built later is not what Build makes", what)
		}
	}
	if n := runs() - before; n != 0 {
		t.Fatalf("known configs ran haproxy -c %d times", n)
	}
	// a new config
	other := slices.Clone(set)
	renamed := *other[0]
	renamed.Conf = append(bytes.Clone(renamed.Conf), "    timeout server 5s\n"...)
	other[0] = &renamed
	if v, err := e.build(ctx, sel.Base, other, true); err != nil || len(v.Errors) > 0 || v.Output == nil {
		t.Fatalf("a new config: %v %+v", err, v)
	}
	if n := runs() - before; n != 1 {
		t.Fatalf("a new config ran haproxy -c %d times, want once", n)
	}
	// the same config, with the fallback certificate rewritten
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(e.S.FallbackCert(), later, later); err != nil {
		t.Fatal(err)
	}
	if v, err := e.build(ctx, sel.Base, set, true); err != nil || len(v.Errors) > 0 || v.Output == nil {
		t.Fatalf("after the certificate changed: %v %+v", err, v)
	}
	if n := runs() - before; n != 2 {
		t.Fatalf("the known config with a changed certificate ran haproxy -c %d times in all, want 2", n)
	}
}
