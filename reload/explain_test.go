package reload

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"haproxy-config/assemble"
	"haproxy-config/fragments"
)

const explainBase = `global
    log stderr format short local0

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend fe
    bind {{.HTTPAddr}}
    use_backend %[req.hdr(host),lower,map({{.MapFile}})]
    default_backend fallback

backend fallback
    http-request return status 404
`

const (
	aConf = "backend a\n" + // 1
		"    option forwardfor\n" + // 2
		"    server s1 127.0.0.1:8081\n" // 3
	cConf = "# tenant c\n" + // 1
		"backend c\n" + // 2
		"    stick-table type ip size 1k\n" + // 3
		"    http-request track-sc0 src table nosuch\n" + // 4
		"    bogus-keyword on\n" + // 5
		"    server s1 127.0.0.1:abc\n" + // 6
		"\n" + // 7
		"backend a\n" + // 8
		"    server s2 127.0.0.1:8082\n" // 9
	aMap = "a.example.com a\n"
	cMap = "# hosts of c\n" + // 1
		"c.example.com c\n" + // 2
		"www.c.example.com c\n" // 3

	aCfgFile = "/etc/haproxy-config/fragments/a.cfg"
	aMapFile = "/etc/haproxy-config/fragments/a.map"
	cCfgFile = "/etc/haproxy-config/fragments/c.cfg"
	cMapFile = "/etc/haproxy-config/fragments/c.map"

	candCfg = "/var/lib/haproxy-config/candidates/candidate-123/haproxy.cfg"
	candMap = "/var/lib/haproxy-config/candidates/candidate-123/hosts.map"
)

type explained struct {
	Fragment string
	File     string
	Line     int
	Msg      string
}

func explainedOf(ps assemble.Problems) []explained {
	var out []explained
	for _, p := range ps {
		out = append(out, explained{p.Fragment, p.File, p.Line, p.Msg})
	}
	return out
}

func buildExplainOutput(t *testing.T) *assemble.Output {
	t.Helper()
	base, err := assemble.RenderBase("base.cfg", []byte(explainBase), assemble.Vars{HTTPAddr: "127.0.0.1:8080", MapFile: "hosts.map"})
	if err != nil {
		t.Fatalf("RenderBase: %v", err)
	}
	a := unchecked(t, "a", aCfgFile, aConf, aMapFile, aMap)
	c := unchecked(t, "c", cCfgFile, cConf, cMapFile, cMap)
	// c first: Build sorts by name.
	return assemble.Build(base, []*assemble.Fragment{c, a})
}

// outputLine returns the line of the assembled config where line n of the
// fragment config conf ended up, found by looking for conf in the output.
func outputLine(t *testing.T, out *assemble.Output, conf string, n int) int {
	t.Helper()
	i := bytes.Index(out.Config, []byte(conf))
	if i < 0 || bytes.Count(out.Config, []byte(conf)) != 1 {
		t.Fatalf("fragment config not found exactly once in the output:\n%s", out.Config)
	}
	return bytes.Count(out.Config[:i], []byte{'\n'}) + n
}

func configLine(out *assemble.Output, n int) string {
	lines := strings.Split(string(out.Config), "\n")
	if n < 1 || n > len(lines) {
		return ""
	}
	return lines[n-1]
}

// unchecked builds a fragment without the tenant policy, which refuses
// some of the mistakes these tests need haproxy to report.
func unchecked(t *testing.T, name, cfgFile, conf, mapFile, hostMap string) *assemble.Fragment {
	t.Helper()
	_, sections := assemble.Scan([]byte(conf))
	entries, mapText, ps := fragments.ParseMap(assemble.Location{Fragment: name, File: mapFile}, []byte(hostMap))
	if len(ps) > 0 {
		t.Fatalf("map of %s: %v", name, ps)
	}
	return &assemble.Fragment{Name: name, ConfFile: cfgFile, MapFile: mapFile, Conf: []byte(conf),
		Sections: sections, Map: entries, MapText: mapText}
}

