// Package reconcile keeps "base config + every valid fragment" and what is
// written for HAProxy equal. It holds the operations the CLI runs (apply,
// remove, check, assemble) on top of the fragment store, the assembler and
// the validator; the watcher daemon drives the same engine.
package reconcile

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"haproxy-config/assemble"
	"haproxy-config/certs"
	"haproxy-config/fragments"
	"haproxy-config/reload"
	"haproxy-config/settings"
	"haproxy-config/statedir"
)

// Engine runs changes against one installation.
type Engine struct {
	S         *settings.Settings
	Store     *fragments.Store
	Validator *reload.Validator
	// LockWait bounds how long an operation waits for the store lock.
	LockWait time.Duration
	// Resolve looks up the host names of new fragments' servers.
	Resolve fragments.Resolver

	// Parses keeps each fragment's last parse, so a long-lived engine (the
	// daemon's) parses only what changed; engines may share one.
	Parses *ParseCache
	// hostsOK are the checksums of fragments whose host names resolved to
	// allowed addresses.
	hostsOK map[string]bool
	// credential is whom haproxy -c runs as, found at the first check.
	credential *syscall.Credential
	credFound  bool
}

// ParseCache holds each fragment's last parse with the bytes and the
// policy it came from. The daemon's loop and its API writer share one, so
// a store is parsed, and held in memory, once. Its maps are replaced
// whole, never changed, so a map read stays valid without the lock.
type ParseCache struct {
	// Files is for the stores of the engines sharing the cache, so that a
	// store reads again only the files that changed.
	Files *fragments.FileCache
	// Later settles the commits of those stores in the background (nil:
	// each Commit settles before it returns).
	Later *fragments.Settler

	mu sync.Mutex
	m  map[string]parsedFragment
	// gens are generations' metadata as last read (see readGeneration)
	gens    map[string]cachedGeneration
	genUses uint64
	// versions are kept versions as parsed (see readVersion)
	versions map[versionKey]*assemble.Fragment
	// onDisk are the names of the version copies on disk as pruneVersions
	// left them, with those saved since; nil when unknown. prunes counts
	// the prunes since the directory was last listed.
	onDisk map[string]bool
	prunes int
	// left are the copies on disk no longer wanted by the newest or the
	// served generation, each with the newest generation that had it
	left map[string]int
	// configs are the configs build assembled last (configs.go)
	configs []builtConfig
	// checker checks the sets of the engines sharing the cache: nearly the
	// same set again and again, one change apart
	checker assemble.Checker
	// servedMap is the last generation host map parsed by servedDomains
	servedMap struct {
		path string
		id   fragments.FileID
		m    map[string][]string
	}
}

// versionsOnDisk returns the version copies known on disk, or nil when
// they are unknown or the directory is to be listed again (once every
// listEvery calls).
func (c *ParseCache) versionsOnDisk(listEvery int) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.prunes++
	if c.onDisk == nil || c.prunes >= listEvery {
		c.prunes = 0
		return nil
	}
	names := make([]string, 0, len(c.onDisk))
	for name := range c.onDisk {
		names = append(names, name)
	}
	return names
}

// versionsKnown reports whether the next prune will work from the copies
// known on disk rather than list the directory (see versionsOnDisk).
func (c *ParseCache) versionsKnown(listEvery int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.onDisk != nil && c.prunes+1 < listEvery
}

// setVersionsOnDisk says that the copies on disk are names after a prune,
// waiting those of them no generation it looked at wants, and forgets
// when the others left: they are gone, or wanted again, and a copy that
// leaves once more leaves then.
func (c *ParseCache) setVersionsOnDisk(names, waiting map[string]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onDisk = names
	for name := range c.left {
		if !waiting[name] {
			delete(c.left, name)
		}
	}
}

// versionLeft returns the newest generation that wanted the copy name
// when the newest and the served generation stopped wanting it: the one
// recorded, or else now, which is recorded.
func (c *ParseCache) versionLeft(name string, now int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if at, ok := c.left[name]; ok {
		return at
	}
	if c.left == nil {
		c.left = map[string]int{}
	}
	c.left[name] = now
	return now
}

// forgetVersionsOnDisk makes the next prune list the directory.
func (c *ParseCache) forgetVersionsOnDisk() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onDisk = nil
}

