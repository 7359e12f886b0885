package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"haproxy-config/assemble"
	"haproxy-config/fragments"
	"haproxy-config/reload"
	"haproxy-config/statedir"
)

// Change describes a fragment handed in by a tenant.
type Change struct {
	Name     string
	ConfFile string // as the user named it, for messages ("-" for stdin)
	Conf     []byte
	MapFile  string
	Map      []byte
}

// ApplyResult reports an accepted apply.
type ApplyResult struct {
	Fragment *assemble.Fragment
	Replaced bool // an earlier version was stored
	Warnings assemble.Problems
}

// Apply checks a fragment against everything that is stored and valid and,
// only if haproxy accepts the candidate, stores it. On any problem nothing
// is written and the returned error is an assemble.Problems.
func (e *Engine) Apply(ctx context.Context, c Change) (*ApplyResult, error) {
	base, err := e.Base()
	if err != nil {
		return nil, err
	}
	pol := e.policy(base)
	f, ps := fragments.Parse(c.Name, c.ConfFile, c.Conf, c.MapFile, c.Map, pol)
	if len(ps) > 0 {
		return nil, ps
	}
	if ps := fragments.CheckHosts(ctx, f, pol, e.Resolve); len(ps) > 0 {
		return nil, ps
	}
	e.hostsOK[f.Checksum] = true
	unlock, err := e.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	sel, err := e.load()
	if err != nil {
		return nil, err
	}
	_, replaced := sel.Stored[c.Name]
	e.checkHosts(ctx, sel)
	if err := e.selectValid(ctx, sel, sel.candidates(), true); err != nil {
		return nil, err
	}
	candidate := append(without(sel.Live, c.Name), f)
	if err := e.orphanCheck(sel, c.Name, candidate); err != nil {
		return nil, err
	}
	v, _, err := e.validateChange(ctx, sel, candidate)
	var unfinished *reload.UnfinishedError
	if errors.As(err, &unfinished) {
		// the set without the newcomer passes: the time is its own doing
		return nil, assemble.Problems{{Location: assemble.Location{Fragment: f.Name, File: f.ConfFile},
			Msg: "haproxy -c does not finish once this fragment is added: " + unfinished.Why}}
	}
	if err != nil {
		return nil, err
	}
	if len(v.Errors) > 0 {
		// the set without the newcomer is valid, so the fault is its own
		// even where haproxy's message points elsewhere
		if !slices.Contains(v.Errors.Fragments(), f.Name) {
			return nil, append(assemble.Problems{{Location: assemble.Location{Fragment: f.Name, File: f.ConfFile},
				Msg: "haproxy rejects the configuration once this fragment is added:"}}, v.Errors...)
		}
		return nil, v.Errors
	}
	ev := &fragments.Event{Time: time.Now().UTC(), Action: "apply", Name: f.Name, Checksum: f.Checksum, Actor: fragments.Actor()}
	if err := e.Store.Write(f, ev); err != nil {
		return nil, &reload.EnvError{Err: err}
	}
	return &ApplyResult{Fragment: f, Replaced: replaced, Warnings: v.Warnings}, nil
}

// without returns a copy of frags leaving out the fragment called name.
func without(frags []*assemble.Fragment, name string) []*assemble.Fragment {
	return slices.DeleteFunc(slices.Clone(frags), func(f *assemble.Fragment) bool { return f.Name == name })
}

// orphanCheck refuses a change that would leave another fragment's map
// line routing to a backend that is gone (possible only with cross-fragment
// references). next is the set after the change.
func (e *Engine) orphanCheck(sel *Selection, name string, next []*assemble.Fragment) error {
	if !e.S.CrossRefs {
		return nil
	}
	before := map[string]bool{}
	for _, p := range e.crossCheck(sel.Base, sel.Live) {
		before[p.Error()] = true
	}
	var broken assemble.Problems
	for _, p := range e.crossCheck(sel.Base, next) {
		if p.Fragment != name && !before[p.Error()] {
			broken = append(broken, p)
		}
	}
	if len(broken) > 0 {
		conf, _ := e.Store.Paths(name)
		return append(assemble.Problems{{Location: assemble.Location{Fragment: name, File: conf},
			Msg: "refused: other fragments route domains to backends this change takes away"}}, broken...)
	}
	return nil
}

