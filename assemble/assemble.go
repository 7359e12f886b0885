package assemble

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"slices"
	"sort"
)

// MapEntry is one "domain backend" line of a fragment's map part.
type MapEntry struct {
	Domain  string // lowercase ASCII (punycode); "*.example.com" for a wildcard
	Backend string
	Line    int
}

// Fragment is one tenant's parsed fragment.
type Fragment struct {
	Name     string
	ConfFile string // where the config part came from, for messages
	MapFile  string // where the map part came from, for messages
	Conf     []byte // normalised config part: LF line ends, final newline
	Sections []Section
	Map      []MapEntry
	MapText  []byte // normalised map part, as stored
	Checksum string // "sha256:<hex>" of the stored parts
	// Hosts are the host names its servers use, which are resolved and
	// checked before the fragment is accepted.
	Hosts []HostRef
}

// HostRef is a host name in one of a fragment's addresses.
type HostRef struct {
	Name    string
	Port    string // as written; "" when none
	Line    int    // of the config part
	Address string // the whole address, as written
	// CheckPorts are the other ports its section connects to (check and
	// agent ports), which must not be the balancer's own listeners when
	// the name resolves to one of its addresses.
	CheckPorts []uint16
}

// Backends returns the names of the backends (and listens) f defines.
func (f *Fragment) Backends() []string {
	var names []string
	for _, s := range f.Sections {
		if s.IsBackend() {
			names = append(names, s.Name)
		}
	}
	return names
}

// Options are the operator's cross-fragment rules.
type Options struct {
	// CrossRefs lets a map line route to a backend another fragment defines.
	CrossRefs bool
	// Exports are the base config's sections fragments may refer to; a map
	// line may route to an exported backend.
	Exports map[string]bool
}

// Check finds the problems that only show when fragments meet each other and
// the base: a section name defined twice, a domain claimed twice, a map line
// routing to a backend that is not there. Fragments earlier in frags are the
// incumbents: when two collide, the later one is blamed, so callers list
// what is already live first and the newcomer last.
func Check(base *Base, frags []*Fragment, opt Options) Problems {
	ps, _ := checkAll(base, frags, opt)
	return ps
}

// checkAll is Check, returning the index it built as well.
func checkAll(base *Base, frags []*Fragment, opt Options) (Problems, *index) {
	entries := 0
	for _, f := range frags {
		entries += len(f.Map)
	}
	ix := newIndex(base, opt, len(frags), entries)
	var ps Problems
	for _, f := range frags {
		ps = ix.addSections(f, ps)
	}
	for _, f := range frags {
		ps = ix.addDomains(f, ps)
	}
	return ps, ix
}

// defines reports whether f has a backend (or listen) called name.
func (f *Fragment) defines(name string) bool { return definesBackend(f.Sections, name) }

func definesBackend(secs []Section, name string) bool {
	return slices.ContainsFunc(secs, func(s Section) bool { return s.IsBackend() && s.Name == name })
}

// Output is an assembled generation.
type Output struct {
	Config []byte
	Map    []byte
	Source *SourceMap
	// Marker identifies the config by its content (not the map: a change
	// of the map alone goes live through the runtime API, without a
	// reload); the base config can serve it ({{.Marker}}) so a reload can
	// be seen taking effect. Empty when the base does not use it.
	Marker string
}

// MarkerPlaceholder is what {{.Marker}} renders to in the base; Build
// replaces it with the output's marker.
const MarkerPlaceholder = "haproxy-config-marker-0000000000"

// setMarker replaces the placeholder in the base part (the first baseLen
// bytes; a fragment's text is never touched) with a digest of the config
// as it is with the placeholder: the same input always gives the same
// bytes, and the marker has the placeholder's length. The map is left out:
// the runtime API checks it.
func (o *Output) setMarker(baseLen int) {
	if !bytes.Contains(o.Config[:baseLen], []byte(MarkerPlaceholder)) {
		return
	}
	h := sha256.New()
	h.Write(o.Config)
	o.Marker = fmt.Sprintf("haproxy-config-%x", h.Sum(nil))[:len(MarkerPlaceholder)]
	copy(o.Config, bytes.ReplaceAll(o.Config[:baseLen], []byte(MarkerPlaceholder), []byte(o.Marker)))
}

// Build concatenates the base and the fragments, sorted by name, each marked
// with comments naming it, and the host map. It does not check anything:
// run Check first.
func Build(base *Base, frags []*Fragment) *Output {
	sorted := make([]*Fragment, len(frags))
	copy(sorted, frags)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })

	size, entries := len(base.Text)+64, 0
	for _, f := range sorted {
		size += len(f.Conf) + 2*len(f.Name) + 64 // markers
		entries += len(f.Map)
	}
	src := &SourceMap{baseFile: base.File, baseLines: bytes.Count(base.Text, []byte{'\n'}),
		proxies: make(map[string]Location, len(base.Sections)+len(sorted)),
		conf:    make([]span, 0, len(sorted)), hosts: make([]span, 0, len(sorted))}
	for _, s := range base.Sections {
		if s.Namespace() == "proxy" {
			src.proxies[s.Name] = Location{File: base.File, Line: s.Line}
		}
	}
	cfg := bytes.NewBuffer(make([]byte, 0, size))
	cfg.Write(base.Text)
	line := src.baseLines
	cfg.WriteString("\n# ==== fragments managed by haproxy-config: edit them with haproxy-config, not here ====\n")
	line += 2
	hosts := make([]byte, 0, len(hostMapHeader)+entries*48+len(sorted)*32)
	hosts = append(hosts, hostMapHeader...)
	mapLine := 1
	for _, f := range sorted {
		// names are [a-z0-9._-]: nothing to escape in the quoted name. No
		// checksum here: it covers the map part too, and the config must
		// not change when only the map does (see Output.Marker)
		writeMarkerLine(cfg, "\n# ---- fragment \"", f.Name)
		line += 2
		n := bytes.Count(f.Conf, []byte{'\n'})
		src.conf = append(src.conf, span{first: line + 1, last: line + n, frag: f})
		cfg.Write(f.Conf)
		line += n
		writeMarkerLine(cfg, "# ---- end of fragment \"", f.Name)
		line++
		for _, s := range f.Sections {
			if s.Namespace() == "proxy" {
				src.proxies[s.Name] = Location{Fragment: f.Name, File: f.ConfFile, Line: s.Line}
			}
		}
		if len(f.Map) == 0 {
			continue
		}
		hosts = appendFragmentComment(hosts, f.Name)
		mapLine++
		src.hosts = append(src.hosts, span{first: mapLine + 1, last: mapLine + len(f.Map), frag: f})
		for _, e := range f.Map {
			hosts = AppendHostMapLine(hosts, e.Domain, e.Backend)
		}
		mapLine += len(f.Map)
	}
	out := &Output{Config: cfg.Bytes(), Map: hosts, Source: src}
	out.setMarker(len(base.Text))
	return out
}

// writeMarkerLine writes the comment line that opens or closes a
// fragment's part: prefix, the name, then the closing quote.
func writeMarkerLine(cfg *bytes.Buffer, prefix, name string) {
	cfg.WriteString(prefix)
	cfg.WriteString(name)
	cfg.WriteString("\" ----\n")
}

// SourceMap explains output lines in terms of the files people wrote.
type SourceMap struct {
	baseFile  string
	baseLines int
	conf      []span // fragment config parts, ascending
	hosts     []span // fragment map lines, ascending: line first+i is Map[i]
	proxies   map[string]Location
}

type span struct {
	first, last int // output lines, inclusive
	frag        *Fragment
}

// ConfigLine maps a line of the assembled haproxy.cfg back to its origin.
// Lines the assembler wrote itself (markers) report ok=false.
func (s *SourceMap) ConfigLine(n int) (Location, bool) {
	if n >= 1 && n <= s.baseLines {
		return Location{File: s.baseFile, Line: n}, true
	}
	i := sort.Search(len(s.conf), func(i int) bool { return s.conf[i].last >= n })
	if i < len(s.conf) && s.conf[i].first <= n {
		sp := s.conf[i]
		return Location{Fragment: sp.frag.Name, File: sp.frag.ConfFile, Line: n - sp.first + 1}, true
	}
	return Location{}, false
}

// MapLine maps a line of the assembled host map back to its origin.
func (s *SourceMap) MapLine(n int) (Location, bool) {
	i := sort.Search(len(s.hosts), func(i int) bool { return s.hosts[i].last >= n })
	if i < len(s.hosts) && s.hosts[i].first <= n {
		sp := s.hosts[i]
		return Location{Fragment: sp.frag.Name, File: sp.frag.MapFile, Line: sp.frag.Map[n-sp.first].Line}, true
	}
	return Location{}, false
}

// Proxy returns where the frontend, backend or listen called name is defined.
func (s *SourceMap) Proxy(name string) (Location, bool) {
	loc, ok := s.proxies[name]
	return loc, ok
}