func TestExplain(t *testing.T) {
	out := buildExplainOutput(t)
	a := func(n int) int { return outputLine(t, out, aConf, n) }
	c := func(n int) int { return outputLine(t, out, cConf, n) }

	// The generated lines hold what the fragments say they do.
	for _, chk := range []struct {
		line int
		want string
	}{
		{a(1), "backend a"}, {a(2), "    option forwardfor"},
		{c(2), "backend c"}, {c(5), "    bogus-keyword on"}, {c(6), "    server s1 127.0.0.1:abc"}, {c(8), "backend a"},
		{12, "    use_backend %[req.hdr(host),lower,map(hosts.map)]"}, {10, "frontend fe"},
	} {
		if got := configLine(out, chk.line); got != chk.want {
			t.Fatalf("output line %d = %q, want %q", chk.line, got, chk.want)
		}
	}
	// a(0) is the marker line the assembler writes before fragment a.
	marker := a(0)
	if line := configLine(out, marker); !strings.HasPrefix(line, "# ") || !strings.Contains(line, `"a"`) {
		t.Fatalf("line %d before fragment a is %q, not a marker", marker, line)
	}
	// Map line 6 of the output is c.map line 3.
	if got := strings.Split(string(out.Map), "\n")[5]; got != "www.c.example.com c" {
		t.Fatalf("host map line 6 = %q", got)
	}

	msgs := []Message{
		{"ALERT", fmt.Sprintf("parsing [%s:%d] : unknown keyword 'bogus-keyword' in 'backend' section", candCfg, c(5))},
		{"ALERT", fmt.Sprintf("[%s:%d] : 'server c/s1' : invalid character 'a' in port number 'abc' in '127.0.0.1:abc'", candCfg, c(6))},
		{"WARNING", fmt.Sprintf("parsing [%s:%d] : 'option forwardfor' ignored for backend 'a' as it requires HTTP mode.", candCfg, a(2))},
		{"ALERT", fmt.Sprintf("Parsing [%s:%d]: backend 'a' has the same name as backend 'a' declared at %s:%d.", candCfg, c(8), candCfg, a(1))},
		{"ALERT", fmt.Sprintf("Parsing [%s:%d]: backend 'c' has the same name as frontend 'c' declared at %s:%d.", candCfg, c(2), candCfg, 10)},
		{"ALERT", "Proxy 'c': unable to find required use_backend: 'nosuch'."},
		{"ALERT", "Proxy 'c': unable to find stick-table 'nosuch'."},
		{"ALERT", "'server c/s1' : could not resolve address 'nosuch.invalid'."},
		{"WARNING", "missing timeouts for backend 'c'."},
		{"ALERT", fmt.Sprintf("parsing [%s:12] : error detected in frontend 'fe' while parsing 'use_backend' rule", candCfg)},
		{"ALERT", fmt.Sprintf("parsing [%s:6]: invalid pattern 'www.c.example.com'", candMap)},
		{"ALERT", fmt.Sprintf("parsing [%s:%d] : unknown keyword 'x' in 'backend' section", candCfg, marker)},
		{"ALERT", "Proxy 'gone': unable to find stick-table 'nosuch'."},
		{"ALERT", "Starting frontend GLOBAL: cannot bind UNIX socket (Permission denied) [/run/haproxy/admin.sock]"},
		{"ALERT", "Error(s) found in configuration file : " + candCfg},
		{"ALERT", "Fatal errors found in configuration."},
		{"ALERT", "Failed to initialize server(s) addr."},
	}
	errs, warnings := Explain(out.Source, candCfg, candMap, msgs, nil)

	wantErrs := []explained{
		{"c", cCfgFile, 5, "unknown keyword 'bogus-keyword' in 'backend' section"},
		{"c", cCfgFile, 6, "'server c/s1' : invalid character 'a' in port number 'abc' in '127.0.0.1:abc'"},
		{"c", cCfgFile, 8, `backend 'a' has the same name as backend 'a' declared at fragment "a" (` + aCfgFile + `:1).`},
		{"c", cCfgFile, 2, "backend 'c' has the same name as frontend 'c' declared at base config base.cfg:10."},
		{"c", cCfgFile, 2, "Proxy 'c': unable to find required use_backend: 'nosuch'."},
		{"c", cCfgFile, 2, "Proxy 'c': unable to find stick-table 'nosuch'."},
		{"c", cCfgFile, 2, "'server c/s1' : could not resolve address 'nosuch.invalid'."},
		{"", "base.cfg", 12, "error detected in frontend 'fe' while parsing 'use_backend' rule"},
		{"c", cMapFile, 3, "invalid pattern 'www.c.example.com'"},
		{"", "haproxy -c", 0, fmt.Sprintf("generated line %d : unknown keyword 'x' in 'backend' section", marker)},
		{"", "haproxy -c", 0, "Proxy 'gone': unable to find stick-table 'nosuch'."},
		{"", "haproxy -c", 0, "Starting frontend GLOBAL: cannot bind UNIX socket (Permission denied) [/run/haproxy/admin.sock]"},
	}
	wantWarnings := []explained{
		{"a", aCfgFile, 2, "'option forwardfor' ignored for backend 'a' as it requires HTTP mode."},
		{"c", cCfgFile, 2, "missing timeouts for backend 'c'."},
	}
	if got := explainedOf(errs); !reflect.DeepEqual(got, wantErrs) {
		t.Errorf("errors:\n%s", diffExplained(got, wantErrs))
	}
	if got := explainedOf(warnings); !reflect.DeepEqual(got, wantWarnings) {
		t.Errorf("warnings:\n%s", diffExplained(got, wantWarnings))
	}
	for _, p := range append(errs, warnings...) {
		if strings.Contains(p.Msg, candCfg) || strings.Contains(p.Msg, candMap) || strings.Contains(p.Msg, "candidate-123") {
			t.Errorf("message still names the candidate: %q", p.Msg)
		}
		if strings.Contains(p.Msg, "\x00") {
			t.Errorf("message has a NUL placeholder: %q", p.Msg)
		}
	}
}

