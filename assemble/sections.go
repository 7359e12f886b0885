package assemble

import (
	"bytes"
	"strconv"
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

// isBlank reports whether HAProxy separates words at r: C isspace() in the
// "C" locale. Other Unicode spaces (U+00A0 ...) are part of a word.
func isBlank(r rune) bool {
	return r == ' ' || r == '\t' || r == '\v' || r == '\f' || r == '\r' || r == '\n'
}

// Words splits one config line the way HAProxy 2.6 does, so that policy
// checks see the words HAProxy will see: on blanks, honouring single quotes
// (no escapes inside), double quotes, and the backslash escapes HAProxy
// decodes outside single quotes (\<space> \\ \" \' \# \$ \r \n \t \xHH;
// any other backslash stays as it is), up to an unquoted '#'.
func Words(line string) []string {
	if !strings.ContainsAny(line, "\"'\\") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		if words := strings.FieldsFunc(line, isBlank); len(words) > 0 {
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
		case quote == '\'':
			if c == quote {
				quote = 0
			} else {
				cur.WriteByte(c)
			}
		case c == '\\':
			n, size := unescape(line[i:])
			cur.WriteByte(n)
			i += size - 1
			inWord = true
		case quote == '"':
			if c == quote {
				quote = 0
			} else {
				cur.WriteByte(c)
			}
		case c == '"' || c == '\'':
			quote = c
			inWord = true
		case c == '#':
			i = len(line)
		case isBlank(rune(c)):
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

// unescape decodes the backslash sequence at the start of s and returns
// the byte it stands for and how many bytes of s it used.
func unescape(s string) (byte, int) {
	if len(s) < 2 {
		return '\\', 1
	}
	switch s[1] {
	case ' ', '\\', '"', '\'', '#', '$':
		return s[1], 2
	case 'r':
		return '\r', 2
	case 'n':
		return '\n', 2
	case 't':
		return '\t', 2
	case 'x':
		if len(s) >= 4 {
			if v, err := strconv.ParseUint(s[2:4], 16, 8); err == nil {
				return byte(v), 4
			}
		}
	}
	return '\\', 1
}
