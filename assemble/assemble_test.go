package assemble

import (
	"bytes"
	"crypto/sha256"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// testBaseTmpl is the base config the Check and Build tests share. Its
// sections: global (1), defaults (4), frontend http (7), backend fallback
// (11), userlist ops (14).
const testBaseTmpl = `global
    daemon

defaults
    mode http

frontend http
    bind {{.HTTPAddr}}
    use_backend %[req.hdr(host),lower,map({{.MapFile}})]

backend fallback
    http-request return status 404

userlist ops
    user ops insecure-password x
`

func testBase(t *testing.T) *Base {
	t.Helper()
	base, err := RenderBase("base.cfg", []byte(testBaseTmpl), Vars{HTTPAddr: ":8080", MapFile: "hosts.map"})
	if err != nil {
		t.Fatalf("RenderBase: %v", err)
	}
	return base
}

// frag builds a fragment the way fragments.Parse would for valid input:
// conf is scanned, every non-blank, non-comment line of mapText is a
// "domain backend" entry carrying its line number.
func frag(name, conf, mapText string) *Fragment {
	if conf != "" && !strings.HasSuffix(conf, "\n") {
		conf += "\n"
	}
	_, sections := Scan([]byte(conf))
	var entries []MapEntry
	for i, l := range strings.Split(mapText, "\n") {
		l, _, _ = strings.Cut(l, "#")
		w := strings.Fields(l)
		if len(w) == 0 {
			continue
		}
		if len(w) != 2 {
			panic(fmt.Sprintf("frag %s: bad map line %q", name, l))
		}
		entries = append(entries, MapEntry{Domain: w[0], Backend: w[1], Line: i + 1})
	}
	sum := sha256.New()
	sum.Write([]byte(conf))
	sum.Write([]byte{0})
	sum.Write([]byte(mapText))
	return &Fragment{
		Name:     name,
		ConfFile: name + ".cfg",
		MapFile:  name + ".map",
		Conf:     []byte(conf),
		Sections: sections,
		Map:      entries,
		MapText:  []byte(mapText),
		Checksum: fmt.Sprintf("sha256:%x", sum.Sum(nil)),
	}
}

func TestFragmentBackends(t *testing.T) {
	f := frag("a", "userlist u\nbackend b1\nfrontend f\nlisten l1\ncache c\nbackend b2\n", "")
	if got, want := f.Backends(), []string{"b1", "l1", "b2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Backends() = %q, want %q", got, want)
	}
	if got := frag("e", "userlist u\n", "").Backends(); got != nil {
		t.Errorf("Backends() = %q, want none", got)
	}
}

