package reconcile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"haproxy-config/assemble"
	"haproxy-config/fragments"
	"haproxy-config/internal/testkit"
	"haproxy-config/reload"
	"haproxy-config/settings"
	"haproxy-config/statedir"
)

// newEngine returns an engine rooted in a fresh directory. Tests here run
// the real haproxy -c; without haproxy they cannot say anything.
func newEngine(t testing.TB, env map[string]string) *Engine {
	t.Helper()
	testkit.RequireHaproxy(t)
	root := testkit.OpenTempDir(t)
	vars := map[string]string{
		"HAPROXY_CONFIG_ROOT":       root,
		"HAPROXY_CONFIG_HTTP_ADDR":  "127.0.0.1:18080",
		"HAPROXY_CONFIG_HTTPS_ADDR": "127.0.0.1:18443",
		// the tests' servers are on loopback ports
		"HAPROXY_CONFIG_ALLOW_NETWORKS": "127.0.0.0/8",
	}
	for k, v := range env {
		vars[k] = v
	}
	s, err := settings.Load(settings.Source{Getenv: func(k string) (string, bool) { v, ok := vars[k]; return v, ok }})
	if err != nil {
		t.Fatal(err)
	}
	return New(s)
}

// inPlace validates the live files where they are, as this process (the
// engine's own checks run on candidate copies, as the check user).
func inPlace(e *Engine) *reload.Validator { return &reload.Validator{Haproxy: e.S.Haproxy} }

func apply(t *testing.T, e *Engine, name, conf, hostMap string) (*ApplyResult, error) {
	t.Helper()
	return e.Apply(context.Background(), Change{Name: name, ConfFile: name + ".conf.in", Conf: []byte(conf), MapFile: name + ".map.in", Map: []byte(hostMap)})
}

func mustApply(t *testing.T, e *Engine, name, conf, hostMap string) {
	t.Helper()
	if _, err := apply(t, e, name, conf, hostMap); err != nil {
		t.Fatalf("apply %s: %v", name, err)
	}
}

// snapshot captures every file under the fragment and state directories
// except scratch candidates, to prove a rejected change wrote nothing.
func snapshot(t *testing.T, e *Engine) map[string]string {
	t.Helper()
	files := map[string]string{}
	for _, dir := range []string{e.S.FragmentsDir, e.S.StateDir} {
		filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || strings.Contains(path, "/"+statedir.Candidates+"/") || filepath.Base(path) == statedir.Validated {
				return nil
			}
			data, _ := os.ReadFile(path)
			files[path] = string(data)
			return nil
		})
	}
	return files
}

const incumbentConf = `backend inc_web
    server s1 127.0.0.1:9001
`

