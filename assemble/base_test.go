package assemble

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

var sampleVars = Vars{
	HTTPAddr:      "127.0.0.1:8080",
	HTTPSAddr:     "127.0.0.1:8443",
	HTTPSPort:     ":8443",
	MapFile:       "hosts.map",
	CrtList:       "/srv/certs/crt-list",
	FallbackCert:  "/srv/certs/fallback.pem",
	RuntimeSocket: "/run/hc/admin.sock",
	ChallengeAddr: "127.0.0.1:8402",
	StatusAddr:    "127.0.0.1:8404",
	Marker:        MarkerPlaceholder,
}

func TestRenderDefaultBase(t *testing.T) {
	const file = "(embedded) base.cfg"
	base, err := RenderBase(file, DefaultBase, sampleVars)
	if err != nil {
		t.Fatalf("RenderBase(DefaultBase): %v", err)
	}
	if base.File != file {
		t.Errorf("File = %q, want %q", base.File, file)
	}
	text := string(base.Text)
	if strings.Contains(text, "{{") || strings.Contains(text, "}}") {
		t.Errorf("rendered base still holds template actions:\n%s", text)
	}
	for _, want := range []string{
		"\n    bind 127.0.0.1:8080\n",
		"\n    bind 127.0.0.1:8443 ssl crt /srv/certs/fallback.pem crt-list /srv/certs/crt-list alpn h2,http/1.1\n",
		"https://%[req.hdr(host),field(1,:)]:8443%[capture.req.uri] code 301",
		"lower,map(hosts.map)\n",
		"lower,regsub(^[^.]+,*),map(hosts.map) if",
		"\n    stats socket /run/hc/admin.sock mode 660 level admin\n",
		"\n    server challenge 127.0.0.1:8402\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("rendered base lacks %q", want)
		}
	}

	// Line for line, the output is the template with the actions replaced:
	// same number of lines, every line at the same number.
	r := strings.NewReplacer(
		"{{.HTTPAddr}}", sampleVars.HTTPAddr,
		"{{.HTTPSAddr}}", sampleVars.HTTPSAddr,
		"{{.HTTPSPort}}", sampleVars.HTTPSPort,
		"{{.MapFile}}", sampleVars.MapFile,
		"{{.CrtList}}", sampleVars.CrtList,
		"{{.FallbackCert}}", sampleVars.FallbackCert,
		"{{.RuntimeSocket}}", sampleVars.RuntimeSocket,
		"{{.ChallengeAddr}}", sampleVars.ChallengeAddr,
		"{{.StatusAddr}}", sampleVars.StatusAddr,
		"{{.Marker}}", sampleVars.Marker,
	)
	tmplLines := strings.Split(strings.TrimSuffix(string(DefaultBase), "\n"), "\n")
	outLines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(outLines) != len(tmplLines) {
		t.Fatalf("rendered base has %d lines, template %d", len(outLines), len(tmplLines))
	}
	for i, tl := range tmplLines {
		if i == 3 {
			continue // the header comment mentions {{.HTTPSAddr}} as an example
		}
		if want := r.Replace(tl); outLines[i] != want {
			t.Errorf("line %d = %q, want %q", i+1, outLines[i], want)
		}
	}

	lineOf := func(prefix string) int {
		for i, l := range tmplLines {
			if strings.HasPrefix(l, prefix) {
				return i + 1
			}
		}
		t.Fatalf("template has no line starting %q", prefix)
		return 0
	}
	wantSections := []Section{
		{Kind: "global", Line: lineOf("global")},
		{Kind: "defaults", Line: lineOf("defaults")},
		{Kind: "frontend", Name: "http", Line: lineOf("frontend http")},
		{Kind: "frontend", Name: "https", Line: lineOf("frontend https")},
		{Kind: "frontend", Name: "haproxy_config_status", Line: lineOf("frontend haproxy_config_status")},
		{Kind: "backend", Name: "haproxy_config_acme", Line: lineOf("backend haproxy_config_acme")},
		{Kind: "backend", Name: "haproxy_config_unknown_host", Line: lineOf("backend haproxy_config_unknown_host")},
		{Kind: "backend", Name: "haproxy_config_unavailable", Line: lineOf("backend haproxy_config_unavailable")},
	}
	if !reflect.DeepEqual(base.Sections, wantSections) {
		t.Errorf("sections:\n got %+v\nwant %+v", base.Sections, wantSections)
	}
	bindLine := lineOf("    bind {{.HTTPAddr}}")
	found := false
	lines, _ := Scan(base.Text)
	for _, l := range lines {
		if l.Num == bindLine {
			found = true
			if want := []string{"bind", "127.0.0.1:8080"}; !reflect.DeepEqual(l.Words, want) {
				t.Errorf("line %d words = %q, want %q", bindLine, l.Words, want)
			}
			if got := base.Sections[l.Section].Name; got != "http" {
				t.Errorf("line %d is in section %q, want http", bindLine, got)
			}
		}
	}
	if !found {
		t.Errorf("no scanned line %d", bindLine)
	}
}