type wantProblem struct {
	loc Location
	msg string // substring of the message
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name  string
		frags []*Fragment
		opt   Options
		want  []wantProblem
	}{
		{
			name: "no fragments",
		},
		{
			name: "independent fragments, routes to own and exported base backends",
			opt:  Options{Exports: map[string]bool{"fallback": true}},
			frags: []*Fragment{
				frag("a", "backend a_web\n    server s 10.0.0.1:80\n", "a.example a_web\nwww.a.example a_web\nold.a.example fallback\n"),
				frag("b", "backend b_web\n    server s 10.0.0.2:80\nlisten b_tcp\n    server s 10.0.0.3:80\n", "b.example b_web\n*.b.example b_tcp\n"),
			},
		},
		{
			name: "section defined twice across two fragments",
			frags: []*Fragment{
				frag("a", "backend shared\n    server s 10.0.0.1:80\n", "a.example shared\n"),
				frag("b", "backend b_web\n    server s 10.0.0.2:80\n\nbackend shared\n    server s 10.0.0.3:80\n", "b.example b_web\n"),
			},
			want: []wantProblem{
				{Location{Fragment: "b", File: "b.cfg", Line: 4}, `backend "shared" is already defined as backend by fragment "a" (a.cfg:1)`},
			},
		},
		{
			name: "the later fragment is blamed whatever the names",
			frags: []*Fragment{
				frag("z", "\n\nbackend shared\n", ""),
				frag("a", "backend shared\n", ""),
			},
			want: []wantProblem{
				{Location{Fragment: "a", File: "a.cfg", Line: 1}, `backend "shared" is already defined as backend by fragment "z" (z.cfg:3)`},
			},
		},
		{
			name: "three definitions: each later one names the first",
			frags: []*Fragment{
				frag("a", "backend x\n", ""),
				frag("b", "backend x\n", ""),
				frag("c", "\nbackend x\n", ""),
			},
			want: []wantProblem{
				{Location{Fragment: "b", File: "b.cfg", Line: 1}, `backend "x" is already defined as backend by fragment "a" (a.cfg:1)`},
				{Location{Fragment: "c", File: "c.cfg", Line: 2}, `backend "x" is already defined as backend by fragment "a" (a.cfg:1)`},
			},
		},
		{
			name: "section defined twice within one fragment",
			frags: []*Fragment{
				frag("a", "backend x\nbackend x\n", ""),
			},
			want: []wantProblem{
				{Location{Fragment: "a", File: "a.cfg", Line: 2}, `backend "x" is already defined as backend by fragment "a" (a.cfg:1)`},
			},
		},
		{
			name: "fragment backend clashes with a base backend",
			frags: []*Fragment{
				frag("a", "# mine\n\nbackend fallback\n    server s 10.0.0.1:80\n", ""),
			},
			want: []wantProblem{
				{Location{Fragment: "a", File: "a.cfg", Line: 3}, `backend "fallback" is already defined as backend by base config base.cfg:11`},
			},
		},
		{
			name: "fragment backend clashes with a base frontend (proxy namespace)",
			frags: []*Fragment{
				frag("a", "backend http\n", ""),
			},
			want: []wantProblem{
				{Location{Fragment: "a", File: "a.cfg", Line: 1}, `backend "http" is already defined as frontend by base config base.cfg:7`},
			},
		},
		{
			name: "fragment userlist clashes with a base userlist",
			frags: []*Fragment{
				frag("a", "backend a_web\nuserlist ops\n", ""),
			},
			want: []wantProblem{
				{Location{Fragment: "a", File: "a.cfg", Line: 2}, `userlist "ops" is already defined as userlist by base config base.cfg:14`},
			},
		},
		{
			name: "fragment backend named like a base userlist is fine",
			frags: []*Fragment{
				frag("a", "backend ops\n", "ops.example ops\n"),
			},
		},
		{
			name: "frontend and backend of the same name clash",
			frags: []*Fragment{
				frag("a", "frontend web\n    bind :9000\n", ""),
				frag("b", "backend web\n", ""),
			},
			want: []wantProblem{
				{Location{Fragment: "b", File: "b.cfg", Line: 1}, `backend "web" is already defined as frontend by fragment "a" (a.cfg:1)`},
			},
		},
		{
			name: "listen and backend of the same name clash",
			frags: []*Fragment{
				frag("a", "backend web\n", ""),
				frag("b", "\nlisten web\n", ""),
			},
			want: []wantProblem{
				{Location{Fragment: "b", File: "b.cfg", Line: 2}, `listen "web" is already defined as backend by fragment "a" (a.cfg:1)`},
			},
		},
		{
			name: "userlist and backend of the same name do not clash",
			frags: []*Fragment{
				frag("a", "userlist web\n    user u insecure-password p\n", ""),
				frag("b", "backend web\n", "b.example web\n"),
			},
		},
		{
			name: "cache and backend of the same name do not clash",
			frags: []*Fragment{
				frag("a", "backend web\ncache web\n", "a.example web\n"),
			},
		},
		{
			name: "domain mapped by two fragments",
			frags: []*Fragment{
				frag("a", "backend a_web\n", "a.example a_web\nshared.example a_web\n"),
				frag("b", "backend b_web\n", "# mine\nb.example b_web\n\nshared.example b_web\n"),
			},
			want: []wantProblem{
				{Location{Fragment: "b", File: "b.map", Line: 4}, `domain "shared.example" is already mapped by fragment "a" (a.map:2)`},
			},
		},
		{
			name: "domain mapped twice by one fragment",
			frags: []*Fragment{
				frag("a", "backend a_web\n", "a.example a_web\na.example a_web\n"),
			},
			want: []wantProblem{
				{Location{Fragment: "a", File: "a.map", Line: 2}, `domain "a.example" is already mapped by fragment "a" (a.map:1)`},
			},
		},
		{
			name: "wildcard and exact domain are different keys",
			frags: []*Fragment{
				frag("a", "backend a_web\n", "*.example.com a_web\n"),
				frag("b", "backend b_web\n", "www.example.com b_web\n"),
			},
		},
		{
			name: "map line routes to a backend nobody defines",
			frags: []*Fragment{
				frag("a", "backend a_web\n", "a.example a_web\n\nx.example nope\n"),
			},
			want: []wantProblem{
				{Location{Fragment: "a", File: "a.map", Line: 3}, `domain "x.example" routes to backend "nope", which this fragment does not define and the base config does not export`},
			},
		},
		{
			name: "map line routes to a base frontend, not a backend",
			frags: []*Fragment{
				frag("a", "backend a_web\n", "a.example http\n"),
			},
			want: []wantProblem{
				{Location{Fragment: "a", File: "a.map", Line: 1}, `domain "a.example" routes to backend "http", which this fragment does not define`},
			},
		},
		{
			name: "map line routes to the base userlist, not a backend",
			frags: []*Fragment{
				frag("a", "backend a_web\n", "a.example ops\n"),
			},
			want: []wantProblem{
				{Location{Fragment: "a", File: "a.map", Line: 1}, `domain "a.example" routes to backend "ops", which this fragment does not define`},
			},
		},
		{
			name: "map line routes to a userlist of its own fragment",
			frags: []*Fragment{
				frag("a", "userlist a_users\nbackend a_web\n", "a.example a_users\n"),
			},
			want: []wantProblem{
				{Location{Fragment: "a", File: "a.map", Line: 1}, `routes to backend "a_users"`},
			},
		},
		{
			name: "map line routes to an exported base backend",
			opt:  Options{Exports: map[string]bool{"fallback": true}},
			frags: []*Fragment{
				frag("a", "", "parked.example fallback\n"),
			},
		},
		{
			name: "map line routes to a base backend that is not exported",
			frags: []*Fragment{
				frag("a", "", "parked.example fallback\n"),
			},
			want: []wantProblem{
				{Location{Fragment: "a", File: "a.map", Line: 1}, `domain "parked.example" routes to backend "fallback", which this fragment does not define and the base config does not export`},
			},
		},
		{
			name: "map line routes to another fragment's backend without cross refs",
			frags: []*Fragment{
				frag("a", "backend a_web\n", "a.example a_web\n"),
				frag("b", "backend b_web\n", "b.example b_web\nalias.example a_web\n"),
			},
			want: []wantProblem{
				{Location{Fragment: "b", File: "b.map", Line: 2}, `domain "alias.example" routes to backend "a_web", which this fragment does not define and the base config does not export`},
			},
		},
		{
			name: "map line routes to another fragment's backend with cross refs",
			frags: []*Fragment{
				frag("a", "backend a_web\n", "a.example a_web\n"),
				frag("b", "backend b_web\n", "b.example b_web\nalias.example a_web\n"),
			},
			opt: Options{CrossRefs: true},
		},
		{
			name: "cross refs to a fragment listed later",
			frags: []*Fragment{
				frag("b", "backend b_web\n", "alias.example a_tcp\n"),
				frag("a", "listen a_tcp\n", ""),
			},
			opt: Options{CrossRefs: true},
		},
		{
			name: "cross refs: a backend nobody defines still fails",
			frags: []*Fragment{
				frag("a", "backend a_web\n", "a.example a_web\n"),
				frag("b", "backend b_web\n", "b.example b_web\nalias.example nope\n"),
			},
			opt: Options{CrossRefs: true},
			want: []wantProblem{
				{Location{Fragment: "b", File: "b.map", Line: 2}, `domain "alias.example" routes to backend "nope", which no fragment defines and the base config does not export`},
			},
		},
		{
			name: "cross refs: another fragment's frontend is not a backend",
			frags: []*Fragment{
				frag("a", "frontend a_fe\n", ""),
				frag("b", "backend b_web\n", "b.example a_fe\n"),
			},
			opt: Options{CrossRefs: true},
			want: []wantProblem{
				{Location{Fragment: "b", File: "b.map", Line: 1}, `routes to backend "a_fe", which no fragment defines and the base config does not export`},
			},
		},
		{
			name: "several problems, sections first, then map lines in fragment order",
			frags: []*Fragment{
				frag("a", "backend a_web\n", "a.example a_web\nx.example gone\n"),
				frag("b", "backend a_web\nbackend fallback\n", "a.example a_web\n"),
			},
			want: []wantProblem{
				{Location{Fragment: "b", File: "b.cfg", Line: 1}, `backend "a_web" is already defined as backend by fragment "a" (a.cfg:1)`},
				{Location{Fragment: "b", File: "b.cfg", Line: 2}, `backend "fallback" is already defined as backend by base config base.cfg:11`},
				{Location{Fragment: "a", File: "a.map", Line: 2}, `domain "x.example" routes to backend "gone"`},
				{Location{Fragment: "b", File: "b.map", Line: 1}, `domain "a.example" is already mapped by fragment "a" (a.map:1)`},
			},
		},
	}
	base := testBase(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps := Check(base, tt.frags, tt.opt)
			if len(ps) != len(tt.want) {
				t.Fatalf("got %d problems, want %d:\n%v", len(ps), len(tt.want), ps)
			}
			if len(ps) == 0 && ps.Err() != nil {
				t.Errorf("Err() = %v for no problems", ps.Err())
			}
			for i, w := range tt.want {
				p := ps[i]
				if p.Location != w.loc {
					t.Errorf("problem %d: Location = %+v, want %+v (%s)", i, p.Location, w.loc, p.Msg)
				}
				if !strings.Contains(p.Msg, w.msg) {
					t.Errorf("problem %d: Msg = %q, want it to contain %q", i, p.Msg, w.msg)
				}
			}
		})
	}
}

