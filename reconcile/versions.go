package reconcile

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"haproxy-config/assemble"
	"haproxy-config/fragments"
	"haproxy-config/reload"
)

// A copy of every fragment version that goes live is kept under
// STATE/versions, named by its checksum, so that when a live fragment is
// replaced on disk by a version that fails, the version HAProxy serves
// stays live (the new one is quarantined) instead of the tenant going
// offline, and its domains do not fall through to another tenant's
// wildcard entry.

func (e *Engine) versionPaths(checksum string) (conf, hostMap string, ok bool) {
	hex, ok := versionName(checksum)
	if !ok {
		return "", "", false
	}
	return filepath.Join(e.state().Versions(), hex+fragments.ConfSuffix), filepath.Join(e.state().Versions(), hex+fragments.MapSuffix), true
}

// versionName is the name, without suffix, of a version's copies.
func versionName(checksum string) (string, bool) {
	hex, found := strings.CutPrefix(checksum, "sha256:")
	if !found || hex == "" || strings.ContainsAny(hex, "/.") {
		return "", false
	}
	return hex, true
}

// findFallbacks finds, for each stored fragment that changed since the
// generation HAProxy serves, the version it serves, parsed under today's
// policy. A fragment whose stored version fails its own checks goes on
// with that version at once; one that haproxy -c rejects falls back to it
// in selectValid.
func (e *Engine) findFallbacks(sel *Selection) {
	for name := range sel.Stored {
		sum := sel.reference[name]
		if sum == "" {
			continue
		}
		if f := sel.Parsed[name]; f != nil && f.Checksum == sum {
			continue
		}
		fb := e.readVersion(name, sum, sel.policy)
		if fb == nil {
			continue
		}
		sel.fallbacks[name] = fb
		if sel.Parsed[name] == nil {
			sel.Parsed[name] = fb
			sel.FellBack[name] = sum
		}
	}
}

// readVersion loads a kept version; nil when it is not kept or no longer
// passes its own checks. A version is its checksum's bytes: what was
// parsed under the same policy is kept (in Parses) while its file is
// there, so that each change of a burst does not read and parse again the
// served versions of the fragments it changed.
func (e *Engine) readVersion(name, checksum string, pol fragments.Policy) *assemble.Fragment {
	confPath, mapPath, ok := e.versionPaths(checksum)
	if !ok {
		return nil
	}
	key := versionKey{name: name, checksum: checksum, policy: pol.Fingerprint()}
	if f := e.Parses.version(key); f != nil {
		_, err1 := os.Lstat(confPath)
		_, err2 := os.Lstat(mapPath)
		if err1 == nil && err2 == nil {
			return f
		}
	}
	f := e.parseVersion(name, checksum, confPath, mapPath, pol)
	if f != nil {
		e.Parses.keepVersion(key, f)
	}
	return f
}

func (e *Engine) parseVersion(name, checksum, confPath, mapPath string, pol fragments.Policy) *assemble.Fragment {
	conf, err1 := os.ReadFile(confPath)
	hostMap, err2 := os.ReadFile(mapPath)
	if err1 != nil || err2 != nil {
		return nil
	}
	f, ps := fragments.Parse(name, confPath, conf, mapPath, hostMap, pol)
	if len(ps) > 0 || f.Checksum != checksum {
		return nil
	}
	return f
}

