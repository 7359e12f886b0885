package watcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"haproxy-config/assemble"
	"haproxy-config/reconcile"
	"haproxy-config/reload"
	"haproxy-config/settings"
)

// publisher is what the rollout asks of the engine.
type publisher interface {
	CurrentHold() (*reconcile.Hold, error)
	Publish(ctx context.Context, exclude map[string]reconcile.Exclusion) (*reconcile.Published, error)
	PublishMapOnly(ctx context.Context, exclude map[string]reconcile.Exclusion) (*reconcile.Published, error)
	Restore(ctx context.Context, n int) (*reconcile.Generation, error)
	Republish(ctx context.Context, n int) (bool, error)
	MarkServing(n int) error
}

// reloader reloads HAProxy and, through the master CLI when one is known,
// tells its workers apart: ShowProc answers nil without a master CLI.
type reloader interface {
	Reload(ctx context.Context) error
	ShowProc(ctx context.Context) (*reload.Procs, error)
	WaitReloaded(ctx context.Context, before *reload.Procs) (*reload.Procs, error)
}

// verifier asks HAProxy's status endpoint which generation's marker it
// serves, "" when it cannot tell.
type verifier interface {
	Served(ctx context.Context) string
}

// mapSyncer brings HAProxy's runtime host map to the live map file: Update
// by the keys that changed since it was last seen, Sync by comparing all of
// it and swapping it whole when it differs. Forget drops what it was last
// seen holding: a new worker loads the file.
type mapSyncer interface {
	Update(ctx context.Context) (changed bool, entries int, err error)
	Sync(ctx context.Context) (changed bool, entries int, err error)
	Forget()
}

// process is the HAProxy the daemon starts itself (managed).
type process interface {
	Start(ctx context.Context) error
	// Since is HAProxy's output since t.
	Since(t time.Time) string
}

// turnWaiter is the reload rate limit.
type turnWaiter interface {
	Wait(ctx context.Context) error
}

// rollout makes generations live (#12): it publishes the store, brings
// HAProxy to the result through the runtime host map or a reload, verifies
// that it serves, and when it does not, puts the last good generation back
// and holds back the fragments that changed, retrying suspects one at a
// time. It acts only through its interfaces and reports what happened in
// an outcome, which the daemon's loop folds into its status.
type rollout struct {
	pub     publisher
	reload  reloader
	served  verifier
	maps    mapSyncer
	haproxy process // nil when the daemon took over a running HAProxy
	turn    turnWaiter
	runtime sync.Locker // held by reloads, so runtime updates reach the worker that serves
	now     func() time.Time
	log     *slog.Logger
	s       *settings.Settings

	lastGood *reconcile.Generation
	exclude  map[string]reconcile.Exclusion
	probe    []string // fragments held back after a failed reload, retried one at a time
	force    string   // why the next reconcile reloads even if HAProxy serves the marker
}

// outcome is what one call of the rollout did, for the daemon's status.
type outcome struct {
	// published is set when the store was published: its selection
	// refreshes the quarantine (probing are the fragments being retried
	// alone at that moment) and the stored domains
	published *reconcile.Published
	probing   []string
	// held is the hold found, when looking for one worked
	held         *reconcile.Hold
	readHold     bool
	reconciledAt time.Time // when the store was read, zero when it was not
	counts       Counts    // to add to the status' counts
	reload       *ReloadResult
	runtime      *RuntimeResult
	procs        *reload.Procs // HAProxy's processes after a reload, when procsKnown
	procsKnown   bool
	live         *reconcile.Generation // seen serving: the status reports it live
	behind       string                // why the store cannot go live, "" when that did not change
	behindAt     time.Time             // when that was found
	caughtUp     bool                  // the store is live: nothing is behind
	err          error                 // the status' last error, when set
	clearErr     bool                  // the last error is over
	retryAt      time.Time             // when a retry was asked for (once WaitMin has passed), zero for none
	rescanAt     time.Time             // when publishing again (without what was held back) was asked for
	reloaded     bool
}

// fallBehind records that what the store holds cannot go live, and why.
func (o *outcome) fallBehind(reason string, at time.Time) {
	o.behind, o.behindAt = reason, at
}

// errNotServing: the reload went through but the marker never showed.
var errNotServing = errors.New("the new generation is not serving")

// forget drops every exclusion and probe: whatever the cause of a failed
// reload was, it may be gone.
func (r *rollout) forget() {
	r.exclude, r.probe = map[string]reconcile.Exclusion{}, nil
}

// probing says whether held-back fragments wait to be retried alone.
func (r *rollout) probing() bool { return len(r.probe) > 0 }

