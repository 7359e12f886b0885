package fragments

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"haproxy-config/assemble"
)

// Addresses a fragment may make the balancer connect to. HAProxy accepts a
// unix socket path, an abstract or inherited socket, any loopback port, a
// host name it resolves with libc, and numeric forms inet_aton() reads
// ("127.1", "2130706433", "0x7f.1"): through a server line a tenant would
// reach the runtime API, the master CLI, the daemon's own listeners and the
// cloud metadata service. So an address must be an IP HAProxy reads the way
// this code does, or a host name that is resolved here before it is
// accepted.

// addressUse says what an address is for, which decides the prefixes
// HAProxy takes there.
type addressUse int

const (
	useServer     addressUse = iota // server, socks4, check and agent addresses: a TCP connection
	useNameserver                   // resolvers nameserver: DNS over UDP or TCP
)

// streamPrefixes are the protocol prefixes a TCP address may carry.
var streamPrefixes = map[string]bool{"ipv4": true, "ipv6": true, "tcp": true, "tcp4": true, "tcp6": true}

var dgramPrefixes = map[string]bool{"ipv4": true, "ipv6": true, "udp": true, "udp4": true, "udp6": true, "tcp": true, "tcp4": true, "tcp6": true}

// address checks one address argument; with noPort, the address may not
// carry a port (check and agent addresses, init-addr values).
func (c *checker) address(v, ctx string, use addressUse, noPort bool) bool {
	host, port, why := splitAddress(v, use)
	if why != "" {
		return c.refuse("%s %q: %s", ctx, v, why)
	}
	if noPort && port != "" {
		return c.refuse("%s %q: no port here", ctx, v)
	}
	ip, isIP := parseHostIP(host)
	if !isIP {
		if why := hostNameRefusal(host, c.pol.Balancer.Hostname); why != "" {
			return c.refuse("%s %q: %s", ctx, v, why)
		}
		c.hosts = append(c.hosts, assemble.HostRef{Name: host, Port: port, Line: c.line.Num, Address: v})
		return true
	}
	if why := c.pol.ipRefusal(ip, port); why != "" {
		return c.refuse("%s %q: %s", ctx, v, why)
	}
	if c.pol.isLocal(ip) && c.sec.localAddr == "" {
		// allowed by ALLOW_NETWORKS: this backend's other ports must not
		// be the balancer's own listeners either
		c.sec.localAddr = v
	}
	return true
}

// haproxyPort reads a port the way str2sa_range() and atoi() do: the
// digits at its start, whatever follows them. ok is false for a port that
// is relative to the client's ("+1", "-1", empty, 0), which may be any.
func haproxyPort(s string) (uint16, bool) {
	n := 0
	for n < len(s) && '0' <= s[n] && s[n] <= '9' {
		n++
	}
	v, err := strconv.ParseUint(s[:n], 10, 64)
	if err != nil || v == 0 || v > 65535 {
		return 0, false
	}
	return uint16(v), true
}

// usePort records a port this section connects to on its servers'
// addresses, for the listener check at the end of the section.
func (c *checker) usePort(n uint16) {
	c.sec.ports = append(c.sec.ports, portUse{port: n, line: c.line})
}

// endSection refuses, in a section with a server on this balancer's own
// addresses, every check or agent port the balancer listens on.
func (c *checker) endSection() {
	if c.sec.localAddr != "" {
		for _, pu := range c.sec.ports {
			for _, l := range c.pol.Balancer.Listeners {
				if l.Port == pu.port && (!l.Addr.IsValid() || l.Addr.IsUnspecified() || c.pol.isLocal(l.Addr)) {
					c.line, c.failed = pu.line, false
					c.refuse("port %d: this backend connects to the balancer's own addresses (%s), and the balancer listens on that port itself (%s)", pu.port, c.sec.localAddr, l)
					break
				}
			}
		}
	}
	for i := c.sec.hosts; i < len(c.hosts); i++ {
		for _, pu := range c.sec.ports {
			c.hosts[i].CheckPorts = append(c.hosts[i].CheckPorts, pu.port)
		}
	}
	c.sec = sectionUse{hosts: len(c.hosts)}
}