// saveVersions keeps a copy of each fragment about to go live. Those the
// newest generation, latest (nil when none), already had live are kept
// since it was published (it was published after them, and pruneVersions
// keeps the newest generation's versions): they are not looked at again,
// which at 10,000 fragments saves 20,000 stats per change.
func (e *Engine) saveVersions(frags []*assemble.Fragment, latest *Generation) error {
	if _, err := os.Stat(e.state().Versions()); errors.Is(err, fs.ErrNotExist) {
		latest = nil // removed, or a state directory older than the copies: save all
	}
	if !e.Parses.versionsKnown(versionsListEvery) {
		// when the prune that follows lists the directory (a process's
		// first, then every versionsListEvery-th), every live version is
		// looked at: a copy removed by hand is saved again
		latest = nil
	}
	if err := fragments.MkdirAll(e.state().Versions(), 0o750); err != nil {
		return err
	}
	var copies []fragments.TxnWrite
	for _, f := range frags {
		if latest != nil && latest.Fragments[f.Name] == f.Checksum {
			continue
		}
		confPath, mapPath, ok := e.versionPaths(f.Checksum)
		if !ok {
			continue
		}
		if _, err := os.Stat(confPath); err == nil {
			if _, err := os.Stat(mapPath); err == nil {
				continue
			}
		}
		e.Parses.savedVersion(filepath.Base(confPath), filepath.Base(mapPath))
		copies = append(copies, fragments.TxnWrite{Path: mapPath, Data: f.MapText, Perm: 0o640},
			fragments.TxnWrite{Path: confPath, Data: f.Conf, Perm: 0o640})
	}
	// all the copies at once: they are durable before the generation that
	// may fall back to them is written
	return fragments.WriteFiles(copies)
}