// savedVersion adds a version's copies, about to be written, to those
// known on disk.
func (c *ParseCache) savedVersion(names ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.onDisk == nil {
		return // unknown: the next prune lists the directory
	}
	for _, name := range names {
		c.onDisk[name] = true
	}
}

// served returns the fragments' domains of the generation host map at
// path when lstat (fi) finds the file that was parsed; nil otherwise.
func (c *ParseCache) served(path string, fi fs.FileInfo) map[string][]string {
	id, ok := fragments.IdentityOf(fi)
	c.mu.Lock()
	defer c.mu.Unlock()
	if !ok || c.servedMap.path != path || c.servedMap.id != id {
		return nil
	}
	return c.servedMap.m
}

func (c *ParseCache) keepServed(path string, fi fs.FileInfo, m map[string][]string) {
	id, ok := fragments.IdentityOf(fi)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.servedMap.path, c.servedMap.id, c.servedMap.m = path, id, m
}

// versionKey names a kept version parsed for a fragment under a policy.
type versionKey struct{ name, checksum, policy string }

// maxCachedVersions bounds the versions kept parsed: a burst changes a
// few dozen fragments at a time.
const maxCachedVersions = 1024

func (c *ParseCache) version(k versionKey) *assemble.Fragment {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.versions[k]
}

func (c *ParseCache) keepVersion(k versionKey, f *assemble.Fragment) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.versions == nil || len(c.versions) >= maxCachedVersions {
		c.versions = map[versionKey]*assemble.Fragment{}
	}
	c.versions[k] = f
}

// cachedGeneration is a meta.json as read, with what lstat said of it,
// and when it was last used (a count of the uses of the cache).
type cachedGeneration struct {
	id   fragments.FileID
	g    *Generation
	used uint64
}

// maxCachedGenerations bounds the metadata kept: a publish reads the
// newest and the served generation.
const maxCachedGenerations = 4

// generation returns the cached metadata at path when the file lstat
// describes as fi is still the one that was read.
func (c *ParseCache) generation(path string, fi fs.FileInfo) *Generation {
	c.mu.Lock()
	defer c.mu.Unlock()
	cg, ok := c.gens[path]
	if id, ok2 := fragments.IdentityOf(fi); ok && ok2 && cg.id == id {
		c.genUses++
		cg.used = c.genUses
		c.gens[path] = cg
		return cg.g
	}
	return nil
}

// keepGeneration caches g, read from path, which lstat described as fi.
func (c *ParseCache) keepGeneration(path string, fi fs.FileInfo, g *Generation) {
	id, ok := fragments.IdentityOf(fi)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gens == nil {
		c.gens = map[string]cachedGeneration{}
	}
	if _, known := c.gens[path]; !known && len(c.gens) >= maxCachedGenerations {
		// the least recently used goes: the newest and the served
		// generation are read on every publish
		oldest := ""
		for p, cg := range c.gens {
			if oldest == "" || cg.used < c.gens[oldest].used {
				oldest = p
			}
		}
		delete(c.gens, oldest)
	}
	c.genUses++
	c.gens[path] = cachedGeneration{id: id, g: g, used: c.genUses}
}

// NewParseCache returns an empty cache, with an empty file cache and a
// Settler.
func NewParseCache() *ParseCache {
	return &ParseCache{Files: fragments.NewFileCache(), Later: fragments.NewSettler()}
}

func (c *ParseCache) get() map[string]parsedFragment {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m
}

func (c *ParseCache) set(m map[string]parsedFragment) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m = m
}

type parsedFragment struct {
	confPath, mapPath string
	conf, hostMap     []byte
	policy            string
	frag              *assemble.Fragment
	problems          assemble.Problems
}

// New returns an engine for the given settings.
func New(s *settings.Settings) *Engine {
	return &Engine{
		S:         s,
		Store:     &fragments.Store{Dir: s.FragmentsDir, StateDir: s.StateDir, MaxBytes: s.MaxFragmentBytes},
		Validator: &reload.Validator{Haproxy: s.Haproxy, Timeout: s.CheckTimeout},
		LockWait:  2 * time.Minute,
		Resolve:   resolve,
		Parses:    &ParseCache{},
		hostsOK:   map[string]bool{},
	}
}

// crossCheck is assemble.Check, by the checker the engines sharing the
// parse cache share.
func (e *Engine) crossCheck(base *assemble.Base, frags []*assemble.Fragment) assemble.Problems {
	return e.Parses.checker.Check(base, frags, e.options())
}