func TestCheckDoesNotModifyInput(t *testing.T) {
	base := testBase(t)
	a := frag("a", "backend a_web\n", "a.example a_web\n")
	b := frag("b", "backend a_web\n", "a.example nope\n")
	frags := []*Fragment{a, b}
	before := fmt.Sprintf("%+v %+v", *a, *b)
	baseBefore := fmt.Sprintf("%+v", *base)
	if ps := Check(base, frags, Options{}); len(ps) != 3 {
		t.Fatalf("got %d problems, want 3: %v", len(ps), ps)
	}
	if frags[0] != a || frags[1] != b {
		t.Error("Check reordered its input")
	}
	if after := fmt.Sprintf("%+v %+v", *a, *b); after != before {
		t.Error("Check modified a fragment")
	}
	if after := fmt.Sprintf("%+v", *base); after != baseBefore {
		t.Error("Check modified the base")
	}
}

func TestLocationString(t *testing.T) {
	tests := []struct {
		loc  Location
		want string
	}{
		{Location{File: "base.cfg", Line: 7}, "base config base.cfg:7"},
		{Location{File: "haproxy -c"}, "haproxy -c"},
		{Location{Fragment: "a", File: "a.cfg", Line: 3}, `fragment "a" (a.cfg:3)`},
		{Location{Fragment: "a", File: "a.map"}, `fragment "a" (a.map)`},
	}
	for _, tt := range tests {
		if got := tt.loc.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.loc, got, tt.want)
		}
	}
}