// nextProbe lets the first held-back fragment go live again on its own.
func (r *rollout) nextProbe() {
	if len(r.probe) == 0 {
		return
	}
	name := r.probe[0]
	r.probe = r.probe[1:]
	ex, ok := r.exclude[name]
	if !ok {
		return
	}
	delete(r.exclude, name)
	r.log.Info("retrying a held-back fragment alone", "fragment", name, "checksum", ex.Checksum)
}

// publish writes the generation of the current store (or restores the
// held one), and forgets exclusions of fragments that changed or left.
func (r *rollout) publish(ctx context.Context, out *outcome) (*reconcile.Published, error) {
	out.counts.Reconciles++
	hold, err := r.pub.CurrentHold()
	if err != nil {
		return nil, err
	}
	out.held, out.readHold = hold, true
	if hold != nil {
		g, err := r.pub.Restore(ctx, hold.Generation)
		if err != nil {
			return nil, err
		}
		return &reconcile.Published{Generation: g, Changed: r.lastGood == nil || r.lastGood.Number != g.Number}, nil
	}
	out.reconciledAt = r.now().UTC()
	pub, err := r.pub.Publish(ctx, r.exclude)
	if err != nil {
		return nil, err
	}
	r.published(pub, out)
	return pub, nil
}

// published records pub in out, and ends the exclusions it did not apply:
// Publish leaves an excluded fragment out only while it is unchanged.
func (r *rollout) published(pub *reconcile.Published, out *outcome) {
	out.published, out.probing = pub, slices.Clone(r.probe)
	for name := range r.exclude {
		if !slices.Contains(pub.Excluded, name) {
			delete(r.exclude, name)
		}
	}
}

// reconcile publishes what is on disk and brings HAProxy to it: through
// the runtime API when it serves the config already (only the host map
// changed), else by a reload. since is when the change was first seen;
// shown says whether the status reports a generation live.
func (r *rollout) reconcile(ctx context.Context, since time.Time, shown bool) *outcome {
	out := &outcome{}
	if ctx.Err() != nil {
		return out
	}
	pub, err := r.publish(ctx, out)
	if err != nil {
		out.err = err
		out.fallBehind(err.Error(), r.now())
		out.retryAt = r.now()
		r.log.Error("reconcile failed: retrying", "err", err)
		return out
	}
	out.clearErr = true
	g := pub.Generation
	// the marker is a digest of the config: HAProxy serves it already, and
	// the host map (written to the live file by publish) goes in at runtime
	if (g.Marker != "" && r.force == "" && r.served.Served(ctx) == g.Marker && r.applyMapAtRuntime(ctx, g, since, out)) ||
		(g.Marker == "" && r.force == "" && !pub.Changed && r.lastGood != nil && r.lastGood.Number == g.Number) {
		out.caughtUp = true
		if !shown && out.live == nil {
			// a restarted HAProxy serves the generation it served before
			r.setLive(g, out)
		}
		return out
	}
	r.reconcileReload(ctx, pub, out)
	out.reloaded = true
	return out
}

// reconcileReload reloads onto pub's generation and verifies it; on
// failure it puts the last good generation back and holds back the
// fragments that changed.
func (r *rollout) reconcileReload(ctx context.Context, pub *reconcile.Published, out *outcome) {
	g := pub.Generation
	start := r.now()
	err := r.reloadVerified(ctx, g.Marker, out)
	if err != nil && ctx.Err() != nil {
		return // stopping: neither a success nor HAProxy's failure
	}
	res := &ReloadResult{Generation: g.Number, At: start.UTC(), OK: err == nil, DurationMS: float64(r.now().Sub(start).Microseconds()) / 1000}
	out.reload = res
	if err == nil {
		out.counts.Reloads++
		r.force = ""
		r.checkMapAfter(ctx, "the reload", out)
		r.setLive(g, out)
		r.log.Info("reloaded", "generation", g.Number, "fragments", len(g.Fragments), "duration_ms", res.DurationMS)
		return
	}
	out.counts.ReloadsFailed++
	res.Error = err.Error()
	output := ""
	if r.haproxy != nil {
		output = r.haproxy.Since(start)
	}
	r.log.Error("reload failed", "generation", g.Number, "err", err)
	// only HAProxy refusing the configuration, or a new worker that does
	// not serve it, is a tenant's doing; a socket, bus or command failure
	// is retried as it is once WaitMin has passed
	if !errors.Is(err, reload.ErrReloadFailed) && !errors.Is(err, errNotServing) {
		out.retryAt = r.now()
		out.fallBehind(res.Error, out.retryAt)
	} else if pub.Selection != nil && r.holdBack(g, err.Error(), output, pub) {
		out.rescanAt = r.now() // publish again without what was held back
	} else {
		out.fallBehind(res.Error, r.now()) // no fragment to blame: the base, or HAProxy itself
	}
	if r.lastGood == nil || r.lastGood.Number == g.Number {
		return
	}
	if _, rerr := r.pub.Restore(ctx, r.lastGood.Number); rerr != nil {
		r.log.Error("put the last good generation back", "generation", r.lastGood.Number, "err", rerr)
		return
	}
	out.counts.Rollbacks++
	res.RolledBackTo = r.lastGood.Number
	// a refused reload leaves the old worker serving; anything else gets
	// the last good generation reloaded
	if r.lastGood.Marker != "" && r.served.Served(ctx) == r.lastGood.Marker {
		r.checkMapAfter(ctx, "the refused reload", out)
		return
	}
	// the rollback reload is a reload like any other: it waits its turn
	if rerr := r.turn.Wait(ctx); rerr != nil {
		return
	}
	if rerr := r.reloadVerified(ctx, r.lastGood.Marker, out); rerr != nil {
		r.log.Error("reload of the last good generation failed", "generation", r.lastGood.Number, "err", rerr)
		return
	}
	r.checkMapAfter(ctx, "the rollback", out)
}