func (e *Engine) options() assemble.Options {
	return assemble.Options{CrossRefs: e.S.CrossRefs, Exports: e.exports()}
}

// exports is the set of base backends that map lines and fragments may use.
func (e *Engine) exports() map[string]bool {
	exports := map[string]bool{}
	for _, name := range e.S.Exports {
		exports[name] = true
	}
	return exports
}

// lock takes the store lock and clears candidates a crashed run left.
func (e *Engine) lock(ctx context.Context) (func(), error) {
	ctx, cancel := context.WithTimeout(ctx, e.LockWait)
	defer cancel()
	unlock, err := e.Store.Lock(ctx)
	if err != nil {
		return nil, &reload.EnvError{Err: err}
	}
	if err := e.clearLeftovers(); err != nil {
		unlock()
		return nil, &reload.EnvError{Err: fmt.Errorf("clear what an interrupted run left: %w", err)}
	}
	return unlock, nil
}

// clearLeftovers removes what a killed run can leave once the store lock
// has finished any journaled change: scratch candidates, half-written
// generations, live files staged but never committed.
func (e *Engine) clearLeftovers() error {
	if err := os.RemoveAll(e.state().Candidates()); err != nil {
		return err
	}
	partial, err := filepath.Glob(filepath.Join(e.state().Generations(), statedir.PartialPrefix+"*"))
	if err != nil {
		return err
	}
	for _, dir := range partial {
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	}
	for _, dir := range []string{filepath.Dir(e.S.OutputConfig), filepath.Dir(e.S.OutputMap)} {
		if err := fragments.RemoveStaged(dir); err != nil {
			return err
		}
	}
	return nil
}

// state is the state directory's layout.
func (e *Engine) state() statedir.Layout { return statedir.Layout(e.S.StateDir) }

// MapRef is the host map's path as the generated config names it: relative
// to the config's directory, resolved by HAProxy through "default-path
// config". The same bytes then work for a candidate in a scratch directory,
// a kept generation, and the live file.
func (e *Engine) MapRef() (string, error) {
	rel, err := filepath.Rel(filepath.Dir(e.S.OutputConfig), e.S.OutputMap)
	if err != nil {
		return "", fmt.Errorf("host map %s relative to %s: %w", e.S.OutputMap, e.S.OutputConfig, err)
	}
	return rel, nil
}

// Base reads and renders the base config template.
func (e *Engine) Base() (*assemble.Base, error) {
	tmpl, err := os.ReadFile(e.S.BaseConfig)
	file := e.S.BaseConfig
	if errors.Is(err, fs.ErrNotExist) && e.S.BaseIsDefault {
		tmpl, err, file = assemble.DefaultBase, nil, "(embedded) base.cfg"
	}
	if err != nil {
		return nil, &reload.EnvError{Err: fmt.Errorf("base config: %w", err)}
	}
	ref, err := e.MapRef()
	if err != nil {
		return nil, err
	}
	base, err := assemble.RenderBase(file, tmpl, e.S.Vars(ref))
	if err != nil {
		// the operator's file, not a tenant's: an environment problem
		return nil, &reload.EnvError{Err: fmt.Errorf("the base config is invalid:\n%w", err)}
	}
	return base, nil
}

// layout returns where a tree rooted at dir holds the config and the map so
// that the map reference resolves inside dir. A reference that climbs out
// of the config's directory ("../maps/hosts.map") nests the config deeper.
func (e *Engine) layout(dir string) (cfg, hostMap string, err error) {
	ref, err := e.MapRef()
	if err != nil {
		return "", "", err
	}
	cfgDir := dir
	for p := ref; strings.HasPrefix(p, ".."+string(filepath.Separator)); p = p[3:] {
		cfgDir = filepath.Join(cfgDir, "c")
	}
	return filepath.Join(cfgDir, filepath.Base(e.S.OutputConfig)), filepath.Join(cfgDir, ref), nil
}

