package assemble

import "bytes"

// sectionKinds are the keywords that open a section in HAProxy 2.6. HAProxy
// recognises them at the start of a line whatever the indentation.
var sectionKinds = map[string]bool{
	"global": true, "defaults": true, "frontend": true, "backend": true,
	"listen": true, "userlist": true, "peers": true, "resolvers": true,
	"mailers": true, "program": true, "http-errors": true, "ring": true,
	"cache": true, "fcgi-app": true, "log-forward": true,
}

// IsSectionKind reports whether word opens a section.
func IsSectionKind(word string) bool { return sectionKinds[word] }

// Section is one section header of a config.
type Section struct {
	Kind string // "backend", "userlist", ...
	Name string // empty for global and anonymous defaults
	Line int    // line of the header
}

// Namespace is the name space HAProxy checks for duplicates: frontends,
// backends and listens share one ("proxy"); every other kind has its own.
func (s Section) Namespace() string {
	switch s.Kind {
	case "frontend", "backend", "listen":
		return "proxy"
	}
	return s.Kind
}

// IsBackend reports whether the section can be the target of use_backend.
func (s Section) IsBackend() bool { return s.Kind == "backend" || s.Kind == "listen" }

// Line is one line of a config that is not blank or a comment, as HAProxy
// reads it (see Lex).
type Line struct {
	Num     int
	Words   []string
	Section int // index into the sections slice Scan returns; -1 before any section
	// What else HAProxy saw on the line: a policy refuses each of them.
	Expansions []Expansion
	Err        *LexError
	Scope      bool
}

// Scan splits a config into lines of words and the sections they belong
// to, exactly as HAProxy 2.6 reads it with an empty environment. Comments
// and blank lines are dropped. A line HAProxy refuses to read (Err), or a
// scope line, never opens a section, as in HAProxy.
func Scan(conf []byte) ([]Line, []Section) {
	var lines []Line
	var sections []Section
	num := 0
	for rest := conf; len(rest) > 0; {
		var raw []byte
		raw, rest, _ = bytes.Cut(rest, []byte{'\n'})
		num++
		lx := Lex(string(raw), nil)
		if len(lx.Words) == 0 && lx.Err == nil && !lx.Scope && len(lx.Expansions) == 0 {
			continue
		}
		if lx.Err == nil && !lx.Scope && len(lx.Words) > 0 && IsSectionKind(lx.Words[0]) {
			s := Section{Kind: lx.Words[0], Line: num}
			if len(lx.Words) > 1 {
				s.Name = lx.Words[1]
			}
			sections = append(sections, s)
		}
		lines = append(lines, Line{Num: num, Words: lx.Words, Section: len(sections) - 1,
			Expansions: lx.Expansions, Err: lx.Err, Scope: lx.Scope})
	}
	return lines, sections
}
