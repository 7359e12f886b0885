// Package fragments owns tenant input: fragment names, the checks every
// fragment passes before HAProxy sees it (encoding, size, map syntax,
// policy), and the on-disk store the CLI and the daemon share.
package fragments

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"

	"haproxy-config/assemble"
)

// nameChars reports whether name is [a-z0-9][a-z0-9._-]{0,63}. The store
// checks every file's name on each read: a loop, not a regexp, because at
// 10,000 tenants that is 20,000 names per change.
func nameChars(name string) bool {
	if len(name) == 0 || len(name) > 64 {
		return false
	}
	for i := range len(name) {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// backupSuffixes mark names editors and package managers leave behind. A
// fragment may not be called that, and the store ignores such files.
var backupSuffixes = []string{
	"~", ".bak", ".old", ".orig", ".rej", ".swp", ".swo", ".tmp", ".save",
	".dpkg-old", ".dpkg-new", ".dpkg-dist", ".dpkg-tmp", ".ucf-old", ".ucf-new", ".ucf-dist",
}

// ValidName checks a fragment name: [a-z0-9][a-z0-9._-]{0,63}, no "..", not
// a backup or temp-file name, not ending in a part's own suffix.
func ValidName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("fragment name is empty")
	case !nameChars(name):
		return fmt.Errorf("fragment name %q is invalid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit", name)
	case strings.Contains(name, ".."):
		return fmt.Errorf("fragment name %q is invalid: it contains \"..\"", name)
	case isBackupName(name):
		return fmt.Errorf("fragment name %q is invalid: it looks like a backup or temporary file", name)
	case strings.HasSuffix(name, ".cfg") || strings.HasSuffix(name, ".map"):
		return fmt.Errorf("fragment name %q is invalid: leave out the .cfg/.map suffix", name)
	}
	return nil
}

func isBackupName(name string) bool {
	return slices.ContainsFunc(backupSuffixes, func(s string) bool { return strings.HasSuffix(name, s) })
}

// Normalize checks one uploaded part and returns it with LF line endings,
// no UTF-8 byte-order mark, and a final newline. loc names the part.
func Normalize(loc assemble.Location, data []byte, maxBytes int64) ([]byte, *assemble.Problem) {
	if maxBytes > 0 && int64(len(data)) > maxBytes {
		return nil, assemble.Problemf(loc, "file is %d bytes, over the limit of %d", len(data), maxBytes)
	}
	if i := bytes.IndexByte(data, 0); i >= 0 {
		return nil, problemAt(loc, data, i, "NUL byte at column %d: fragments are text", column(data, i))
	}
	if !utf8.Valid(data) {
		i := firstInvalidUTF8(data)
		return nil, problemAt(loc, data, i, "invalid UTF-8 at column %d", column(data, i))
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if bytes.IndexByte(data, '\r') >= 0 {
		data = bytes.ReplaceAll(data, []byte("\r\n"), []byte("\n"))
	}
	if i := bytes.IndexByte(data, '\r'); i >= 0 {
		return nil, problemAt(loc, data, i, "carriage return without a line feed at column %d", column(data, i))
	}
	if len(data) > 0 && data[len(data)-1] != '\n' {
		data = append(data, '\n')
	}
	return data, nil
}

func problemAt(loc assemble.Location, data []byte, offset int, format string, args ...any) *assemble.Problem {
	loc.Line = bytes.Count(data[:offset], []byte{'\n'}) + 1
	return assemble.Problemf(loc, format, args...)
}

func column(data []byte, offset int) int {
	return offset - bytes.LastIndexByte(data[:offset], '\n')
}

func firstInvalidUTF8(data []byte) int {
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && size <= 1 {
			return i
		}
		i += size
	}
	return len(data)
}

// domainProfile is the IDNA profile for map domains: lookup mapping
// (lowercase, width folding), STD3 letters-digits-hyphen rules, bidi rule,
// and DNS length limits. Names come out as lowercase punycode.
var domainProfile = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.VerifyDNSLength(true), idna.Transitional(false))