// writeTree writes an assembled output into dir with the live layout.
func (e *Engine) writeTree(dir string, out *assemble.Output) (cfg, hostMap string, err error) {
	cfg, hostMap, err = e.layout(dir)
	if err != nil {
		return "", "", err
	}
	for _, f := range []struct {
		path string
		data []byte
	}{{hostMap, out.Map}, {cfg, out.Config}} {
		if err := fragments.MkdirAll(filepath.Dir(f.path), 0o750); err != nil {
			return "", "", err
		}
		if err := os.WriteFile(f.path, f.data, 0o640); err != nil {
			return "", "", err
		}
	}
	return cfg, hostMap, nil
}

// Verdict is the outcome of validating one set of fragments.
type Verdict struct {
	// Output is the set assembled; nil when it has errors, and until
	// built when the known-valid cache answered without assembling it
	Output   *assemble.Output
	Errors   assemble.Problems // empty when the set is valid
	Warnings assemble.Problems
	// the base and set a valid verdict is for, until built
	base  *assemble.Base
	frags []*assemble.Fragment
}

// built returns v's Output, assembling it first if it is not yet.
func (v *Verdict) built() *assemble.Output {
	if v.Output == nil && v.base != nil {
		v.Output = assemble.Build(v.base, v.frags)
	}
	return v.Output
}

// validate checks a set as a whole: the cross-fragment rules, then build.
func (e *Engine) validate(ctx context.Context, base *assemble.Base, frags []*assemble.Fragment, trustCache bool) (*Verdict, error) {
	if ps := e.crossCheck(base, frags); len(ps) > 0 {
		return &Verdict{Errors: ps}, nil
	}
	return e.build(ctx, base, frags, trustCache)
}

// build assembles a set and runs haproxy -c on exactly the bytes that would
// go live. With trustCache, a config haproxy accepted recently (same
// bytes, same binary, same certificate files, the crt-list's included) is
// not run again: an apply's baseline, and the daemon publishing what the
// apply just validated. The host map is left out of that comparison: its
// lines are ours to check (fragments.Parse, assemble.Check), which
// validate has done. A new candidate is always checked.
func (e *Engine) build(ctx context.Context, base *assemble.Base, frags []*assemble.Fragment, trustCache bool) (*Verdict, error) {
	if err := certs.EnsureFiles(e.S.FallbackCert(), e.S.CrtList()); err != nil {
		return nil, &reload.EnvError{Err: err}
	}
	id, identified := configID(base, frags)
	if trustCache && identified {
		if b, ok := e.Parses.built(id); ok && b.asStrings {
			key, err := e.validKey(b.digest, nil)
			if err != nil {
				return nil, err
			}
			if e.knownValid(key) {
				return &Verdict{base: base, frags: slices.Clone(frags)}, nil
			}
		}
	}
	out := assemble.Build(base, frags)
	b := builtConfig{id: id, digest: sha256.Sum256(out.Config), asStrings: e.mapReadAsStrings(out.Config)}
	if identified {
		e.Parses.rememberBuilt(b)
	}
	var judged []byte
	if !b.asStrings {
		// haproxy -c judges the map's lines too (maponly.go)
		judged = out.Map
	}
	key, err := e.validKey(b.digest, judged)
	if err != nil {
		return nil, err
	}
	if trustCache && e.knownValid(key) {
		return &Verdict{Output: out}, nil
	}
	dir, err := e.candidateDir()
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	cfg, hostMap, err := e.writeTree(dir, out)
	if err != nil {
		return nil, &reload.EnvError{Err: fmt.Errorf("write candidate: %w", err)}
	}
	res, err := e.check(ctx, dir, cfg)
	if err != nil {
		return nil, err
	}
	v := &Verdict{Output: out}
	v.Errors, v.Warnings = reload.Explain(out.Source, cfg, hostMap, res.Messages, rankOf(frags))
	if err := e.unreadable(v.Errors); err != nil && !res.Valid {
		return nil, err
	}
	if res.Valid {
		v.Errors = nil
		e.rememberValid(key)
	} else if len(v.Errors) == 0 {
		v.Errors = assemble.Problems{{Location: assemble.Location{File: "haproxy -c"}, Msg: "configuration rejected without a message"}}
	}
	return v, nil
}

// candidateDir makes a scratch directory for one candidate.
func (e *Engine) candidateDir() (string, error) {
	if err := fragments.MkdirAll(e.state().Candidates(), 0o750); err != nil {
		return "", &reload.EnvError{Err: fmt.Errorf("create candidates directory: %w", err)}
	}
	dir, err := os.MkdirTemp(e.state().Candidates(), statedir.CandidatePrefix)
	if err != nil {
		return "", &reload.EnvError{Err: err}
	}
	return dir, nil
}