func TestProblems(t *testing.T) {
	var none Problems
	if err := none.Err(); err != nil {
		t.Errorf("nil Problems.Err() = %v, want nil", err)
	}
	ps := Problems{
		Problemf(Location{File: "base.cfg", Line: 2}, "bad %s", "base"),
		Problemf(Location{Fragment: "b", File: "b.cfg", Line: 1}, "x"),
		Problemf(Location{Fragment: "a", File: "a.map", Line: 4}, "y %d", 1),
		Problemf(Location{Fragment: "b", File: "b.map", Line: 2}, "z"),
	}
	if got, want := ps.Fragments(), []string{"b", "a"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Fragments() = %q, want %q", got, want)
	}
	want := "base.cfg:2: base config: bad base\n" +
		`b.cfg:1: fragment "b": x` + "\n" +
		`a.map:4: fragment "a": y 1` + "\n" +
		`b.map:2: fragment "b": z`
	if err := ps.Err(); err == nil || err.Error() != want {
		t.Errorf("Err() = %v, want %q", err, want)
	}
}

// buildFrags are the fragments of the golden test, deliberately not in
// name order. "mid" has no map part.
func buildFrags() []*Fragment {
	return []*Fragment{
		frag("zeta", "backend zeta_web\n    server s1 10.0.0.3:80 check\n", "zeta.example zeta_web\n*.zeta.example zeta_web\n"),
		frag("alpha", "# alpha's site\nbackend alpha_web\n    balance roundrobin\n    server s1 10.0.0.1:80\n    server s2 10.0.0.2:80\n\nuserlist alpha_users\n    user admin insecure-password secret\n",
			"# alpha's domains\nalpha.example alpha_web\n\nwww.alpha.example alpha_web\n"),
		frag("mid", "listen mid_tcp\n    mode tcp\n    server s 10.0.0.4:5432\n", ""),
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the output (run go test -update if the change is intended)\n--- got:\n%s\n--- want:\n%s", path, got, want)
	}
}

