package assemble

import (
	"reflect"
	"testing"
)

func TestWords(t *testing.T) {
	tests := []struct {
		name string
		line string
		want []string
	}{
		{"empty line", "", nil},
		{"only blanks", "  \t  ", nil},
		{"simple", "server web1 10.0.0.1:80 check", []string{"server", "web1", "10.0.0.1:80", "check"}},
		{"leading indentation", "    mode http", []string{"mode", "http"}},
		{"tabs separate words", "\tbalance\troundrobin\t", []string{"balance", "roundrobin"}},
		{"mixed tabs and spaces", "timeout \t server  \t30s", []string{"timeout", "server", "30s"}},
		{"trailing spaces", "backend app   ", []string{"backend", "app"}},
		{"carriage return is a blank", "backend app\r", []string{"backend", "app"}},
		{"double quotes keep blanks", `http-request return string "hello world" code 200`, []string{"http-request", "return", "string", "hello world", "code", "200"}},
		{"single quotes keep blanks", `acl a hdr(x) 'a b  c'`, []string{"acl", "a", "hdr(x)", "a b  c"}},
		{"quotes join with adjacent text", `x"a b"y`, []string{"xa by"}},
		{"empty double quotes make a word", `set-header X ""`, []string{"set-header", "X", ""}},
		{"empty single quotes make a word", `a '' b`, []string{"a", "", "b"}},
		{"single quote inside double quotes", `"it's"`, []string{"it's"}},
		{"double quote inside single quotes", `'say "hi"'`, []string{`say "hi"`}},
		{"backslash escapes blank", `a\ b c`, []string{"a b", "c"}},
		{"backslash escapes hash", `a\#b c`, []string{"a#b", "c"}},
		{"backslash escapes quote", `a\"b`, []string{`a"b`}},
		{"backslash escapes backslash", `a\\b`, []string{`a\b`}},
		{"backslash escape in double quotes", `"a\"b\\c"`, []string{`a"b\c`}},
		{"backslash is literal in single quotes", `'a\b'`, []string{`a\b`}},
		{"escaped blank alone is a word", `\ `, []string{" "}},
		{"trailing backslash kept", `a\`, []string{`a\`}},
		{"comment line", "# backend app", nil},
		{"indented comment line", "   # comment", nil},
		{"comment after words", "mode http # the mode", []string{"mode", "http"}},
		{"comment glued to a word", "mode http#comment", []string{"mode", "http"}},
		{"comment glued to a word, quote on the line", "mode 'http'#comment", []string{"mode", "http"}},
		{"comment glued to a word after a quoted word", "'a' b#c d", []string{"a", "b"}},
		{"hash in double quotes", `string "a # b" # real comment`, []string{"string", "a # b"}},
		{"hash in single quotes", `string 'x#y'`, []string{"string", "x#y"}},
		{"unterminated quote runs to end", `a "b c`, []string{"a", "b c"}},
		// HAProxy separates words at C isspace(): also \v and \f, but not
		// at Unicode spaces such as U+00A0, with or without quotes on the line.
		{"vertical tab and form feed", "option\vexternal-check\fx", []string{"option", "external-check", "x"}},
		{"vertical tab, quote on the line", "option\vexternal-check # \"", []string{"option", "external-check"}},
		{"form feed, quote on the line", "a\f'b'", []string{"a", "b"}},
		{"no-break space is not a blank", "server\u00a0s 1.2.3.4:80", []string{"server\u00a0s", "1.2.3.4:80"}},
		{"no-break space, quote on the line", "server\u00a0s 'x'", []string{"server\u00a0s", "x"}},
		{"ideographic space is not a blank", "a\u3000b", []string{"a\u3000b"}},
		{"UTF-8 words", "backend café # été", []string{"backend", "café"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Words(tt.line)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Words(%q) = %q, want %q", tt.line, got, tt.want)
			}
		})
	}
}

