package watcher

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"haproxy-config/assemble"
	"haproxy-config/reload"
)

// TestMapChangeAsWholeDiff follows a random history of generated host
// maps, fragments changing, going, coming, domains moving between them,
// and now and then a key listed twice, a line hand-edited in or parts out
// of order, and compares each change mapChange finds with the whole map's
// diff
// (reload.DiffMap), and the entries it keeps with the file's.
func TestMapChangeAsWholeDiff(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 12))
	base := &assemble.Base{File: "base.cfg", Text: []byte("global\n")}
	frags := map[string]*assemble.Fragment{}
	version := 0
	remake := func(name string) {
		version++
		f := &assemble.Fragment{Name: name, Conf: []byte("backend be_" + name + "\n")}
		for i := range r.IntN(6) {
			// mostly its own domains, now and then one from a pool: one
			// that moves, or one mapped twice
			domain := fmt.Sprintf("%s-%d-%d.example", name, i, r.IntN(3))
			if r.IntN(30) == 0 {
				domain = fmt.Sprintf("d%d.example", r.IntN(30))
			}
			f.Map = append(f.Map, assemble.MapEntry{Domain: domain, Backend: fmt.Sprintf("be_%d", r.IntN(3)), Line: i + 1})
		}
		frags[name] = f
	}
	for i := range 40 {
		remake(fmt.Sprintf("f%02d", i))
	}
	generate := func() []byte {
		list := make([]*assemble.Fragment, 0, len(frags))
		for _, f := range frags {
			list = append(list, f)
		}
		data := assemble.Build(base, list).Map
		switch r.IntN(12) {
		case 0:
			data = append(data, "d1.example be_x\n"...) // hand-edited: maybe a key twice
		case 1:
			data = append(data, "  d999.example   be_9  \n# a comment\n\n"...)
		case 2:
			// hand-edited: two fragments' parts out of order
			parts := bytes.SplitAfter(data, []byte("\n"))
			var at []int
			for i, p := range parts {
				if bytes.HasPrefix(p, []byte("# fragment ")) {
					at = append(at, i)
				}
			}
			if len(at) > 2 {
				k := r.IntN(len(at) - 2)
				a, b, c := at[k], at[k+1], at[k+2]
				swapped := slices.Concat(parts[:a], parts[b:c], parts[a:b], parts[c:])
				data = bytes.Join(swapped, nil)
			}
		}
		return data
	}
	parse := func(data []byte) map[string]string {
		m, err := assemble.ParseHostMap("live.map", data)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	data := generate()
	seen := newSeenMap(parse(data), data)
	fast := 0
	for step := range 2000 {
		for range 1 + r.IntN(4) {
			name := fmt.Sprintf("f%02d", r.IntN(45))
			if r.IntN(5) == 0 {
				delete(frags, name)
			} else {
				remake(name)
			}
		}
		next := generate()
		want := parse(next)
		before := maps.Clone(seen.entries)
		got, delta, err := mapChange("live.map", seen, next)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		if !maps.Equal(got.entries, want) {
			t.Fatalf("step %d: entries kept differ from the file's", step)
		}
		if whole := reload.DiffMap(before, want); !reflect.DeepEqual(delta, whole) {
			t.Fatalf("step %d: change %+v, the whole diff is %+v", step, delta, whole)
		}
		if got.unique {
			fast++
		}
		seen = got
	}
	// the point of it: most changes were found from the parts that changed
	if fast < 1000 {
		t.Fatalf("only %d of 2000 maps listed no key twice", fast)
	}
}

// TestMapChangeRefusesABadLine: a line that is not "key value" is an error
// naming the file and line, as a whole read gives.
func TestMapChangeRefusesABadLine(t *testing.T) {
	old := []byte("# host map\n# fragment \"a\"\na.example be_a\n")
	seen := newSeenMap(map[string]string{"a.example": "be_a"}, old)
	_, _, err := mapChange("live.map", seen, []byte("# host map\n# fragment \"a\"\na.example be_a extra\n"))
	if err == nil || err.Error() != `host map live.map:3: want "domain backend", got "a.example be_a extra"` {
		t.Fatalf("got %v", err)
	}
}
