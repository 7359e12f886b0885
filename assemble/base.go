package assemble

import (
	"bytes"
	_ "embed"
	"strconv"
	"strings"
	"text/template"
)

// Vars are the values a base config template can use. They come from the
// settings, so the same base runs on :80/:443 in production and on loopback
// high ports in tests and the demo.
type Vars struct {
	HTTPAddr      string // bind address of the plain-HTTP frontend
	HTTPSAddr     string // bind address of the TLS frontend
	HTTPSPort     string // ":8443", or "" when HTTPS is on 443; for redirects
	MapFile       string // the host map, as the config must name it
	CrtList       string // crt-list the TLS frontend loads
	FallbackCert  string // self-signed certificate used when nothing else matches
	RuntimeSocket string // stats socket, level admin
	ChallengeAddr string // the daemon's ACME HTTP-01 handler
	StatusAddr    string // loopback endpoint that serves Marker
	Marker        string // MarkerPlaceholder; Build puts the output's marker there
}

// Base is a rendered base config.
type Base struct {
	File     string // where the template came from, for messages
	Text     []byte
	Sections []Section
}

// RenderBase expands a base config template (Go text/template syntax with
// Vars as data). Template actions must not add or remove lines, so that a
// line number in the output is a line number in the file the operator wrote.
func RenderBase(file string, tmpl []byte, v Vars) (*Base, error) {
	t, err := template.New(file).Option("missingkey=error").Parse(string(tmpl))
	if err != nil {
		return nil, templateProblem(file, err)
	}
	var out bytes.Buffer
	if err := t.Execute(&out, v); err != nil {
		return nil, templateProblem(file, err)
	}
	text := out.Bytes()
	if len(text) > 0 && text[len(text)-1] != '\n' {
		text = append(text, '\n')
	}
	// Only a template without a final newline may come out one line longer:
	// the newline appended above ends its last line.
	unterminated := len(tmpl) > 0 && tmpl[len(tmpl)-1] != '\n'
	if got, want := bytes.Count(text, []byte{'\n'}), bytes.Count(tmpl, []byte{'\n'}); got != want && !(unterminated && got == want+1) {
		return nil, Problems{Problemf(Location{File: file}, "template actions changed the line count (%d lines in, %d out); keep each action within its line", want, got)}
	}
	_, sections := Scan(text)
	for _, s := range sections {
		if s.IsBackend() && s.Name == "" {
			return nil, Problems{Problemf(Location{File: file, Line: s.Line}, "%s section without a name", s.Kind)}
		}
	}
	return &Base{File: file, Text: text, Sections: sections}, nil
}

// Defines reports whether the base has a backend (or listen) called name.
func (b *Base) Defines(name string) bool { return definesBackend(b.Sections, name) }

// templateProblem turns a text/template error into a Problem that carries
// the template's line number, dropping the "template: NAME:LINE:" prefix.
func templateProblem(file string, err error) Problems {
	loc := Location{File: file}
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, "template: "+file+":"); ok {
		num, after, _ := strings.Cut(rest, ":")
		if n, err := strconv.Atoi(num); err == nil {
			loc.Line = n
			msg = strings.TrimLeft(strings.TrimLeft(after, "0123456789"), ": ")
		}
	}
	return Problems{Problemf(loc, "template: %s", msg)}
}

// DefaultBase is the base config template used when the operator has not
// written one: HTTP→HTTPS redirect except ACME challenges, TLS with a
// crt-list and fallback certificate, host-map routing, a 404 page for unknown
// hosts, an admin stats socket, master-worker mode.
//
//go:embed default-base.cfg
var DefaultBase []byte