// TestWordsPathsAgree checks that a line splits the same whether or not
// something on it (here a leading empty quoted word) needs the quote-aware
// parser.
func TestWordsPathsAgree(t *testing.T) {
	lines := []string{
		"",
		"   ",
		"server web1 10.0.0.1:80 check",
		"\tbalance\troundrobin\t",
		"backend app\r",
		"mode http # the mode",
		"mode http#comment",
		"# only a comment",
		"option\vexternal-check",
		"a\fb\v\vc",
		"server\u00a0s 1.2.3.4:80",
		"a\u0085b\u2003c\u3000d",
		"backend café # été",
	}
	for _, l := range lines {
		plain := Words(l)
		quoted := Words("'' " + l)
		if want := append([]string{""}, plain...); !reflect.DeepEqual(quoted, want) {
			t.Errorf("Words(%q) = %q but Words(%q) = %q", l, plain, "'' "+l, quoted)
		}
	}
}

func TestScan(t *testing.T) {
	tests := []struct {
		name         string
		conf         string
		wantLines    []Line
		wantSections []Section
	}{
		{
			name: "empty",
			conf: "",
		},
		{
			name: "comments and blank lines only",
			conf: "# a\n\n   \n\t# b\n",
		},
		{
			name: "lines before any section",
			conf: "# header\nfoo bar\n\nbackend app\n    server s1 1.2.3.4:80\n",
			wantLines: []Line{
				{Num: 2, Words: []string{"foo", "bar"}, Section: -1},
				{Num: 4, Words: []string{"backend", "app"}, Section: 0},
				{Num: 5, Words: []string{"server", "s1", "1.2.3.4:80"}, Section: 0},
			},
			wantSections: []Section{{Kind: "backend", Name: "app", Line: 4}},
		},
		{
			name: "several sections, comments skipped, line numbers kept",
			conf: "global\n    daemon\n\n# the defaults\ndefaults\n    mode http\nfrontend fe\n    bind :80 # plain\nuserlist admins\n    user bob insecure-password x\nlisten stats\n    bind :9000\n",
			wantLines: []Line{
				{Num: 1, Words: []string{"global"}, Section: 0},
				{Num: 2, Words: []string{"daemon"}, Section: 0},
				{Num: 5, Words: []string{"defaults"}, Section: 1},
				{Num: 6, Words: []string{"mode", "http"}, Section: 1},
				{Num: 7, Words: []string{"frontend", "fe"}, Section: 2},
				{Num: 8, Words: []string{"bind", ":80"}, Section: 2},
				{Num: 9, Words: []string{"userlist", "admins"}, Section: 3},
				{Num: 10, Words: []string{"user", "bob", "insecure-password", "x"}, Section: 3},
				{Num: 11, Words: []string{"listen", "stats"}, Section: 4},
				{Num: 12, Words: []string{"bind", ":9000"}, Section: 4},
			},
			wantSections: []Section{
				{Kind: "global", Line: 1},
				{Kind: "defaults", Line: 5},
				{Kind: "frontend", Name: "fe", Line: 7},
				{Kind: "userlist", Name: "admins", Line: 9},
				{Kind: "listen", Name: "stats", Line: 11},
			},
		},
		{
			name: "indented section keyword still opens a section",
			conf: "backend a\n    server s 1.1.1.1:80\n    backend b\n\tcache c\n",
			wantLines: []Line{
				{Num: 1, Words: []string{"backend", "a"}, Section: 0},
				{Num: 2, Words: []string{"server", "s", "1.1.1.1:80"}, Section: 0},
				{Num: 3, Words: []string{"backend", "b"}, Section: 1},
				{Num: 4, Words: []string{"cache", "c"}, Section: 2},
			},
			wantSections: []Section{
				{Kind: "backend", Name: "a", Line: 1},
				{Kind: "backend", Name: "b", Line: 3},
				{Kind: "cache", Name: "c", Line: 4},
			},
		},
		{
			name: "commented-out and quoted section keywords are not sections",
			conf: "backend a\n# backend b\n    \"backend\" x\n",
			wantLines: []Line{
				{Num: 1, Words: []string{"backend", "a"}, Section: 0},
				// Quoting does not hide a keyword from HAProxy: the word is
				// "backend" after unquoting.
				{Num: 3, Words: []string{"backend", "x"}, Section: 1},
			},
			wantSections: []Section{
				{Kind: "backend", Name: "a", Line: 1},
				{Kind: "backend", Name: "x", Line: 3},
			},
		},
		{
			name: "no final newline, CRLF line ends",
			conf: "backend a\r\n  server s 1.1.1.1:80\r\n\r\nbackend b",
			wantLines: []Line{
				{Num: 1, Words: []string{"backend", "a"}, Section: 0},
				{Num: 2, Words: []string{"server", "s", "1.1.1.1:80"}, Section: 0},
				{Num: 4, Words: []string{"backend", "b"}, Section: 1},
			},
			wantSections: []Section{
				{Kind: "backend", Name: "a", Line: 1},
				{Kind: "backend", Name: "b", Line: 4},
			},
		},
		{
			name: "keyword-like words that are not section kinds",
			conf: "backends x\nserver backend 1.1.1.1:80\n",
			wantLines: []Line{
				{Num: 1, Words: []string{"backends", "x"}, Section: -1},
				{Num: 2, Words: []string{"server", "backend", "1.1.1.1:80"}, Section: -1},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines, sections := Scan([]byte(tt.conf))
			if !reflect.DeepEqual(lines, tt.wantLines) {
				t.Errorf("lines:\n got %+v\nwant %+v", lines, tt.wantLines)
			}
			if !reflect.DeepEqual(sections, tt.wantSections) {
				t.Errorf("sections:\n got %+v\nwant %+v", sections, tt.wantSections)
			}
		})
	}
}

