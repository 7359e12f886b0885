package assemble

import (
	"maps"
	"slices"
	"sync"
)

// index is what Check knows of a set as it goes through it: every section
// and every domain with the place that defines it, and which backends the
// fragments define and their map lines route to.
type index struct {
	baseFile     string
	baseSections []Section
	opt          Options
	sections     map[sectionKey]sectionOwner
	baseBackends map[string]bool // the base's exported backends
	backends     map[string]int  // fragments' backend names -> sections defining them
	routes       map[string]int  // backend names -> fragments' map lines routing to them
	domains      map[string]domainOwner
}

// domainOwner is the map line that maps a domain: its Location is built
// only for a problem, so the index of 50,000 domains stays small.
type domainOwner struct {
	f    *Fragment
	line int
}

func (o domainOwner) location() Location {
	return Location{Fragment: o.f.Name, File: o.f.MapFile, Line: o.line}
}

type sectionKey struct{ namespace, name string }

type sectionOwner struct {
	loc  Location
	kind string
}

func newIndex(base *Base, opt Options, frags, entries int) *index {
	ix := &index{baseFile: base.File, baseSections: slices.Clone(base.Sections),
		opt:          Options{CrossRefs: opt.CrossRefs, Exports: maps.Clone(opt.Exports)},
		sections:     make(map[sectionKey]sectionOwner, len(base.Sections)+frags*2),
		baseBackends: map[string]bool{},
		backends:     make(map[string]int, frags),
		routes:       make(map[string]int, frags),
		domains:      make(map[string]domainOwner, entries)}
	for _, s := range base.Sections {
		if s.Name == "" {
			continue
		}
		ix.sections[sectionKey{s.Namespace(), s.Name}] = sectionOwner{Location{File: base.File, Line: s.Line}, s.Kind}
		if s.IsBackend() && opt.Exports[s.Name] {
			ix.baseBackends[s.Name] = true
		}
	}
	return ix
}

// addSections takes in f's sections, with a problem for each one already
// defined.
func (ix *index) addSections(f *Fragment, ps Problems) Problems {
	for _, s := range f.Sections {
		k := sectionKey{s.Namespace(), s.Name}
		if prev, ok := ix.sections[k]; ok {
			here := Location{Fragment: f.Name, File: f.ConfFile, Line: s.Line}
			ps = append(ps, Problemf(here, "%s %q is already defined as %s by %s", s.Kind, s.Name, prev.kind, prev.loc))
			continue
		}
		ix.sections[k] = sectionOwner{Location{Fragment: f.Name, File: f.ConfFile, Line: s.Line}, s.Kind}
		if s.IsBackend() {
			ix.backends[s.Name]++
		}
	}
	return ps
}

// addDomains takes in f's map lines, with a problem for each domain already
// mapped and each line routing to a backend that is not there. Every
// fragment's sections must be in first (CrossRefs).
func (ix *index) addDomains(f *Fragment, ps Problems) Problems {
	for i := 0; i < len(f.Map); {
		// map lines come in runs routing to one backend: look it up once
		// a run
		b, j := f.Map[i].Backend, i+1
		for j < len(f.Map) && f.Map[j].Backend == b {
			j++
		}
		ix.routes[b] += j - i
		routed := f.defines(b) || ix.baseBackends[b] || ix.opt.CrossRefs && ix.backends[b] > 0
		for _, e := range f.Map[i:j] {
			if prev, ok := ix.domains[e.Domain]; ok {
				here := Location{Fragment: f.Name, File: f.MapFile, Line: e.Line}
				ps = append(ps, Problemf(here, "domain %q is already mapped by %s", e.Domain, prev.location()))
			} else {
				ix.domains[e.Domain] = domainOwner{f, e.Line}
			}
			if !routed {
				ps = append(ps, ix.unrouted(f, e))
			}
		}
		i = j
	}
	return ps
}

// unrouted is the problem of a map line whose backend is not there.
func (ix *index) unrouted(f *Fragment, e MapEntry) *Problem {
	here := Location{Fragment: f.Name, File: f.MapFile, Line: e.Line}
	if ix.opt.CrossRefs {
		return Problemf(here, "domain %q routes to backend %q, which no fragment defines and the base config does not export", e.Domain, e.Backend)
	}
	return Problemf(here, "domain %q routes to backend %q, which this fragment does not define and the base config does not export (HAPROXY_CONFIG_EXPORTS)", e.Domain, e.Backend)
}

