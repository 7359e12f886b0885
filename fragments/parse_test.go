package fragments

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"haproxy-config/assemble"
)

// where is the comparable part of a problem: its location and message.
type where struct {
	Fragment string
	File     string
	Line     int
	Msg      string
}

func wheres(ps assemble.Problems) []where {
	var out []where
	for _, p := range ps {
		out = append(out, where{p.Fragment, p.File, p.Line, p.Msg})
	}
	return out
}

func TestValidName(t *testing.T) {
	valid := []string{
		"a",
		"0",
		"a-b",
		"a.b_c",
		"tenant-42.example_com",
		strings.Repeat("a", 64),
		"9" + strings.Repeat("z", 63),
		"a.cfgx",   // only the exact suffix is refused
		"a.mapped", // likewise
		"backup",   // "bak" only as a ".bak" suffix
	}
	for _, name := range valid {
		if err := ValidName(name); err != nil {
			t.Errorf("ValidName(%q) = %v, want nil", name, err)
		}
	}

	tooLong := strings.Repeat("a", 65)
	invalid := []struct {
		name string
		msg  string // the whole error text
	}{
		{"", `fragment name is empty`},
		{tooLong, `fragment name "` + tooLong + `" is invalid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit`},
		{"Abc", `fragment name "Abc" is invalid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit`},
		{"aBc", `fragment name "aBc" is invalid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit`},
		{".a", `fragment name ".a" is invalid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit`},
		{"-a", `fragment name "-a" is invalid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit`},
		{"_a", `fragment name "_a" is invalid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit`},
		{"..", `fragment name ".." is invalid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit`},
		{"a..b", `fragment name "a..b" is invalid: it contains ".."`},
		{"a/b", `fragment name "a/b" is invalid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit`},
		{"../x", `fragment name "../x" is invalid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit`},
		{"a~", `fragment name "a~" is invalid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit`},
		{"a.bak", `fragment name "a.bak" is invalid: it looks like a backup or temporary file`},
		{"a.swp", `fragment name "a.swp" is invalid: it looks like a backup or temporary file`},
		{"a.dpkg-old", `fragment name "a.dpkg-old" is invalid: it looks like a backup or temporary file`},
		{"a.tmp", `fragment name "a.tmp" is invalid: it looks like a backup or temporary file`},
		{"a.cfg", `fragment name "a.cfg" is invalid: leave out the .cfg/.map suffix`},
		{"a.map", `fragment name "a.map" is invalid: leave out the .cfg/.map suffix`},
		{"a b", `fragment name "a b" is invalid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit`},
		{" a", `fragment name " a" is invalid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit`},
		{"a\n", `fragment name "a\n" is invalid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit`},
		{"bücher", `fragment name "bücher" is invalid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit`},
		{"ａ", `fragment name "ａ" is invalid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit`},
	}
	for _, tc := range invalid {
		err := ValidName(tc.name)
		if err == nil {
			t.Errorf("ValidName(%q) = nil, want an error", tc.name)
			continue
		}
		if err.Error() != tc.msg {
			t.Errorf("ValidName(%q) = %q, want %q", tc.name, err, tc.msg)
		}
	}
}

