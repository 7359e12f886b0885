package reconcile

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"strings"

	"haproxy-config/assemble"
)

// A change of the host map alone needs no haproxy -c and no reload (#12).
// The assembled config holds the base and each fragment's config part, by
// name, and nothing of the map (see assemble.Build and Output.Marker); the
// map's lines are checked by our own rules: fragments.Parse (domain
// syntax, ownership, policy) and assemble.Check (domains claimed twice,
// backends that are not there).

// ErrNeedsReload means that nothing of what is stored can go live without a
// reload: PublishMapOnly wrote nothing.
var ErrNeedsReload = errors.New("the stored changes need a reload")

// validateChange validates frags, the set sel selected with one change
// made, as validate does, but without haproxy -c when the change leaves
// the config byte-identical to the one sel.Verdict holds, which haproxy -c
// has accepted: then only map lines differ, and assemble.Check here (after
// fragments.Parse, which the caller ran on the change) covers them.
// mapOnly tells which way it went; on that way nothing is assembled, and
// the verdict's Output is nil.
func (e *Engine) validateChange(ctx context.Context, sel *Selection, frags []*assemble.Fragment) (v *Verdict, mapOnly bool, err error) {
	if ps := e.crossCheck(sel.Base, frags); len(ps) > 0 {
		return &Verdict{Errors: ps}, false, nil
	}
	if sel.Verdict != nil && len(sel.Verdict.Errors) == 0 && sameConfig(sel.Live, frags) && e.mapReadAsStrings(sel.Base.Text) {
		return &Verdict{Warnings: sel.Verdict.Warnings}, true, nil
	}
	v, err = e.build(ctx, sel.Base, frags, false)
	return v, false, err
}

// mapReadAsStrings reports whether every use of the host map in config
// is a map converter that matches its keys and returns its values as plain
// strings (map, map_str, map_dom, map_beg, ... with string output). HAProxy
// then loads any line, so haproxy -c judges nothing in the map that our own
// checks do not cover. A base that reads it otherwise (map_reg, map_ip,
// map_int, an ACL's -f) makes every map change go through haproxy -c.
func (e *Engine) mapReadAsStrings(config []byte) bool {
	ref, err := e.MapRef()
	if err != nil {
		return false
	}
	text := string(config)
	found := false
	for i := strings.Index(text, ref); i >= 0; {
		before, after := text[:i], text[i+len(ref):]
		open := strings.LastIndexFunc(before, func(r rune) bool { return !(r == '_' || r == '(' || 'a' <= r && r <= 'z') })
		call := before[open+1:]
		if !strings.HasSuffix(call, "(") || !stringConverter(strings.TrimSuffix(call, "(")) ||
			!strings.HasPrefix(after, ")") && !strings.HasPrefix(after, ",") {
			return false
		}
		found = true
		next := strings.Index(after, ref)
		if next < 0 {
			break
		}
		i += len(ref) + next
	}
	return found
}

// stringConverter tells whether name is map_<match>[_<output>] with a
// match on strings and string output.
func stringConverter(name string) bool {
	if name == "map" {
		return true
	}
	rest, ok := strings.CutPrefix(name, "map_")
	if !ok {
		return false
	}
	match, output, _ := strings.Cut(rest, "_")
	return slices.Contains([]string{"str", "beg", "sub", "dir", "dom", "end"}, match) && (output == "" || output == "str")
}

// sameConfig reports whether two sets assemble to the same config: the
// same fragment names, each with the same config part.
func sameConfig(a, b []*assemble.Fragment) bool {
	if len(a) != len(b) {
		return false
	}
	conf := make(map[string][]byte, len(a))
	for _, f := range a {
		conf[f.Name] = f.Conf
	}
	for _, f := range b {
		c, ok := conf[f.Name]
		if !ok || !bytes.Equal(c, f.Conf) {
			return false
		}
	}
	return true
}

// PublishMapOnly publishes as Publish does, but with the config HAProxy
// serves: a fragment whose config part changed since the served version
// stays at that version, and a new fragment stays out, both listed in
// Published.Deferred, while map changes go into the new generation. The
// daemon makes that live at runtime while the config changes wait for a
// reload token. It returns ErrNeedsReload, and writes nothing, when the
// result would not have the served config (a fragment removed, the base
// changed, a served version no longer kept) or has the served map as well.
func (e *Engine) PublishMapOnly(ctx context.Context, exclude map[string]Exclusion) (*Published, error) {
	return e.publish(ctx, exclude, true)
}

// deferConfigChanges puts back the served version of every fragment whose
// config part changed since, and leaves out the fragments HAProxy does not
// serve, returning their names. It returns ErrNeedsReload when a served
// fragment was removed or its served version is not kept.
func (e *Engine) deferConfigChanges(sel *Selection) ([]string, error) {
	if sel.referenceDir == "" {
		return nil, ErrNeedsReload
	}
	for name := range sel.reference {
		if _, stored := sel.Stored[name]; !stored {
			return nil, ErrNeedsReload
		}
	}
	var deferred []string
	for name, f := range sel.Parsed {
		sum, served := sel.reference[name]
		switch {
		case served && f.Checksum == sum:
		case !served:
			delete(sel.Parsed, name)
			deferred = append(deferred, name)
		default:
			fb := sel.fallbacks[name]
			if fb == nil {
				return nil, ErrNeedsReload
			}
			if !bytes.Equal(fb.Conf, f.Conf) {
				sel.Parsed[name] = fb
				deferred = append(deferred, name)
			}
		}
	}
	slices.Sort(deferred)
	return deferred, nil
}

// onlyMapDiffers reports whether out has the config of the generation
// HAProxy serves and another host map.
func (e *Engine) onlyMapDiffers(sel *Selection, out *assemble.Output) bool {
	cfgPath, mapPath, err := e.layout(sel.referenceDir)
	if err != nil {
		return false
	}
	cfg, err1 := os.ReadFile(cfgPath)
	hostMap, err2 := os.ReadFile(mapPath)
	return err1 == nil && err2 == nil && bytes.Equal(cfg, out.Config) && !bytes.Equal(hostMap, out.Map)
}

// rejectedByDeferral reports whether the selection rejected a fragment
// that passed its own checks (rejectedBefore lists those that did not)
// and that the rules between fragments accept among the stored versions:
// one that takes a domain, or with cross-references a backend, that a
// deferred change frees. Publishing would report it quarantined, and its
// apply --wait fail, for a change the next reload makes live: its map
// change waits for that reload instead.
func (e *Engine) rejectedByDeferral(sel *Selection, rejectedBefore map[string]bool, stored []*assemble.Fragment) bool {
	var fresh []string
	for name := range sel.Rejected {
		if !rejectedBefore[name] {
			fresh = append(fresh, name)
		}
	}
	if len(fresh) == 0 {
		return false
	}
	candidates := slices.DeleteFunc(slices.Clone(stored), func(f *assemble.Fragment) bool { return rejectedBefore[f.Name] })
	blamed := e.crossCheck(sel.Base, candidates).Fragments()
	for _, name := range fresh {
		if !slices.Contains(blamed, name) {
			return true
		}
	}
	return false
}
