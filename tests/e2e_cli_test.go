package tests

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"haproxy-config/internal/testkit"
)

// listed is the part of "list --json" the tests look at.
type listed struct {
	Name     string   `json:"name"`
	Domains  []string `json:"domains"`
	Backends []string `json:"backends"`
	Valid    bool     `json:"valid"`
	Problems []string `json:"problems"`
}

func listJSON(t *testing.T, env []string) []listed {
	t.Helper()
	out := mustRun(t, env, "", "list", "--json")
	var infos []listed
	if err := json.Unmarshal([]byte(out), &infos); err != nil {
		t.Fatalf("list --json printed invalid JSON: %v\n%s", err, out)
	}
	return infos
}

func TestConcurrentApply50(t *testing.T) {
	testkit.RequireHaproxy(t)
	in := newInstall(t)
	src := t.TempDir()
	const n = 50
	procs := make([]*proc, n)
	for i := range n {
		name := fmt.Sprintf("tenant%02d", i)
		conf := writeFile(t, filepath.Join(src, name+".cfg"), backendConf(fmt.Sprintf("be_%02d", i), name))
		hostMap := writeFile(t, filepath.Join(src, name+".map"), fmt.Sprintf("t%02d.example.com be_%02d\n", i, i))
		procs[i] = start(t, in.env, "", "apply", name, conf, hostMap)
	}
	for i, p := range procs {
		stdout, stderr, code := p.wait(t)
		if code != 0 {
			t.Errorf("apply tenant%02d: exit %d, want 0\nstdout:\n%s\nstderr:\n%s", i, code, stdout, stderr)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	infos := listJSON(t, in.env)
	if len(infos) != n {
		t.Fatalf("list shows %d fragments, want %d: %+v", len(infos), n, infos)
	}
	for i, info := range infos {
		wantName, wantDomain := fmt.Sprintf("tenant%02d", i), fmt.Sprintf("t%02d.example.com", i)
		if info.Name != wantName || !slices.Equal(info.Domains, []string{wantDomain}) || !info.Valid {
			t.Errorf("list entry %d = %+v, want name %s, domains [%s], valid", i, info, wantName, wantDomain)
		}
	}

	entries, err := os.ReadDir(in.fragmentsDir())
	if err != nil {
		t.Fatal(err)
	}
	var cfgs, maps int
	for _, e := range entries {
		switch name := e.Name(); {
		case strings.HasPrefix(name, "."):
			t.Errorf("fragment directory holds a leftover temp file %s", name)
		case strings.HasSuffix(name, ".cfg"):
			cfgs++
		case strings.HasSuffix(name, ".map"):
			maps++
		default:
			t.Errorf("unexpected file %s in the fragment directory", name)
		}
	}
	if len(entries) != 2*n || cfgs != n || maps != n {
		t.Errorf("fragment directory holds %d files (%d .cfg, %d .map), want %d (%d + %d)", len(entries), cfgs, maps, 2*n, n, n)
	}
	for i := range n {
		name := fmt.Sprintf("tenant%02d", i)
		want, _ := os.ReadFile(filepath.Join(src, name+".cfg"))
		got, err := os.ReadFile(filepath.Join(in.fragmentsDir(), name+".cfg"))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("stored %s.cfg = %q (%v), want %q", name, got, err, want)
		}
	}

	history, err := os.ReadFile(in.historyFile())
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(history), "\n"), "\n")
	if len(lines) != n {
		t.Errorf("history has %d lines, want %d:\n%s", len(lines), n, history)
	}
	seen := map[string]bool{}
	for i, line := range lines {
		var ev struct{ Action, Name, Checksum string }
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Errorf("history line %d is not JSON: %v: %q", i+1, err, line)
			continue
		}
		if ev.Action != "apply" || !strings.HasPrefix(ev.Checksum, "sha256:") || seen[ev.Name] {
			t.Errorf("history line %d = %q: want one apply with a checksum per tenant", i+1, line)
		}
		seen[ev.Name] = true
	}
	if len(seen) != n {
		t.Errorf("history names %d distinct fragments, want %d", len(seen), n)
	}

	out := mustRun(t, in.env, "", "check")
	if !strings.Contains(out, fmt.Sprintf("%d fragments valid, 0 rejected", n)) {
		t.Errorf("check printed %q, want %d valid and 0 rejected", out, n)
	}
}