// holdBack excludes the fragments that changed since the last good
// generation after HAProxy failed to load g. Those HAProxy's output names
// are quarantined with its message; when it names none, one suspect is
// quarantined and the others are retried one at a time. It reports whether
// it held anything back: without suspects, the failure is not a tenant's.
func (r *rollout) holdBack(g *reconcile.Generation, reason, output string, pub *reconcile.Published) bool {
	if r.lastGood == nil {
		return false // nothing known good to tell the changes from
	}
	var suspects []string
	for name, sum := range g.Fragments {
		if r.lastGood.Fragments[name] != sum {
			suspects = append(suspects, name)
		}
	}
	slices.Sort(suspects)
	if len(suspects) == 0 {
		return false
	}
	blamed := map[string]assemble.Problems{}
	if pub.Selection != nil && output != "" {
		errs, _ := reload.Explain(pub.Selection.Verdict.Output.Source, r.s.OutputConfig, r.s.OutputMap, reload.ParseMessages(output), nil)
		for _, p := range errs {
			if p.Fragment != "" && slices.Contains(suspects, p.Fragment) {
				blamed[p.Fragment] = append(blamed[p.Fragment], p)
			}
		}
	}
	if len(blamed) == 0 {
		// nobody named: the first suspect takes the blame if it is alone,
		// else everyone waits and is retried alone
		if len(suspects) == 1 {
			blamed[suspects[0]] = nil
		} else {
			r.probe = append(r.probe, suspects...)
		}
	}
	for _, name := range suspects {
		ps, isBlamed := blamed[name]
		if !isBlamed && len(blamed) > 0 {
			continue // HAProxy named someone else
		}
		at := assemble.Location{Fragment: name}
		if pub.Selection != nil && pub.Selection.Parsed[name] != nil {
			at.File = pub.Selection.Parsed[name].ConfFile
		}
		if !isBlamed {
			ps = assemble.Problems{{Location: at, Msg: "held back: HAProxy failed to load it together with other changes; retrying it alone"}}
		} else if len(ps) == 0 {
			ps = assemble.Problems{{Location: at, Msg: "HAProxy failed to load the configuration with this fragment: " + reason + alerts(output)}}
		}
		r.exclude[name] = reconcile.Exclusion{Checksum: g.Fragments[name], Problems: ps}
	}
	return true
}

// alerts is ": " and HAProxy's ALERT lines in output, "" without any.
func alerts(output string) string {
	var texts []string
	for _, m := range reload.ParseMessages(output) {
		if m.Level == "ALERT" {
			texts = append(texts, m.Text)
		}
	}
	if len(texts) == 0 {
		return ""
	}
	return ": " + strings.Join(texts, "; ")
}

// reloadVerified asks for a reload and waits until the master has a new
// worker (when the master socket is known) and the status endpoint serves
// the marker (when the base config has one).
func (r *rollout) reloadVerified(ctx context.Context, marker string, out *outcome) error {
	// a runtime update must reach the worker that will serve: not one
	// that is being replaced
	r.runtime.Lock()
	defer r.runtime.Unlock()
	r.maps.Forget() // the new worker loads the map file
	ctx, cancel := context.WithTimeout(ctx, r.s.VerifyTimeout)
	defer cancel()
	before, err := r.reload.ShowProc(ctx)
	if err != nil {
		return err
	}
	if err := r.reload.Reload(ctx); err != nil {
		return err
	}
	if before != nil {
		procs, err := r.reload.WaitReloaded(ctx, before)
		out.procs, out.procsKnown = procs, true
		if err != nil {
			return err
		}
	}
	return r.verify(ctx, marker)
}