// pruneVersions removes the copies no generation kept may fall back to.
// g is the generation just written, reference the one HAProxy served when
// it was, kept the numbers of the generations prune kept (a publish runs under no hold: a held generation is the served
// one by the time the next prune runs). A copy either of them wants
// stays. One they no longer want may still be wanted by an older kept
// generation, which a rollback can make the served one again: it is
// removed only once the newest generation that had it, g's predecessor
// when it left, has been pruned, and with it every older one but the
// served.
func (e *Engine) pruneVersions(g *Generation, reference map[string]string, kept []int) error {
	// the versions wanted, by their copies' name without the suffix: at
	// 10,000 fragments this runs for 20,000 checksums on each publish
	wanted := make(map[string]bool, len(g.Fragments))
	want := func(m map[string]string) {
		for _, sum := range m {
			if hex, ok := versionName(sum); ok {
				wanted[hex] = true
			}
		}
	}
	want(g.Fragments)
	want(reference)
	// The copies on disk are those wanted by the last prune plus those
	// saved since: the engines sharing this cache (a daemon's) remove what
	// that leaves out without listing the directory, which at 10,000
	// fragments holds 20,000 files. The first prune with the cache, and
	// every versionsListEvery-th after, lists it, for what another
	// process saved or a crash left.
	onDisk := e.Parses.versionsOnDisk(versionsListEvery)
	if onDisk == nil {
		entries, err := os.ReadDir(e.state().Versions())
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		onDisk = make([]string, len(entries))
		for i, ent := range entries {
			onDisk[i] = ent.Name()
		}
	}
	// the copies on disk after this prune: the wanted ones and those
	// waiting their turn
	remaining, waiting := make(map[string]bool, len(onDisk)), map[string]bool{}
	for _, name := range onDisk {
		if wanted[copyVersion(name)] {
			remaining[name] = true
			continue
		}
		if fragments.IsStaged(name) {
			// a copy's temp file a crash left: not a version
			if err := os.Remove(filepath.Join(e.state().Versions(), name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			continue
		}
		// a copy first seen unwanted (a process's first prune, a file
		// another process saved) counts as left now: it waits its turn
		if at := e.Parses.versionLeft(name, g.Number-1); slices.Contains(kept, at) {
			remaining[name], waiting[name] = true, true
			continue
		}
		if err := os.Remove(filepath.Join(e.state().Versions(), name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			e.Parses.forgetVersionsOnDisk()
			return err
		}
	}
	e.Parses.setVersionsOnDisk(remaining, waiting)
	return nil
}

// copyVersion is the version name (see versionName) of the copy called
// name: name without its suffix; "" for a name with neither suffix, which
// no version wants.
func copyVersion(name string) string {
	for _, suffix := range []string{fragments.ConfSuffix, fragments.MapSuffix} {
		if hex, ok := strings.CutSuffix(name, suffix); ok {
			return hex
		}
	}
	return ""
}

// versionsListEvery is how often pruneVersions lists the directory.
const versionsListEvery = 64

// servedDomains reads the host map of the generation in dir: fragment name
// -> the domains it routed.
func (e *Engine) servedDomains(dir string) map[string][]string {
	out := map[string][]string{}
	if dir == "" {
		return out
	}
	_, mapPath, err := e.layout(dir)
	if err != nil {
		return out
	}
	// a generation's files are written once: its host map is parsed once
	// while lstat finds the same file (50,000 lines at 10,000 fragments,
	// on every publish)
	fi, err := os.Lstat(mapPath)
	if err != nil {
		return out
	}
	if served := e.Parses.served(mapPath, fi); served != nil {
		return served
	}
	data, err := os.ReadFile(mapPath)
	if err != nil {
		return out
	}
	out = assemble.HostMapFragments(data)
	e.Parses.keepServed(mapPath, fi, out)
	return out
}

// servedOut reports whether a fragment the reference generation had live
// or pinned is stored but not live.
func servedOut(sel *Selection, live map[string]bool) bool {
	out := func(name string) bool {
		_, stored := sel.Stored[name]
		return stored && !live[name]
	}
	for name := range sel.reference {
		if out(name) {
			return true
		}
	}
	return slices.ContainsFunc(sel.referencePins, out)
}

// UnavailableBackend is the base config's backend for the domains of a
// fragment HAProxy served that now has no version that passes: they answer
// 503 instead of falling through to another tenant's wildcard entry. A
// base without it leaves those domains unmapped.
const UnavailableBackend = "haproxy_config_unavailable"

// pinDomains adds to the selected set the domains that HAProxy serves for
// a stored fragment that is now out entirely, unless a live fragment maps
// them, routed to UnavailableBackend; haproxy -c checks the result. The
// entries keep the fragment's name in the host map, so the next
// generation pins them again while the fragment stays out.
func (e *Engine) pinDomains(ctx context.Context, sel *Selection) error {
	if !sel.Base.Defines(UnavailableBackend) {
		return nil
	}
	live := make(map[string]bool, len(sel.Live))
	for _, f := range sel.Live {
		live[f.Name] = true
	}
	// the fragments HAProxy serves that are stored but out: usually none,
	// and then neither the served map nor the live domains need be read.
	// The fragments with lines in the served map are among those its
	// generation had live or pinned (unknown in one written before pins
	// were recorded).
	if sel.referencePins != nil && !servedOut(sel, live) {
		return nil
	}
	served := e.servedDomains(sel.referenceDir)
	var names []string
	for name := range served {
		if _, stored := sel.Stored[name]; stored && !live[name] {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return nil
	}
	slices.Sort(names)
	mapped := map[string]bool{}
	for _, f := range sel.Live {
		for _, m := range f.Map {
			mapped[m.Domain] = true
		}
	}
	var pins []*assemble.Fragment
	for _, name := range names {
		pin := &assemble.Fragment{Name: name, ConfFile: "(none: quarantined)", MapFile: "(its domains, pinned to " + UnavailableBackend + ")"}
		for _, d := range served[name] {
			if !mapped[d] {
				mapped[d] = true
				pin.Map = append(pin.Map, assemble.MapEntry{Domain: d, Backend: UnavailableBackend, Line: len(pin.Map) + 1})
			}
		}
		if len(pin.Map) > 0 {
			pins = append(pins, pin)
		}
	}
	if len(pins) == 0 {
		return nil
	}
	v, err := e.build(ctx, sel.Base, append(slices.Clone(sel.Live), pins...), true)
	if err != nil {
		return err
	}
	if len(v.Errors) > 0 {
		return &reload.EnvError{Err: fmt.Errorf("the domains of quarantined fragments cannot be routed to %s:\n%w", UnavailableBackend, v.Errors)}
	}
	sel.Verdict = v
	for _, pin := range pins {
		sel.pinned = append(sel.pinned, pin.Name)
	}
	return nil
}
