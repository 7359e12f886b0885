package fragments

import (
	"crypto/sha256"
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"haproxy-config/assemble"
)

// Policy is what a fragment may contain: the allowlist in allowlist.go,
// widened only by what the operator names here, plus the facts about the
// balancer the checks need. The zero Policy is the strictest one: backend
// sections only, no extension, no loopback or link-local server.
type Policy struct {
	// AllowSections are the section kinds a fragment may define besides
	// "backend": only kinds with a keyword list (see SectionKinds).
	AllowSections []string
	// Extensions are the named extensions of the allowlist the operator
	// turned on (ALLOW_DIRECTIVES, see Extensions).
	Extensions []string
	// AllowNetworks are networks servers may be in although they are
	// loopback, link-local or this balancer's own addresses.
	AllowNetworks []netip.Prefix
	// DomainOwners binds fragment names to the domains they may map; nil
	// leaves mapping first come, first served.
	DomainOwners DomainOwners
	// MaxBytes caps each part's size; 0 means no limit.
	MaxBytes int64
	// CrossRefs lets a fragment read the state of other fragments'
	// backends and track their servers (CROSS_REFS), as it lets map lines
	// route to them. Writing stays a fragment's own business.
	CrossRefs bool
	// Balancer is what the base config and the settings tell about this
	// balancer.
	Balancer Balancer
}

// Balancer holds the facts about this balancer that the checks need.
type Balancer struct {
	// Exports are the base config's sections fragments may refer to, by
	// name (EXPORTS): routing to a backend, reading its state, using a
	// user list or resolvers. Never writing: tables and caches are a
	// fragment's own.
	Exports map[string]bool
	// BaseNames are the names of all the base config's sections: no
	// fragment section may take one, and with CrossRefs a name that is not
	// one of them is another fragment's.
	BaseNames map[string]bool
	// Listeners are the addresses the balancer itself listens on (the base
	// config's binds, the status frontend, the challenge handler, the
	// metrics endpoint). A server there is refused whatever AllowNetworks
	// says.
	Listeners []Listener
	// LocalAddrs are the addresses of this machine's interfaces.
	LocalAddrs []netip.Addr
	// Counters are the stick counters (0 to 2) the base config tracks: a
	// fragment using one would act on the base's table entries.
	Counters [3]bool
	// Vars are the variables the base config uses ("txn.hc_backend"): a
	// fragment may not set them.
	Vars map[string]bool
	// Hostname is this machine's name, which its name services resolve to
	// its own addresses.
	Hostname string
}

// Listener is one address the balancer listens on. A zero Addr listens on
// every address; Port 0 stands for a port range or an unknown port.
type Listener struct {
	Addr netip.Addr
	Port uint16
}

// Fingerprint identifies a policy, so that a parse cached under one policy
// is not reused under another.
func (p *Policy) Fingerprint() string {
	h := sha256.New()
	fmt.Fprintf(h, "%q %q %v %d %v %v %v %v\n", p.AllowSections, p.Extensions, p.AllowNetworks, p.MaxBytes, p.CrossRefs,
		p.Balancer.Listeners, p.Balancer.LocalAddrs, p.Balancer.Counters)
	fmt.Fprintf(h, "%q %q %q %q %s\n", sortedKeys(p.Balancer.Exports), sortedKeys(p.Balancer.BaseNames), sortedKeys(p.Balancer.Vars),
		p.Balancer.Hostname, p.DomainOwners.String())
	return fmt.Sprintf("%x", h.Sum(nil))
}

func sortedKeys(m map[string]bool) []string { return slices.Sorted(maps.Keys(m)) }

func (p *Policy) has(ext string) bool { return slices.Contains(p.Extensions, ext) }

func (p *Policy) sectionAllowed(kind string) bool {
	return kind == "backend" || slices.Contains(p.AllowSections, kind)
}

// reservedPrefix names sections, backends and variables the base config
// owns.
const reservedPrefix = "haproxy_config"

// checker applies the policy to one fragment's config part.
type checker struct {
	pol   *Policy
	loc   assemble.Location
	own   map[string]map[string]bool // section kind -> names this fragment defines
	ps    assemble.Problems
	hosts []assemble.HostRef

	firstLine int     // lines before any section are reported once, at the first
	tracked   [3]bool // the stick counters this fragment tracks itself
	servers   int     // servers so far, and servers times weight
	weights   int
	regexes   int // regular expressions so far

	// the line being read
	line    assemble.Line
	section assemble.Section
	failed  bool
	sec     sectionUse // what the current section connects to
	// the server line being read: its weight (-1: none given), and the
	// servers of a server-template
	lineWeight      int
	templateServers int
}

// sectionUse is what a section connects to, checked at its end.
type sectionUse struct {
	localAddr     string // the first server address on this balancer's own addresses
	ports         []portUse
	hosts         int // c.hosts of the section start at this index
	defaultWeight int // its default-server's weight, 0 for none
}

type portUse struct {
	port uint16
	line assemble.Line
}