func TestSectionKinds(t *testing.T) {
	tests := []struct {
		kind      string
		isKind    bool
		namespace string
		isBackend bool
	}{
		{"frontend", true, "proxy", false},
		{"backend", true, "proxy", true},
		{"listen", true, "proxy", true},
		{"userlist", true, "userlist", false},
		{"cache", true, "cache", false},
		{"peers", true, "peers", false},
		{"resolvers", true, "resolvers", false},
		{"http-errors", true, "http-errors", false},
		{"global", true, "global", false},
		{"defaults", true, "defaults", false},
		{"ring", true, "ring", false},
		{"server", false, "server", false},
		{"Backend", false, "Backend", false},
	}
	for _, tt := range tests {
		t.Run(tt.kind, func(t *testing.T) {
			if got := IsSectionKind(tt.kind); got != tt.isKind {
				t.Errorf("IsSectionKind(%q) = %v, want %v", tt.kind, got, tt.isKind)
			}
			s := Section{Kind: tt.kind, Name: "x"}
			if got := s.Namespace(); got != tt.namespace {
				t.Errorf("Namespace() = %q, want %q", got, tt.namespace)
			}
			if got := s.IsBackend(); got != tt.isBackend {
				t.Errorf("IsBackend() = %v, want %v", got, tt.isBackend)
			}
		})
	}
}

// TestWordsEscapesLikeHAProxy pins the escapes HAProxy 2.6 decodes: a
// policy check that saw "external\x2dcheck" literally would let through
// what haproxy reads as "external-check".
func TestWordsEscapesLikeHAProxy(t *testing.T) {
	cases := []struct {
		line string
		want []string
	}{
		{`option external\x2dcheck`, []string{"option", "external-check"}},
		{`http-request lua\x2efoo`, []string{"http-request", "lua.foo"}},
		{`a\ b c`, []string{"a b", "c"}},
		{`x \#y #z`, []string{"x", "#y"}},
		{`s\1 \q`, []string{`s\1`, `\q`}},
		{`"c\x41d" 'a\x41b'`, []string{"cAd", `a\x41b`}},
		{`"say \"hi\"" 'it''s'`, []string{`say "hi"`, "its"}},
		{`tab\there`, []string{"tab\there"}},
		{`bad\xZZ`, []string{`bad\xZZ`}},
		{`end\`, []string{`end\`}},
	}
	for _, tc := range cases {
		if got := Words(tc.line); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Words(%q) = %q, want %q", tc.line, got, tc.want)
		}
	}
}