// removeSections takes out the sections f put in.
func (ix *index) removeSections(f *Fragment) {
	for _, s := range f.Sections {
		k := sectionKey{s.Namespace(), s.Name}
		if owner, ok := ix.sections[k]; ok && owner.loc.Fragment == f.Name {
			delete(ix.sections, k)
			if (Section{Kind: owner.kind}).IsBackend() {
				ix.backends[s.Name]--
			}
		}
	}
}

// removeDomains takes out the map lines f put in.
func (ix *index) removeDomains(f *Fragment) {
	for _, e := range f.Map {
		if at, ok := ix.domains[e.Domain]; ok && at.f.Name == f.Name {
			delete(ix.domains, e.Domain)
		}
		ix.routes[e.Backend]--
	}
}

// orphaned reports whether a backend one of gone defined is defined no
// more while map lines in the index route to it.
func (ix *index) orphaned(gone []*Fragment) bool {
	for _, f := range gone {
		for _, b := range f.Backends() {
			if ix.backends[b] <= 0 && !ix.baseBackends[b] && ix.routes[b] > 0 {
				return true
			}
		}
	}
	return false
}

// Checker answers as Check does, problem for problem, but keeps the index
// of the last set that passed, and checks a set that differs from it by a
// few fragments (the same *Fragment values otherwise, the changed ones
// last) by taking the old versions out of that index and the new ones in.
// A daemon checks nearly the same 10,000 fragments again and again, one
// change apart. It is safe for concurrent use.
type Checker struct {
	mu    sync.Mutex
	ix    *index               // of the last set that passed; nil before one did
	frags map[string]*Fragment // that set, by name
	whole int                  // sets checked whole, for the tests
}

// Check is Check(base, frags, opt).
func (c *Checker) Check(base *Base, frags []*Fragment, opt Options) Problems {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ps, ok := c.changes(base, frags, opt); ok {
		return ps
	}
	c.whole++
	ps, ix := checkAll(base, frags, opt)
	if len(ps) > 0 {
		return ps
	}
	byName := make(map[string]*Fragment, len(frags))
	for _, f := range frags {
		if _, twice := byName[f.Name]; twice {
			// Check does not compare names; an index by name cannot
			// take both out again
			return ps
		}
		byName[f.Name] = f
	}
	c.ix, c.frags = ix, byName
	return ps
}

// changes checks frags against the index when it can tell the answer
// Check would give, and reports whether it could: the base and options
// are the same, the fragments that are not in the index come after those
// that are, and the difference is small.
func (c *Checker) changes(base *Base, frags []*Fragment, opt Options) (Problems, bool) {
	ix := c.ix
	if ix == nil || ix.baseFile != base.File || !slices.Equal(ix.baseSections, base.Sections) ||
		ix.opt.CrossRefs != opt.CrossRefs || !maps.Equal(ix.opt.Exports, opt.Exports) {
		return nil, false
	}
	in := make(map[string]*Fragment, len(frags))
	var added []*Fragment
	for _, f := range frags {
		if _, twice := in[f.Name]; twice {
			return nil, false
		}
		in[f.Name] = f
		if c.frags[f.Name] != f {
			added = append(added, f)
		} else if len(added) > 0 {
			// an incumbent after a newcomer: Check would blame differently
			return nil, false
		}
	}
	var removed []*Fragment
	for name, f := range c.frags {
		if in[name] != f {
			removed = append(removed, f)
		}
	}
	if len(added)+len(removed) > len(frags)/4+8 {
		return nil, false
	}
	// what is left of the set that passed passes: only the newcomers can
	// be at fault, and Check would list their problems in this order
	for _, f := range removed {
		ix.removeSections(f)
		ix.removeDomains(f)
	}
	var ps Problems
	for _, f := range added {
		ps = ix.addSections(f, ps)
	}
	undo := func(domains bool) {
		for _, f := range added {
			ix.removeSections(f)
			if domains {
				ix.removeDomains(f)
			}
		}
		for _, f := range removed {
			ix.addSections(f, nil)
		}
		for _, f := range removed {
			ix.addDomains(f, nil)
		}
	}
	if opt.CrossRefs && ix.orphaned(removed) {
		// an incumbent's line may route to a backend that went: Check
		// looks at every line
		undo(false)
		return nil, false
	}
	for _, f := range added {
		ps = ix.addDomains(f, ps)
	}
	if len(ps) > 0 {
		undo(true)
		return ps, true
	}
	for _, f := range removed {
		delete(c.frags, f.Name)
	}
	for _, f := range added {
		c.frags[f.Name] = f
	}
	return nil, true
}