func TestApplyRejections(t *testing.T) {
	e := newEngine(t, nil)
	mustApply(t, e, "incumbent", incumbentConf, "inc.example.com inc_web\n")
	okConf := "backend new_web\n    server s1 127.0.0.1:9002\n"
	okMap := "new.example.com new_web\n"
	big := strings.Repeat("# padding\n", int(e.S.MaxFragmentBytes/10)+1)

	cases := []struct {
		name, frag, conf, hostMap string
		wantMap                   bool // the problem is in the map part
		line                      int
		msg                       string
	}{
		{"name with traversal", "../etc", okConf, okMap, false, 0, "fragment name"},
		{"map line with three fields", "t", okConf, "# comment\nnew.example.com new_web extra\n", true, 2, "expected two fields"},
		{"invalid domain", "t", okConf, "exa_mple.com new_web\n", true, 1, "not a valid host name"},
		{"bad wildcard", "t", okConf, "\nfoo.*.example.com new_web\n", true, 2, "wildcard"},
		{"domain twice in one file", "t", okConf, okMap + "NEW.example.com new_web\n", true, 2, "already mapped on line 1"},
		{"domain of another fragment", "t", okConf, okMap + "inc.example.com new_web\n", true, 2, `already mapped by fragment "incumbent"`},
		{"backend nobody defines", "t", okConf, "new.example.com other_web\n", true, 1, "this fragment does not define and the base config does not export"},
		{"backend of another fragment", "t", okConf, "new.example.com inc_web\n", true, 1, "this fragment does not define and the base config does not export"},
		{"section of another fragment", "t", "# mine\n" + incumbentConf, "", false, 2, `already defined as backend by fragment "incumbent"`},
		{"section of the base config", "t", "backend https\n    server s1 127.0.0.1:1\n", "", false, 1, `backend name "https" is the name of one of the base config's sections`},
		{"global section", "t", "global\n    maxconn 1\n", "", false, 1, "global sections"},
		{"userlist not allowed", "t", okConf + "userlist admins\n    user a insecure-password b\n", okMap, false, 3, "userlist sections are not allowed"},
		{"lua action", "t", okConf + "    http-request lua.hook\n", okMap, false, 3, `http-request action "lua.hook" is not allowed in a backend of a fragment: it runs Lua code`},
		// refused by the allowlist before haproxy sees them
		{"unknown keyword", "t", "backend new_web\n    balance roundrobin\n    bogus-keyword 1\n", okMap, false, 3, `keyword "bogus-keyword" is not on the allowlist`},
		{"unknown fetch", "t", "backend new_web\n    http-request deny if { nosuchfetch }\n", okMap, false, 2, `sample fetch "nosuchfetch" is not allowed`},
		{"track another fragment's server", "t", "backend new_web\n    server s1 127.0.0.1:80 track inc_web/s1\n", okMap, false, 2, `track "inc_web/s1" names a server of backend "inc_web"`},
		{"stick table of another fragment", "t", "# tenant t\nbackend new_web\n    stick on src table inc_web\n", okMap, false, 3, `stick table "inc_web", which this fragment does not define`},
		{"external check", "t", "backend new_web\n    option external-check\n    external-check command /bin/true\n", okMap, false, 2, "external-check"},
		{"directive before any section", "t", "    server s1 127.0.0.1:1\n" + okConf, okMap, false, 1, "outside any section"},
		{"NUL byte", "t", "backend new_web\n    server s1 127.0.0.1:9002\x00\n", okMap, false, 2, "NUL byte"},
		{"invalid UTF-8", "t", okConf, "new.example.com new_web\n\xff\n", true, 2, "invalid UTF-8"},
		{"oversized", "t", okConf + big, okMap, false, 0, "over the limit"},
		{"reserved backend name", "t", "backend haproxy_config_x\n", "", false, 1, "reserved"},
		// rejected by haproxy -c itself, mapped back to the fragment's lines
		{"haproxy: unknown hash type", "t", "backend new_web\n    balance roundrobin\n    hash-type bogus\n", okMap, false, 3, "'hash-type' only supports"},
		{"haproxy: bad port", "t", "backend new_web\n\n    server s1 127.0.0.1:abc\n", okMap, false, 3, "invalid character 'a' in port number"},
		{"haproxy: timeout without value", "t", "backend new_web\n    timeout server\n", okMap, false, 2, "expects an integer value"},
		{"haproxy: unknown ACL", "t", "backend new_web\n    http-request deny if nosuchacl\n", okMap, false, 2, "no such ACL : 'nosuchacl'"},
		{"haproxy: track unknown server", "t", "backend new_web\n    server s1 127.0.0.1:80 track s9\n", okMap, false, 2, "unable to find required server 's9'"},
		{"haproxy: stick table missing (no line from haproxy)", "t", "# tenant t\nbackend new_web\n    stick on src\n", okMap, false, 2, "unable to find stick-table 'new_web'"},
	}
	before := snapshot(t, e)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := apply(t, e, tc.frag, tc.conf, tc.hostMap)
			var ps assemble.Problems
			if !errors.As(err, &ps) {
				t.Fatalf("want rejection (assemble.Problems), got %v", err)
			}
			p := ps[0]
			wantFile := tc.frag + ".conf.in"
			if tc.wantMap {
				wantFile = tc.frag + ".map.in"
			}
			if p.Fragment != tc.frag || p.File != wantFile || p.Line != tc.line {
				t.Errorf("location = %q %s:%d, want %q %s:%d\n%v", p.Fragment, p.File, p.Line, tc.frag, wantFile, tc.line, err)
			}
			if !strings.Contains(p.Error(), tc.msg) {
				t.Errorf("message %q does not contain %q", p.Error(), tc.msg)
			}
			if strings.Contains(err.Error(), "/"+statedir.Candidates+"/") {
				t.Errorf("message leaks the candidate path: %v", err)
			}
			after := snapshot(t, e)
			if len(after) != len(before) {
				t.Fatalf("files changed: %d before, %d after", len(before), len(after))
			}
			for path, data := range before {
				if after[path] != data {
					t.Fatalf("%s changed after a rejected apply", path)
				}
			}
		})
	}
	if len(cases) < 15 {
		t.Fatalf("only %d bad inputs", len(cases))
	}
}