// verify waits until the status endpoint serves marker.
func (r *rollout) verify(ctx context.Context, marker string) error {
	if marker == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, r.s.VerifyTimeout)
	defer cancel()
	got := ""
	for {
		if got = r.served.Served(ctx); got == marker {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w after %s: the status endpoint %s answers %q", errNotServing, r.s.VerifyTimeout, r.s.StatusAddr, got)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// applyMapAtRuntime makes generation g, whose config HAProxy serves
// already, live by updating the host map through the runtime API. since
// is when the change was first seen. It reports false when the runtime API
// failed for a new generation, which then needs a reload.
func (r *rollout) applyMapAtRuntime(ctx context.Context, g *reconcile.Generation, since time.Time, out *outcome) bool {
	fresh := r.lastGood == nil || r.lastGood.Number != g.Number
	// a new generation changes the keys it changes; a rescan (nothing
	// new) compares the whole map and repairs drift
	sync := r.maps.Sync
	if fresh {
		sync = r.maps.Update
	}
	changed, n, err := sync(ctx)
	switch {
	case err != nil && fresh:
		out.counts.RuntimeFallbacks++
		r.log.Warn("runtime api failed: reloading instead", "generation", g.Number, "socket", r.s.RuntimeSocket, "err", err)
		return false
	case err != nil:
		// nothing new to apply: HAProxy serves this generation since it
		// was verified; the next reconcile checks again
		r.log.Warn("cannot check the runtime host map", "socket", r.s.RuntimeSocket, "err", err)
		return true
	case changed && fresh:
		out.counts.RuntimeUpdates++
		now := r.now()
		out.runtime = &RuntimeResult{Generation: g.Number, At: now.UTC(), Entries: n,
			DurationMS: float64(now.Sub(since).Microseconds()) / 1000}
		r.log.Info("host map updated at runtime", "generation", g.Number, "entries", n, "duration_ms", out.runtime.DurationMS)
	case changed:
		r.repaired("no change was due", out)
	}
	if fresh {
		r.setLive(g, out)
	}
	return true
}

// checkMapAfter compares the runtime host map with the live map file
// after HAProxy (re)loaded the files, and repairs a difference, so an
// entry written to the file while the reload was in flight is not lost.
func (r *rollout) checkMapAfter(ctx context.Context, what string, out *outcome) {
	changed, _, err := r.maps.Sync(ctx)
	switch {
	case err != nil:
		r.log.Warn("cannot check the runtime host map after "+what, "socket", r.s.RuntimeSocket, "err", err)
	case changed:
		r.repaired("after "+what, out)
	}
}

func (r *rollout) repaired(when string, out *outcome) {
	out.counts.DriftRepairs++
	r.log.Warn("runtime host map differed from the live map file: repaired", "when", when, "map", r.s.OutputMap)
}

// setLive records g as the last good generation, serving.
func (r *rollout) setLive(g *reconcile.Generation, out *outcome) {
	r.lastGood = g
	if err := r.pub.MarkServing(g.Number); err != nil {
		r.log.Error("record the serving generation", "err", err)
	}
	out.live = g
}

// mapOnly makes the map-only part of a due burst live while the burst
// waits for a reload token (#12): the engine publishes a generation with
// the config HAProxy serves (the fragments whose config part changed kept
// at their served version, new ones left out), and the runtime host map
// gets its changed keys. The rest goes out with the reload once the token
// comes. since is when the burst last changed. It reports whether nothing
// is left for that reload.
func (r *rollout) mapOnly(ctx context.Context, since time.Time) (out *outcome, done bool) {
	out = &outcome{}
	if r.lastGood == nil || r.lastGood.Marker == "" {
		return out, false // without a marker, what HAProxy serves is not known
	}
	if hold, err := r.pub.CurrentHold(); err != nil || hold != nil {
		return out, false // reconcile reports the error, or honours the hold
	}
	if fi, err := os.Stat(r.s.FragmentsDir); err != nil || !fi.IsDir() {
		return out, false // reconcile refuses to publish a missing store
	}
	marker := r.served.Served(ctx)
	if marker != r.lastGood.Marker {
		return out, false
	}
	reconciled := r.now().UTC()
	pub, err := r.pub.PublishMapOnly(ctx, r.exclude)
	if errors.Is(err, reconcile.ErrNeedsReload) {
		return out, false
	}
	if err != nil {
		r.log.Warn("map-only changes: cannot publish them before the reload", "err", err)
		return out, false
	}
	out.counts.Reconciles++
	out.reconciledAt = reconciled
	r.published(pub, out)
	g := pub.Generation
	if g.Marker != marker || !r.applyMapAtRuntime(ctx, g, since, out) {
		return out, false // the live files hold g: the reload takes it from here
	}
	if len(pub.Deferred) > 0 {
		r.log.Info("map changes live while config changes wait for a reload", "generation", g.Number, "waiting", pub.Deferred)
	}
	return out, len(pub.Deferred) == 0 && r.force == ""
}

// start brings HAProxy to the current generation: the managed one is
// started on it, another one is reloaded unless it already serves it.
// since is when the daemon began; shown says whether the status reports a
// generation live. A publish that failed is publishErr, for the caller to
// serve the live files as they are.
func (r *rollout) start(ctx context.Context, since time.Time, shown bool) (out *outcome, publishErr, err error) {
	out = &outcome{}
	pub, err := r.publish(ctx, out)
	if err != nil {
		return out, err, nil
	}
	if r.haproxy == nil {
		// taking over a running HAProxy: its runtime map may hold what a
		// killed daemon applied, or miss it
		if pub.Generation.Marker != "" && r.served.Served(ctx) == pub.Generation.Marker &&
			r.applyMapAtRuntime(ctx, pub.Generation, since, out) {
			if !shown && out.live == nil {
				r.setLive(pub.Generation, out) // it serves what the last run verified
			}
			return out, nil, nil
		}
		r.reconcileReload(ctx, pub, out)
		return out, nil, nil
	}
	err = r.haproxy.Start(ctx)
	if err != nil && r.lastGood != nil && r.lastGood.Number != pub.Generation.Number {
		r.log.Error("haproxy does not start on the new generation: starting the last good one",
			"generation", pub.Generation.Number, "last_good", r.lastGood.Number, "err", err)
		r.holdBack(pub.Generation, err.Error(), r.haproxy.Since(time.Time{}), pub)
		if _, rerr := r.pub.Restore(ctx, r.lastGood.Number); rerr != nil {
			return out, nil, fmt.Errorf("%w; restoring generation %d: %v", err, r.lastGood.Number, rerr)
		}
		out.counts.Rollbacks++
		if err = r.haproxy.Start(ctx); err == nil {
			r.setLive(r.lastGood, out)
			out.rescanAt = r.now()
			return out, nil, nil
		}
	}
	if err != nil {
		return out, nil, err
	}
	if err := r.verify(ctx, pub.Generation.Marker); err != nil {
		// something else answers on the status address: no reload could
		// ever be verified
		return out, nil, &reload.EnvError{Err: fmt.Errorf("haproxy started but %w (is another process on HAPROXY_CONFIG_STATUS_ADDR?)", err)}
	}
	r.checkMapAfter(ctx, "the start", out)
	r.setLive(pub.Generation, out)
	return out, nil, nil
}

// restart starts the managed HAProxy again after it exited, on the live
// files of the last good generation: written again first when they no
// longer hold it (the live directory deleted, say), since HAProxy would
// never start on a missing file and no new change could help. That
// generation is then verified serving and reported live at once: a
// restart needs no reload token, nor does its report.
func (r *rollout) restart(ctx context.Context) (*outcome, error) {
	out := &outcome{}
	g := r.lastGood
	if g != nil {
		wrote, err := r.pub.Republish(ctx, g.Number)
		switch {
		case err != nil:
			r.log.Error("write the live files again before the restart: starting haproxy on them as they are",
				"generation", g.Number, "err", err)
			g = nil
		case wrote:
			r.log.Warn("the live files no longer held the last good generation: written again before the restart",
				"generation", g.Number)
		}
	}
	if err := r.haproxy.Start(ctx); err != nil {
		return out, err
	}
	if g == nil {
		return out, nil // the rescan that follows finds out what serves
	}
	if err := r.verify(ctx, g.Marker); err != nil {
		r.log.Error("the restarted haproxy does not serve the last good generation", "generation", g.Number, "err", err)
		return out, nil
	}
	r.checkMapAfter(ctx, "the restart", out)
	r.setLive(g, out)
	out.clearErr = true
	r.log.Info("haproxy restarted", "generation", g.Number)
	return out, nil
}