func TestExitCodes(t *testing.T) {
	src := t.TempDir()
	goodConf := writeFile(t, filepath.Join(src, "good.cfg"), backendConf("be_good", "good"))
	goodMap := writeFile(t, filepath.Join(src, "good.map"), "good.example.com be_good\n")
	badMap := writeFile(t, filepath.Join(src, "bad.map"), "# tenant map\ngood.example.com be_good extra\n")
	missing := filepath.Join(src, "missing.cfg")

	cases := []struct {
		name   string
		args   []string
		env    func(in *install) []string // nil: the installation's own
		code   int
		stderr []string // all must appear in stderr
	}{
		{name: "no arguments", code: 2, stderr: []string{"no command given"}},
		{name: "unknown command", args: []string{"frobnicate"}, code: 2, stderr: []string{`unknown command "frobnicate"`}},
		{name: "apply with two arguments", args: []string{"apply", "good", goodConf}, code: 2, stderr: []string{"apply takes NAME CONF MAP, got 2 arguments"}},
		{name: "unknown global flag", args: []string{"--frobnicate", "list"}, code: 2, stderr: []string{"flag provided but not defined", "frobnicate"}},
		{name: "unknown command flag", args: []string{"list", "--frobnicate"}, code: 2, stderr: []string{"flag provided but not defined", "frobnicate"}},
		{name: "bad setting", args: []string{"list"}, env: func(in *install) []string { return in.with("HAPROXY_CONFIG_HTTPS_ADDR=nonsense") },
			code: 2, stderr: []string{"HAPROXY_CONFIG_HTTPS_ADDR", `"nonsense" is not HOST:PORT`}},
		{name: "CONF does not exist", args: []string{"apply", "good", missing, goodMap}, code: 2, stderr: []string{missing, "no such file"}},
		{name: "invalid map line", args: []string{"apply", "good", goodConf, badMap}, code: 4,
			stderr: []string{"rejected", `fragment "good"`, badMap + ":2", "expected two fields"}},
		{name: "remove unknown fragment", args: []string{"remove", "nosuch"}, code: 6, stderr: []string{`"nosuch"`, "no such fragment"}},
		{name: "show unknown fragment", args: []string{"show", "nosuch"}, code: 6, stderr: []string{`"nosuch"`, "no such fragment"}},
		{name: "haproxy missing", args: []string{"apply", "good", goodConf, goodMap},
			env:  func(in *install) []string { return in.with("HAPROXY_CONFIG_HAPROXY=/nonexistent/haproxy") },
			code: 5, stderr: []string{"/nonexistent/haproxy"}},
		{name: "state directory cannot be created", args: []string{"apply", "good", goodConf, goodMap},
			env: func(in *install) []string {
				file := writeFile(t, filepath.Join(in.root, "plainfile"), "not a directory\n")
				return in.with("HAPROXY_CONFIG_STATE=" + filepath.Join(file, "state"))
			},
			code: 5, stderr: []string{"state directory", "plainfile", "not a directory"}},
		{name: "status without a daemon", args: []string{"status"}, code: 5, stderr: []string{"no haproxy-config watch daemon is running"}},
		{name: "invalid fragment name", args: []string{"apply", "../evil", goodConf, goodMap}, code: 2, stderr: []string{`fragment name "../evil" is invalid`}},
		{name: "broken base config", args: []string{"check"},
			env: func(in *install) []string {
				base := writeFile(t, filepath.Join(in.root, "base.cfg"), "defaults\n    timeout connect 5q\n")
				return in.with("HAPROXY_CONFIG_BASE=" + base)
			},
			code: 5, stderr: []string{"base config is invalid", "base.cfg:2"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := newInstall(t)
			env := in.env
			if tc.env != nil {
				env = tc.env(in)
			}
			stdout, stderr, code := run(t, env, "", tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, stdout, stderr)
			}
			for _, want := range tc.stderr {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr does not mention %q:\n%s", want, stderr)
				}
			}
			if stdout != "" {
				t.Errorf("a failing command printed to stdout:\n%s", stdout)
			}
			// No failing command may have stored anything.
			if _, err := os.Stat(in.fragmentsDir()); !errors.Is(err, fs.ErrNotExist) {
				files := snapshot(t, in.fragmentsDir())
				if len(files) > 0 {
					t.Errorf("the fragment store changed: %v", files)
				}
			}
		})
	}

	t.Run("help lists the exit codes", func(t *testing.T) {
		stdout, stderr, code := run(t, newInstall(t).env, "", "--help")
		if code != 0 {
			t.Fatalf("--help: exit %d\n%s", code, stderr)
		}
		if !strings.Contains(stdout, "EXIT CODES") {
			t.Errorf("--help has no EXIT CODES section:\n%s", stdout)
		}
		for _, c := range []struct{ code, word string }{
			{"0", "success"}, {"1", "internal"}, {"2", "usage"}, {"4", "rejected"}, {"5", "environment"}, {"6", "no such fragment"},
		} {
			re := regexp.MustCompile(`(?m)^\s+` + c.code + `\s+.*` + regexp.QuoteMeta(c.word))
			if !re.MatchString(stdout) {
				t.Errorf("--help does not explain exit code %s (%s):\n%s", c.code, c.word, stdout)
			}
		}
	})
}