// splitAddress reads an address as str2sa_range() does: an optional
// "proto@" prefix, then host and port split at the last ':' that comes
// after any ']'.
func splitAddress(v string, use addressUse) (host, port, why string) {
	if i := strings.IndexByte(v, '@'); i >= 0 {
		prefix := v[:i]
		allowed := streamPrefixes
		if use == useNameserver {
			allowed = dgramPrefixes
		}
		switch {
		case prefix == "unix" || prefix == "abns" || prefix == "uxst" || prefix == "uxdg":
			return "", "", "a unix socket on the balancer (its runtime API, its master CLI); fragments may only name IP addresses and host names"
		case prefix == "fd" || prefix == "sockpair":
			return "", "", "a socket HAProxy inherited or shares with its master; fragments may only name IP addresses and host names"
		case !allowed[prefix]:
			return "", "", fmt.Sprintf("the %q address prefix is not allowed here", prefix+"@")
		}
		v = v[i+1:]
	}
	if strings.HasPrefix(v, "/") || strings.HasPrefix(v, ".") {
		return "", "", "a path is a unix socket on the balancer; fragments may only name IP addresses and host names"
	}
	cut := strings.LastIndexAny(v, ":]")
	if cut >= 0 && v[cut] == ':' {
		host, port = v[:cut], v[cut+1:]
	} else {
		host = v
	}
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	return host, port, ""
}

// parseHostIP reads host as an IP address the way HAProxy would end up
// using it: an IPv4 or IPv6 literal, or one of the numeric forms libc's
// resolver accepts. Empty and "*" are the unspecified address.
func parseHostIP(host string) (netip.Addr, bool) {
	if host == "" || host == "*" {
		return netip.IPv4Unspecified(), true
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip.WithZone(""), true
	}
	if ip, ok := inetAton(host); ok {
		return ip, true
	}
	return netip.Addr{}, false
}

// inetAton reads the IPv4 forms of inet_aton(): one to four parts of
// decimal, octal (leading 0) or hexadecimal (0x) numbers, the last filling
// the remaining bytes.
func inetAton(s string) (netip.Addr, bool) {
	parts := strings.Split(s, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	var vals []uint64
	for _, p := range parts {
		if p == "" {
			return netip.Addr{}, false
		}
		base := 10
		switch {
		case strings.HasPrefix(p, "0x") || strings.HasPrefix(p, "0X"):
			base, p = 16, p[2:]
		case len(p) > 1 && p[0] == '0':
			base, p = 8, p[1:]
		}
		if p == "" && base == 16 {
			return netip.Addr{}, false
		}
		if p == "" {
			p = "0"
		}
		n, err := strconv.ParseUint(p, base, 32)
		if err != nil {
			return netip.Addr{}, false
		}
		vals = append(vals, n)
	}
	var v uint64
	for i, n := range vals[:len(vals)-1] {
		if n > 255 {
			return netip.Addr{}, false
		}
		v |= n << (24 - 8*i)
	}
	last := vals[len(vals)-1]
	if last >= 1<<(8*(5-len(vals))) {
		return netip.Addr{}, false
	}
	v |= last
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}

// hostNameRefusal says why host cannot be a server's host name, "" when it
// can: letters, digits, hyphens and underscores in dot-separated labels,
// a last label that is not a number, and not a name of this machine (self
// is its host name).
func hostNameRefusal(host, self string) string {
	if len(host) == 0 || len(host) > 253 {
		return "not an IP address or a host name"
	}
	name := strings.ToLower(strings.TrimSuffix(host, "."))
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return "not an IP address or a host name"
		}
		for i := 0; i < len(l); i++ {
			if ch := l[i]; !('a' <= ch && ch <= 'z' || '0' <= ch && ch <= '9' || ch == '-' || ch == '_') {
				return "not an IP address or a host name"
			}
		}
	}
	last := labels[len(labels)-1]
	if strings.Trim(last, "0123456789") == "" {
		return "not an IP address or a host name (a numeric last label is read as an address)"
	}
	if name == "localhost" || strings.HasSuffix(name, ".localhost") || name == "ip6-localhost" || name == "ip6-loopback" {
		return "a name of this machine (loopback)"
	}
	if self != "" && (name == strings.ToLower(self) || strings.HasPrefix(name, strings.ToLower(self)+".")) {
		return "the name of this machine"
	}
	// names libc resolves through name-service plugins this check does
	// not consult: multicast DNS, systemd's _gateway and _outbound
	if strings.HasSuffix(name, ".local") || strings.HasPrefix(name, "_") {
		return "a name only this machine's name services resolve (mDNS, systemd); use a DNS name"
	}
	return ""
}