func TestApplyNormalizesAndRecords(t *testing.T) {
	e := newEngine(t, map[string]string{"HAPROXY_CONFIG_ALLOW_SECTIONS": "userlist"})
	conf := "backend shop_web\r\n    server s1 127.0.0.1:9001\r\nuserlist shop_users\r\n    user a insecure-password b\r\n"
	hostMap := "\xef\xbb\xbf# shop\r\nBücher.Example shop_web\r\n*.Shop.example.com shop_web\r\n"
	res, err := apply(t, e, "shop", conf, hostMap)
	if err != nil {
		t.Fatal(err)
	}
	if res.Replaced {
		t.Error("first apply reported as a replacement")
	}
	st, err := e.Store.Read("shop")
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.ReplaceAll(conf, "\r\n", "\n"); string(st.Conf) != want {
		t.Errorf("stored conf = %q, want %q", st.Conf, want)
	}
	if want := "# shop\nxn--bcher-kva.example shop_web\n*.shop.example.com shop_web\n"; string(st.Map) != want {
		t.Errorf("stored map = %q, want %q", st.Map, want)
	}
	res, err = apply(t, e, "shop", conf, "")
	if err != nil || !res.Replaced {
		t.Fatalf("second apply: replaced=%v err=%v", res != nil && res.Replaced, err)
	}
	events, err := e.Store.History()
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 2 || events[0].Action != "apply" || events[0].Name != "shop" || !strings.HasPrefix(events[0].Checksum, "sha256:") || events[0].Actor == "" || events[0].Via != "" {
		t.Fatalf("history = %+v", events)
	}
	if events[0].Checksum == events[1].Checksum {
		t.Error("different content recorded with the same checksum")
	}
}

func TestEmptyPartsAndBaseBackends(t *testing.T) {
	base := filepath.Join(t.TempDir(), "base.cfg")
	tmpl := string(assemble.DefaultBase) + "\nbackend parking\n    http-request return status 503\n"
	if err := os.WriteFile(base, []byte(tmpl), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, map[string]string{"HAPROXY_CONFIG_BASE": base})
	// a map-only fragment may route to a backend the operator's base
	// exports, but not to one it does not, nor to haproxy-config's own
	if _, err := apply(t, e, "parked", "", "parked.example.com haproxy_config_unknown_host\n"); err == nil || !strings.Contains(err.Error(), "cannot be routed to") {
		t.Fatalf("routing to a reserved backend: got %v", err)
	}
	if _, err := apply(t, e, "parked", "", "parked.example.com parking\n"); err == nil || !strings.Contains(err.Error(), "does not export") {
		t.Fatalf("routing to a base backend that is not exported: got %v", err)
	}
	e = newEngine(t, map[string]string{"HAPROXY_CONFIG_BASE": base, "HAPROXY_CONFIG_EXPORTS": "parking"})
	mustApply(t, e, "parked", "", "parked.example.com parking\n")
	// a config-only fragment
	mustApply(t, e, "spare", "backend spare_web\n    server s1 127.0.0.1:9\n", "")
	infos, err := e.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 || infos[0].Name != "parked" || infos[0].Domains[0] != "parked.example.com" || len(infos[1].Domains) != 0 {
		t.Fatalf("list = %+v", infos)
	}
}