func TestBuildGolden(t *testing.T) {
	base := testBase(t)
	frags := buildFrags()
	if ps := Check(base, frags, Options{}); len(ps) > 0 {
		t.Fatalf("golden input does not pass Check: %v", ps)
	}
	out := Build(base, frags)
	golden(t, "build.cfg.golden", out.Config)
	golden(t, "build.map.golden", out.Map)

	// Build sorts a copy: the caller's slice keeps its order.
	if frags[0].Name != "zeta" || frags[1].Name != "alpha" || frags[2].Name != "mid" {
		t.Errorf("Build reordered its input: %s, %s, %s", frags[0].Name, frags[1].Name, frags[2].Name)
	}
	// The base comes first, verbatim.
	if !bytes.HasPrefix(out.Config, base.Text) {
		t.Errorf("Config does not start with the base text")
	}
	// Fragments in name order.
	ia := bytes.Index(out.Config, []byte(`# ---- fragment "alpha"`))
	im := bytes.Index(out.Config, []byte(`# ---- fragment "mid"`))
	iz := bytes.Index(out.Config, []byte(`# ---- fragment "zeta"`))
	if ia < 0 || im < 0 || iz < 0 || !(ia < im && im < iz) {
		t.Errorf("fragment markers at %d (alpha), %d (mid), %d (zeta); want all present and in that order", ia, im, iz)
	}
}

func TestBuildNoFragments(t *testing.T) {
	base := testBase(t)
	out := Build(base, nil)
	wantCfg := string(base.Text) + "\n# ==== fragments managed by haproxy-config: edit them with haproxy-config, not here ====\n"
	if string(out.Config) != wantCfg {
		t.Errorf("Config = %q, want %q", out.Config, wantCfg)
	}
	if want := "# host map generated by haproxy-config: domain backend\n"; string(out.Map) != want {
		t.Errorf("Map = %q, want %q", out.Map, want)
	}
	n := bytes.Count(out.Config, []byte{'\n'})
	for i := 1; i <= n; i++ {
		loc, ok := out.Source.ConfigLine(i)
		if i <= 15 {
			if want := (Location{File: "base.cfg", Line: i}); !ok || loc != want {
				t.Errorf("ConfigLine(%d) = %+v, %v; want %+v, true", i, loc, ok, want)
			}
		} else if ok {
			t.Errorf("ConfigLine(%d) = %+v, true; want ok=false", i, loc)
		}
	}
}

func permutations(frags []*Fragment) [][]*Fragment {
	if len(frags) <= 1 {
		return [][]*Fragment{append([]*Fragment(nil), frags...)}
	}
	var all [][]*Fragment
	for i := range frags {
		rest := make([]*Fragment, 0, len(frags)-1)
		rest = append(rest, frags[:i]...)
		rest = append(rest, frags[i+1:]...)
		for _, p := range permutations(rest) {
			all = append(all, append([]*Fragment{frags[i]}, p...))
		}
	}
	return all
}

func TestBuildDeterministic(t *testing.T) {
	base := testBase(t)
	frags := buildFrags()
	ref := Build(base, frags)
	perms := permutations(frags)
	if len(perms) != 6 {
		t.Fatalf("got %d permutations, want 6", len(perms))
	}
	for _, p := range perms {
		names := fmt.Sprintf("%s,%s,%s", p[0].Name, p[1].Name, p[2].Name)
		out := Build(base, p)
		if !bytes.Equal(out.Config, ref.Config) {
			t.Errorf("order %s: Config differs", names)
		}
		if !bytes.Equal(out.Map, ref.Map) {
			t.Errorf("order %s: Map differs", names)
		}
		if !reflect.DeepEqual(out.Source, ref.Source) {
			t.Errorf("order %s: SourceMap differs", names)
		}
		// Fresh copies of the same input give the same bytes too.
		again := Build(base, buildFrags())
		if !bytes.Equal(again.Config, ref.Config) || !bytes.Equal(again.Map, ref.Map) {
			t.Errorf("rebuilding from fresh fragments gives different bytes")
		}
	}
}

func TestSourceMap(t *testing.T) {
	base := testBase(t)
	frags := buildFrags()
	out := Build(base, frags)
	src := out.Source
	cfgLines := strings.Split(strings.TrimSuffix(string(out.Config), "\n"), "\n")

	// want[n] is the origin of output line n; a zero Location means a line
	// the assembler wrote itself.
	want := make([]Location, len(cfgLines)+1)
	baseLines := bytes.Count(base.Text, []byte{'\n'})
	for n := 1; n <= baseLines; n++ {
		want[n] = Location{File: base.File, Line: n}
	}
	for _, f := range frags {
		idx := bytes.Index(out.Config, f.Conf)
		if idx < 0 || bytes.LastIndex(out.Config, f.Conf) != idx {
			t.Fatalf("fragment %s's text is not found exactly once in the output", f.Name)
		}
		first := bytes.Count(out.Config[:idx], []byte{'\n'}) + 1
		for i := 1; i <= bytes.Count(f.Conf, []byte{'\n'}); i++ {
			want[first+i-1] = Location{Fragment: f.Name, File: f.ConfFile, Line: i}
		}
	}
	fragLines, markerLines := 0, 0
	for n := 1; n < len(want); n++ {
		loc, ok := src.ConfigLine(n)
		if want[n] == (Location{}) {
			markerLines++
			if ok {
				t.Errorf("ConfigLine(%d) = %+v, true; want ok=false for %q", n, loc, cfgLines[n-1])
			}
			if l := cfgLines[n-1]; l != "" && !strings.HasPrefix(l, "# ==== ") && !strings.HasPrefix(l, "# ---- ") {
				t.Errorf("output line %d %q belongs to nobody", n, l)
			}
			continue
		}
		if !ok || loc != want[n] {
			t.Errorf("ConfigLine(%d) = %+v, %v; want %+v, true", n, loc, ok, want[n])
			continue
		}
		// The line it points at is the line in the output.
		var text []byte
		if loc.Fragment == "" {
			text = base.Text
		} else {
			for _, f := range frags {
				if f.Name == loc.Fragment {
					text = f.Conf
					fragLines++
				}
			}
		}
		if src := strings.Split(string(text), "\n")[loc.Line-1]; src != cfgLines[n-1] {
			t.Errorf("output line %d %q, but its origin %v is %q", n, cfgLines[n-1], loc, src)
		}
	}
	// 2 lines of fragment header, then 3 lines of markers per fragment.
	if markerLines != 2+3*len(frags) {
		t.Errorf("%d marker lines, want %d", markerLines, 2+3*len(frags))
	}
	if wantFrag := 2 + 8 + 3; fragLines != wantFrag {
		t.Errorf("%d fragment lines, want %d", fragLines, wantFrag)
	}
	for _, n := range []int{-1, 0, len(cfgLines) + 1, len(cfgLines) + 100} {
		if loc, ok := src.ConfigLine(n); ok {
			t.Errorf("ConfigLine(%d) = %+v, true; want ok=false", n, loc)
		}
	}

	// Host map: every entry line leads to its map line; the header and the
	// per-fragment comments lead nowhere.
	mapLines := strings.Split(strings.TrimSuffix(string(out.Map), "\n"), "\n")
	entries := 0
	for i, l := range mapLines {
		n := i + 1
		loc, ok := src.MapLine(n)
		if strings.HasPrefix(l, "#") {
			if ok {
				t.Errorf("MapLine(%d) = %+v, true for comment %q; want ok=false", n, loc, l)
			}
			continue
		}
		l, _, _ = strings.Cut(l, "#")
		w := strings.Fields(l)
		var wantLoc Location
		for _, f := range frags {
			for _, e := range f.Map {
				if e.Domain == w[0] && e.Backend == w[1] {
					wantLoc = Location{Fragment: f.Name, File: f.MapFile, Line: e.Line}
				}
			}
		}
		entries++
		if !ok || loc != wantLoc {
			t.Errorf("MapLine(%d) for %q = %+v, %v; want %+v, true", n, l, loc, ok, wantLoc)
		}
	}
	if entries != 4 {
		t.Errorf("%d map entries in the output, want 4", entries)
	}
	for _, n := range []int{0, len(mapLines) + 1} {
		if loc, ok := src.MapLine(n); ok {
			t.Errorf("MapLine(%d) = %+v, true; want ok=false", n, loc)
		}
	}
	// Spot checks against hand-computed values: alpha's map is "# comment",
	// entry (line 2), blank, entry (line 4).
	if loc, ok := src.MapLine(3); !ok || loc != (Location{Fragment: "alpha", File: "alpha.map", Line: 2}) {
		t.Errorf("MapLine(3) = %+v, %v", loc, ok)
	}
	if loc, ok := src.MapLine(4); !ok || loc != (Location{Fragment: "alpha", File: "alpha.map", Line: 4}) {
		t.Errorf("MapLine(4) = %+v, %v", loc, ok)
	}

	proxies := []struct {
		name string
		loc  Location
		ok   bool
	}{
		{"http", Location{File: "base.cfg", Line: 7}, true},
		{"fallback", Location{File: "base.cfg", Line: 11}, true},
		{"alpha_web", Location{Fragment: "alpha", File: "alpha.cfg", Line: 2}, true},
		{"mid_tcp", Location{Fragment: "mid", File: "mid.cfg", Line: 1}, true},
		{"zeta_web", Location{Fragment: "zeta", File: "zeta.cfg", Line: 1}, true},
		{"ops", Location{}, false},         // base userlist
		{"alpha_users", Location{}, false}, // fragment userlist
		{"nope", Location{}, false},
		{"", Location{}, false},
	}
	for _, p := range proxies {
		loc, ok := src.Proxy(p.name)
		if ok != p.ok || loc != p.loc {
			t.Errorf("Proxy(%q) = %+v, %v; want %+v, %v", p.name, loc, ok, p.loc, p.ok)
		}
	}
}