func TestNormalize(t *testing.T) {
	loc := assemble.Location{Fragment: "shop", File: "/srv/in/shop.cfg"}
	ok := []struct {
		name string
		in   string
		want string
	}{
		{"empty", "", ""},
		{"bom only", "\xef\xbb\xbf", ""},
		{"unchanged", "backend a\n    server s 1.2.3.4:80\n", "backend a\n    server s 1.2.3.4:80\n"},
		{"crlf", "backend a\r\n    server s 1.2.3.4:80\r\n", "backend a\n    server s 1.2.3.4:80\n"},
		{"bom", "\xef\xbb\xbfbackend a\n", "backend a\n"},
		{"bom crlf no final newline", "\xef\xbb\xbfbackend a\r\n  x", "backend a\n  x\n"},
		{"final newline added", "backend a", "backend a\n"},
		{"blank lines kept", "\n\n", "\n\n"},
		{"bom later is kept", "a\xef\xbb\xbf\n", "a\xef\xbb\xbf\n"},
		{"utf-8 text", "# café ☕\n", "# café ☕\n"},
		{"U+FFFD is valid", "\xef\xbf\xbd\n", "\xef\xbf\xbd\n"},
	}
	for _, tc := range ok {
		t.Run(tc.name, func(t *testing.T) {
			got, p := Normalize(loc, []byte(tc.in), 0)
			if p != nil {
				t.Fatalf("Normalize(%q) problem: %v", tc.in, p)
			}
			if string(got) != tc.want {
				t.Errorf("Normalize(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}

	bad := []struct {
		name string
		in   string
		max  int64
		line int
		msg  string
	}{
		{"nul line 1", "\x00", 0, 1, "NUL byte at column 1: fragments are text"},
		{"nul line 3", "backend a\n  x\nab\x00cd\n", 0, 3, "NUL byte at column 3: fragments are text"},
		{"nul after crlf lines", "a\r\nb\r\n\x00", 0, 3, "NUL byte at column 1: fragments are text"},
		{"invalid utf-8 line 2", "ok\nab\xffc\n", 0, 2, "invalid UTF-8 at column 3"},
		{"truncated utf-8 at end", "ok\n\xc3", 0, 2, "invalid UTF-8 at column 1"},
		{"latin-1 line 4", "a\nb\nc\ncaf\xe9\n", 0, 4, "invalid UTF-8 at column 4"},
		{"lone cr line 2", "a\r\nb\rc\n", 0, 2, "carriage return without a line feed at column 2"},
		{"lone cr at end", "a\nb\r", 0, 2, "carriage return without a line feed at column 2"},
		{"old mac line ends", "a\rb\r", 0, 1, "carriage return without a line feed at column 2"},
		{"over limit", "0123456789", 9, 0, "file is 10 bytes, over the limit of 9"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			got, p := Normalize(loc, []byte(tc.in), tc.max)
			if p == nil {
				t.Fatalf("Normalize(%q) = %q, want a problem", tc.in, got)
			}
			if got != nil {
				t.Errorf("Normalize(%q) returned data %q with a problem", tc.in, got)
			}
			want := where{"shop", "/srv/in/shop.cfg", tc.line, tc.msg}
			if w := (where{p.Fragment, p.File, p.Line, p.Msg}); w != want {
				t.Errorf("Normalize(%q) problem = %+v, want %+v", tc.in, w, want)
			}
		})
	}

	// The limit is inclusive, and counts the input as uploaded.
	if got, p := Normalize(loc, []byte("012345678"), 9); p != nil || string(got) != "012345678\n" {
		t.Errorf("Normalize at the limit = %q, %v; want accepted", got, p)
	}
}

func TestNormalizeDomain(t *testing.T) {
	ok := []struct{ in, want string }{
		{"example.com", "example.com"},
		{"Example.COM", "example.com"},
		{"example.com.", "example.com"},
		{"WWW.Example.Com.", "www.example.com"},
		{"bücher.example", "xn--bcher-kva.example"},
		{"BÜCHER.example", "xn--bcher-kva.example"},
		{"xn--bcher-kva.example", "xn--bcher-kva.example"},
		{"XN--BCHER-KVA.EXAMPLE", "xn--bcher-kva.example"},
		{"straße.de", "xn--strae-oqa.de"}, // non-transitional: ß is kept
		{"*.Example.com", "*.example.com"},
		{"*.example.com.", "*.example.com"},
		{"*.bücher.example", "*.xn--bcher-kva.example"},
		{"a-b.example.com", "a-b.example.com"},
		{"123.com", "123.com"},
		{"a.com1", "a.com1"},
		{"ＥＸＡＭＰＬＥ.com", "example.com"}, // width folding
		{strings.Repeat("a", 63) + ".com", strings.Repeat("a", 63) + ".com"},
	}
	for _, tc := range ok {
		got, err := NormalizeDomain(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("NormalizeDomain(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			continue
		}
		if again, err := NormalizeDomain(got); err != nil || again != got {
			t.Errorf("NormalizeDomain(%q) = %q, %v; not idempotent", got, again, err)
		}
	}

	long := strings.Repeat("a", 64) + ".com"
	// 4 labels of 63 + 3 dots = 255 characters, 2 over the DNS limit
	tooLong := strings.Join([]string{strings.Repeat("a", 63), strings.Repeat("b", 63), strings.Repeat("c", 63), strings.Repeat("d", 63)}, ".")
	bad := []struct{ in, msg string }{
		{"*.com", `"*.com" is not a valid host name: it needs at least two labels, as in example.com`},
		{"*.bücher", `"*.bücher" is not a valid host name: it needs at least two labels, as in example.com`},
		{"a.*.com", `"a.*.com": a wildcard is only allowed as the whole first label, as in *.example.com`},
		{"foo*.example.com", `"foo*.example.com": a wildcard is only allowed as the whole first label, as in *.example.com`},
		{"*.*.example.com", `"*.*.example.com": a wildcard is only allowed as the whole first label, as in *.example.com`},
		{"*example.com", `"*example.com": a wildcard is only allowed as the whole first label, as in *.example.com`},
		{"localhost", `"localhost" is not a valid host name: it needs at least two labels, as in example.com`},
		{"localhost.", `"localhost." is not a valid host name: it needs at least two labels, as in example.com`},
		{"1.2.3.4", `"1.2.3.4" is not a host name: the last label is numeric (IP addresses are not routed by name)`},
		{"*.1.2.3.4", `"*.1.2.3.4" is not a host name: the last label is numeric (IP addresses are not routed by name)`},
		{"under_score.com", `"under_score.com" is not a valid host name: idna: disallowed rune U+005F`},
		{"a b.com", `"a b.com" is not a valid host name: idna: disallowed rune U+0020`},
		{"-a.com", `"-a.com" is not a valid host name: idna: invalid label "-a"`},
		{"a-.com", `"a-.com" is not a valid host name: idna: invalid label "a-"`},
		{long, `"` + long + `" is not a valid host name: idna: invalid label "` + strings.Repeat("a", 64) + `"`},
		{"a..b.com", `"a..b.com" is not a valid host name: idna: invalid label "a..b.com"`},
		{".a.com", `".a.com" is not a valid host name: idna: invalid label ".a.com"`},
		{"example.com..", `"example.com.." is not a valid host name: it has an empty label`},
		{"", `"" is not a valid host name: idna: invalid label ""`},
		{".", `"." is not a valid host name: idna: invalid label ""`},
		{"*.", `"*." is not a valid host name: idna: invalid label ""`},
	}
	for _, tc := range bad {
		got, err := NormalizeDomain(tc.in)
		if err == nil {
			t.Errorf("NormalizeDomain(%q) = %q, want an error", tc.in, got)
			continue
		}
		if got != "" {
			t.Errorf("NormalizeDomain(%q) returned %q with an error", tc.in, got)
		}
		if err.Error() != tc.msg {
			t.Errorf("NormalizeDomain(%q) error = %q, want %q", tc.in, err, tc.msg)
		}
	}
	// Over 253 characters in total: the idna error text is the library's,
	// so only check that it is refused as an invalid host name.
	if got, err := NormalizeDomain(tooLong); err == nil || !strings.HasPrefix(err.Error(), `"`+tooLong+`" is not a valid host name: `) {
		t.Errorf("NormalizeDomain(%d characters) = %q, %v; want refused", len(tooLong), got, err)
	}
	// 253 is still fine.
	justFits := tooLong[:253-4] + ".com"
	if got, err := NormalizeDomain(justFits); err != nil || got != justFits {
		t.Errorf("NormalizeDomain(%d characters) = %q, %v; want accepted unchanged", len(justFits), got, err)
	}
}

func TestParseMap(t *testing.T) {
	loc := assemble.Location{Fragment: "shop", File: "shop.map"}
	in := strings.Join([]string{
		"# hosts of the shop",   // 1
		"",                      // 2
		"   ",                   // 3
		"Shop.Example.COM shop", // 4
		"\t# indented comment",  // 5
		"*.Shop.example.com.   shop_static   # trailing comment", // 6
		"bücher.example\tshop:v2",                                // 7
		"#",                                                      // 8
		"",                                                       // 9
	}, "\n")
	entries, text, ps := ParseMap(loc, []byte(in))
	if len(ps) != 0 {
		t.Fatalf("ParseMap problems: %v", ps)
	}
	wantEntries := []assemble.MapEntry{
		{Domain: "shop.example.com", Backend: "shop", Line: 4},
		{Domain: "*.shop.example.com", Backend: "shop_static", Line: 6},
		{Domain: "xn--bcher-kva.example", Backend: "shop:v2", Line: 7},
	}
	if !reflect.DeepEqual(entries, wantEntries) {
		t.Errorf("entries = %+v, want %+v", entries, wantEntries)
	}
	wantText := strings.Join([]string{
		"# hosts of the shop",
		"",
		"   ",
		"shop.example.com shop",
		"\t# indented comment",
		"*.shop.example.com shop_static",
		"xn--bcher-kva.example shop:v2",
		"#",
		"",
	}, "\n")
	if string(text) != wantText {
		t.Errorf("normalised text = %q, want %q", text, wantText)
	}
	if got, want := bytes.Count(text, []byte{'\n'}), strings.Count(in, "\n"); got != want {
		t.Errorf("normalised text has %d lines, input %d", got, want)
	}

	// The normalised text parses to the same entries and is a fixed point.
	again, text2, ps2 := ParseMap(loc, text)
	if len(ps2) != 0 || !reflect.DeepEqual(again, wantEntries) || !bytes.Equal(text2, text) {
		t.Errorf("reparsing the normalised text: %+v %q %v", again, text2, ps2)
	}

	// No final newline: the last line still counts and gains one.
	entries, text, ps = ParseMap(loc, []byte("a.example.com a"))
	if len(ps) != 0 || string(text) != "a.example.com a\n" || !reflect.DeepEqual(entries, []assemble.MapEntry{{Domain: "a.example.com", Backend: "a", Line: 1}}) {
		t.Errorf("ParseMap without final newline = %+v %q %v", entries, text, ps)
	}

	// Empty input.
	entries, text, ps = ParseMap(loc, nil)
	if entries != nil || len(text) != 0 || ps != nil {
		t.Errorf("ParseMap(nil) = %+v %q %v", entries, text, ps)
	}
}

func TestParseMapErrors(t *testing.T) {
	loc := assemble.Location{Fragment: "shop", File: "/srv/shop.map"}
	cases := []struct {
		name string
		in   string
		want []where
	}{
		{"one field", "# c\n\nshop.example.com\n", []where{
			{"shop", "/srv/shop.map", 3, `expected two fields "domain backend", found 1`},
		}},
		{"three fields", "a.example.com a\nb.example.com b extra # not a field\n", []where{
			{"shop", "/srv/shop.map", 2, `expected two fields "domain backend", found 3`},
		}},
		{"hash glued to the backend is a comment", "a.example.com a#b\n", nil},
		{"bad domain", "\n\nunder_score.example.com a\n", []where{
			{"shop", "/srv/shop.map", 3, `"under_score.example.com" is not a valid host name: idna: disallowed rune U+005F`},
		}},
		{"ip address", "10.0.0.1 a\n", []where{
			{"shop", "/srv/shop.map", 1, `"10.0.0.1" is not a host name: the last label is numeric (IP addresses are not routed by name)`},
		}},
		{"bad backend", "# x\na.example.com bad/name\n", []where{
			{"shop", "/srv/shop.map", 2, `backend name "bad/name" is invalid: use letters, digits and _ . : -`},
		}},
		{"non-ascii backend", "a.example.com bäckend\n", []where{
			{"shop", "/srv/shop.map", 1, `backend name "bäckend" is invalid: use letters, digits and _ . : -`},
		}},
		{"duplicate domain", "# hosts\na.example.com a\n\nb.example.com b\nA.Example.com. c\n", []where{
			{"shop", "/srv/shop.map", 5, `domain "a.example.com" is already mapped on line 2`},
		}},
		{"duplicate idn spelled two ways", "bücher.example a\nxn--bcher-kva.example a\n", []where{
			{"shop", "/srv/shop.map", 2, `domain "xn--bcher-kva.example" is already mapped on line 1`},
		}},
		{"third duplicate still names the first line", "a.example.com a\na.example.com a\na.example.com a\n", []where{
			{"shop", "/srv/shop.map", 2, `domain "a.example.com" is already mapped on line 1`},
			{"shop", "/srv/shop.map", 3, `domain "a.example.com" is already mapped on line 1`},
		}},
		{"wildcard and exact are different", "*.example.com a\nexample.com a\n", nil},
		{"several problems in order", "x\na.example.com a b\n-bad.com a\na.example.com bad/name\n", []where{
			{"shop", "/srv/shop.map", 1, `expected two fields "domain backend", found 1`},
			{"shop", "/srv/shop.map", 2, `expected two fields "domain backend", found 3`},
			{"shop", "/srv/shop.map", 3, `"-bad.com" is not a valid host name: idna: invalid label "-bad"`},
			{"shop", "/srv/shop.map", 4, `backend name "bad/name" is invalid: use letters, digits and _ . : -`},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, text, ps := ParseMap(loc, []byte(tc.in))
			if got := wheres(ps); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("problems = %+v\nwant       %+v", got, tc.want)
			}
			if got, want := bytes.Count(text, []byte{'\n'}), strings.Count(tc.in, "\n"); got != want {
				t.Errorf("normalised text has %d lines, input %d", got, want)
			}
		})
	}
}

var checksumRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

func TestParse(t *testing.T) {
	conf := "\xef\xbb\xbf# shop\r\nbackend shop\r\n    server s1 10.0.0.1:80"
	mapData := "# hosts\r\nShop.Example.com shop\r\n*.shop.example.com. shop # all of them"
	f, ps := Parse("shop", "in/shop.cfg", []byte(conf), "in/shop.map", []byte(mapData), Policy{})
	if len(ps) != 0 {
		t.Fatalf("Parse problems: %v", ps)
	}
	wantConf := "# shop\nbackend shop\n    server s1 10.0.0.1:80\n"
	wantMap := "# hosts\nshop.example.com shop\n*.shop.example.com shop\n"
	if f.Name != "shop" || f.ConfFile != "in/shop.cfg" || f.MapFile != "in/shop.map" {
		t.Errorf("Parse names = %q %q %q", f.Name, f.ConfFile, f.MapFile)
	}
	if string(f.Conf) != wantConf {
		t.Errorf("Conf = %q, want %q", f.Conf, wantConf)
	}
	if string(f.MapText) != wantMap {
		t.Errorf("MapText = %q, want %q", f.MapText, wantMap)
	}
	wantEntries := []assemble.MapEntry{
		{Domain: "shop.example.com", Backend: "shop", Line: 2},
		{Domain: "*.shop.example.com", Backend: "shop", Line: 3},
	}
	if !reflect.DeepEqual(f.Map, wantEntries) {
		t.Errorf("Map = %+v, want %+v", f.Map, wantEntries)
	}
	wantSections := []assemble.Section{{Kind: "backend", Name: "shop", Line: 2}}
	if !reflect.DeepEqual(f.Sections, wantSections) {
		t.Errorf("Sections = %+v, want %+v", f.Sections, wantSections)
	}
	if !checksumRE.MatchString(f.Checksum) {
		t.Fatalf("Checksum = %q, want sha256:<64 hex>", f.Checksum)
	}
	if want := fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(wantConf+"\x00"+wantMap))); f.Checksum != want {
		t.Errorf("Checksum = %q, want %q (of the normalised parts)", f.Checksum, want)
	}

	// The checksum is of the normalised parts: the same fragment written
	// differently has the same checksum.
	g, ps := Parse("shop", "other.cfg", []byte(wantConf), "other.map", []byte("# hosts\nshop.example.com   shop\n*.Shop.example.com shop\n"), Policy{})
	if len(ps) != 0 || g.Checksum != f.Checksum {
		t.Errorf("equivalent input: checksum %q, %v; want %q", g.Checksum, ps, f.Checksum)
	}

	sums := map[string]string{f.Checksum: "original"}
	for _, v := range []struct{ what, conf, mapData string }{
		{"conf changed", wantConf + "    # more\n", wantMap},
		{"map changed", wantConf, wantMap + "# more\n"},
		{"map emptied", wantConf, ""},
		{"conf emptied", "", wantMap},
		{"line moved across parts", "# shop\nbackend shop\n", "    server s1 10.0.0.1:80\n" + wantMap},
	} {
		h, ps := Parse("shop", "c", []byte(v.conf), "m", []byte(v.mapData), Policy{})
		if len(ps) != 0 {
			// the moved line is not a valid map line; that is a problem, not a checksum
			if v.what == "line moved across parts" {
				continue
			}
			t.Fatalf("%s: %v", v.what, ps)
		}
		if !checksumRE.MatchString(h.Checksum) {
			t.Errorf("%s: checksum %q", v.what, h.Checksum)
		}
		if prev, dup := sums[h.Checksum]; dup {
			t.Errorf("%s: same checksum as %s", v.what, prev)
		}
		sums[h.Checksum] = v.what
	}
	// Concatenation is unambiguous: moving the boundary changes the sum.
	a, _ := Parse("x", "c", []byte("backend a\n"), "m", []byte("# b\n"), Policy{})
	b, _ := Parse("x", "c", []byte("backend a\n# b\n"), "m", nil, Policy{})
	if a == nil || b == nil || a.Checksum == b.Checksum {
		t.Errorf("moving a comment from map to conf kept the checksum")
	}
}

func TestParseProblems(t *testing.T) {
	cases := []struct {
		name          string
		frag          string
		conf, mapData string
		pol           Policy
		want          []where
	}{
		{"invalid name", "Shop", "backend a\n", "", Policy{}, []where{
			{"Shop", "c.cfg", 0, `fragment name "Shop" is invalid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit`},
		}},
		{"both parts fail normalising", "shop", "backend a\n\x00\n", "a.example.com a\n\xff", Policy{}, []where{
			{"shop", "c.cfg", 2, "NUL byte at column 1: fragments are text"},
			{"shop", "m.map", 2, "invalid UTF-8 at column 1"},
		}},
		{"size limit applies to each part", "shop", "backend a\n", "a.example.com a\n", Policy{MaxBytes: 12}, []where{
			{"shop", "m.map", 0, "file is 16 bytes, over the limit of 12"},
		}},
		{"conf and map problems together", "shop", "backend a\nglobal\n", "# m\na.example.com\nb.example.com bad/name\n", Policy{}, []where{
			{"shop", "c.cfg", 2, "global sections change every tenant's settings and are never accepted from a fragment"},
			{"shop", "m.map", 2, `expected two fields "domain backend", found 1`},
			{"shop", "m.map", 3, `backend name "bad/name" is invalid: use letters, digits and _ . : -`},
		}},
		{"policy is passed on", "shop", "userlist u\n", "", Policy{AllowSections: []string{"userlist"}}, nil},
		{"line numbers after CRLF and BOM", "shop", "\xef\xbb\xbfbackend a\r\n\r\n  lua-load x\r\n", "", Policy{}, []where{
			{"shop", "c.cfg", 3, `keyword "lua-load" is not allowed in a backend of a fragment: it loads Lua code into HAProxy`},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f, ps := Parse(tc.frag, "c.cfg", []byte(tc.conf), "m.map", []byte(tc.mapData), tc.pol)
			if got := wheres(ps); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("problems\n got %+v\nwant %+v", got, tc.want)
			}
			if (f == nil) != (len(tc.want) > 0) {
				t.Errorf("fragment = %v with %d problems", f, len(ps))
			}
		})
	}
}
