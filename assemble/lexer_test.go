package assemble

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// lexTestEnv is the environment of the unit table. B has blanks at both
// ends and in the middle, for "[*]" word splitting; E is set but empty.
var lexTestEnv = map[string]string{
	"A":        "alpha",
	"B":        " x  y\tz ",
	"E":        "",
	"Q":        `q"'\#$x`,
	".LINE":    "7",
	".FILE":    "/etc/haproxy/t.cfg",
	".SECTION": "fe",
}

func fakeGetenv(env map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	}
}

// words builds a line of n distinct words joined by single spaces.
func words(n int) string {
	ws := make([]string, n)
	for i := range ws {
		ws[i] = fmt.Sprintf("w%d", i)
	}
	return strings.Join(ws, " ")
}

func wordList(n int) []string { return strings.Fields(words(n)) }

type lexCase struct {
	name   string
	line   string
	nilEnv bool // use a nil getenv instead of lexTestEnv
	words  []string
	err    string // LexError.Msg, "" for none
	errAt  int    // LexError.Offset
	scope  bool
	exps   []Expansion // checked only when not nil
}

func tooMany() string { return fmt.Sprintf("too many words, truncating after word %d", MaxLineWords) }

var lexCases = []lexCase{
	// blanks and words
	{name: "empty", line: ""},
	{name: "only blanks", line: " \t\v\f\r "},
	{name: "plain words", line: "acl a b", words: []string{"acl", "a", "b"}},
	{name: "leading blanks", line: " \t\v\f\racl x", words: []string{"acl", "x"}},
	{name: "runs of blanks", line: "a \t\v\f b", words: []string{"a", "b"}},
	{name: "trailing blank", line: "a b ", words: []string{"a", "b"}},
	{name: "CR after a blank is a blank", line: "a \rb", words: []string{"a", "b"}},
	{name: "CR in a word ends the line", line: "a\rb c", words: []string{"a"}},
	{name: "non-ASCII blanks are word bytes", line: "a\u00a0b\u2028c \x85", words: []string{"a\u00a0b\u2028c", "\x85"}},
	{name: "UTF-8 and high bytes", line: "é \xff\x80", words: []string{"é", "\xff\x80"}},
	{name: "control bytes", line: "\x01a\x1f\x7f", words: []string{"\x01a\x1f\x7f"}},

	// empty words
	{name: "empty middle word", line: `a "" b`, words: []string{"a", "", "b"}},
	{name: "empty first word", line: `"" a`, words: []string{"", "a"}},
	{name: "trailing empty word", line: `a ""`, words: []string{"a"}},
	{name: "trailing empty words", line: `a '' ''`, words: []string{"a", ""}},
	{name: "only an empty word", line: `""`},
	{name: "empty word then blank", line: `a "" `, words: []string{"a", ""}},

	// comments
	{name: "comment line", line: "# x y"},
	{name: "indented comment", line: "  \t# x"},
	{name: "comment after words", line: "a b # c d", words: []string{"a", "b"}},
	{name: "comment glued to a word", line: "a#b c", words: []string{"a"}},
	{name: "comment glued after a quote", line: `"a"#b`, words: []string{"a"}},
	{name: "sharp in double quotes", line: `"a#b" c`, words: []string{"a#b", "c"}},
	{name: "sharp in single quotes", line: `'a#b' c`, words: []string{"a#b", "c"}},
	{name: "escaped sharp", line: `a\#b c`, words: []string{"a#b", "c"}},
	{name: "comment hides an open quote", line: `a # "`, words: []string{"a"}},

	// backslash escapes outside quotes
	{name: "escaped backslash", line: `\\`, words: []string{`\`}},
	{name: "escaped blank", line: `a\ b c`, words: []string{"a b", "c"}},
	{name: "escaped tab", line: `a\tb`, words: []string{"a\tb"}},
	{name: "escaped LF", line: `a\nb`, words: []string{"a\nb"}},
	{name: "escaped CR", line: `a\rb`, words: []string{"a\rb"}},
	{name: "escaped single quote", line: `\'a`, words: []string{"'a"}},
	{name: "escaped double quote", line: `\"a`, words: []string{`"a`}},
	{name: "escaped dollar outside quotes", line: `\$A`, words: []string{`\$A`}},
	{name: "hex escapes", line: `\x41\x6a\x7E`, words: []string{"Aj~"}},
	{name: "hex escape of a blank", line: `a\x20b`, words: []string{"a b"}},
	{name: "hex escape of a quote", line: `\x22a`, words: []string{`"a`}},
	{name: "hex escape of a high byte", line: `\xfF`, words: []string{"\xff"}},
	{name: "other backslashes stay", line: `\q\1\.\-`, words: []string{`\q\1\.\-`}},
	{name: "backslash at end of line", line: `a\`, words: []string{`a\`}},
	{name: "backslash before a blank at end", line: `a\ `, words: []string{"a "}},
	{name: "backslash before CR", line: "a\\\rb", words: []string{`a\`}},

	// NUL bytes from "\x00": HAProxy's words are C strings
	{name: "hex NUL cuts its word", line: `acl\x00junk x`, words: []string{"acl", "x"}},
	{name: "hex NUL starts a middle word", line: `\x00a b`, words: []string{"", "b"}},
	{name: "hex NUL starts the trailing word", line: `a \x00b`, words: []string{"a"}},
	{name: "hex NUL in quotes", line: `"a\x00 b" c`, words: []string{"a", "c"}},

	// escapes inside quotes
	{name: "single quotes keep backslashes", line: `'\\\x4\'`, words: []string{`\\\x4\`}},
	{name: "single-quoted backslashes", line: `'a\\b\x4\$'`, words: []string{`a\\b\x4\$`}},
	{name: "hex in double quotes", line: `"\x41"`, words: []string{"A"}},
	{name: "escaped single quote in double quotes", line: `"\'"`, words: []string{"'"}},
	{name: "escaped double quote in double quotes", line: `"a\"b"`, words: []string{`a"b`}},
	{name: "escaped blank in double quotes", line: `"\ "`, words: []string{" "}},
	{name: "escaped sharp in double quotes", line: `"\#"`, words: []string{"#"}},
	{name: "escaped dollar in double quotes", line: `"\$A" "\${A}"`, words: []string{"$A", "${A}"}},
	{name: "escaped tab in double quotes", line: `"\t"`, words: []string{"\t"}},

	// quote interplay
	{name: "double-quoted blanks", line: `"a b" c`, words: []string{"a b", "c"}},
	{name: "single-quoted blanks", line: `'a b' c`, words: []string{"a b", "c"}},
	{name: "quotes glue words", line: `a"b c"d`, words: []string{"ab cd"}},
	{name: "mixed quotes glue", line: `"a"'b'c`, words: []string{"abc"}},
	{name: "single quote in double quotes", line: `"'"`, words: []string{"'"}},
	{name: "double quote in single quotes", line: `'"'`, words: []string{`"`}},
	{name: "no expansion in single quotes", line: `'$A' '${A}'`, words: []string{"$A", "${A}"}},
	{name: "no expansion outside quotes", line: `$A ${A}`, words: []string{"$A", "${A}"}},
	{name: "tab in quotes", line: "\"a\tb\"", words: []string{"a\tb"}},

	// expansions
	{name: "variable", line: `"$A"`, words: []string{"alpha"},
		exps: []Expansion{{Offset: 1, Name: "A"}}},
	{name: "variable in braces", line: `"${A}"`, words: []string{"alpha"},
		exps: []Expansion{{Offset: 1, Name: "A", Braces: true}}},
	{name: "variable name stops at a dot", line: `"$A.b"`, words: []string{"alpha.b"}},
	{name: "two variables", line: `"$A$A"`, words: []string{"alphaalpha"}},
	{name: "variable glued to words", line: `x"$A"y`, words: []string{"xalphay"}},
	{name: "unset variable", line: `"$U" x`, words: []string{"", "x"},
		exps: []Expansion{{Offset: 1, Name: "U"}}},
	{name: "unset trailing variable", line: `a "$U"`, words: []string{"a"}},
	{name: "empty variable", line: `"$E" x`, words: []string{"", "x"}},
	{name: "value is not parsed again", line: `"$Q"`, words: []string{`q"'\#$x`}},
	{name: "default of an unset variable", line: `"${U-def}"`, words: []string{"def"},
		exps: []Expansion{{Offset: 1, Name: "U", Braces: true, HasDefault: true, Default: "def"}}},
	{name: "default of a set variable", line: `"${A-def}"`, words: []string{"alpha"}},
	{name: "default of an empty variable", line: `"${E-def}" x`, words: []string{"", "x"}},
	{name: "empty default", line: `"${U-}"x`, words: []string{"x"}},
	{name: "default with blanks", line: `"${U-a b}"`, words: []string{"a b"}},
	{name: "default is raw text", line: `"${U-a"b\x41#}"`, words: []string{`a"b\x41#`}},
	{name: "default stops at the first brace", line: `"${U-a}}"`, words: []string{"a}"}},
	{name: "word splitting", line: `"${B[*]}"`, words: []string{"", "x", "y", "z"},
		exps: []Expansion{{Offset: 1, Name: "B", Braces: true, WordSplit: true}}},
	{name: "word splitting glued", line: `<"${B[*]}">`, words: []string{"<", "x", "y", "z", ">"}},
	{name: "word splitting without blanks", line: `"${A[*]}"`, words: []string{"alpha"}},
	{name: "word splitting a default", line: `"${U[*]-a  b}"`, words: []string{"a", "b"},
		exps: []Expansion{{Offset: 1, Name: "U", Braces: true, WordSplit: true, HasDefault: true, Default: "a  b"}}},
	{name: "no splitting without [*]", line: `"${B}"`, words: []string{" x  y\tz "}},
	{name: "[*] needs braces", line: `"$A[*]"`, words: []string{"alpha[*]"}},
	{name: "pseudo-variable LINE", line: `"$.LINE"`, words: []string{"7"},
		exps: []Expansion{{Offset: 1, Name: ".LINE"}}},
	{name: "pseudo-variable FILE", line: `"${.FILE}"`, words: []string{"/etc/haproxy/t.cfg"}},
	{name: "pseudo-variable SECTION", line: `"$.SECTION"`, words: []string{"fe"}},
	{name: "pseudo-variable glued", line: `"$.LINE_x"`, err: "forbidden first char in environment variable name", errAt: 2},
	{name: "nil getenv leaves all unset", line: `"${.LINE-x}" "$A"y`, nilEnv: true, words: []string{"x", "y"}},
	{name: "dollar outside quotes after quotes", line: `"a"$A`, words: []string{"a$A"}},

	// errors, with HAProxy's offsets
	{name: "unmatched double quote", line: `a "bc`, words: []string{"a", "bc"}, err: "unmatched quote", errAt: 2},
	{name: "unmatched single quote", line: `a 'b`, words: []string{"a", "b"}, err: "unmatched quote", errAt: 2},
	{name: "single quote inside open double quote", line: `"a'b`, words: []string{"a'b"}, err: "unmatched quote", errAt: 0},
	{name: "second quote unmatched", line: `"a" "b`, words: []string{"a", "b"}, err: "unmatched quote", errAt: 4},
	{name: "CR ends an open quote", line: "\"a\rb\"", words: []string{"a"}, err: "unmatched quote", errAt: 0},
	{name: "lone dollar", line: `"$"`, err: "forbidden first char in environment variable name", errAt: 2},
	{name: "digit after dollar", line: `"$1"`, err: "forbidden first char in environment variable name", errAt: 2},
	{name: "digit after brace", line: `"${1}"`, err: "forbidden first char in environment variable name", errAt: 3},
	{name: "dollar at end", line: `"$`, err: "forbidden first char in environment variable name", errAt: 2},
	{name: "unknown pseudo-variable", line: `x "$.X"`, words: []string{"x"}, err: "forbidden first char in environment variable name", errAt: 4},
	{name: "unknown pseudo-variable in braces", line: `"${.X}"`, err: "forbidden first char in environment variable name", errAt: 3},
	{name: "lone dot", line: `"$."`, err: "forbidden first char in environment variable name", errAt: 2},
	{name: "unclosed brace", line: `"${A"`, err: "unmatched brace in environment variable name", errAt: 2},
	{name: "junk before the brace", line: `"${A x}"`, err: "unmatched brace in environment variable name", errAt: 2},
	{name: "unclosed default", line: `"${A-x"`, err: "unmatched brace in environment variable name", errAt: 2},
	{name: "unclosed after [*]", line: `"${A[*]"`, err: "unmatched brace in environment variable name", errAt: 2},
	{name: "bad word expansion", line: `"${A[x]}"`, err: "truncated or invalid word expansion sequence", errAt: 4},
	{name: "truncated word expansion", line: `"${A[*`, err: "truncated or invalid word expansion sequence", errAt: 4},
	{name: "truncated hex", line: `a \x4`, words: []string{"a"}, err: "truncated or invalid hexadecimal sequence", errAt: 2},
	{name: "hex at end", line: `\x`, err: "truncated or invalid hexadecimal sequence", errAt: 0},
	{name: "invalid hex", line: `\xg0`, err: "truncated or invalid hexadecimal sequence", errAt: 0},
	{name: "invalid hex in double quotes", line: `"\x4"`, err: "truncated or invalid hexadecimal sequence", errAt: 1},
	{name: "first error wins", line: `"\x" "$1"`, err: "truncated or invalid hexadecimal sequence", errAt: 1},

	// the 64-word limit
	{name: "63 words", line: words(63), words: wordList(63)},
	{name: "64 words", line: words(64), words: wordList(64)},
	{name: "64 words and a comment", line: words(64) + "#c", words: wordList(64)},
	{name: "64 words and a trailing blank", line: words(64) + " ", words: wordList(64), err: tooMany(), errAt: len(words(64)) + 1},
	{name: "64 words, a blank and a comment", line: words(64) + " # c", words: wordList(64), err: tooMany(), errAt: len(words(64)) + 4},
	{name: "65 words", line: words(65), words: wordList(65), err: tooMany(), errAt: len(words(65))},
	{name: "65 words then an empty word", line: words(64) + ` ""`, words: wordList(64), err: tooMany(), errAt: len(words(64)) + 3},
	{name: "word splitting past the limit", line: words(62) + ` "${B[*]}"`, words: append(wordList(62), "", "x", "y", "z"), err: tooMany(), errAt: len(words(62)) + 10},
	{name: "quote error beats too many", line: words(65) + ` "`, words: wordList(65), err: "unmatched quote", errAt: len(words(65)) + 1},
	{name: "hex error beats too many", line: words(65) + ` \x`, words: wordList(65), err: "truncated or invalid hexadecimal sequence", errAt: len(words(65)) + 1},

	// raw NUL bytes
	{name: "raw NUL", line: "a\x00b c", words: []string{"a"}, err: "Stray NUL character", errAt: 1},
	{name: "raw NUL in a comment", line: "a #\x00", words: []string{"a"}, err: "Stray NUL character", errAt: 3},
	{name: "raw NUL in leading blanks", line: " \x00[x]", err: "Stray NUL character", errAt: 1},
	{name: "error before a raw NUL wins", line: "\"a\x00\"", words: []string{"a"}, err: "unmatched quote", errAt: 0},

	// scope markers
	{name: "scope", line: "[foo]", scope: true},
	{name: "indented scope", line: " \t\v\f\r[foo] bar", scope: true},
	{name: "scope with a raw NUL", line: "[a\x00]", scope: true, err: "Stray NUL character", errAt: 2},
	{name: "bracket after a word", line: "a [b]", words: []string{"a", "[b]"}},
	{name: "quoted bracket", line: `"[b]"`, words: []string{"[b]"}},
	{name: "escaped bracket stays", line: `\[b]`, words: []string{`\[b]`}},
}

func TestLex(t *testing.T) {
	for _, c := range lexCases {
		t.Run(c.name, func(t *testing.T) {
			getenv := fakeGetenv(lexTestEnv)
			if c.nilEnv {
				getenv = nil
			}
			got := Lex(c.line, getenv)
			if !reflect.DeepEqual(got.Words, c.words) {
				t.Errorf("Lex(%q) words = %q, want %q", c.line, got.Words, c.words)
			}
			if got.Scope != c.scope {
				t.Errorf("Lex(%q) scope = %v, want %v", c.line, got.Scope, c.scope)
			}
			switch {
			case c.err == "" && got.Err != nil:
				t.Errorf("Lex(%q) error = %v, want none", c.line, got.Err)
			case c.err != "" && got.Err == nil:
				t.Errorf("Lex(%q) no error, want %q at offset %d", c.line, c.err, c.errAt)
			case c.err != "" && (got.Err.Msg != c.err || got.Err.Offset != c.errAt):
				t.Errorf("Lex(%q) error = %q at offset %d, want %q at offset %d", c.line, got.Err.Msg, got.Err.Offset, c.err, c.errAt)
			}
			if c.exps != nil && !reflect.DeepEqual(got.Expansions, c.exps) {
				t.Errorf("Lex(%q) expansions = %+v, want %+v", c.line, got.Expansions, c.exps)
			}
		})
	}
}

// TestLexRecordsEveryExpansion checks that a line with expansions always
// reports them, whatever getenv answers, since the policy refuses a line
// on that alone.
func TestLexRecordsEveryExpansion(t *testing.T) {
	line := `"$A" "${U-d}" x"${B[*]}" "$.LINE"`
	want := []string{"A", "U", "B", ".LINE"}
	for _, getenv := range []func(string) (string, bool){nil, fakeGetenv(lexTestEnv)} {
		lx := Lex(line, getenv)
		var names []string
		for _, e := range lx.Expansions {
			names = append(names, e.Name)
		}
		if !reflect.DeepEqual(names, want) {
			t.Errorf("expansions = %q, want %q", names, want)
		}
	}
}

func TestLexErrorMessage(t *testing.T) {
	err := Lex(`a "b`, nil).Err
	if err == nil || err.Error() != "unmatched quote at column 3" {
		t.Fatalf("Err = %v, want \"unmatched quote at column 3\"", err)
	}
}