func TestApplyFromStdin(t *testing.T) {
	testkit.RequireHaproxy(t)
	in := newInstall(t)
	src := t.TempDir()
	conf := backendConf("be_stdin", "from stdin")
	hostMap := writeFile(t, filepath.Join(src, "stdin.map"), "stdin.example.com be_stdin\n")

	out := mustRun(t, in.env, conf, "apply", "fromstdin", "-", hostMap)
	if !strings.Contains(out, `added fragment "fromstdin"`) {
		t.Errorf("apply printed %q, want it to report the added fragment", out)
	}
	got, err := os.ReadFile(filepath.Join(in.fragmentsDir(), "fromstdin.cfg"))
	if err != nil || string(got) != conf {
		t.Errorf("stored config part = %q (%v), want what was piped in: %q", got, err, conf)
	}

	// MAP from standard input works the same way.
	confFile := writeFile(t, filepath.Join(src, "map.cfg"), backendConf("be_mapstdin", "map from stdin"))
	mustRun(t, in.env, "mapstdin.example.com be_mapstdin\n", "apply", "mapstdin", confFile, "-")
	show := mustRun(t, in.env, "", "show", "mapstdin")
	if !strings.Contains(show, "mapstdin.example.com be_mapstdin") {
		t.Errorf("show mapstdin does not print the map read from stdin:\n%s", show)
	}

	// A rejection names standard input and the line.
	bad := "backend be_bad\n    mode http\n    server s1 127.0.0.1:abc\n"
	badMap := writeFile(t, filepath.Join(src, "bad.map"), "bad.example.com be_bad\n")
	_, stderr, code := run(t, in.env, bad, "apply", "badstdin", "-", badMap)
	if code != 4 || !strings.Contains(stderr, "<stdin>:3") {
		t.Errorf("rejected stdin fragment: exit %d, stderr %q; want 4 and a reference to <stdin>:3", code, stderr)
	}

	// Both parts cannot come from the one standard input.
	stdout, stderr, code := run(t, in.env, conf, "apply", "both", "-", "-")
	if code != 2 || !strings.Contains(stderr, "only one of CONF and MAP can be -") {
		t.Errorf("apply both -: exit %d, stderr %q; want 2 and an explanation", code, stderr)
	}
	if stdout != "" {
		t.Errorf("apply both - printed to stdout: %q", stdout)
	}
	if _, _, code := run(t, in.env, "", "show", "both"); code != 6 {
		t.Errorf("show both: exit %d after a refused apply, want 6 (not stored)", code)
	}
	if infos := listJSON(t, in.env); len(infos) != 2 {
		t.Errorf("list shows %d fragments, want 2: %+v", len(infos), infos)
	}
}