// check runs haproxy -c on the candidate at cfg in dir, as the check user
// when there is one: the tree is handed to its group, and the directories
// on the way made passable for it.
func (e *Engine) check(ctx context.Context, dir, cfg string) (*reload.Result, error) {
	if !e.credFound {
		cred, err := e.checkCredential()
		if err != nil {
			return nil, err
		}
		e.credential, e.credFound = cred, true
	}
	if cred := e.credential; cred != nil {
		for _, d := range []string{e.S.StateDir, e.state().Candidates(), e.S.CertsDir} {
			if err := reachable(d, cred); err != nil {
				return nil, &reload.EnvError{Err: err}
			}
		}
		if err := handTo(dir, cred); err != nil {
			return nil, &reload.EnvError{Err: fmt.Errorf("hand the candidate to the check user: %w", err)}
		}
	}
	e.Validator.Credential = e.credential
	return e.Validator.Check(ctx, cfg)
}

// unreadable finds a problem no fragment caused that says the check user
// could not read a file (a fragment names none): the operator must give it
// access, or the base config names a file it may not read.
func (e *Engine) unreadable(ps assemble.Problems) error {
	if e.credential == nil {
		return nil
	}
	for _, p := range ps {
		if p.Fragment == "" && (strings.Contains(p.Msg, "Permission denied") || strings.Contains(p.Msg, "error opening")) {
			return &reload.EnvError{Err: fmt.Errorf("haproxy -c runs as user %s (HAPROXY_CONFIG_CHECK_USER) and may not read a file the configuration names: %w", e.S.CheckUser, p)}
		}
	}
	return nil
}

// rankOf ranks fragments by their position in frags, incumbents first:
// the higher the rank, the newer the fragment and the likelier its fault.
func rankOf(frags []*assemble.Fragment) func(string) int {
	pos := make(map[string]int, len(frags))
	for i, f := range frags {
		pos[f.Name] = i
	}
	return func(name string) int { return pos[name] }
}