// Remove deletes a fragment after checking that what remains is valid.
func (e *Engine) Remove(ctx context.Context, name string) error {
	if err := fragments.ValidName(name); err != nil {
		return &UsageError{Err: err}
	}
	unlock, err := e.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	sel, err := e.load()
	if err != nil {
		return err
	}
	if _, ok := sel.Stored[name]; !ok {
		return fmt.Errorf("fragment %q: %w", name, fragments.ErrNotFound)
	}
	e.checkHosts(ctx, sel)
	if err := e.selectValid(ctx, sel, sel.candidates(), true); err != nil {
		return err
	}
	remaining := without(sel.Live, name)
	if err := e.orphanCheck(sel, name, remaining); err != nil {
		return err
	}
	v, err := e.validate(ctx, sel.Base, remaining, false)
	if err != nil {
		return err
	}
	if len(v.Errors) > 0 {
		conf, _ := e.Store.Paths(name)
		return append(assemble.Problems{{Location: assemble.Location{Fragment: name, File: conf},
			Msg: "remove refused: the configuration without this fragment is invalid"}}, v.Errors...)
	}
	ev := &fragments.Event{Time: time.Now().UTC(), Action: "remove", Name: name, Actor: fragments.Actor()}
	if err := e.Store.Delete(name, ev); err != nil {
		return &reload.EnvError{Err: err}
	}
	return nil
}

// Check validates everything stored and changes nothing in the store or
// the live files.
func (e *Engine) Check(ctx context.Context) (*Selection, error) {
	unlock, err := e.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return e.selectAll(ctx)
}

func (e *Engine) selectAll(ctx context.Context) (*Selection, error) {
	sel, err := e.load()
	if err != nil {
		return nil, err
	}
	e.checkHosts(ctx, sel)
	if err := e.selectValid(ctx, sel, sel.candidates(), false); err != nil {
		return nil, err
	}
	return sel, nil
}

// Generation is one assembled, validated output kept under the state
// directory.
type Generation struct {
	Number    int               `json:"generation"`
	Time      time.Time         `json:"time"`
	Actor     string            `json:"actor"`
	Fragments map[string]string `json:"fragments"` // name -> checksum
	Rejected  []string          `json:"rejected,omitempty"`
	Marker    string            `json:"marker,omitempty"`
	Dir       string            `json:"-"`
	// Pinned are the fragments whose domains it routes to
	// UnavailableBackend: never nil in a generation written since it was
	// recorded (#12), nil in one written before, which says nothing
	Pinned []string `json:"pinned"`
}

// Published reports what Publish did.
type Published struct {
	Generation *Generation
	Changed    bool // false when the live files already held this output
	Selection  *Selection
	Excluded   []string // fragments left out because an Exclusion matched
	// Deferred are the fragments PublishMapOnly kept at the version HAProxy
	// serves (or left out, when new) because their config part changed.
	Deferred []string
}

// Exclusion keeps one version of a fragment out of what Publish selects:
// the daemon's way to quarantine a fragment HAProxy failed to load even
// though haproxy -c accepted it. A changed fragment is no longer excluded.
type Exclusion struct {
	Checksum string
	Problems assemble.Problems
}

// Publish assembles the valid fragments, keeps the result as a new
// generation and writes the live config and map (map first, each atomic).
// Rejected fragments stay out; Selection.Rejected says why. A set haproxy
// accepted before (same bytes, binary and certificate files) is not
// checked again: the apply that stored the last change has just run
// haproxy -c on exactly this output.
//
// Publish refuses, with the live files left as they are, while a hold is
// in force (the held generation stays live until resume) and when the
// fragment directory is missing (once fragments went live), not a
// directory, or replaced while it was read: a store moved away is not an
// empty store, and publishing it would take every tenant offline.
func (e *Engine) Publish(ctx context.Context, exclude map[string]Exclusion) (*Published, error) {
	return e.publish(ctx, exclude, false)
}