func TestRejectedLeavesEverythingAsItWas(t *testing.T) {
	testkit.RequireHaproxy(t)
	in := newInstall(t)
	src := t.TempDir()
	goodConf := backendConf("be_web", "good version")
	hostMap := writeFile(t, filepath.Join(src, "web.map"), "web.example.com be_web\n")
	mustRun(t, in.env, "", "apply", "web", writeFile(t, filepath.Join(src, "good.cfg"), goodConf), hostMap)
	mustRun(t, in.env, "", "assemble")

	frags := snapshot(t, in.fragmentsDir())
	history, err := os.ReadFile(in.historyFile())
	if err != nil {
		t.Fatal(err)
	}
	live := snapshot(t, filepath.Dir(in.liveConfig()))
	if len(frags) != 2 || len(history) == 0 || len(live) == 0 {
		t.Fatalf("unexpected starting state: fragments %v, history %q, live %v", frags, history, live)
	}

	badPath := writeFile(t, filepath.Join(src, "bad.cfg"), "backend be_web\n    mode http\n    server s1 127.0.0.1:abc\n")
	stdout, stderr, code := run(t, in.env, "", "apply", "web", badPath, hostMap)
	if code != 4 {
		t.Fatalf("apply of a config haproxy rejects: exit %d, want 4\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	// The message points at what the user handed in, not at a generated file.
	for _, want := range []string{`"web"`, badPath + ":3", "abc"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr does not mention %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "candidate") || strings.Contains(stderr, in.stateDir()) {
		t.Errorf("stderr leaks the generated candidate's path:\n%s", stderr)
	}

	if after := snapshot(t, in.fragmentsDir()); !mapsEqual(after, frags) {
		t.Errorf("fragment store changed by a rejected apply:\nbefore %q\nafter  %q", frags, after)
	}
	if after, _ := os.ReadFile(in.historyFile()); !bytes.Equal(after, history) {
		t.Errorf("history changed by a rejected apply:\nbefore %q\nafter  %q", history, after)
	}
	if after := snapshot(t, filepath.Dir(in.liveConfig())); !mapsEqual(after, live) {
		t.Errorf("live files changed by a rejected apply")
	}
	show := mustRun(t, in.env, "", "show", "web")
	if !strings.Contains(show, "good version") || strings.Contains(show, "127.0.0.1:abc") {
		t.Errorf("show web does not print the old version:\n%s", show)
	}
	mustRun(t, in.env, "", "check")
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestDefaultsFile(t *testing.T) {
	testkit.RequireHaproxy(t)
	in := newInstall(t)
	src := t.TempDir()
	custom := filepath.Join(in.root, "custom-frags")
	writeFile(t, filepath.Join(in.root, "etc/default/haproxy-config"),
		"# written by the test, as Ansible would\nexport HAPROXY_CONFIG_FRAGMENTS=\""+custom+"\"\nUNRELATED=1\n")

	apply := func(env []string, name string, global ...string) {
		t.Helper()
		conf := writeFile(t, filepath.Join(src, name+".cfg"), backendConf("be_"+name, name))
		hostMap := writeFile(t, filepath.Join(src, name+".map"), name+".example.com be_"+name+"\n")
		mustRun(t, env, "", append(global, "apply", name, conf, hostMap)...)
	}
	storedIn := func(dir string) []string {
		t.Helper()
		var names []string
		entries, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}

	apply(in.env, "fromfile")
	if got := storedIn(custom); !slices.Equal(got, []string{"fromfile.cfg", "fromfile.map"}) {
		t.Errorf("%s holds %v, want the fragment applied with the defaults file", custom, got)
	}
	if got := storedIn(in.fragmentsDir()); len(got) > 0 {
		t.Errorf("the built-in fragment directory was used despite the defaults file: %v", got)
	}
	if infos := listJSON(t, in.env); len(infos) != 1 || infos[0].Name != "fromfile" {
		t.Errorf("list does not read the defaults file's fragment directory: %+v", infos)
	}

	// The environment beats the defaults file, and a flag beats both.
	fromEnv := filepath.Join(in.root, "env-frags")
	apply(in.with("HAPROXY_CONFIG_FRAGMENTS="+fromEnv), "fromenv")
	fromFlag := filepath.Join(in.root, "flag-frags")
	apply(in.with("HAPROXY_CONFIG_FRAGMENTS="+fromEnv), "fromflag", "--fragments", fromFlag)
	for dir, want := range map[string][]string{
		custom:   {"fromfile.cfg", "fromfile.map"},
		fromEnv:  {"fromenv.cfg", "fromenv.map"},
		fromFlag: {"fromflag.cfg", "fromflag.map"},
	} {
		if got := storedIn(dir); !slices.Equal(got, want) {
			t.Errorf("%s holds %v, want %v", dir, got, want)
		}
	}

	// A mistyped key is an error, not silently ignored.
	writeFile(t, filepath.Join(in.root, "etc/default/haproxy-config"), "HAPROXY_CONFIG_FRAGMNETS=/x\n")
	_, stderr, code := run(t, in.env, "", "list")
	if code != 2 || !strings.Contains(stderr, "HAPROXY_CONFIG_FRAGMNETS") || !strings.Contains(stderr, ":1:") {
		t.Errorf("unknown key in the defaults file: exit %d, stderr %q; want 2 naming the key and line", code, stderr)
	}
}
