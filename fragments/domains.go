package fragments

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"haproxy-config/assemble"
)

// DomainOwners binds fragment names, or name prefixes ending in "*", to
// the domain suffixes they may map (HAPROXY_CONFIG_DOMAIN_OWNERS). With
// owners set, a fragment whose name no entry matches may map no domain.
type DomainOwners map[string][]string

// ParseDomainOwners reads "NAME=SUFFIX[,SUFFIX...]" entries separated by
// blanks, newlines or semicolons; "#" starts a comment to the end of its
// line. NAME may end in "*" to match every name starting with the rest.
func ParseDomainOwners(s string) (DomainOwners, error) {
	owners := DomainOwners{}
	for line := range strings.Lines(s) {
		line, _, _ = strings.Cut(line, "#")
		for _, entry := range strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' || r == ';' || r == '\n' || r == '\r' }) {
			name, suffixes, ok := strings.Cut(entry, "=")
			if !ok || name == "" || suffixes == "" {
				return nil, fmt.Errorf("%q is not NAME=SUFFIX[,SUFFIX...]", entry)
			}
			if err := ValidName(strings.TrimSuffix(name, "*")); err != nil && !(name == "*") {
				return nil, fmt.Errorf("%q: %v", entry, err)
			}
			for _, suf := range strings.Split(suffixes, ",") {
				d, err := NormalizeDomain(strings.TrimPrefix(suf, "."))
				if err != nil || strings.HasPrefix(d, "*.") {
					return nil, fmt.Errorf("%q: %q is not a domain suffix such as example.com", entry, suf)
				}
				owners[name] = append(owners[name], d)
			}
		}
	}
	if len(owners) == 0 {
		return nil, nil
	}
	return owners, nil
}

// suffixes returns what fragment name may map: an exact entry, else the
// longest matching prefix entry. ok is false when owners bind nothing.
func (o DomainOwners) suffixes(name string) (sufs []string, ok bool) {
	if o == nil {
		return nil, false
	}
	if s, found := o[name]; found {
		return s, true
	}
	best := -1
	for k, s := range o {
		if p, isPrefix := strings.CutSuffix(k, "*"); isPrefix && strings.HasPrefix(name, p) && len(p) > best {
			best, sufs = len(p), s
		}
	}
	return sufs, true
}

// check refuses the map lines of fragment name that are outside its
// domains.
func (o DomainOwners) check(name string, loc assemble.Location, entries []assemble.MapEntry) assemble.Problems {
	sufs, bound := o.suffixes(name)
	if !bound {
		return nil
	}
	var ps assemble.Problems
	for _, e := range entries {
		host := strings.TrimPrefix(e.Domain, "*.")
		if !inSuffixes(host, sufs) {
			at := loc
			at.Line = e.Line
			allowed := "none"
			if len(sufs) > 0 {
				allowed = strings.Join(sufs, ", ")
			}
			ps = append(ps, assemble.Problemf(at, "domain %q is not one fragment %q may map (its domains: %s; HAPROXY_CONFIG_DOMAIN_OWNERS)", e.Domain, name, allowed))
		}
	}
	return ps
}

func inSuffixes(host string, sufs []string) bool {
	for _, s := range sufs {
		if host == s || strings.HasSuffix(host, "."+s) {
			return true
		}
	}
	return false
}

// String renders the owners in a stable order.
func (o DomainOwners) String() string {
	var b strings.Builder
	for _, n := range slices.Sorted(maps.Keys(o)) {
		fmt.Fprintf(&b, "%s=%s ", n, strings.Join(o[n], ","))
	}
	return strings.TrimSpace(b.String())
}