// publish is Publish; with mapOnly, the config changes are deferred and
// nothing is written unless the result has the config HAProxy serves (see
// PublishMapOnly).
func (e *Engine) publish(ctx context.Context, exclude map[string]Exclusion, mapOnly bool) (*Published, error) {
	unlock, err := e.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := e.refuseHeld(); err != nil {
		return nil, err
	}
	before, err := e.storeDir()
	if err != nil {
		return nil, err
	}
	sel, err := e.load()
	if err != nil {
		return nil, err
	}
	if after, err := e.storeDir(); err != nil {
		return nil, err
	} else if (before == nil) != (after == nil) || before != nil && !os.SameFile(before, after) {
		return nil, &reload.EnvError{Err: fmt.Errorf("fragment directory %s was replaced while it was read: the live configuration stays as it is until it is read again", e.S.FragmentsDir)}
	}
	var excluded []string
	for name, ex := range exclude {
		if f := sel.Parsed[name]; f != nil && f.Checksum == ex.Checksum {
			delete(sel.Parsed, name)
			sel.Rejected[name] = ex.Problems
			excluded = append(excluded, name)
			if fb := sel.fallbacks[name]; fb != nil && fb.Checksum != ex.Checksum {
				sel.Parsed[name], sel.FellBack[name], sel.Superseded[name] = fb, fb.Checksum, ex.Checksum
			}
		}
	}
	var deferred []string
	var stored []*assemble.Fragment // with mapOnly, the candidates before the deferral
	if mapOnly {
		stored = sel.candidates()
		if deferred, err = e.deferConfigChanges(sel); err != nil {
			return nil, err
		}
	}
	e.checkHosts(ctx, sel)
	rejectedBefore := make(map[string]bool, len(sel.Rejected))
	for name := range sel.Rejected {
		rejectedBefore[name] = true
	}
	if err := e.selectValid(ctx, sel, sel.candidates(), true); err != nil {
		return nil, err
	}
	if mapOnly && e.rejectedByDeferral(sel, rejectedBefore, stored) {
		return nil, ErrNeedsReload
	}
	if err := e.pinDomains(ctx, sel); err != nil {
		return nil, err
	}
	out := sel.Verdict.built()
	if mapOnly && !e.onlyMapDiffers(sel, out) {
		return nil, ErrNeedsReload
	}
	latest, err := e.latestGeneration()
	if err != nil {
		return nil, err
	}
	if latest != nil && e.generationEquals(latest, out) {
		// nothing new: no generation is written, so retries of an output
		// HAProxy failed to load do not push good generations out
		pub := &Published{Generation: latest, Selection: sel, Excluded: excluded, Deferred: deferred}
		if !e.liveEquals(out) {
			if err := e.writeLive(out); err != nil {
				return nil, err
			}
			pub.Changed = true
		}
		return pub, nil
	}
	g := &Generation{Number: 1, Time: time.Now().UTC(), Actor: fragments.Actor(), Fragments: map[string]string{}, Marker: out.Marker}
	if latest != nil {
		g.Number = latest.Number + 1
	}
	for _, f := range sel.Live {
		g.Fragments[f.Name] = f.Checksum
	}
	g.Rejected, g.Pinned = sel.RejectedNames(), append([]string{}, sel.pinned...)
	if err := e.saveVersions(sel.Live, latest); err != nil {
		return nil, &reload.EnvError{Err: fmt.Errorf("keep the live versions of the fragments: %w", err)}
	}
	if err := e.writeGeneration(g, out); err != nil {
		return nil, &reload.EnvError{Err: err}
	}
	if err := e.writeLive(out); err != nil {
		return nil, err
	}
	kept, err := e.prune()
	if err != nil {
		return nil, &reload.EnvError{Err: err}
	}
	if err := e.pruneVersions(g, sel.reference, kept); err != nil {
		return nil, &reload.EnvError{Err: err}
	}
	return &Published{Generation: g, Changed: true, Selection: sel, Excluded: excluded, Deferred: deferred}, nil
}

// storeDir checks that the fragment directory is there to be read. It
// may be missing only while nothing of it went live (no generation yet, or
// the newest one without fragments, as on a fresh install): that store is
// empty, and publishing it takes nobody offline. The info is nil then.
func (e *Engine) storeDir() (fs.FileInfo, error) {
	fi, err := os.Stat(e.S.FragmentsDir)
	if errors.Is(err, fs.ErrNotExist) {
		latest, lerr := e.latestGeneration()
		if lerr != nil {
			return nil, lerr
		}
		if latest == nil || len(latest.Fragments) == 0 {
			return nil, nil
		}
	}
	if err == nil && !fi.IsDir() {
		err = fmt.Errorf("%s is not a directory", e.S.FragmentsDir)
	}
	if err != nil {
		return nil, &reload.EnvError{Err: fmt.Errorf("fragment directory %s cannot be read, so nothing is published and the live configuration stays as it is: %w", e.S.FragmentsDir, err)}
	}
	return fi, nil
}