// TestSourceMapEmptyFragment covers a fragment with an empty config part
// between two others: its markers belong to nobody and do not hide the
// lines of its neighbours.
func TestSourceMapEmptyFragment(t *testing.T) {
	base := testBase(t)
	frags := []*Fragment{
		frag("a", "backend a1\n", ""),
		frag("b", "", "b.example fallback\n"),
		frag("c", "backend c1\nbackend c2\n", ""),
	}
	out := Build(base, frags)
	n := bytes.Count(base.Text, []byte{'\n'})
	// base, blank, ==== header, then per fragment: blank, marker, conf, end.
	a1 := n + 2 + 3
	cFirst := a1 + 1 + 1 + 2 + 0 + 1 + 2
	checks := []struct {
		line int
		loc  Location
		ok   bool
	}{
		{a1 - 1, Location{}, false},
		{a1, Location{Fragment: "a", File: "a.cfg", Line: 1}, true},
		{a1 + 1, Location{}, false}, // end of a
		{a1 + 2, Location{}, false}, // blank
		{a1 + 3, Location{}, false}, // marker of b
		{a1 + 4, Location{}, false}, // end of b
		{cFirst - 1, Location{}, false},
		{cFirst, Location{Fragment: "c", File: "c.cfg", Line: 1}, true},
		{cFirst + 1, Location{Fragment: "c", File: "c.cfg", Line: 2}, true},
		{cFirst + 2, Location{}, false},
	}
	lines := strings.Split(string(out.Config), "\n")
	if lines[cFirst-1] != "backend c1" || lines[a1-1] != "backend a1" {
		t.Fatalf("hand-computed line numbers are off:\n%s", out.Config)
	}
	for _, c := range checks {
		loc, ok := out.Source.ConfigLine(c.line)
		if ok != c.ok || loc != c.loc {
			t.Errorf("ConfigLine(%d) = %+v, %v; want %+v, %v", c.line, loc, ok, c.loc, c.ok)
		}
	}
	if loc, ok := out.Source.MapLine(3); !ok || loc != (Location{Fragment: "b", File: "b.map", Line: 1}) {
		t.Errorf("MapLine(3) = %+v, %v", loc, ok)
	}
}

// The marker follows the config only: a change of the map alone goes live
// through the runtime API, so it must not look like a config to reload.
func TestMarkerDigestsConfigOnly(t *testing.T) {
	base, err := RenderBase("base.cfg", []byte("frontend status\n    http-request return status 200 string \"{{.Marker}}\"\n"),
		Vars{MapFile: "hosts.map", Marker: MarkerPlaceholder})
	if err != nil {
		t.Fatalf("RenderBase: %v", err)
	}
	conf := "backend a_web\n    server s1 10.0.0.1:80\nbackend b_web\n    server s1 10.0.0.2:80\n"
	one := Build(base, []*Fragment{frag("a", conf, "a.example a_web\n")})
	moved := Build(base, []*Fragment{frag("a", conf, "a.example b_web\nnew.example a_web\n")})
	changed := Build(base, []*Fragment{frag("a", conf+"    timeout server 5s\n", "a.example a_web\n")})
	if one.Marker == "" || !strings.HasPrefix(one.Marker, "haproxy-config-") || len(one.Marker) != len(MarkerPlaceholder) {
		t.Fatalf("marker %q: want haproxy-config-<digest> as long as the placeholder", one.Marker)
	}
	if !bytes.Contains(one.Config, []byte(one.Marker)) || bytes.Contains(one.Config, []byte(MarkerPlaceholder)) {
		t.Errorf("the config does not serve its marker in place of the placeholder:\n%s", one.Config)
	}
	if moved.Marker != one.Marker || !bytes.Equal(moved.Config, one.Config) {
		t.Errorf("a map-only change changed the marker: %s -> %s", one.Marker, moved.Marker)
	}
	if changed.Marker == one.Marker {
		t.Errorf("a config change kept the marker %s", one.Marker)
	}
}