// CheckConf applies the policy to a fragment's scanned config part. It
// returns the problems, each at its line and naming the word refused, and
// the host names the servers use, which the caller resolves (see
// CheckHosts) before it accepts the fragment.
func CheckConf(loc assemble.Location, lines []assemble.Line, sections []assemble.Section, pol Policy) (assemble.Problems, []assemble.HostRef) {
	c := &checker{pol: &pol, loc: loc, own: map[string]map[string]bool{}}
	if len(lines) > 0 {
		c.firstLine = lines[0].Num
	}
	for _, l := range lines {
		for _, w := range l.Words {
			if n, ok := strings.CutPrefix(w, "track-sc"); ok && len(n) == 1 && '0' <= n[0] && n[0] <= '2' {
				c.tracked[n[0]-'0'] = true
			}
		}
	}
	for _, s := range sections {
		if c.own[s.Kind] == nil {
			c.own[s.Kind] = map[string]bool{}
		}
		c.own[s.Kind][s.Name] = true
	}
	for _, l := range lines {
		if l.Section >= 0 && sections[l.Section].Line == l.Num {
			c.endSection()
		}
		c.line, c.failed = l, false
		if l.Section >= 0 {
			c.section = sections[l.Section]
		} else {
			c.section = assemble.Section{}
		}
		c.check()
	}
	c.endSection()
	return c.ps, c.hosts
}

// refuse records a problem on the current line, and returns false so that
// callers stop reading the line. Every message quotes the word it refuses.
func (c *checker) refuse(format string, args ...any) bool {
	if c.failed {
		return false
	}
	c.failed = true
	at := c.loc
	at.Line = c.line.Num
	c.ps = append(c.ps, assemble.Problemf(at, format, args...))
	return false
}

// refuseWord refuses a keyword, action or option that is not on the
// allowlist, with the reason when it is a known danger.
func (c *checker) refuseWord(word, context string) bool {
	section := c.section.Kind
	what := fmt.Sprintf("%q", word)
	if context != "" && context != word {
		what = fmt.Sprintf("%s %q", context, word)
	}
	if why, ok := refusals[word]; ok {
		return c.refuse("%s is not allowed in a %s of a fragment: %s", what, section, why)
	}
	if strings.HasPrefix(word, "lua.") {
		return c.refuse("%s is not allowed in a %s of a fragment: it runs Lua code; the operator can allow Lua with HAPROXY_CONFIG_ALLOW_DIRECTIVES=%s", what, section, extLua)
	}
	return c.refuse("%s is not on the allowlist for a %s of a fragment (README: What a fragment may contain)", what, section)
}

func (c *checker) refuseFetch(name string) bool {
	if strings.HasPrefix(name, "lua.") {
		return c.refuse("sample fetch %q is not allowed in fragments: it runs Lua code; the operator can allow Lua with HAPROXY_CONFIG_ALLOW_DIRECTIVES=%s", name, extLua)
	}
	return c.refuse("sample fetch %q is not allowed in fragments%s", name, reason(name))
}

// reason is ": why" for a known danger, "" otherwise.
func reason(name string) string {
	if why, ok := refusals[name]; ok {
		return ": " + why
	}
	return " (not on the allowlist, README: What a fragment may contain)"
}

// check reads one line.
func (c *checker) check() {
	l := c.line
	switch {
	case l.Scope:
		c.refuse("a line starting with \"[\" is a scope marker for HAProxy, not part of any section; fragments may not use it")
		return
	case l.Err != nil:
		c.refuse("HAProxy cannot read this line: %s", l.Err.Error())
		return
	case len(l.Expansions) > 0:
		e := l.Expansions[0]
		c.refuse("%q inside double quotes is expanded by HAProxy from the balancer's environment (variable %s); fragments may not read the environment: write \\$ or use single quotes for a literal $", expansionText(e), e.Name)
		return
	case l.Words[0] == "":
		c.refuse("the line starts with an empty word, so HAProxy ignores all of it; remove the empty quotes")
		return
	}
	for i, w := range l.Words {
		if w == "" && i < len(l.Words)-1 {
			c.refuse("empty word in the middle of the line: HAProxy stops reading the line there, so the words after it would be ignored")
			return
		}
	}
	if strings.HasPrefix(l.Words[0], ".") {
		c.refuse("%q is an HAProxy configuration directive (conditional blocks, diagnostics); fragments may not use them: HAProxy's check and its running master may see different lines", l.Words[0])
		return
	}
	if assemble.IsSectionKind(l.Words[0]) {
		c.header()
		return
	}
	if c.section.Kind == "" {
		if l.Num == c.firstLine {
			c.refuse("%q is outside any section: a fragment starts with a section header such as \"backend NAME\"", l.Words[0])
		}
		return
	}
	if !c.pol.sectionAllowed(c.section.Kind) || c.section.Name == "" || strings.HasPrefix(c.section.Name, reservedPrefix) {
		return // the header was refused already
	}
	// every word may be a log-format string somewhere: check all of
	// their sample expressions, wherever the word stands
	for _, w := range l.Words {
		if strings.Contains(w, "%") && !c.logFormat(w) {
			return
		}
	}
	kws := sectionKeywords[c.section.Kind]
	words := l.Words
	if (words[0] == "no" || words[0] == "default") && c.section.Kind == "backend" && len(words) > 1 {
		if words[1] != "option" && !(words[0] == "no" && words[1] == "log" && len(words) == 2) {
			c.refuse("%q may only come before \"option\" (or \"no log\")", words[0])
			return
		}
		words = words[1:]
	}
	p, ok := kws[words[0]]
	if !ok {
		c.refuseWord(words[0], "keyword")
		return
	}
	u := &cursor{c: c, words: words, i: 1}
	if p(u) && !u.done() {
		c.refuse("unexpected %q", u.peek())
	}
}

