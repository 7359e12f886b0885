package assemble

import (
	"bytes"
	"strings"
)

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

// Line is one non-blank, non-comment line of a config, split into words.
type Line struct {
	Num     int
	Words   []string
	Section int // index into the sections slice Scan returns; -1 before any section
}

// Scan splits a config into lines of words and the sections they belong to.
// Comments and blank lines are dropped.
func Scan(conf []byte) ([]Line, []Section) {
	var lines []Line
	var sections []Section
	num := 0
	for rest := conf; len(rest) > 0; {
		var raw []byte
		raw, rest, _ = bytes.Cut(rest, []byte{'\n'})
		num++
		words := Words(string(raw))
		if len(words) == 0 {
			continue
		}
		if IsSectionKind(words[0]) {
			s := Section{Kind: words[0], Line: num}
			if len(words) > 1 {
				s.Name = words[1]
			}
			sections = append(sections, s)
		}
		lines = append(lines, Line{Num: num, Words: words, Section: len(sections) - 1})
	}
	return lines, sections
}

// Words splits one config line the way HAProxy does: on blanks, honouring
// single and double quotes and backslash escapes, up to an unquoted '#'.
func Words(line string) []string {
	if !strings.ContainsAny(line, "\"'\\") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if words := strings.Fields(line); len(words) > 0 {
			return words
		}
		return nil
	}
	var words []string
	var cur strings.Builder
	inWord := false
	var quote byte
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			} else if c == '\\' && quote == '"' && i+1 < len(line) {
				i++
				cur.WriteByte(line[i])
			} else {
				cur.WriteByte(c)
			}
		case c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
			inWord = true
		case c == '"' || c == '\'':
			quote = c
			inWord = true
		case c == '#':
			i = len(line)
		case c == ' ' || c == '\t' || c == '\r':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}