func TestExplainNothing(t *testing.T) {
	out := buildExplainOutput(t)
	errs, warnings := Explain(out.Source, candCfg, candMap, nil, nil)
	if errs != nil || warnings != nil {
		t.Errorf("Explain(nil) = %v, %v", errs, warnings)
	}
	// Only summary lines: nothing to report.
	errs, warnings = Explain(out.Source, candCfg, candMap, []Message{
		{"ALERT", "Error(s) found in configuration file : " + candCfg},
		{"ALERT", "Fatal errors found in configuration."},
	}, nil)
	if errs != nil || warnings != nil {
		t.Errorf("Explain(summaries) = %v, %v", errs, warnings)
	}
}

// TestExplainProblemText checks the rendered text people see.
func TestExplainProblemText(t *testing.T) {
	out := buildExplainOutput(t)
	c := outputLine(t, out, cConf, 5)
	errs, _ := Explain(out.Source, candCfg, candMap, []Message{
		{"ALERT", fmt.Sprintf("parsing [%s:%d] : unknown keyword 'bogus-keyword' in 'backend' section", candCfg, c)},
	}, nil)
	want := cCfgFile + `:5: fragment "c": unknown keyword 'bogus-keyword' in 'backend' section`
	if len(errs) != 1 || errs.Error() != want {
		t.Errorf("Explain text = %q, want %q", errs.Error(), want)
	}
	if got := errs.Fragments(); !reflect.DeepEqual(got, []string{"c"}) {
		t.Errorf("blamed fragments = %q", got)
	}
}

func diffExplained(got, want []explained) string {
	var b strings.Builder
	for i := 0; i < max(len(got), len(want)); i++ {
		var g, w explained
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		mark := "  "
		if g != w {
			mark = "! "
		}
		fmt.Fprintf(&b, "%s got  %+v\n%s want %+v\n", mark, g, mark, w)
	}
	return b.String()
}