func TestRenderBaseAccepts(t *testing.T) {
	tests := []struct {
		name string
		tmpl string
		vars Vars
		want string
	}{
		{
			name: "no actions",
			tmpl: "global\n    daemon\n",
			want: "global\n    daemon\n",
		},
		{
			name: "final newline added",
			tmpl: "backend b\n    server s {{.ChallengeAddr}}",
			vars: Vars{ChallengeAddr: "127.0.0.1:1"},
			want: "backend b\n    server s 127.0.0.1:1\n",
		},
		{
			name: "empty value",
			tmpl: "frontend f\n    http-request redirect location https://x{{.HTTPSPort}}/\n",
			want: "frontend f\n    http-request redirect location https://x/\n",
		},
		{
			name: "conditional within one line",
			tmpl: "frontend f\n    bind {{if .HTTPAddr}}{{.HTTPAddr}}{{else}}:80{{end}}\n",
			vars: Vars{HTTPAddr: ":8080"},
			want: "frontend f\n    bind :8080\n",
		},
		{
			name: "empty template",
			tmpl: "",
			want: "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base, err := RenderBase("base.cfg", []byte(tt.tmpl), tt.vars)
			if err != nil {
				t.Fatalf("RenderBase: %v", err)
			}
			if string(base.Text) != tt.want {
				t.Errorf("Text = %q, want %q", base.Text, tt.want)
			}
		})
	}
}

func TestRenderBaseRefuses(t *testing.T) {
	tests := []struct {
		name string
		file string
		tmpl string
		vars Vars
		line int
		msg  string // substring of the Problem's message
	}{
		{
			name: "unknown field",
			file: "base.cfg",
			tmpl: "global\n    daemon\nfrontend f\n    bind {{.Nope}}\n",
			line: 4,
			msg:  "can't evaluate field Nope",
		},
		{
			name: "unknown field, file name with blanks and parentheses",
			file: "(embedded) base.cfg",
			tmpl: "global\n{{.Nope}}\n",
			line: 2,
			msg:  "can't evaluate field Nope",
		},
		{
			name: "parse error",
			file: "/etc/hc/base.cfg",
			tmpl: "global\n\n\n{{if}}\n",
			line: 4,
			msg:  "missing value for if",
		},
		{
			// text/template reports where the lexer gave up (the end of
			// the file) and names the starting line in the message.
			name: "unclosed action",
			file: "base.cfg",
			tmpl: "global\n    stats socket {{.RuntimeSocket\n",
			line: 3,
			msg:  "unclosed action started at base.cfg:2",
		},
		{
			name: "value adds a line",
			file: "base.cfg",
			tmpl: "x {{.HTTPAddr}}\n",
			vars: Vars{HTTPAddr: "a\nb"},
			msg:  "template actions changed the line count (1 lines in, 2 out)",
		},
		{
			name: "value adds a line to a template without final newline",
			file: "base.cfg",
			tmpl: "global\nx {{.HTTPAddr}}",
			vars: Vars{HTTPAddr: "a\nb"},
			msg:  "template actions changed the line count",
		},
		{
			name: "value adds a line in the middle",
			file: "base.cfg",
			tmpl: "global\n    stats socket {{.RuntimeSocket}}\n    daemon\n",
			vars: Vars{RuntimeSocket: "/a\n/b\n/c"},
			msg:  "template actions changed the line count (3 lines in, 5 out)",
		},
		{
			name: "action spanning lines removes them",
			file: "base.cfg",
			tmpl: "global\n{{if .HTTPAddr}}\n    daemon\n{{end}}\n",
			msg:  "template actions changed the line count",
		},
		{
			name: "backend without a name",
			file: "base.cfg",
			tmpl: "global\n    daemon\n\nbackend\n    server s 1.1.1.1:80\n",
			line: 4,
			msg:  "backend section without a name",
		},
		{
			name: "listen without a name",
			file: "base.cfg",
			tmpl: "backend ok\nlisten # no name\n",
			line: 2,
			msg:  "listen section without a name",
		},
		{
			name: "backend name rendered empty",
			file: "base.cfg",
			tmpl: "backend {{.MapFile}}\n",
			line: 1,
			msg:  "backend section without a name",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base, err := RenderBase(tt.file, []byte(tt.tmpl), tt.vars)
			if err == nil {
				t.Fatalf("RenderBase accepted it, Text = %q", base.Text)
			}
			if base != nil {
				t.Errorf("RenderBase returned a base with its error")
			}
			var ps Problems
			if !errors.As(err, &ps) {
				t.Fatalf("error %v (%T) is not Problems", err, err)
			}
			if len(ps) != 1 {
				t.Fatalf("got %d problems, want 1: %v", len(ps), ps)
			}
			p := ps[0]
			if want := (Location{File: tt.file, Line: tt.line}); p.Location != want {
				t.Errorf("Location = %+v, want %+v", p.Location, want)
			}
			if !strings.Contains(p.Msg, tt.msg) {
				t.Errorf("Msg = %q, want it to contain %q", p.Msg, tt.msg)
			}
			// The text/template prefix naming the file and line is replaced
			// by the Location, not repeated in the message.
			if strings.HasPrefix(p.Msg, "template: "+tt.file+":") {
				t.Errorf("Msg = %q still carries the text/template file:line prefix", p.Msg)
			}
		})
	}
}

func TestRenderBaseErrorString(t *testing.T) {
	_, err := RenderBase("b.cfg", []byte("global\n{{if}}\n"), Vars{})
	if err == nil {
		t.Fatal("RenderBase accepted {{if}}")
	}
	if got, want := err.Error(), "b.cfg:2: base config: template: missing value for if"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	_, err = RenderBase("b.cfg", []byte("global\n\n{{.Nope}}\n"), Vars{})
	if err == nil {
		t.Fatal("RenderBase accepted {{.Nope}}")
	}
	if got, want := err.Error(), "b.cfg:3: base config: template: executing "; !strings.HasPrefix(got, want) {
		t.Errorf("Error() = %q, want prefix %q", got, want)
	}
	if strings.Count(err.Error(), "b.cfg:3") != 1 {
		t.Errorf("Error() = %q names the line twice", err.Error())
	}
}