// refuseHeld is an environment error while a hold is in force: the held
// generation stays live until resume.
func (e *Engine) refuseHeld() error {
	hold, err := e.CurrentHold()
	if err != nil {
		return err
	}
	if hold != nil {
		return &reload.EnvError{Err: fmt.Errorf("generation %d is held (a rollback by %s since %s): the live configuration stays as it is; haproxy-config resume releases the hold",
			hold.Generation, hold.Actor, hold.Since.Format(time.RFC3339))}
	}
	return nil
}

// writeLive replaces the live config and map: together or not at all.
func (e *Engine) writeLive(out *assemble.Output) error {
	t := &fragments.Txn{}
	if err := t.Stage(e.S.OutputMap, out.Map, 0o640); err != nil {
		return &reload.EnvError{Err: err}
	}
	if err := t.Stage(e.S.OutputConfig, out.Config, 0o640); err != nil {
		t.Discard()
		return &reload.EnvError{Err: err}
	}
	if err := e.Store.Commit(t); err != nil {
		return &reload.EnvError{Err: err}
	}
	return nil
}

func (e *Engine) liveEquals(out *assemble.Output) bool {
	cfg, err1 := os.ReadFile(e.S.OutputConfig)
	hostMap, err2 := os.ReadFile(e.S.OutputMap)
	return err1 == nil && err2 == nil && string(cfg) == string(out.Config) && string(hostMap) == string(out.Map)
}

// generationEquals tells whether a kept generation holds out (after a
// rollback the live files hold an older generation than the newest).
func (e *Engine) generationEquals(g *Generation, out *assemble.Output) bool {
	cfgPath, mapPath, err := e.layout(g.Dir)
	if err != nil {
		return false
	}
	cfg, err1 := os.ReadFile(cfgPath)
	hostMap, err2 := os.ReadFile(mapPath)
	return err1 == nil && err2 == nil && string(cfg) == string(out.Config) && string(hostMap) == string(out.Map)
}

// writeGeneration writes the generation into a hidden directory and renames
// it into place, so a listed generation is always complete.
func (e *Engine) writeGeneration(g *Generation, out *assemble.Output) error {
	if err := fragments.MkdirAll(e.state().Generations(), 0o750); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(e.state().Generations(), statedir.PartialPrefix)
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	cfg, hostMap, err := e.writeTree(tmp, out)
	if err != nil {
		return err
	}
	// not indented: at 10,000 fragments (a megabyte) indenting took 40%
	// of the time
	meta, err := json.Marshal(g)
	if err != nil {
		return err
	}
	metaPath := filepath.Join(tmp, statedir.Meta)
	if err := os.WriteFile(metaPath, append(meta, '\n'), 0o640); err != nil {
		return err
	}
	// the files and each directory once (the map is usually beside the
	// config, in tmp), all at once, before the rename
	paths := []string{hostMap, cfg, metaPath, tmp}
	for _, dir := range []string{filepath.Dir(hostMap), filepath.Dir(cfg)} {
		if !slices.Contains(paths, dir) {
			paths = append(paths, dir)
		}
	}
	if err := fragments.SyncAll(paths...); err != nil {
		return err
	}
	g.Dir = e.state().Generation(g.Number)
	if err := os.Rename(tmp, g.Dir); err != nil {
		return err
	}
	if err := fragments.Sync(e.state().Generations()); err != nil {
		return err
	}
	// the next change reads this generation first: not from the disk
	final := filepath.Join(g.Dir, statedir.Meta)
	if fi, err := os.Lstat(final); err == nil {
		e.Parses.keepGeneration(final, fi, g)
	}
	return nil
}

// generationNumbers lists the kept generations' numbers, ascending, from
// the directory names alone.
func (e *Engine) generationNumbers() ([]int, error) {
	entries, err := os.ReadDir(e.state().Generations())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, &reload.EnvError{Err: err}
	}
	var nums []int
	for _, ent := range entries {
		if n, ok := statedir.ParseGeneration(ent.Name()); ok && ent.IsDir() {
			nums = append(nums, n)
		}
	}
	sort.Ints(nums)
	return nums, nil
}

