package assemble

import (
	"reflect"
	"testing"
)

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