// plainLDH reports whether name is already in the form domainProfile would
// return: lowercase letters, digits and hyphens, labels of 1 to 63 bytes
// without a hyphen at either end or in positions 3-4 (which would make it an
// A-label to decode), at most 253 bytes. Most names are; they skip the
// IDNA tables, which dominate parsing time in large stores.
func plainLDH(name string) bool {
	if len(name) == 0 || len(name) > 253 {
		return false
	}
	for len(name) > 0 {
		label := name
		if i := strings.IndexByte(name, '.'); i >= 0 {
			label, name = name[:i], name[i+1:]
			if name == "" { // trailing empty label
				return false
			}
		} else {
			name = ""
		}
		n := len(label)
		if n == 0 || n > 63 || label[0] == '-' || label[n-1] == '-' || (n >= 4 && label[2] == '-' && label[3] == '-') {
			return false
		}
		for i := 0; i < n; i++ {
			if c := label[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// validBackendName accepts the characters HAProxy allows in proxy names.
func validBackendName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("_.:-", c) >= 0) {
			return false
		}
	}
	return true
}

// NormalizeDomain returns the stored form of a map domain: IDNs as
// lowercase punycode, no trailing dot; "*." allowed as the whole first label.
func NormalizeDomain(d string) (string, error) {
	wildcard := strings.HasPrefix(d, "*.")
	name := strings.TrimSuffix(strings.TrimPrefix(d, "*."), ".")
	if strings.Contains(name, "*") {
		return "", fmt.Errorf("%q: a wildcard is only allowed as the whole first label, as in *.example.com", d)
	}
	ascii := name
	if !plainLDH(name) {
		var err error
		if ascii, err = domainProfile.ToASCII(name); err != nil {
			return "", fmt.Errorf("%q is not a valid host name: %v", d, err)
		}
	}
	if strings.HasSuffix(ascii, ".") { // "example.com..": the idna profile accepts one root dot
		return "", fmt.Errorf("%q is not a valid host name: it has an empty label", d)
	}
	labels := strings.Split(ascii, ".")
	if len(labels) < 2 {
		return "", fmt.Errorf("%q is not a valid host name: it needs at least two labels, as in example.com", d)
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return "", fmt.Errorf("%q is not a host name: the last label is numeric (IP addresses are not routed by name)", d)
	}
	if wildcard {
		return "*." + ascii, nil
	}
	return ascii, nil
}

// ParseMap checks a fragment's map part. It returns the entries and the
// normalised text to store, which keeps every line (comments too) in place
// so that line numbers stay valid, with each entry rewritten as
// "domain backend".
func ParseMap(loc assemble.Location, data []byte) ([]assemble.MapEntry, []byte, assemble.Problems) {
	var entries []assemble.MapEntry
	var ps assemble.Problems
	var out bytes.Buffer
	out.Grow(len(data))
	seen := map[string]int{}
	num := 0
	for rest := data; len(rest) > 0; {
		var raw []byte
		raw, rest, _ = bytes.Cut(rest, []byte{'\n'})
		num++
		at := loc
		at.Line = num
		text := string(raw)
		content := text
		if i := strings.IndexByte(content, '#'); i >= 0 {
			content = content[:i]
		}
		fields := strings.Fields(content)
		if len(fields) == 0 {
			out.Write(raw)
			out.WriteByte('\n')
			continue
		}
		if len(fields) != 2 {
			ps = append(ps, assemble.Problemf(at, "expected two fields \"domain backend\", found %d", len(fields)))
			out.WriteString(text + "\n")
			continue
		}
		domain, err := NormalizeDomain(fields[0])
		if err != nil {
			ps = append(ps, assemble.Problemf(at, "%v", err))
			out.WriteString(text + "\n")
			continue
		}
		backend := fields[1]
		switch {
		case !validBackendName(backend):
			ps = append(ps, assemble.Problemf(at, "backend name %q is invalid: use letters, digits and _ . : -", backend))
		case strings.HasPrefix(backend, reservedPrefix):
			ps = append(ps, assemble.Problemf(at, "domain %q: backend %q belongs to haproxy-config's own routing (prefix %q) and cannot be routed to", domain, backend, reservedPrefix))
		}
		if prev, ok := seen[domain]; ok {
			ps = append(ps, assemble.Problemf(at, "domain %q is already mapped on line %d", domain, prev))
		} else {
			seen[domain] = num
		}
		entries = append(entries, assemble.MapEntry{Domain: domain, Backend: backend, Line: num})
		out.WriteString(domain)
		out.WriteByte(' ')
		out.WriteString(backend)
		out.WriteByte('\n')
	}
	return entries, out.Bytes(), ps
}

// Parse runs every check that needs only the fragment itself and returns
// it ready for assembly. confFile and mapFile name the parts in messages.
func Parse(name, confFile string, conf []byte, mapFile string, mapData []byte, pol Policy) (*assemble.Fragment, assemble.Problems) {
	if err := ValidName(name); err != nil {
		return nil, assemble.Problems{{Location: assemble.Location{Fragment: name, File: confFile}, Msg: err.Error()}}
	}
	confLoc := assemble.Location{Fragment: name, File: confFile}
	mapLoc := assemble.Location{Fragment: name, File: mapFile}
	var ps assemble.Problems
	conf, p := Normalize(confLoc, conf, pol.MaxBytes)
	if p != nil {
		ps = append(ps, p)
	}
	mapData, p = Normalize(mapLoc, mapData, pol.MaxBytes)
	if p != nil {
		ps = append(ps, p)
	}
	if len(ps) > 0 {
		return nil, ps
	}
	lines, sections := assemble.Scan(conf)
	cps, hosts := CheckConf(confLoc, lines, sections, pol)
	ps = append(ps, cps...)
	entries, mapText, mps := ParseMap(mapLoc, mapData)
	ps = append(ps, mps...)
	ps = append(ps, pol.DomainOwners.check(name, mapLoc, entries)...)
	if len(ps) > 0 {
		return nil, ps
	}
	sum := sha256.New()
	sum.Write(conf)
	sum.Write([]byte{0})
	sum.Write(mapText)
	return &assemble.Fragment{
		Name: name, ConfFile: confFile, MapFile: mapFile,
		Conf: conf, MapText: mapText, Sections: sections, Map: entries, Hosts: hosts,
		Checksum: fmt.Sprintf("sha256:%x", sum.Sum(nil)),
	}, nil
}