func expansionText(e assemble.Expansion) string {
	switch {
	case !e.Braces:
		return "$" + e.Name
	case e.HasDefault:
		return "${" + e.Name + "-" + e.Default + "}"
	case e.WordSplit:
		return "${" + e.Name + "[*]}"
	}
	return "${" + e.Name + "}"
}

// header checks a section header.
func (c *checker) header() {
	s := c.section
	words := c.line.Words
	switch {
	case s.Kind == "global" || s.Kind == "defaults":
		c.refuse("%s sections change every tenant's settings and are never accepted from a fragment", s.Kind)
	case s.Kind == "program":
		c.refuse("program sections run commands as root and are never accepted from a fragment")
	case sectionKeywords[s.Kind] == nil:
		c.refuse("%s sections are never accepted from a fragment: %s", s.Kind, neverKinds[s.Kind])
	case !c.pol.sectionAllowed(s.Kind):
		c.refuse("%s sections are not allowed in fragments (allowed: %s); the operator can allow %s with HAPROXY_CONFIG_ALLOW_SECTIONS", s.Kind, strings.Join(append([]string{"backend"}, c.pol.AllowSections...), ", "), strings.Join(SectionKinds(), ", "))
	case s.Name == "":
		c.refuse("%s section without a name", s.Kind)
	case strings.HasPrefix(s.Name, reservedPrefix):
		c.refuse("%s name %q is reserved for the base config (prefix %q)", s.Kind, s.Name, reservedPrefix)
	case c.pol.Balancer.BaseNames[s.Name]:
		c.refuse("%s name %q is the name of one of the base config's sections; HAProxy would look some references to it up there", s.Kind, s.Name)
	case !validBackendName(s.Name):
		c.refuse("%s name %q is invalid: use letters, digits and _ . : -", s.Kind, s.Name)
	case len(words) > 2:
		c.refuse("unexpected %q after the section name: a fragment's section takes nothing after its name (no \"from\": the base's defaults apply)", words[2])
	}
}

// ownRef accepts a name only when this fragment defines a section of that
// kind so called: what a fragment writes to (stick tables, caches) and
// what ties it to another object for good (tracked servers).
func (c *checker) ownRef(kind, name, ctx string) bool {
	if c.own[kind][name] {
		return true
	}
	return c.refuse("%s %q, which this fragment does not define: a fragment may use only its own %ss here", ctx, name, kind)
}

// readRef accepts a name this fragment defines or the base exports, and,
// with CrossRefs, another fragment's backend.
func (c *checker) readRef(kind, name, ctx string) bool {
	if c.own[kind][name] || c.pol.Balancer.Exports[name] {
		return true
	}
	if c.pol.CrossRefs && kind == "backend" && !c.pol.Balancer.BaseNames[name] && !strings.HasPrefix(name, reservedPrefix) {
		return true
	}
	return c.refuse("%s %q, which neither this fragment defines nor the base config exports (HAPROXY_CONFIG_EXPORTS)", ctx, name)
}

// BaseFacts reads from the base config what the checks need: the
// addresses it listens on (bind lines, a TCP stats socket, peers), the
// stick counters its rules track and the variables it uses.
func BaseFacts(base *assemble.Base) (listeners []Listener, counters [3]bool, vars map[string]bool) {
	vars = map[string]bool{}
	lines, _ := assemble.Scan(base.Text)
	for _, l := range lines {
		w := l.Words
		if l.Err != nil || len(w) < 2 {
			continue
		}
		var addrs string
		switch {
		case w[0] == "bind" || w[0] == "dgram-bind":
			addrs = w[1]
		case w[0] == "stats" && w[1] == "socket" && len(w) > 2, w[0] == "peer" && len(w) > 2:
			addrs = w[2]
		}
		for _, a := range strings.Split(addrs, ",") {
			if li, ok := ParseListener(a); ok {
				listeners = append(listeners, li)
			}
		}
		for _, x := range w {
			if n, ok := strings.CutPrefix(x, "track-sc"); ok && len(n) == 1 && '0' <= n[0] && n[0] <= '2' {
				counters[n[0]-'0'] = true
			}
			for _, m := range varUseRE.FindAllStringSubmatch(x, -1) {
				vars[m[1]] = true
			}
		}
	}
	return listeners, counters, vars
}

// varUseRE finds the variables a word names as an argument: set-var(),
// var(), and converters such as add(txn.x) or concat(,txn.x,).
var varUseRE = regexp.MustCompile(`[(,]\s*((?:proc|sess|txn|req|res|check)\.[^,)\s]+)`)