// readGeneration loads one generation's metadata. A generation is written
// once: what was read is kept (in Parses) while lstat finds the same file,
// so that each change does not decode the newest generation's meta.json
// again (a megabyte at 10,000 fragments). The result is shared: callers
// do not change it.
func (e *Engine) readGeneration(n int) (*Generation, error) {
	dir := e.state().Generation(n)
	meta := filepath.Join(dir, statedir.Meta)
	fi, err := os.Lstat(meta)
	if err == nil {
		if g := e.Parses.generation(meta, fi); g != nil {
			return g, nil
		}
	}
	data, err := os.ReadFile(meta)
	if err != nil {
		return nil, &reload.EnvError{Err: fmt.Errorf("generation %d: %w", n, err)}
	}
	g := &Generation{Dir: dir}
	if err := json.Unmarshal(data, g); err != nil {
		return nil, &reload.EnvError{Err: fmt.Errorf("generation %d: %w", n, err)}
	}
	if fi != nil {
		e.Parses.keepGeneration(meta, fi, g)
	}
	return g, nil
}

// latestGeneration returns the newest kept generation, or nil. Only its
// metadata is read: at 10,000 fragments each meta.json is about a megabyte.
func (e *Engine) latestGeneration() (*Generation, error) {
	nums, err := e.generationNumbers()
	if err != nil || len(nums) == 0 {
		return nil, err
	}
	return e.readGeneration(nums[len(nums)-1])
}

// prune removes the oldest generations beyond KeepGenerations, except
// one a rollback holds and the one HAProxy serves, and returns the
// numbers of the generations kept.
func (e *Engine) prune() (kept []int, err error) {
	nums, err := e.generationNumbers()
	if err != nil {
		return nil, err
	}
	hold, err := e.CurrentHold()
	if err != nil {
		return nil, err
	}
	serving := e.Serving()
	old := max(0, len(nums)-e.S.KeepGenerations)
	for _, n := range nums[:old] {
		if hold != nil && hold.Generation == n || n == serving {
			kept = append(kept, n) // the daemon serves it or must be able to go back to it
			continue
		}
		if err := os.RemoveAll(e.state().Generation(n)); err != nil {
			return nil, err
		}
	}
	return append(kept, nums[old:]...), nil
}

// Info is one line of "list".
type Info struct {
	Name     string    `json:"name"`
	Domains  []string  `json:"domains"`
	Backends []string  `json:"backends"`
	Size     int       `json:"size"`
	Applied  time.Time `json:"applied"`
	By       string    `json:"by,omitempty"`
	Checksum string    `json:"checksum,omitempty"`
	Valid    bool      `json:"valid"`
	Problems []string  `json:"problems,omitempty"`
	// why the running daemon leaves this version out of the live
	// configuration (haproxy -c or a reload failed with it), filled in
	// from its report: List itself runs no haproxy
	Quarantined []string `json:"quarantined,omitempty"`
}

// List describes every stored fragment without running haproxy: its own
// checks and the cross-fragment rules only. "check" runs haproxy too.
func (e *Engine) List() ([]Info, error) {
	sel, err := e.load()
	if err != nil {
		return nil, err
	}
	history, err := e.Store.History()
	if err != nil {
		return nil, &reload.EnvError{Err: err}
	}
	last := map[string]fragments.Event{}
	for _, ev := range history {
		last[ev.Name] = ev
	}
	for _, p := range e.crossCheck(sel.Base, sel.candidates()) {
		sel.Rejected[p.Fragment] = append(sel.Rejected[p.Fragment], p)
	}
	names := make([]string, 0, len(sel.Stored))
	for name := range sel.Stored {
		names = append(names, name)
	}
	sort.Strings(names)
	infos := make([]Info, 0, len(names))
	for _, name := range names {
		st := sel.Stored[name]
		in := Info{Name: name, Size: len(st.Conf) + len(st.Map), Applied: st.ModTime.UTC(), Domains: []string{}, Backends: []string{}}
		if ev, ok := last[name]; ok && ev.Action == "apply" {
			in.Applied, in.By = ev.Time, ev.Actor
		}
		if f := sel.Parsed[name]; f != nil {
			for _, m := range f.Map {
				in.Domains = append(in.Domains, m.Domain)
			}
			in.Backends = append(in.Backends, f.Backends()...)
			in.Checksum = f.Checksum
		}
		for _, p := range sel.Rejected[name] {
			in.Problems = append(in.Problems, p.Error())
		}
		in.Valid = len(in.Problems) == 0
		infos = append(infos, in)
	}
	return infos, nil
}

// UsageError is a mistake in how the command was called.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }
