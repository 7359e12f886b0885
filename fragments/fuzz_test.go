package fragments

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"

	"haproxy-config/assemble"
)

var mapSeeds = []string{
	"",
	"\n",
	"example.com shop\n",
	"# hosts for tenant shop\n\nshop.example.com shop\nwww.shop.example.com shop\n*.shop.example.com shop_static # every subdomain\n",
	"Shop.Example.COM.\tshop\r\n*.BÜCHER.example   books:v2\r\n",
	"xn--bcher-kva.example books\nbücher.example books\n",
	"\xef\xbb\xbfa.example.com a\n   # indented comment\n\t\n",
	"a.example.com\nb.example.com b extra\n1.2.3.4 ip\nunder_score.com u\nok.example.com bad/name\n",
	"*.com x\na.*.com x\nfoo*.example.com x\nlocalhost x\n-a.com x\na..b.com x\n",
	"a.example.com a#comment\n#a.example.com a\na.example.com a\n",
	"a。example。com a\nＥＸＡＭＰＬＥ.com b\nstraße.de c\n",
	"no final newline.example x",
	strings.Repeat("a", 63) + ".example.com long\n" + strings.Repeat("a", 64) + ".example.com toolong\n",
}

// FuzzParseMap checks ParseMap on anything Normalize lets through: it does
// not panic, keeps every line, and returns only entries in their stored
// form, on lines that exist.
func FuzzParseMap(f *testing.F) {
	for _, s := range mapSeeds {
		f.Add([]byte(s))
	}
	loc := assemble.Location{Fragment: "fuzz", File: "fuzz.map"}
	f.Fuzz(func(t *testing.T, data []byte) {
		norm, p := Normalize(loc, data, 0)
		if p != nil {
			t.Skip()
		}
		lines := bytes.Count(norm, []byte{'\n'})
		entries, text, ps := ParseMap(loc, norm)

		if got := bytes.Count(text, []byte{'\n'}); got != lines {
			t.Fatalf("normalised text has %d lines, input %d\ninput %q\noutput %q", got, lines, norm, text)
		}
		if len(norm) > 0 && !bytes.HasSuffix(text, []byte{'\n'}) {
			t.Fatalf("normalised text %q does not end in a newline", text)
		}
		prev := 0
		for _, e := range entries {
			if e.Line < 1 || e.Line > lines || e.Line <= prev {
				t.Fatalf("entry %+v: line out of range 1..%d or not after line %d", e, lines, prev)
			}
			prev = e.Line
			again, err := NormalizeDomain(e.Domain)
			if err != nil || again != e.Domain {
				t.Fatalf("entry domain %q normalises to %q, %v: not idempotent", e.Domain, again, err)
			}
			if strings.IndexFunc(e.Domain, unicode.IsUpper) >= 0 {
				t.Fatalf("entry domain %q has upper case", e.Domain)
			}
			if strings.ContainsAny(e.Domain, " \t#") || strings.ContainsAny(e.Backend, " \t#") || e.Backend == "" {
				t.Fatalf("entry %+v would not survive a round trip through the map file", e)
			}
			// The stored line of an entry is exactly "domain backend".
			if got := lineOf(text, e.Line); got != e.Domain+" "+e.Backend {
				t.Fatalf("line %d of the normalised text is %q, want %q", e.Line, got, e.Domain+" "+e.Backend)
			}
		}
		for _, p := range ps {
			if p.Line < 1 || p.Line > lines || p.Fragment != "fuzz" || p.File != "fuzz.map" {
				t.Fatalf("problem %+v outside 1..%d", p, lines)
			}
		}
		// The normalised text is a fixed point with the same entries and problems.
		entries2, text2, ps2 := ParseMap(loc, text)
		if !bytes.Equal(text2, text) {
			t.Fatalf("normalising twice changes the text: %q -> %q", text, text2)
		}
		if !reflect.DeepEqual(entries2, entries) {
			t.Fatalf("reparsed entries %+v, want %+v", entries2, entries)
		}
		if len(ps2) != len(ps) {
			t.Fatalf("reparsing gives %d problems, first parse %d: %v / %v", len(ps2), len(ps), ps2, ps)
		}
	})
}

func lineOf(text []byte, n int) string {
	for i := 1; len(text) > 0; i++ {
		var line []byte
		line, text, _ = bytes.Cut(text, []byte{'\n'})
		if i == n {
			return string(line)
		}
	}
	return ""
}

// refProfile is the IDNA profile NormalizeDomain documents, built here so
// that any shortcut NormalizeDomain takes is compared with the full
// conversion.
var refProfile = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.VerifyDNSLength(true), idna.Transitional(false))

// refNormalizeDomain is NormalizeDomain's contract without shortcuts.
func refNormalizeDomain(d string) (string, bool) {
	wildcard := strings.HasPrefix(d, "*.")
	name := strings.TrimSuffix(strings.TrimPrefix(d, "*."), ".")
	if strings.Contains(name, "*") {
		return "", false
	}
	ascii, err := refProfile.ToASCII(name)
	if err != nil || strings.HasSuffix(ascii, ".") {
		return "", false
	}
	labels := strings.Split(ascii, ".")
	if len(labels) < 2 || strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return "", false
	}
	if wildcard {
		return "*." + ascii, true
	}
	return ascii, true
}

// FuzzNormalizeDomain compares NormalizeDomain with the full IDNA conversion
// and checks that what it accepts is stable.
func FuzzNormalizeDomain(f *testing.F) {
	for _, s := range []string{
		"example.com", "Example.COM.", "*.example.com", "bücher.example", "xn--bcher-kva.example",
		"ab--c.example", "a-.com", "-a.com", "1.2.3.4", "a.1com", "localhost", "a..b.com",
		strings.Repeat("a", 63) + ".com", strings.Repeat("a", 64) + ".com",
		strings.Repeat("abcdefghi.", 25) + "com", "*.", ".", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, d string) {
		if !utf8.ValidString(d) {
			// Map files pass Normalize first, which refuses invalid UTF-8.
			// (NormalizeDomain itself turns "\x80.0a" into "xn--zn7c.0a",
			// the punycode of U+FFFD, which it then refuses.)
			t.Skip()
		}
		got, err := NormalizeDomain(d)
		want, ok := refNormalizeDomain(d)
		if (err == nil) != ok || got != want {
			t.Fatalf("NormalizeDomain(%q) = %q, %v; the full conversion gives %q, ok=%v", d, got, err, want, ok)
		}
		if err != nil {
			return
		}
		if again, err := NormalizeDomain(got); err != nil || again != got {
			t.Fatalf("NormalizeDomain(%q) = %q, but that normalises to %q, %v", d, got, again, err)
		}
		if strings.IndexFunc(got, func(r rune) bool { return r > unicode.MaxASCII || unicode.IsUpper(r) }) >= 0 {
			t.Fatalf("NormalizeDomain(%q) = %q: not lowercase ASCII", d, got)
		}
	})
}