// validKey identifies a config, by the digest of its bytes, together with
// the haproxy binary that judged it and the certificate files it loads,
// for the known-valid cache; and the host map, when the config reads it
// otherwise than as plain strings (mapReadAsStrings), else nil.
func (e *Engine) validKey(config [sha256.Size]byte, hostMap []byte) (string, error) {
	bin, err := e.Validator.Binary()
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(bin)
	if err != nil {
		return "", &reload.EnvError{Err: fmt.Errorf("haproxy binary: %w", err)}
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%d\x00%d\x00", bin, fi.Size(), fi.ModTime().UnixNano())
	for _, path := range append([]string{e.S.FallbackCert(), e.S.CrtList()}, e.listedCerts()...) {
		if fi, err := os.Stat(path); err == nil {
			fmt.Fprintf(h, "%s\x00%d\x00%d\x00", path, fi.Size(), fi.ModTime().UnixNano())
		}
	}
	h.Write(config[:])
	if hostMap != nil {
		h.Write([]byte{0})
		h.Write(hostMap)
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}

// listedCerts are the certificate files the crt-list names (the first
// word of each line that is not a comment), which HAProxy loads too.
func (e *Engine) listedCerts() []string {
	data, err := os.ReadFile(e.S.CrtList())
	if err != nil {
		return nil
	}
	var paths []string
	for line := range strings.Lines(string(data)) {
		if f := strings.Fields(line); len(f) > 0 && !strings.HasPrefix(f[0], "#") {
			paths = append(paths, f[0])
		}
	}
	return paths
}

// keepValid is how many accepted configs the known-valid cache holds: the
// one HAProxy serves stays in it while config changes and map-only changes
// interleave (#12).
const keepValid = 8

func (e *Engine) knownValid(key string) bool {
	return slices.Contains(e.validKeys(), key)
}

func (e *Engine) validKeys() []string {
	data, err := os.ReadFile(e.state().Validated())
	if err != nil {
		return nil
	}
	return strings.Fields(string(data))
}

// rememberValid records a config haproxy accepted, newest first. Losing it
// only costs one more haproxy -c, so a failed write is not an error.
func (e *Engine) rememberValid(key string) {
	keys := append([]string{key}, slices.DeleteFunc(e.validKeys(), func(k string) bool { return k == key })...)
	keys = keys[:min(len(keys), keepValid)]
	_ = fragments.WriteFile(e.state().Validated(), []byte(strings.Join(keys, "\n")+"\n"), 0o640)
}

// Selection is the largest valid set found among the stored fragments.
type Selection struct {
	Base     *assemble.Base
	Live     []*assemble.Fragment          // fragments that go live
	Rejected map[string]assemble.Problems  // fragment name -> why it (or its new version) stays out
	Strays   assemble.Problems             // files that are not fragments
	Verdict  *Verdict                      // of the live set
	Stored   map[string]*fragments.Stored  // everything read from disk
	Parsed   map[string]*assemble.Fragment // candidates: the stored version, or the last good one
	// FellBack are the fragments whose stored version is rejected while the
	// version HAProxy served before stays live: name -> that version's
	// checksum.
	FellBack map[string]string
	// Superseded are the checksums of the versions that failed while the
	// last good one stays live, when they passed their own checks.
	Superseded map[string]string
	wasLive    map[string]string // the previous generation's fragments
	// reference is what HAProxy serves (the generation marked serving, else
	// the newest): name -> checksum
	reference    map[string]string
	referenceDir string                        // that generation's directory
	fallbacks    map[string]*assemble.Fragment // last good versions, by name
	policy       fragments.Policy
	// referencePins are the fragments the reference generation pinned
	// (Generation.Pinned); pinned, those this selection pins
	referencePins, pinned []string
	read                  map[string]parsedFragment // what load read of each stored fragment
}

// Read is what a Selection's load read of the fragment directory: the
// daemon asks it whether a file event it is told of changed anything a
// publish has not read.
type Read struct {
	parses map[string]parsedFragment
	strays assemble.Problems // files that could not be read as fragments
}

// Read returns what the load behind s read.
func (s *Selection) Read() Read { return Read{s.read, s.Strays} }

// Lacks reports whether no fragment name was read, nor a file of it
// reported as a stray. The zero Read has read nothing, and lacks nothing.
func (r Read) Lacks(name string) bool {
	if _, ok := r.parses[name]; ok || r.parses == nil {
		return false
	}
	return !slices.ContainsFunc(r.strays, func(p *assemble.Problem) bool { return p.Fragment == name })
}

// Same reports whether st, a fragment read from the store, has the paths
// and bytes that were read of it. The zero Read has read nothing.
func (r Read) Same(st *fragments.Stored) bool {
	p, ok := r.parses[st.Name]
	return ok && fragments.SameFiles(&fragments.Stored{ConfPath: p.confPath, MapPath: p.mapPath, Conf: p.conf, Map: p.hostMap}, st)
}

// load reads and parses the store, and finds the last good version of
// every fragment that was live and has changed since. The caller holds the
// lock.
func (e *Engine) load() (*Selection, error) {
	base, err := e.Base()
	if err != nil {
		return nil, err
	}
	stored, strays, err := e.Store.ReadAll()
	if err != nil {
		return nil, &reload.EnvError{Err: err}
	}
	latest, err := e.latestGeneration()
	if err != nil {
		return nil, err
	}
	pol := e.policy(base)
	sel := &Selection{Base: base, Rejected: map[string]assemble.Problems{}, Strays: strays,
		Stored: map[string]*fragments.Stored{}, Parsed: map[string]*assemble.Fragment{},
		FellBack: map[string]string{}, Superseded: map[string]string{}, fallbacks: map[string]*assemble.Fragment{}, policy: pol}
	if latest != nil {
		sel.wasLive = latest.Fragments
		sel.reference, sel.referenceDir, sel.referencePins = latest.Fragments, latest.Dir, latest.Pinned
	}
	if n := e.Serving(); n > 0 && (latest == nil || n != latest.Number) {
		if g, err := e.readGeneration(n); err == nil {
			sel.reference, sel.referenceDir, sel.referencePins = g.Fragments, g.Dir, g.Pinned
		}
	}
	// per-fragment checks are independent: use every core, and only on
	// fragments whose bytes or policy changed since this engine parsed them
	fp := pol.Fingerprint()
	parsed := make([]*assemble.Fragment, len(stored))
	problems := make([]assemble.Problems, len(stored))
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	cached := e.Parses.get()
	for i, st := range stored {
		if c, ok := cached[st.Name]; ok && c.confPath == st.ConfPath && c.mapPath == st.MapPath && c.policy == fp &&
			bytes.Equal(c.conf, st.Conf) && bytes.Equal(c.hostMap, st.Map) {
			parsed[i], problems[i] = c.frag, slices.Clip(c.problems)
			continue
		}
		g.Go(func() error {
			parsed[i], problems[i] = st.Parse(pol)
			return nil
		})
	}
	_ = g.Wait() // the workers return no errors
	next := make(map[string]parsedFragment, len(stored))
	for i, st := range stored {
		next[st.Name] = parsedFragment{confPath: st.ConfPath, mapPath: st.MapPath, conf: st.Conf, hostMap: st.Map,
			policy: fp, frag: parsed[i], problems: problems[i]}
	}
	e.Parses.set(next)
	sel.read = next
	for i, st := range stored {
		sel.Stored[st.Name] = st
		if len(problems[i]) > 0 {
			sel.Rejected[st.Name] = problems[i]
		} else {
			sel.Parsed[st.Name] = parsed[i]
		}
	}
	e.findFallbacks(sel)
	return sel, nil
}

// selectValid finds which of the candidates can go live together and
// rejects the rest. Blame comes from the cross-fragment checks and from
// haproxy's messages mapped to fragments; a message that blames no fragment
// makes it add the fragments back one at a time (blameOneByOne).
func (e *Engine) selectValid(ctx context.Context, sel *Selection, candidates []*assemble.Fragment, trustCache bool) error {
	live := slices.Clone(candidates)
	for {
		v, err := e.validate(ctx, sel.Base, live, trustCache)
		var unfinished *reload.UnfinishedError
		if errors.As(err, &unfinished) {
			// a check that does not finish is the newcomers' fault once
			// what HAProxy serves passes without them
			var blamed []string
			if blamed, err = e.blameNewcomers(ctx, sel, live, unfinished); err != nil {
				return err
			}
			live = e.dropOrFallBack(sel, live, blamed)
			continue
		}
		if err != nil {
			return err
		}
		if len(v.Errors) == 0 {
			sel.Live, sel.Verdict = live, v
			return nil
		}
		blamed := v.Errors.Fragments()
		if len(blamed) == 0 {
			if blamed, err = e.blameOneByOne(ctx, sel, live, v.Errors); err != nil {
				return err
			}
		}
		for _, p := range v.Errors {
			if p.Fragment != "" {
				sel.Rejected[p.Fragment] = append(sel.Rejected[p.Fragment], p)
			}
		}
		live = e.dropOrFallBack(sel, live, blamed)
	}
}

// dropOrFallBack takes the blamed fragments out of live, putting back the
// last good version of those that have one and are not on it yet.
func (e *Engine) dropOrFallBack(sel *Selection, live []*assemble.Fragment, blamed []string) []*assemble.Fragment {
	out := live[:0:0]
	for _, f := range live {
		if !slices.Contains(blamed, f.Name) {
			out = append(out, f)
			continue
		}
		if fb := sel.fallbacks[f.Name]; fb != nil && fb != f {
			sel.Parsed[f.Name] = fb
			sel.FellBack[f.Name], sel.Superseded[f.Name] = fb.Checksum, f.Checksum
			out = append(out, fb)
			continue
		}
		delete(sel.FellBack, f.Name)
	}
	return out
}

// blameNewcomers finds which fragments make haproxy -c run past its
// timeout: what HAProxy serves (the reference versions) must pass alone,
// then each other fragment is added to it in turn.
func (e *Engine) blameNewcomers(ctx context.Context, sel *Selection, live []*assemble.Fragment, cause *reload.UnfinishedError) ([]string, error) {
	var good, newcomers []*assemble.Fragment
	for _, f := range live {
		if sel.reference[f.Name] == f.Checksum {
			good = append(good, f)
		} else {
			newcomers = append(newcomers, f)
		}
	}
	if len(newcomers) == 0 {
		return nil, &reload.EnvError{Err: fmt.Errorf("the configuration HAProxy serves no longer passes in time: %w", cause)}
	}
	v, err := e.build(ctx, sel.Base, good, true)
	if err != nil {
		return nil, &reload.EnvError{Err: fmt.Errorf("even the configuration HAProxy serves does not pass: %w", err)}
	}
	if len(v.Errors) > 0 {
		return nil, &reload.EnvError{Err: fmt.Errorf("the configuration HAProxy serves no longer passes:\n%w", v.Errors)}
	}
	var blamed []string
	for _, f := range newcomers {
		v, err := e.build(ctx, sel.Base, append(slices.Clone(good), f), false)
		var unfinished *reload.UnfinishedError
		switch {
		case errors.As(err, &unfinished):
			blamed = append(blamed, f.Name)
			sel.Rejected[f.Name] = append(sel.Rejected[f.Name], &assemble.Problem{
				Location: assemble.Location{Fragment: f.Name, File: f.ConfFile},
				Msg:      "haproxy -c does not finish once this fragment is added: " + unfinished.Why})
		case err != nil:
			return nil, err
		case len(v.Errors) > 0:
			blamed = append(blamed, f.Name)
			sel.Rejected[f.Name] = append(sel.Rejected[f.Name], v.Errors...)
		default:
			good = append(good, f)
		}
	}
	if len(blamed) == 0 {
		return nil, &reload.EnvError{Err: fmt.Errorf("every fragment passes in time alone but not all together: %w", cause)}
	}
	return blamed, nil
}

// blameOneByOne handles a rejection haproxy did not tie to a fragment: the
// base alone must pass; then fragments are added back one at a time,
// incumbents first, and each one whose addition breaks the set is blamed
// and left out. Map lines are not checked here (Check has passed), so a
// fragment routing to another's backend is judged on its config alone.
func (e *Engine) blameOneByOne(ctx context.Context, sel *Selection, live []*assemble.Fragment, errs assemble.Problems) ([]string, error) {
	v, err := e.build(ctx, sel.Base, nil, false)
	if err != nil {
		return nil, err
	}
	if len(v.Errors) > 0 {
		return nil, &reload.EnvError{Err: fmt.Errorf("the base config is invalid:\n%w", v.Errors)}
	}
	var good []*assemble.Fragment
	var blamed []string
	for _, f := range live {
		v, err := e.build(ctx, sel.Base, append(slices.Clone(good), f), false)
		if err != nil {
			return nil, err
		}
		if len(v.Errors) == 0 {
			good = append(good, f)
			continue
		}
		blamed = append(blamed, f.Name)
		for _, p := range v.Errors {
			if p.Fragment == "" { // haproxy named no line: point at the fragment
				p.Location = assemble.Location{Fragment: f.Name, File: f.ConfFile}
			}
			sel.Rejected[f.Name] = append(sel.Rejected[f.Name], p)
		}
	}
	if len(blamed) == 0 {
		return nil, fmt.Errorf("haproxy rejects the fragments together but accepts each added alone: %w", errs)
	}
	return blamed, nil
}

// RejectedNames returns the rejected fragments' names, sorted.
func (sel *Selection) RejectedNames() []string {
	names := make([]string, 0, len(sel.Rejected))
	for name := range sel.Rejected {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// candidates returns the parsed fragments incumbents first, so that when
// two collide the newcomer is the one rejected: first what the previous
// generation had live, then the rest by age on disk, then by name.
func (sel *Selection) candidates() []*assemble.Fragment {
	// each fragment's key is looked up once, not in each of the n log n
	// comparisons (at 10,000 fragments, 20 ms a change), and made of
	// integers compared first
	type keyed struct {
		f       *assemble.Fragment
		newcome int   // 0 for what the previous generation had live, else 1
		sec     int64 // the modification time: UnixNano would wrap past 2262
		nsec    int
	}
	keys := make([]keyed, 0, len(sel.Parsed))
	for name, f := range sel.Parsed {
		mod := sel.Stored[name].ModTime
		k := keyed{f: f, newcome: 1, sec: mod.Unix(), nsec: mod.Nanosecond()}
		if _, live := sel.wasLive[name]; live {
			k.newcome = 0
		}
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b keyed) int {
		if a.newcome != b.newcome {
			return a.newcome - b.newcome
		}
		if a.sec != b.sec {
			return cmp.Compare(a.sec, b.sec)
		}
		if a.nsec != b.nsec {
			return a.nsec - b.nsec
		}
		return strings.Compare(a.f.Name, b.f.Name)
	})
	list := make([]*assemble.Fragment, len(keys))
	for i, k := range keys {
		list[i] = k.f
	}
	return list
}