// embeddedIPv4 returns the IPv4 address inside an IPv4-mapped,
// IPv4-compatible or NAT64 IPv6 address.
func embeddedIPv4(ip netip.Addr) (netip.Addr, bool) {
	if !ip.Is6() {
		return netip.Addr{}, false
	}
	if ip.Is4In6() {
		return ip.Unmap(), true
	}
	b := ip.As16()
	compat := [12]byte{}
	nat64 := [12]byte{0x00, 0x64, 0xff, 0x9b}
	if [12]byte(b[:12]) == compat || [12]byte(b[:12]) == nat64 {
		v4 := netip.AddrFrom4([4]byte(b[12:]))
		if v4.IsUnspecified() || b == netip.IPv6Loopback().As16() {
			return netip.Addr{}, false
		}
		return v4, true
	}
	return netip.Addr{}, false
}

// thisNetwork is 0.0.0.0/8: "this host on this network".
var thisNetwork = netip.MustParsePrefix("0.0.0.0/8")

// metadataAddrs are cloud metadata and control services outside the
// link-local range: AWS's IPv6 endpoint, Google's IPv6 endpoint, Alibaba
// Cloud's, Azure's wire server and Scaleway's IPv6 endpoint.
var metadataAddrs = map[netip.Addr]bool{
	netip.MustParseAddr("fd00:ec2::254"):   true,
	netip.MustParseAddr("fd20:ce::254"):    true,
	netip.MustParseAddr("100.100.100.200"): true,
	netip.MustParseAddr("168.63.129.16"):   true,
	netip.MustParseAddr("fd00:42::42"):     true,
}

// ipRefusal says why a server may not be at ip (port as written, "" when
// unknown), "" when it may.
func (p *Policy) ipRefusal(ip netip.Addr, port string) string {
	ip = ip.Unmap()
	if v4, ok := embeddedIPv4(ip); ok {
		if why := p.ipRefusal(v4, port); why != "" {
			return why + " (an IPv4 address inside an IPv6 one)"
		}
	}
	if ip.IsUnspecified() || thisNetwork.Contains(ip) {
		return "the unspecified address makes HAProxy connect to wherever the client connected: the balancer itself"
	}
	if l, ok := p.listenerAt(ip, port); ok {
		return fmt.Sprintf("the balancer listens there itself (%s)", l)
	}
	for _, n := range p.AllowNetworks {
		if n.Contains(ip) {
			return ""
		}
	}
	var what string
	switch {
	case ip.IsLoopback():
		what = "a loopback address: it reaches the balancer's own services"
	case ip.IsLinkLocalUnicast():
		what = "a link-local address (cloud metadata services live there)"
	case metadataAddrs[ip]:
		what = "a cloud metadata or control service"
	case ip.IsMulticast() || ip.IsLinkLocalMulticast() || ip.IsInterfaceLocalMulticast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		what = "a multicast or broadcast address"
	case p.isLocal(ip):
		what = "an address of this balancer: it reaches the balancer's own services"
	default:
		return ""
	}
	return what + "; the operator can allow such networks with HAPROXY_CONFIG_ALLOW_NETWORKS"
}

func (p *Policy) isLocal(ip netip.Addr) bool {
	if ip.IsLoopback() {
		return true
	}
	for _, a := range p.Balancer.LocalAddrs {
		if a.Unmap() == ip.Unmap() {
			return true
		}
	}
	return false
}

