package reconcile

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"

	"haproxy-config/assemble"
	"haproxy-config/fragments"
	"haproxy-config/reload"
)

// policy is the tenant policy under the settings and the base config.
func (e *Engine) policy(base *assemble.Base) fragments.Policy {
	listeners, counters, vars := fragments.BaseFacts(base)
	for _, a := range []string{e.S.HTTPAddr, e.S.HTTPSAddr, e.S.StatusAddr, e.S.ChallengeAddr, e.S.MetricsAddr} {
		if l, ok := fragments.ParseListener(a); ok {
			listeners = append(listeners, l)
		}
	}
	exports := e.exports()
	baseNames := map[string]bool{}
	for _, sec := range base.Sections {
		baseNames[sec.Name] = true
	}
	return fragments.Policy{
		CrossRefs:     e.S.CrossRefs,
		AllowSections: e.S.AllowSections,
		Extensions:    e.S.AllowDirectives,
		AllowNetworks: e.S.AllowNetworks,
		DomainOwners:  e.S.DomainOwners,
		MaxBytes:      e.S.MaxFragmentBytes,
		Balancer: fragments.Balancer{
			Exports:    exports,
			BaseNames:  baseNames,
			Listeners:  listeners,
			LocalAddrs: localAddrs(),
			Counters:   counters,
			Vars:       vars,
			Hostname:   hostname(),
		},
	}
}

// hostname is this machine's name, "" when it has none.
func hostname() string {
	name, _ := os.Hostname()
	return name
}

// localAddrs are the addresses of this machine's interfaces.
func localAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr())
		}
	}
	return out
}

// resolve looks host names up for CheckHosts.
func resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// checkHosts resolves the host names of the fragments that are new or
// changed since the generation HAProxy serves (the others were checked when
// they came in), once per content for a long-lived engine.
func (e *Engine) checkHosts(ctx context.Context, sel *Selection) {
	// only versions still stored are remembered: the daemon's engines
	// live as long as it runs, and each change is a new checksum
	keep := make(map[string]bool, len(sel.Parsed))
	for _, f := range sel.Parsed {
		if e.hostsOK[f.Checksum] {
			keep[f.Checksum] = true
		}
	}
	e.hostsOK = keep
	ref := sel.reference
	for name, f := range sel.Parsed {
		if len(f.Hosts) == 0 || ref[name] == f.Checksum || e.hostsOK[f.Checksum] {
			continue
		}
		if ps := fragments.CheckHosts(ctx, f, sel.policy, e.Resolve); len(ps) > 0 {
			delete(sel.Parsed, name)
			sel.Rejected[name] = append(sel.Rejected[name], ps...)
			continue
		}
		e.hostsOK[f.Checksum] = true
	}
}

// checkCredential is whom haproxy -c runs as: CHECK_USER when this process
// is root, with its own groups plus those of the state and certificate
// directories it must read through. Nil means this process itself.
func (e *Engine) checkCredential() (*syscall.Credential, error) {
	name := e.S.CheckUser
	if os.Geteuid() != 0 || name == "" || name == "root" {
		return nil, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, &reload.EnvError{Err: fmt.Errorf("haproxy -c runs as user %q (HAPROXY_CONFIG_CHECK_USER), which does not exist: %w", name, err)}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, &reload.EnvError{Err: fmt.Errorf("user %q has no numeric ids", name)}
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	ids, _ := u.GroupIds()
	for _, g := range ids {
		if n, err := strconv.ParseUint(g, 10, 32); err == nil {
			cred.Groups = append(cred.Groups, uint32(n))
		}
	}
	for _, path := range []string{e.S.StateDir, e.S.CertsDir, e.S.FallbackCert(), e.S.CrtList()} {
		if st, err := statOf(path); err == nil && st.Gid != 0 && !slices.Contains(cred.Groups, st.Gid) {
			cred.Groups = append(cred.Groups, st.Gid)
		}
	}
	return cred, nil
}

func statOf(path string) (*syscall.Stat_t, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, fmt.Errorf("%s: no file status", path)
	}
	return st, nil
}

// reachable lets cred traverse dir: when neither its owner's group nor
// "other" lets it through, "other" gets the right to traverse (not to
// list), which is how the unprivileged check reaches a candidate under the
// state directory and the certificates.
func reachable(dir string, cred *syscall.Credential) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%s: no file status", dir)
	}
	perm := fi.Mode().Perm()
	if perm&0o001 != 0 || st.Uid == cred.Uid || perm&0o010 != 0 && (st.Gid == cred.Gid || slices.Contains(cred.Groups, st.Gid)) {
		return nil
	}
	if err := os.Chmod(dir, fi.Mode()&(os.ModePerm|os.ModeSetgid|os.ModeSticky)|0o001); err != nil {
		return fmt.Errorf("let the check user through %s: %w", dir, err)
	}
	return nil
}

// handTo gives the candidate tree at dir to cred's group, read-only.
func handTo(dir string, cred *syscall.Credential) error {
	return filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := os.FileMode(0o640)
		if d.IsDir() {
			mode = 0o750
		}
		if err := os.Chown(path, -1, int(cred.Gid)); err != nil {
			return err
		}
		return os.Chmod(path, mode)
	})
}
