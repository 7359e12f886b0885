package assemble

import (
	"bytes"
	"fmt"
	"strings"
)

// MaxLineWords is MAX_LINE_ARGS in HAProxy 2.6: a line that needs a 65th
// word (or ends in a blank after its 64th) is refused.
const MaxLineWords = 64

// Lexed is one config line as HAProxy 2.6 reads it: readcfgfile() skips
// the leading blanks and hands the rest to parse_line() with environment
// expansion, both quote kinds, backslash escapes, '#' comments and "[*]"
// word expansion turned on.
type Lexed struct {
	// Words are the arguments in order, as the C strings HAProxy's keyword
	// parsers get, empty ones included ("" in the middle of a line is an
	// argument, and ends the line for most of HAProxy's keyword parsers).
	// A trailing empty word is not counted, as parse_line does not count
	// it.
	Words []string
	// Expansions are the environment expansions parse_line made.
	Expansions []Expansion
	// Err is set when HAProxy refuses the line; Words then holds what was
	// read before the fault.
	Err *LexError
	// Scope is set for a line starting with '[': HAProxy reads it as a
	// "[name]" scope marker and never splits it into words.
	Scope bool
}

// Expansion is one "$NAME", "${NAME}", "${NAME-default}" or "${NAME[*]}"
// inside double quotes.
type Expansion struct {
	Offset     int    // byte offset of the '$' in the line
	Name       string // the variable, or ".LINE", ".FILE", ".SECTION"
	Braces     bool
	HasDefault bool
	Default    string
	WordSplit  bool // "[*]": the value is split into words on blanks
}

// LexError is a line parse_line refuses; the messages are HAProxy's.
type LexError struct {
	Offset int // byte offset in the line of the offending character
	Msg    string
}

func (e *LexError) Error() string { return fmt.Sprintf("%s at column %d", e.Msg, e.Offset+1) }

// isSpace is C isspace() in the "C" locale. Other Unicode spaces (U+00A0
// and the like) are part of a word for HAProxy.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

func isAlpha(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
func isDigit(c byte) bool { return '0' <= c && c <= '9' }
func isHex(c byte) bool   { return isDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

func hexValue(c byte) byte {
	switch {
	case isDigit(c):
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// Lex reads one line (without its line feed) the way HAProxy 2.6 does.
// getenv answers environment lookups, pseudo-variables (".LINE", ".FILE",
// ".SECTION") included; nil means every variable is unset, which is what a
// policy wants: it refuses any line with an expansion, whatever its value.
//
// Words are C strings for HAProxy: a "\x00" escape ends its word there,
// and a word that starts with it reads as empty.
//
// A raw NUL byte cuts the line for HAProxy: fgets() reads the whole line,
// but everything after the NUL is lost, the part before it is parsed as
// the line, and HAProxy then stops reading the file with "Stray NUL
// character". Lex does the same: it reads the part before the NUL and
// reports that error unless the part has an error of its own, which
// HAProxy reports first. (On the last line of a file, HAProxy words the
// same refusal "Missing LF on last line".)
//
// One refusal depends on earlier lines and is not modelled: when a line
// needs a bigger output buffer than every line before it in the file (the
// first line of a file always does), HAProxy 2.6 parses it twice, and the
// first pass leaves a NUL where the '}' of the first "${NAME-default}" was,
// so the second pass refuses the line with "unmatched brace". Lex reads
// such a line as the first pass would. The error only ever refuses a line,
// it never gives it other words.
func Lex(line string, getenv func(string) (string, bool)) Lexed {
	nul := strings.IndexByte(line, 0)
	if nul < 0 {
		return lexLine(line, getenv)
	}
	lx := lexLine(line[:nul], getenv)
	if lx.Err == nil {
		lx.Err = &LexError{Offset: nul, Msg: "Stray NUL character"}
	}
	return lx
}

// lexLine is Lex for a line without NUL bytes.
func lexLine(line string, getenv func(string) (string, bool)) Lexed {
	i := 0
	for i < len(line) && isSpace(line[i]) {
		i++
	}
	if i < len(line) && line[i] == '[' {
		return Lexed{Scope: true}
	}
	var lx Lexed
	var out []byte
	quoteAt := -1 // offset of the quote still open
	squote, dquote := false, false
	argStart := 0 // where the current word starts in out
	var starts []int
	fail := func(at int, msg string) Lexed {
		lx.Err = &LexError{Offset: at, Msg: msg}
		lx.Words = splitWords(out, starts, argStart)
		return lx
	}
	newWord := func() bool {
		starts = append(starts, argStart)
		out = append(out, 0)
		argStart = len(out)
		return len(starts) < MaxLineWords
	}
	tooMany := false
	for i < len(line) {
		c := line[i]
		switch {
		case c >= '-' && c != '\\':
			out = append(out, c)
			i++
		case c == '\n' || c == '\r':
			i = len(line)
		case c == '#' && !squote && !dquote:
			i = len(line)
		case c == '"' && !squote:
			dquote = !dquote
			quoteAt = openedAt(dquote, i)
			i++
		case c == '\'' && !dquote:
			squote = !squote
			quoteAt = openedAt(squote, i)
			i++
		case c == '\\' && !squote:
			send := byte('\\')
			next := byte(0)
			if i+1 < len(line) {
				next = line[i+1]
			}
			switch next {
			case ' ', '\\':
				send = next
				i++
			case 't':
				send = '\t'
				i++
			case 'n':
				send = '\n'
				i++
			case 'r':
				send = '\r'
				i++
			case '#', '\'', '"':
				send = next
				i++
			case '$':
				if dquote {
					send = '$'
					i++
				}
			case 'x':
				if i+3 >= len(line) || !isHex(line[i+2]) || !isHex(line[i+3]) {
					return fail(i, "truncated or invalid hexadecimal sequence")
				}
				send = hexValue(line[i+2])<<4 | hexValue(line[i+3])
				i += 3
			}
			i++
			out = append(out, send)
		case isSpace(c) && !squote && !dquote:
			for i < len(line) && isSpace(line[i]) {
				i++
			}
			if !newWord() {
				tooMany = true
			}
		case c == '$' && dquote:
			exp := Expansion{Offset: i}
			i++
			if i < len(line) && line[i] == '{' {
				exp.Braces = true
				i++
			}
			if i >= len(line) || !(isAlpha(line[i]) || line[i] == '_' || line[i] == '.') {
				return fail(i, "forbidden first char in environment variable name")
			}
			nameStart := i
			if line[i] == '.' {
				i++
			}
			for i < len(line) && (isAlpha(line[i]) || isDigit(line[i]) || line[i] == '_') {
				i++
			}
			exp.Name = line[nameStart:i]
			if exp.Name[0] == '.' && exp.Name != ".LINE" && exp.Name != ".FILE" && exp.Name != ".SECTION" {
				return fail(nameStart, "forbidden first char in environment variable name")
			}
			value, found := "", false
			if getenv != nil {
				value, found = getenv(exp.Name)
			}
			if exp.Braces && i < len(line) && line[i] == '[' {
				if i+2 >= len(line) || line[i+1] != '*' || line[i+2] != ']' {
					return fail(i, "truncated or invalid word expansion sequence")
				}
				exp.WordSplit = true
				i += 3
			}
			if exp.Braces {
				braceAt := nameStart - 1
				if i < len(line) && line[i] == '-' {
					end := i + 1
					for end < len(line) && line[end] != '}' {
						end++
					}
					if end >= len(line) {
						return fail(braceAt, "unmatched brace in environment variable name")
					}
					exp.HasDefault, exp.Default = true, line[i+1:end]
					if !found {
						value, found = exp.Default, true
					}
					i = end
				} else if i >= len(line) || line[i] != '}' {
					return fail(braceAt, "unmatched brace in environment variable name")
				}
				i++ // the brace
			}
			lx.Expansions = append(lx.Expansions, exp)
			for j := 0; found && j < len(value); j++ {
				if exp.WordSplit && isSpace(value[j]) {
					if !newWord() {
						tooMany = true
					}
					for j+1 < len(value) && isSpace(value[j+1]) {
						j++
					}
					continue
				}
				out = append(out, value[j])
			}
		default:
			out = append(out, c)
			i++
		}
	}
	if quoteAt >= 0 {
		return fail(quoteAt, "unmatched quote")
	}
	if tooMany {
		return fail(len(line), fmt.Sprintf("too many words, truncating after word %d", MaxLineWords))
	}
	lx.Words = splitWords(out, starts, argStart)
	return lx
}

// openedAt is where the open quote is: at i when a quote just opened, -1
// when it just closed.
func openedAt(open bool, i int) int {
	if open {
		return i
	}
	return -1
}

// splitWords cuts the output into words at the separators recorded in
// starts, and each word at its first NUL byte, since HAProxy reads words
// as C strings. The word being read is counted only when it is not empty
// as a C string, as parse_line does.
func splitWords(out []byte, starts []int, current int) []string {
	words := make([]string, 0, len(starts)+1)
	for k, s := range starts {
		end := current - 1
		if k+1 < len(starts) {
			end = starts[k+1] - 1
		}
		words = append(words, cString(out[s:end]))
	}
	if last := cString(out[current:]); last != "" {
		words = append(words, last)
	}
	if len(words) == 0 {
		return nil
	}
	return words
}

// cString is b up to its first NUL byte.
func cString(b []byte) string {
	if n := bytes.IndexByte(b, 0); n >= 0 {
		b = b[:n]
	}
	return string(b)
}