func TestCrossReferences(t *testing.T) {
	e := newEngine(t, map[string]string{"HAPROXY_CONFIG_CROSS_REFS": "true"})
	mustApply(t, e, "shared", "backend shared_web\n    server s1 127.0.0.1:9\n", "")
	mustApply(t, e, "user", "", "user.example.com shared_web\n")

	err := e.Remove(context.Background(), "shared")
	var ps assemble.Problems
	if !errors.As(err, &ps) || !strings.Contains(err.Error(), `fragment "user"`) || !strings.Contains(err.Error(), "shared_web") {
		t.Fatalf("remove of a used backend: want refusal naming the user, got %v", err)
	}
	if _, err := e.Store.Read("shared"); err != nil {
		t.Fatalf("refused remove deleted the fragment: %v", err)
	}
	_, err = apply(t, e, "shared", "backend other_web\n    server s1 127.0.0.1:9\n", "")
	if !errors.As(err, &ps) || !strings.Contains(err.Error(), `fragment "user"`) {
		t.Fatalf("replacing away a used backend: want refusal naming the user, got %v", err)
	}
	if err := e.Remove(context.Background(), "user"); err != nil {
		t.Fatal(err)
	}
	if err := e.Remove(context.Background(), "shared"); err != nil {
		t.Fatalf("remove once unused: %v", err)
	}
	if err := e.Remove(context.Background(), "shared"); !errors.Is(err, fragments.ErrNotFound) {
		t.Fatalf("second remove: want ErrNotFound, got %v", err)
	}
}

func TestRemoveRefusedWhenOthersDependOnIt(t *testing.T) {
	// by default no fragment may tie itself to another's objects: that
	// would let it block the other's own remove for good
	e := newEngine(t, nil)
	mustApply(t, e, "primary", "backend primary_web\n    server s1 127.0.0.1:9001 check\n", "")
	tracker := "backend tracker_web\n    server s1 127.0.0.1:9002 track primary_web/s1\n"
	if _, err := apply(t, e, "tracker", tracker, ""); err == nil || !strings.Contains(err.Error(), `track "primary_web/s1"`) {
		t.Fatalf("tracking another fragment's server: want a refusal, got %v", err)
	}
	// with cross-references allowed, a tenant tracking another tenant's
	// server: haproxy -c rejects the config once the tracked backend is
	// gone, so the remove must be refused
	e = newEngine(t, map[string]string{"HAPROXY_CONFIG_CROSS_REFS": "true"})
	mustApply(t, e, "primary", "backend primary_web\n    server s1 127.0.0.1:9001 check\n", "")
	mustApply(t, e, "tracker", tracker, "")
	err := e.Remove(context.Background(), "primary")
	if err == nil || !strings.Contains(err.Error(), `fragment "tracker"`) {
		t.Fatalf("want refusal naming the tracker, got %v", err)
	}
	if _, err := e.Store.Read("primary"); err != nil {
		t.Fatal("refused remove deleted the fragment")
	}
}