// listenerAt finds a listener a connection to ip:port would reach.
func (p *Policy) listenerAt(ip netip.Addr, port string) (string, bool) {
	n, known := haproxyPort(port)
	if !known && port != "" && port[0] != '+' && port[0] != '-' && (port[0] < '0' || port[0] > '9') {
		return "", false // not a port at all: haproxy -c refuses the line
	}
	for _, l := range p.Balancer.Listeners {
		if l.Addr.IsValid() && !l.Addr.IsUnspecified() && l.Addr.Unmap() != ip.Unmap() {
			continue
		}
		if (!l.Addr.IsValid() || l.Addr.IsUnspecified()) && !p.isLocal(ip) {
			continue
		}
		if l.Port == 0 || !known || n == l.Port {
			return l.String(), true
		}
	}
	return "", false
}

func (l Listener) String() string {
	host := "*"
	if l.Addr.IsValid() && !l.Addr.IsUnspecified() {
		host = l.Addr.String()
		if l.Addr.Is6() {
			host = "[" + host + "]"
		}
	}
	if l.Port == 0 {
		return host + ":*"
	}
	return fmt.Sprintf("%s:%d", host, l.Port)
}

// ParseListener reads a bind address ("127.0.0.1:8404", ":80", "[::]:443",
// "ipv4@*:80", "0.0.0.0:8000-8010"). ok is false for what is not an IP
// listener (a unix socket, a file descriptor, an empty setting).
func ParseListener(v string) (Listener, bool) {
	if v == "" {
		return Listener{}, false
	}
	host, port, why := splitAddress(v, useServer)
	if why != "" {
		return Listener{}, false
	}
	var l Listener
	if host != "" && host != "*" {
		ip, err := netip.ParseAddr(host)
		if err != nil {
			return Listener{}, false
		}
		l.Addr = ip.WithZone("")
	}
	if n, err := strconv.ParseUint(port, 10, 16); err == nil {
		l.Port = uint16(n)
	}
	return l, true
}

// Resolver looks a host name up; net.DefaultResolver.LookupNetIP fits.
type Resolver func(ctx context.Context, host string) ([]netip.Addr, error)

// lookupTimeout bounds the lookup of one host name.
const lookupTimeout = 3 * time.Second

// CheckHosts resolves the host names a fragment's servers use and refuses
// the fragment when one resolves to an address a literal could not be.
// A name that does not resolve now is accepted (HAProxy starts that server
// down): what it resolves to later is the residue no check can close
// (README: Known limits).
func CheckHosts(ctx context.Context, f *assemble.Fragment, pol Policy, resolve Resolver) assemble.Problems {
	if len(f.Hosts) == 0 || resolve == nil {
		return nil
	}
	// a name written on several lines (servers on one host, addr and
	// agent-addr) is looked up once
	var names []string
	for _, h := range f.Hosts {
		if !slices.Contains(names, h.Name) {
			names = append(names, h.Name)
		}
	}
	addrs := make([][]netip.Addr, len(names))
	var g errgroup.Group
	g.SetLimit(8)
	for i, name := range names {
		g.Go(func() error {
			lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
			defer cancel()
			if a, err := resolve(lctx, name); err == nil {
				addrs[i] = a
			}
			return nil
		})
	}
	_ = g.Wait()
	var ps assemble.Problems
	for _, h := range f.Hosts {
		at := assemble.Location{Fragment: f.Name, File: f.ConfFile, Line: h.Line}
		for _, a := range addrs[slices.Index(names, h.Name)] {
			a = a.WithZone("").Unmap()
			if why := pol.ipRefusal(a, h.Port); why != "" {
				ps = append(ps, assemble.Problemf(at, "address %q: %s resolves to %s here, %s", h.Address, h.Name, a, why))
				break
			}
			if l, ok := pol.listenerOn(a, h.CheckPorts); ok && pol.isLocal(a) {
				ps = append(ps, assemble.Problemf(at, "address %q: %s resolves to this balancer's own %s, and its section checks a port the balancer listens on (%s)", h.Address, h.Name, a, l))
				break
			}
		}
	}
	return ps
}

// listenerOn finds a listener on ip at one of ports.
func (p *Policy) listenerOn(ip netip.Addr, ports []uint16) (string, bool) {
	for _, n := range ports {
		if l, ok := p.listenerAt(ip, strconv.Itoa(int(n))); ok {
			return l, true
		}
	}
	return "", false
}
