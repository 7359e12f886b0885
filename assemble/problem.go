// Package assemble turns a base config and a set of parsed fragments into
// the bytes HAProxy loads (haproxy.cfg and the host map), plus a source map
// that explains any line of that output in terms of the file a person wrote.
//
// It is a pure package: no I/O, no clock, no process. Everything here is
// deterministic for a given input, which is what makes generations
// reproducible and golden-file tests possible.
package assemble

import (
	"fmt"
	"strings"
)

// Location points at a line a person wrote: a line of the base config
// (Fragment empty) or of one part of a fragment. A Location with neither a
// fragment nor a line names a whole file or a tool ("haproxy -c").
type Location struct {
	Fragment string // fragment name; empty for the base config
	File     string // the file as the user named it, or the stored path
	Line     int    // 1-based; 0 when the problem is about the whole file
}

// where is "file:line", or the file alone when there is no line.
func (l Location) where() string {
	if l.Line > 0 {
		return fmt.Sprintf("%s:%d", l.File, l.Line)
	}
	return l.File
}

func (l Location) String() string {
	where := l.where()
	switch {
	case l.Fragment != "":
	case l.Line > 0:
		return "base config " + where
	default:
		return where
	}
	return fmt.Sprintf("fragment %q (%s)", l.Fragment, where)
}

// Problem is one reason a fragment (or the base config) cannot go live.
type Problem struct {
	Location
	Msg string
}

// Error puts the file and line first, as compilers do, so that editors and
// CI annotators can jump to it: "shop.cfg:3: fragment "shop": message".
func (p *Problem) Error() string {
	where := p.where()
	switch {
	case p.Fragment != "":
		return fmt.Sprintf("%s: fragment %q: %s", where, p.Fragment, p.Msg)
	case p.Line > 0:
		return where + ": base config: " + p.Msg
	}
	return where + ": " + p.Msg
}

// Problemf builds a Problem with a formatted message.
func Problemf(loc Location, format string, args ...any) *Problem {
	return &Problem{Location: loc, Msg: fmt.Sprintf(format, args...)}
}

// Problems is a list of rejections. A nil or empty list means "accepted";
// use Err to turn it into an error value.
type Problems []*Problem

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.Error()
	}
	return strings.Join(lines, "\n")
}

// Err returns ps as an error, or nil when there is nothing to report.
func (ps Problems) Err() error {
	if len(ps) == 0 {
		return nil
	}
	return ps
}

// Fragments returns the distinct fragment names the problems blame, in order
// of first appearance; the base config is not a fragment and is left out.
func (ps Problems) Fragments() []string {
	seen := map[string]bool{}
	var names []string
	for _, p := range ps {
		if p.Fragment != "" && !seen[p.Fragment] {
			seen[p.Fragment] = true
			names = append(names, p.Fragment)
		}
	}
	return names
}