// writeRaw drops files into the fragment directory the way Ansible's copy
// module would, bypassing every check.
func writeRaw(t *testing.T, e *Engine, name, conf, hostMap string) {
	t.Helper()
	if err := os.MkdirAll(e.S.FragmentsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	c, m := e.Store.Paths(name)
	if err := os.WriteFile(c, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m, []byte(hostMap), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestPublishQuarantinesBadFragments(t *testing.T) {
	e := newEngine(t, nil)
	ctx := context.Background()
	writeRaw(t, e, "good", "backend good_web\n    server s1 127.0.0.1:9001\n", "good.example.com good_web\n")
	writeRaw(t, e, "badmap", "backend badmap_web\n    server s1 127.0.0.1:9002\n", "not a valid line\n")
	writeRaw(t, e, "badcfg", "backend badcfg_web\n    server s1 127.0.0.1:abc\n", "badcfg.example.com badcfg_web\n")
	writeRaw(t, e, "clash", "backend clash_web\n    server s1 127.0.0.1:9003\n", "good.example.com clash_web\n")
	// "clash" sorts first but arrived later: the older file keeps the domain
	for name, age := range map[string]time.Duration{"good": 2 * time.Hour, "clash": time.Hour} {
		c, m := e.Store.Paths(name)
		for _, p := range []string{c, m} {
			if err := os.Chtimes(p, time.Now().Add(-age), time.Now().Add(-age)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.WriteFile(filepath.Join(e.S.FragmentsDir, "Bad Name.cfg"), []byte("backend x\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	pub, err := e.Publish(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(pub.Selection.Live); strings.Join(got, ",") != "good" {
		t.Fatalf("live = %v, want [good]", got)
	}
	if got := strings.Join(pub.Selection.RejectedNames(), ","); got != "badcfg,badmap,clash" {
		t.Fatalf("rejected = %s", got)
	}
	if p := pub.Selection.Rejected["badcfg"][0]; p.Line != 2 || !strings.HasSuffix(p.File, "badcfg.cfg") {
		t.Errorf("badcfg blamed at %s:%d", p.File, p.Line)
	}
	if len(pub.Selection.Strays) != 1 || !strings.Contains(pub.Selection.Strays[0].File, "Bad Name.cfg") {
		t.Errorf("strays = %v", pub.Selection.Strays)
	}
	live, err := os.ReadFile(e.S.OutputConfig)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(live, []byte("backend good_web")) || bytes.Contains(live, []byte("badcfg_web")) || bytes.Contains(live, []byte("clash_web")) {
		t.Fatalf("live config holds the wrong fragments:\n%s", live)
	}
	hostMap, _ := os.ReadFile(e.S.OutputMap)
	if !bytes.Contains(hostMap, []byte("good.example.com good_web\n")) || bytes.Contains(hostMap, []byte("clash_web")) {
		t.Fatalf("live map:\n%s", hostMap)
	}
	// the bad files stay on disk untouched
	if data, _ := os.ReadFile(filepath.Join(e.S.FragmentsDir, "badmap.map")); string(data) != "not a valid line\n" {
		t.Errorf("quarantined file was modified: %q", data)
	}

	// fixing a file brings it live by itself
	writeRaw(t, e, "badcfg", "backend badcfg_web\n    server s1 127.0.0.1:9004\n", "badcfg.example.com badcfg_web\n")
	pub, err = e.Publish(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names(pub.Selection.Live), ","); got != "badcfg,good" {
		t.Fatalf("after the fix live = %s", got)
	}
	if !pub.Changed || pub.Generation.Number != 2 {
		t.Fatalf("want generation 2 written, got %d changed=%v", pub.Generation.Number, pub.Changed)
	}

	// once live, a fragment keeps its domain against a newer claim even when
	// the newcomer's file is older on disk
	writeRaw(t, e, "aaa", "backend aaa_web\n    server s1 127.0.0.1:9005\n", "badcfg.example.com aaa_web\n")
	c, m := e.Store.Paths("aaa")
	for _, p := range []string{c, m} {
		if err := os.Chtimes(p, time.Now().Add(-24*time.Hour), time.Now().Add(-24*time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	pub, err = e.Publish(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names(pub.Selection.Live), ","); got != "badcfg,good" {
		t.Fatalf("a newcomer displaced a live fragment: live = %s", got)
	}
	if p := pub.Selection.Rejected["aaa"]; len(p) == 0 || !strings.Contains(p[0].Msg, `fragment "badcfg"`) {
		t.Fatalf("aaa should be rejected naming badcfg: %v", p)
	}
}

func names(frags []*assemble.Fragment) []string {
	var out []string
	for _, f := range frags {
		out = append(out, f.Name)
	}
	sort.Strings(out)
	return out
}

func TestGenerationsKeptAndLiveIsWhatWasValidated(t *testing.T) {
	e := newEngine(t, map[string]string{"HAPROXY_CONFIG_KEEP_GENERATIONS": "3"})
	ctx := context.Background()
	for i := range 5 {
		mustApply(t, e, "t", "backend t_web\n    server s1 127.0.0.1:900"+string(rune('0'+i))+"\n", "")
		pub, err := e.Publish(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if pub.Generation.Number != i+1 || !pub.Changed {
			t.Fatalf("publish %d: generation %d changed=%v", i, pub.Generation.Number, pub.Changed)
		}
	}
	pub, err := e.Publish(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pub.Changed || pub.Generation.Number != 5 {
		t.Fatalf("unchanged publish: generation %d changed=%v", pub.Generation.Number, pub.Changed)
	}
	nums, err := e.generationNumbers()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(nums, []int{3, 4, 5}) {
		t.Fatalf("kept generations: %v, want 3 4 5", nums)
	}
	newest, err := e.readGeneration(5)
	if err != nil || newest.Fragments["t"] == "" {
		t.Fatalf("generation 5 metadata: %+v %v", newest, err)
	}
	// the newest generation is byte for byte the live pair, and haproxy
	// accepts the live file where it is, with its relative map reference
	cfg, hostMap, err := e.layout(newest.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, pair := range [][2]string{{cfg, e.S.OutputConfig}, {hostMap, e.S.OutputMap}} {
		a, _ := os.ReadFile(pair[0])
		b, _ := os.ReadFile(pair[1])
		if len(a) == 0 || !bytes.Equal(a, b) {
			t.Fatalf("%s and %s differ", pair[0], pair[1])
		}
	}
	res, err := inPlace(e).Check(ctx, e.S.OutputConfig)
	if err != nil || !res.Valid {
		t.Fatalf("live config does not validate in place: %v %+v", err, res)
	}
}

func TestMapOutsideConfigDirectory(t *testing.T) {
	root := testkit.OpenTempDir(t)
	e := newEngine(t, map[string]string{
		"HAPROXY_CONFIG_OUTPUT": filepath.Join(root, "etc/live/haproxy.cfg"),
		"HAPROXY_CONFIG_MAP":    filepath.Join(root, "maps/hosts.map"),
	})
	mustApply(t, e, "t", "backend t_web\n    server s1 127.0.0.1:9001\n", "t.example.com t_web\n")
	if _, err := e.Publish(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	live, _ := os.ReadFile(e.S.OutputConfig)
	if !bytes.Contains(live, []byte("map(../../maps/hosts.map)")) {
		t.Fatalf("live config does not reference the map relatively:\n%s", live)
	}
	res, err := inPlace(e).Check(context.Background(), e.S.OutputConfig)
	if err != nil || !res.Valid {
		t.Fatalf("live config does not validate in place: %v %+v", err, res)
	}
}

func TestBaseConfigErrors(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.cfg")
	if err := os.WriteFile(base, []byte("global\n    master-worker\n\nbackend b\n    server s {{.Nope}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, map[string]string{"HAPROXY_CONFIG_BASE": base})
	_, err := e.Check(context.Background())
	var ps assemble.Problems
	if !errors.As(err, &ps) || ps[0].File != base || ps[0].Line != 5 || !strings.Contains(err.Error(), "Nope") {
		t.Fatalf("want a problem at %s:5 about Nope, got %v", base, err)
	}
	missing := newEngine(t, map[string]string{"HAPROXY_CONFIG_BASE": filepath.Join(dir, "missing.cfg")})
	if _, err := missing.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "missing.cfg") {
		t.Fatalf("explicit base that does not exist: got %v", err)
	}
}

// haproxy finds some clashes itself (a proxy id used twice) and reports them
// at whichever fragment comes later in the file, which is name order. The
// incumbent must keep its place whatever the names.
func TestHaproxyClashBlamesTheNewcomer(t *testing.T) {
	e := newEngine(t, nil)
	ctx := context.Background()
	mustApply(t, e, "zeta", "backend zeta_web\n    id 1000\n    server s1 127.0.0.1:9001\n", "zeta.example.com zeta_web\n")
	if _, err := e.Publish(ctx, nil); err != nil {
		t.Fatal(err)
	}
	// through the CLI path: refused, blamed on the newcomer's own file
	_, err := apply(t, e, "alpha", "backend alpha_web\n    id 1000\n", "")
	var ps assemble.Problems
	if !errors.As(err, &ps) || ps[0].Fragment != "alpha" || ps[0].File != "alpha.conf.in" || ps[0].Line != 1 {
		t.Fatalf("apply alpha: want a problem at alpha.conf.in:1, got %v", err)
	}
	if !strings.Contains(err.Error(), "custom id") {
		t.Errorf("haproxy's reason is missing: %v", err)
	}
	// copied in directly: quarantined, zeta stays live
	writeRaw(t, e, "alpha", "backend alpha_web\n    id 1000\n", "")
	pub, err := e.Publish(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names(pub.Selection.Live), ","); got != "zeta" {
		t.Fatalf("live = %s, want zeta", got)
	}
	if p := pub.Selection.Rejected["alpha"]; len(p) == 0 || !strings.HasSuffix(p[0].File, "alpha.cfg") || p[0].Line != 1 {
		t.Fatalf("alpha rejected as %v", p)
	}
}

// A failure haproxy ties to no line makes the engine add fragments back one
// at a time; with cross-fragment references a fragment routing to another's
// backend must not be mistaken for the culprit.
func TestUnattributedFailureWithCrossReferences(t *testing.T) {
	e := newEngine(t, map[string]string{"HAPROXY_CONFIG_CROSS_REFS": "true", "HAPROXY_CONFIG_ALLOW_SECTIONS": "cache"})
	ctx := context.Background()
	mustApply(t, e, "api", "backend api_web\n    server s1 127.0.0.1:9001\n", "")
	mustApply(t, e, "web", "", "www.example.com api_web\n")
	if _, err := e.Publish(ctx, nil); err != nil {
		t.Fatal(err)
	}
	writeRaw(t, e, "cachey", "cache cachey_cache\n    total-max-size 1\n    max-object-size 2000000\n", "")
	pub, err := e.Publish(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names(pub.Selection.Live), ","); got != "api,web" {
		t.Fatalf("live = %s, want api,web", got)
	}
	p := pub.Selection.Rejected["cachey"]
	if len(p) == 0 || p[0].Fragment != "cachey" || !strings.HasSuffix(p[0].File, "cachey.cfg") {
		t.Fatalf("cachey rejected as %v", p)
	}
	if hostMap, _ := os.ReadFile(e.S.OutputMap); !bytes.Contains(hostMap, []byte("www.example.com api_web")) {
		t.Fatalf("web's route lost:\n%s", hostMap)
	}
}

// The known-valid cache must not let through a config whose certificate
// files are gone: what is published is always run through haproxy -c.
func TestPublishRevalidatesAfterCertFilesVanish(t *testing.T) {
	e := newEngine(t, nil)
	ctx := context.Background()
	mustApply(t, e, "shop", "backend shop_web\n    server s1 127.0.0.1:9001\n", "shop.example.com shop_web\n")
	if err := os.RemoveAll(e.S.CertsDir); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Publish(ctx, nil); err != nil {
		t.Fatal(err)
	}
	res, err := inPlace(e).Check(ctx, e.S.OutputConfig)
	if err != nil || !res.Valid {
		t.Fatalf("published config does not validate: %v %+v", err, res)
	}
}

// TestParseCache: a long-lived engine reuses the parse of an unchanged
// fragment and parses a changed one again, including one that turned bad
// and one whose map part disappeared.
func TestParseCache(t *testing.T) {
	e := newEngine(t, nil)
	writeRaw(t, e, "keep", "backend keep_be\n    server s 127.0.0.1:1\n", "keep.example.com keep_be\n")
	writeRaw(t, e, "edit", "backend edit_be\n    server s 127.0.0.1:2\n", "edit.example.com edit_be\n")
	first, err := e.load()
	if err != nil {
		t.Fatal(err)
	}
	writeRaw(t, e, "edit", "backend edit_be\n    bogus-directive\n", "edit.example.com edit_be\n")
	second, err := e.load()
	if err != nil {
		t.Fatal(err)
	}
	if second.Parsed["keep"] != first.Parsed["keep"] {
		t.Error("an unchanged fragment was parsed again")
	}
	if second.Parsed["edit"] == first.Parsed["edit"] {
		t.Error("a changed fragment kept its old parse")
	}
	writeRaw(t, e, "edit", "backend edit_be\n    server s 127.0.0.1:3\n", "")
	if err := os.Remove(filepath.Join(e.S.FragmentsDir, "edit.map")); err != nil {
		t.Fatal(err)
	}
	third, err := e.load()
	if err != nil {
		t.Fatal(err)
	}
	f := third.Parsed["edit"]
	if f == nil || len(f.Map) != 0 || f.MapFile != "" || !strings.Contains(string(f.Conf), "127.0.0.1:3") {
		t.Errorf("edit after its map part went away: %+v", f)
	}
}

// TestServingAndRestoredGenerations: the generation marked serving is
// never pruned, and after the live files were put back to it, publishing
// the newest output again rewrites the live files without a new generation.
func TestServingAndRestoredGenerations(t *testing.T) {
	e := newEngine(t, map[string]string{"HAPROXY_CONFIG_KEEP_GENERATIONS": "2"})
	ctx := context.Background()
	for i := range 4 {
		mustApply(t, e, "t", "backend t_web\n    server s1 127.0.0.1:900"+string(rune('0'+i))+"\n", "")
		if _, err := e.Publish(ctx, nil); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			if err := e.MarkServing(1); err != nil {
				t.Fatal(err)
			}
		}
	}
	nums, err := e.generationNumbers()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(nums, []int{1, 3, 4}) {
		t.Fatalf("kept generations %v, want 1 (serving) 3 4", nums)
	}
	if _, err := e.Restore(ctx, 1); err != nil {
		t.Fatalf("restore the serving generation: %v", err)
	}
	pub, err := e.Publish(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if pub.Generation.Number != 4 || !pub.Changed {
		t.Fatalf("publish after a restore: generation %d changed=%v, want 4 rewritten live", pub.Generation.Number, pub.Changed)
	}
	if !e.liveEquals(pub.Selection.Verdict.Output) {
		t.Error("the live files do not hold generation 4 again")
	}
	if nums, _ := e.generationNumbers(); !slices.Equal(nums, []int{1, 3, 4}) {
		t.Errorf("generations after republishing %v, want no new one", nums)
	}
}

// TestGenerationMetaCached: a generation's metadata is decoded once while
// its meta.json stays the same file, and read again when it is replaced.
func TestGenerationMetaCached(t *testing.T) {
	e := newEngine(t, nil)
	dir := e.state().Generation(5)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	meta := filepath.Join(dir, statedir.Meta)
	write := func(actor string) {
		t.Helper()
		if err := fragments.WriteFile(meta, fmt.Appendf(nil, `{"generation":5,"actor":%q,"fragments":{"a":"sha256:1"}}`, actor), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("first")
	g1, err := e.readGeneration(5)
	if err != nil || g1.Actor != "first" || g1.Dir != dir {
		t.Fatalf("readGeneration: %+v, %v", g1, err)
	}
	if g2, err := e.readGeneration(5); err != nil || g2 != g1 {
		t.Fatalf("a second read decoded the unchanged meta.json again: %p, %p, %v", g1, g2, err)
	}
	write("second")
	if g3, err := e.readGeneration(5); err != nil || g3.Actor != "second" {
		t.Fatalf("after meta.json was replaced: %+v, %v", g3, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := e.readGeneration(5); err == nil {
		t.Fatal("a removed generation was read from the cache")
	}
}

// TestGenerationCacheKeepsTheRecentlyUsed: with more generations read
// than the cache holds, the one read between all the others (as the
// served generation is on every publish) stays decoded.
func TestGenerationCacheKeepsTheRecentlyUsed(t *testing.T) {
	e := newEngine(t, nil)
	for n := 1; n <= 2*maxCachedGenerations; n++ {
		dir := e.state().Generation(n)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := fragments.WriteFile(filepath.Join(dir, statedir.Meta), fmt.Appendf(nil, `{"generation":%d,"fragments":{}}`, n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	served, err := e.readGeneration(1)
	if err != nil {
		t.Fatal(err)
	}
	for n := 2; n <= 2*maxCachedGenerations; n++ {
		if _, err := e.readGeneration(n); err != nil {
			t.Fatal(err)
		}
		if g, err := e.readGeneration(1); err != nil || g != served {
			t.Fatalf("after generation %d was read, generation 1 was decoded again", n)
		}
	}
}
