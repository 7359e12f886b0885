// Package watcher is the daemon's loop: it watches the fragment store and
// the base config, gathers bursts of changes, publishes a validated
// generation, reloads HAProxy no faster than the rate limit and verifies
// that the new generation is serving, rolling back when it is not.
package watcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/fsnotify/fsnotify"
	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"haproxy-config/assemble"
	"haproxy-config/certs"
	"haproxy-config/fragments"
	"haproxy-config/reconcile"
	"haproxy-config/reload"
	"haproxy-config/settings"
)

// Daemon is one running watcher.
type Daemon struct {
	// Load re-reads the settings on SIGHUP.
	Load func() (*settings.Settings, error)
	// Notify sends a systemd notification (sd_notify); see Notifier.
	Notify func(state string)
	Log    *slog.Logger

	s        *settings.Settings
	eng      *reconcile.Engine
	reloader reload.Reloader
	managed  *reload.Managed
	cli      *reload.MasterCLI // nil when no master socket is known
	rt       *reload.Runtime   // the stats socket: host map updates without a reload
	api      *apiServer        // the API socket: the CLI's changes
	limiter  *rate.Limiter
	fsw      *fsnotify.Watcher

	// the burst being gathered: changed fragment (or file) -> vouched
	// for by a committed CLI change, so it need not settle
	dirty      map[string]bool
	firstDirty time.Time
	lastRaw    time.Time
	rescan     bool
	histSize   int64

	// map-only changes (#12): what the runtime host map was last seen
	// holding (nil when unknown), so HAProxy gets only the difference;
	// when the burst last changed; and whether its map-only part went live
	// (or there was none) while the rest waits for a reload token
	rtEntries    map[string]string
	lastDirty    time.Time
	mapOnlyTried bool

	exclude   map[string]reconcile.Exclusion
	probe     []string // fragments held back after a failed reload, retried one at a time
	lastGood  *reconcile.Generation
	quarSince map[string]time.Time
	status    Status
	metrics   metrics
	busySince atomic.Int64 // unix ns when the current step began, 0 when idle
	http      *http.Client

	// the last status write failed (a full disk): it is retried every
	// statusRetry until it works, or status and --wait would say no
	// daemon runs
	statusUnwritten bool

	// certificates (nil manager when ACME is off)
	certs         *certs.Manager
	challenges    *certs.Challenges
	certEvents    chan struct{}
	certMu        sync.Mutex
	runtimeMu     sync.Mutex        // held by reloads and by runtime-API updates
	certReload    string            // a reload the manager asked for, not yet taken
	forceReload   string            // why the next reconcile reloads even if HAProxy serves the marker
	storedDomains []string          // every domain a stored fragment names
	domainOwner   map[string]string // each of them to the fragment naming it, "" when several do
}

// Notifier sends sd_notify messages when the daemon runs under systemd
// (NOTIFY_SOCKET set); elsewhere it does nothing.
func Notifier(log *slog.Logger) func(string) {
	return func(state string) {
		if _, err := daemon.SdNotify(false, state); err != nil {
			log.Warn("sd_notify failed", "err", err)
		}
	}
}

// keys of the burst that are not fragments
const (
	baseKey  = "(base config)"
	storeKey = "(fragment directory)"
	retryKey = "(retry after an error)"
)

// Run starts HAProxy (managed) or takes over the running one, then keeps
// it serving base + valid fragments until ctx ends or the managed HAProxy
// cannot be kept running. hup carries SIGHUP.
func (d *Daemon) Run(ctx context.Context, hup <-chan os.Signal) error {
	s, err := d.Load()
	if err != nil {
		return err
	}
	if err := d.configure(s); err != nil {
		return err
	}
	d.dirty, d.exclude, d.quarSince = map[string]bool{}, map[string]reconcile.Exclusion{}, map[string]time.Time{}
	d.http = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	d.status = Status{PID: os.Getpid(), Started: time.Now().UTC(), State: "starting", Strategy: d.reloader.String(), Quarantined: []Quarantined{}}
	if prev, err := ReadStatus(s.StateDir); err == nil && prev.Live != nil {
		if g, err := d.eng.Generation(prev.Live.Generation); err == nil {
			d.lastGood = g
		}
	}

	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return &reload.EnvError{Err: fmt.Errorf("watch files: %w", err)}
	}
	d.fsw = fsw
	defer fsw.Close()
	if err := fragments.MkdirAll(s.FragmentsDir, 0o750); err != nil {
		return &reload.EnvError{Err: fmt.Errorf("fragment directory: %w", err)}
	}
	if err := d.watch(); err != nil {
		return err
	}
	d.histSize = d.historySize()
	if s.MetricsAddr != "" {
		d.metrics.stateDir = s.StateDir
		stopMetrics, err := serveMetrics(s.MetricsAddr, &d.metrics, d.Log)
		if err != nil {
			return &reload.EnvError{Err: err}
		}
		defer stopMetrics()
	}

	d.certEvents = make(chan struct{}, 1)
	if err := d.initCerts(); err != nil {
		return &reload.EnvError{Err: fmt.Errorf("certificates: %w", err)}
	}
	if err := d.start(ctx); err != nil {
		return err
	}
	defer d.stop()
	stopCerts, err := d.runCerts(ctx)
	if err != nil {
		return &reload.EnvError{Err: err}
	}
	defer stopCerts()
	if d.api, err = listenAPI(d.s, d.Log); err != nil {
		return &reload.EnvError{Err: err}
	}
	d.api.certs = d.certRenewal()
	defer d.api.serve(ctx)()
	d.status.State = "ready"
	d.writeStatus()
	d.Notify("READY=1\nSTATUS=" + d.summary())
	d.Log.Info("ready", "strategy", d.reloader.String(), "generation", d.liveGeneration())

	if every, err := daemon.SdWatchdogEnabled(false); err == nil && every > 0 {
		stop := d.watchdog(every / 2)
		defer stop()
	}
	rescan := time.NewTicker(d.s.Rescan)
	defer rescan.Stop()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var restartAt <-chan time.Time
	restartDelay := time.Second
	for {
		var exited <-chan struct{}
		if d.managed != nil && restartAt == nil {
			exited = d.managed.Exited()
		}
		var retryStatus <-chan time.Time
		if d.statusUnwritten {
			retryStatus = time.After(statusRetry)
		}
		select {
		case <-ctx.Done():
			d.Notify("STOPPING=1")
			d.Log.Info("stopping")
			return nil
		case ev, ok := <-d.fsw.Events:
			if !ok {
				return errors.New("file watcher closed")
			}
			d.event(ev)
		case err, ok := <-d.fsw.Errors:
			if !ok {
				return errors.New("file watcher closed")
			}
			// an overflowed queue lost events: read everything again
			d.Log.Warn("file watcher error: rescanning", "err", err)
			d.markRescan()
		case <-rescan.C:
			if err := d.watch(); err != nil {
				d.Log.Warn("watch directories", "err", err)
			}
			d.markRescan()
		case <-hup:
			d.Notify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicUsec()))
			d.rereadSettings()
			rescan.Reset(d.s.Rescan)
			d.api.SetSettings(d.s)
			d.markRescan()
			d.Notify("READY=1\nSTATUS=" + d.summary())
		case <-exited:
			d.status.Counts.Restarts++
			d.status.Live = nil // nothing serves until the restart
			d.status.LastError = "haproxy exited; restarting it"
			d.writeStatus()
			d.Log.Error("haproxy exited: restarting it", "in", restartDelay)
			restartAt = time.After(restartDelay)
			restartDelay = min(2*restartDelay, 30*time.Second)
		case <-restartAt:
			restartAt = nil
			d.busySince.Store(time.Now().UnixNano())
			err := d.restart(ctx)
			d.busySince.Store(0)
			if err != nil {
				d.status.LastError = "restart haproxy: " + err.Error()
				d.Log.Error("restart haproxy", "err", err)
				restartAt = time.After(restartDelay)
				restartDelay = min(2*restartDelay, 30*time.Second)
			} else {
				restartDelay = time.Second
				d.markRescan()
			}
			d.writeStatus()
		case <-d.certEvents:
			d.onCertEvent()
		case <-retryStatus:
			d.writeStatus()
		case <-d.api.Committed():
			// committed whole by the API's writer: nothing to let settle
			for _, name := range d.api.TakeCommitted() {
				d.change(name, true)
			}
		case <-timer.C:
		}
		if restartAt != nil {
			continue
		}
		d.busySince.Store(time.Now().UnixNano())
		d.step(ctx, timer)
		d.busySince.Store(0)
	}
}

// restart starts the managed HAProxy again after it exited, on the live
// files of the last good generation: written again first when they no
// longer hold it (the live directory deleted, say), since HAProxy would
// never start on a missing file and no new change could help. That
// generation is then verified serving and reported live at once: a
// restart needs no reload token, nor does its report.
func (d *Daemon) restart(ctx context.Context) error {
	g := d.lastGood
	if g != nil {
		wrote, err := d.eng.Republish(ctx, g.Number)
		switch {
		case err != nil:
			d.Log.Error("write the live files again before the restart: starting haproxy on them as they are",
				"generation", g.Number, "err", err)
			g = nil
		case wrote:
			d.Log.Warn("the live files no longer held the last good generation: written again before the restart",
				"generation", g.Number)
		}
	}
	if err := d.managed.Start(ctx); err != nil {
		return err
	}
	if g == nil {
		return nil // the rescan that follows finds out what serves
	}
	if err := d.verifyMarker(ctx, g.Marker); err != nil {
		d.Log.Error("the restarted haproxy does not serve the last good generation", "generation", g.Number, "err", err)
		return nil
	}
	d.checkMapAfter(ctx, "the restart")
	d.setLive(g)
	d.status.LastError = ""
	d.Log.Info("haproxy restarted", "generation", g.Number)
	return nil
}

// watchdog pings systemd every interval from its own goroutine while the
// loop is responsive: idle, or busy with one step for less than the
// longest a healthy step takes (two waits for the store lock, three
// verified reloads, checks). A loop stuck beyond that stops the pings, and
// systemd acts.
func (d *Daemon) watchdog(every time.Duration) (stop func()) {
	limit := 2*d.eng.LockWait + 3*d.s.VerifyTimeout + 2*time.Minute
	done := make(chan struct{})
	finished := make(chan struct{})
	d.Notify("WATCHDOG=1")
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if busy := d.busySince.Load(); busy == 0 || time.Since(time.Unix(0, busy)) < limit {
					d.Notify("WATCHDOG=1")
				}
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, as sd_notify's
// MONOTONIC_USEC wants it.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1000
}

// configure builds the engine, the reloader and the limiter.
func (d *Daemon) configure(s *settings.Settings) error {
	d.s, d.eng = s, newEngine(s)
	d.limiter = rate.NewLimiter(rate.Every(s.ReloadInterval), s.ReloadBurst)
	bin, err := d.eng.Validator.Binary()
	if err != nil {
		return err
	}
	if s.MasterSocket != "" {
		d.cli = &reload.MasterCLI{Path: s.MasterSocket}
	}
	d.rt = &reload.Runtime{Path: s.RuntimeSocket, Timeout: 5 * time.Second}
	switch {
	case s.Reload == "managed":
		d.managed = &reload.Managed{Haproxy: bin, Config: s.OutputConfig, CLI: d.cli,
			PIDFile: filepath.Join(s.StateDir, "haproxy.pid"), Log: d.Log}
		d.reloader = d.managed
	case s.Reload == "master-socket":
		d.reloader = &reload.MasterSocket{CLI: d.cli}
	case s.Reload == "systemd":
		d.reloader = &reload.Systemd{Unit: s.ReloadUnit, Connect: connectSystemd}
	case s.Reload == "command":
		if s.ReloadCommand == "" {
			return &reload.EnvError{Err: errors.New("the command strategy needs HAPROXY_CONFIG_RELOAD_COMMAND")}
		}
		d.reloader = &reload.Command{Line: s.ReloadCommand}
	}
	if d.managed == nil && d.cli != nil {
		if _, err := os.Stat(d.cli.Path); err != nil {
			d.Log.Warn("master socket not found: reloads are verified by the marker only", "socket", d.cli.Path)
			d.cli = nil
		}
	}
	return nil
}

// newEngine is the daemon's engine: it polls for the store lock every
// millisecond, ahead of CLI writers polling every 5.
func newEngine(s *settings.Settings) *reconcile.Engine {
	e := reconcile.New(s)
	e.Store.LockPoll = time.Millisecond
	return e
}

// rereadSettings applies what SIGHUP asks for, and forgets the fragments
// held back after failed reloads so they are tried again. Settings the
// running HAProxy or this process depend on (paths it loads, the reload
// strategy, addresses) stay as they are until a restart.
func (d *Daemon) rereadSettings() {
	s, err := d.Load()
	if err != nil {
		d.Log.Error("re-read settings: keeping the current ones", "err", err)
		return
	}
	for _, ig := range s.KeepRestartOnly(d.s) {
		current, ignored := d.s.Raw[ig.Key.Name], ig.Value
		if ig.Key.Secret() {
			current, ignored = "(secret)", "(secret)"
		}
		d.Log.Warn("this setting changes only when the daemon restarts: keeping the current value",
			"setting", ig.Key.Env(), "current", current, "ignored", ignored)
	}
	d.s, d.eng = s, newEngine(s)
	// whatever the cause of a failed reload was, it may be gone: retry
	d.exclude, d.probe = map[string]reconcile.Exclusion{}, nil
	d.limiter.SetLimit(rate.Every(s.ReloadInterval))
	d.limiter.SetBurst(s.ReloadBurst)
	if err := d.watch(); err != nil {
		d.Log.Warn("watch directories", "err", err)
	}
	d.Log.Info("settings re-read", "rescan", s.Rescan.String(), "reload_interval", s.ReloadInterval.String())
}

// watch (re)adds the watched directories: the store, its parent (the
// store replaced whole), the base config's directory and the state
// directory (history and holds). Adding a watched directory again is
// harmless; a directory replaced whole gets a fresh watch.
func (d *Daemon) watch() error {
	if err := fragments.MkdirAll(d.s.StateDir, 0o750); err != nil {
		return &reload.EnvError{Err: fmt.Errorf("state directory: %w", err)}
	}
	dirs := []string{d.s.FragmentsDir, filepath.Dir(d.s.FragmentsDir), filepath.Dir(d.s.BaseConfig), d.s.StateDir}
	for _, dir := range dirs {
		_ = d.fsw.Remove(dir)
		if err := d.fsw.Add(dir); err != nil {
			if dir == d.s.StateDir {
				return &reload.EnvError{Err: fmt.Errorf("watch %s: %w", dir, err)}
			}
			d.Log.Warn("cannot watch a directory", "dir", dir, "err", err)
		}
	}
	return nil
}

// event sorts one file event into the burst being gathered.
func (d *Daemon) event(ev fsnotify.Event) {
	if ev.Op == fsnotify.Chmod {
		return
	}
	dir, file := filepath.Dir(ev.Name), filepath.Base(ev.Name)
	switch {
	case dir == d.s.FragmentsDir:
		if fragments.Ignored(file) {
			return
		}
		name := strings.TrimSuffix(strings.TrimSuffix(file, fragments.ConfSuffix), fragments.MapSuffix)
		d.change(name, false)
	case ev.Name == d.s.FragmentsDir:
		// the store itself was created, removed or replaced: watch what is
		// there now, and read it once the moves have settled
		if err := d.watch(); err != nil {
			d.Log.Warn("watch directories", "err", err)
		}
		d.change(storeKey, false)
	case ev.Name == d.s.BaseConfig:
		d.change(baseKey, false)
	case dir == d.s.StateDir && file == historyFile:
		d.readHistory()
	case dir == d.s.StateDir && file == reconcile.HoldFile:
		d.markRescan()
	}
}

const historyFile = "history.jsonl"

// change records a changed fragment (or the base). vouched means a CLI
// change committed it whole, so there is nothing to let settle.
func (d *Daemon) change(key string, vouched bool) {
	now := time.Now()
	if len(d.dirty) == 0 && !d.rescan {
		d.firstDirty = now
	}
	if !vouched {
		d.lastRaw = now
	}
	d.dirty[key] = vouched
	d.lastDirty, d.mapOnlyTried = now, false
}

func (d *Daemon) markRescan() {
	if len(d.dirty) == 0 && !d.rescan {
		d.firstDirty = time.Now()
	}
	d.rescan = true
	d.lastDirty, d.mapOnlyTried = time.Now(), false
}

func (d *Daemon) historySize() int64 {
	fi, err := os.Stat(filepath.Join(d.s.StateDir, historyFile))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readHistory reads the events the CLI appended since the last read. Each
// one means its fragment's files were renamed into place whole before the
// event was written, so the fragment need not settle. A history that was
// trimmed (rewritten shorter) vouches for nothing this time.
func (d *Daemon) readHistory() {
	f, err := os.Open(filepath.Join(d.s.StateDir, historyFile))
	if err != nil {
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return
	}
	if fi.Size() < d.histSize {
		d.histSize = fi.Size()
		return
	}
	data := make([]byte, fi.Size()-d.histSize)
	n, _ := f.ReadAt(data, d.histSize)
	data = data[:n]
	end := strings.LastIndexByte(string(data), '\n')
	if end < 0 {
		return
	}
	d.histSize += int64(end + 1)
	for _, ev := range fragments.ParseEvents(data[:end+1]) {
		d.change(ev.Name, true)
	}
}

// dueAt says when the gathered burst should be read: at once when every
// change was committed whole by the CLI, else once direct writes have been
// quiet for WaitMin, and never later than WaitMax after the burst began.
func (d *Daemon) dueAt() (time.Time, bool) {
	if len(d.dirty) == 0 && !d.rescan {
		return time.Time{}, false
	}
	if !slices.Contains(mapValues(d.dirty), false) {
		return d.firstDirty, true
	}
	at := d.lastRaw.Add(d.s.WaitMin)
	return minTime(at, d.firstDirty.Add(d.s.WaitMax)), true
}

func mapValues(m map[string]bool) []bool {
	vs := make([]bool, 0, len(m))
	for _, v := range m {
		vs = append(vs, v)
	}
	return vs
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// step reconciles when a burst is due and the rate limit allows a reload,
// otherwise sets the timer for when it will be.
func (d *Daemon) step(ctx context.Context, timer *time.Timer) {
	at, pending := d.dueAt()
	if !pending {
		return
	}
	now := time.Now()
	if wait := at.Sub(now); wait > 0 {
		timer.Reset(wait)
		d.setPending()
		return
	}
	r := d.limiter.ReserveN(now, 1)
	if wait := r.DelayFrom(now); wait > 0 {
		r.CancelAt(now)
		// a map-only change never waits for a reload token
		if !d.mapOnlyTried && d.mapOnlyMeanwhile(ctx) {
			d.dirty, d.rescan = map[string]bool{}, false
			d.status.Pending = nil
			d.writeStatus()
			d.Notify("STATUS=" + d.summary())
			return
		}
		timer.Reset(wait)
		d.setPending()
		return
	}
	since := d.firstDirty
	d.dirty, d.rescan, d.mapOnlyTried = map[string]bool{}, false, false
	d.status.Pending = nil
	if !d.reconcile(ctx, since) {
		r.CancelAt(now) // no reload: give the token back
	}
	if len(d.probe) > 0 {
		d.nextProbe()
		d.markRescan()
	}
	if _, again := d.dueAt(); again {
		timer.Reset(0)
	}
	d.writeStatus()
	d.Notify("STATUS=" + d.summary())
}

func (d *Daemon) setPending() {
	if d.status.Pending == nil || d.status.Pending.Changes != len(d.dirty) {
		d.status.Pending = &Pending{Since: d.firstDirty.UTC(), Changes: len(d.dirty)}
		d.writeStatus()
	}
}

// start brings HAProxy to the current generation: the managed one is
// started on it, another one is reloaded unless it already serves it.
func (d *Daemon) start(ctx context.Context) error {
	since := time.Now()
	pub, err := d.publish(ctx)
	if err != nil {
		return d.startStale(ctx, err)
	}
	if d.managed == nil {
		// taking over a running HAProxy: its runtime map may hold what a
		// killed daemon applied, or miss it
		if pub.Generation.Marker != "" && d.servedMarker(ctx) == pub.Generation.Marker &&
			d.applyMapAtRuntime(ctx, pub.Generation, since) {
			if d.status.Live == nil {
				d.setLive(pub.Generation) // it serves what the last run verified
			}
			return nil
		}
		d.reconcileReload(ctx, pub)
		return nil
	}
	err = d.managed.Start(ctx)
	if err != nil && d.lastGood != nil && d.lastGood.Number != pub.Generation.Number {
		d.Log.Error("haproxy does not start on the new generation: starting the last good one",
			"generation", pub.Generation.Number, "last_good", d.lastGood.Number, "err", err)
		d.holdBack(pub.Generation, err.Error(), d.managed.Since(time.Time{}), pub)
		if _, rerr := d.eng.Restore(ctx, d.lastGood.Number); rerr != nil {
			return fmt.Errorf("%w; restoring generation %d: %v", err, d.lastGood.Number, rerr)
		}
		d.status.Counts.Rollbacks++
		if err = d.managed.Start(ctx); err == nil {
			d.setLive(d.lastGood)
			d.markRescan()
			return nil
		}
	}
	if err != nil {
		return err
	}
	if err := d.verifyMarker(ctx, pub.Generation.Marker); err != nil {
		// something else answers on the status address: no reload could
		// ever be verified
		return &reload.EnvError{Err: fmt.Errorf("haproxy started but %w (is another process on HAPROXY_CONFIG_STATUS_ADDR?)", err)}
	}
	d.checkMapAfter(ctx, "the start")
	d.setLive(pub.Generation)
	return nil
}

// startStale handles a first publish that failed (the base config broken
// by an edit, say): a managed HAProxy starts on the live files the last
// run left, and the daemon keeps watching for the fix. Without live files
// there is nothing to serve, and the error stands.
func (d *Daemon) startStale(ctx context.Context, publishErr error) error {
	if _, err := os.Stat(d.s.OutputConfig); err != nil {
		return publishErr
	}
	d.status.LastError = publishErr.Error()
	d.setBehind(publishErr.Error())
	d.Log.Error("cannot publish the stored fragments: serving the live files as they are", "err", publishErr)
	if d.managed != nil {
		if err := d.managed.Start(ctx); err != nil {
			return fmt.Errorf("%w; starting haproxy on the previous live files: %v", publishErr, err)
		}
	}
	return nil
}

func (d *Daemon) stop() {
	if d.managed != nil {
		d.managed.Stop(10 * time.Second)
	}
	d.status.State = "stopped"
	d.writeStatus()
}

// publish writes the generation of the current store (or restores the
// held one) and refreshes the quarantine.
func (d *Daemon) publish(ctx context.Context) (*reconcile.Published, error) {
	d.status.Counts.Reconciles++
	hold, err := d.eng.CurrentHold()
	if err != nil {
		return nil, err
	}
	d.status.Held = hold
	if hold != nil {
		g, err := d.eng.Restore(ctx, hold.Generation)
		if err != nil {
			return nil, err
		}
		return &reconcile.Published{Generation: g, Changed: d.lastGood == nil || d.lastGood.Number != g.Number}, nil
	}
	d.status.ReconciledAt = time.Now().UTC()
	pub, err := d.eng.Publish(ctx, d.exclude)
	if err != nil {
		return nil, err
	}
	d.quarantine(pub.Selection, pub.Excluded)
	d.noteStored(pub.Selection)
	return pub, nil
}

// quarantine reports the fragments left out and forgets exclusions of
// fragments that changed or left.
func (d *Daemon) quarantine(sel *reconcile.Selection, excluded []string) {
	now := time.Now().UTC()
	var list []Quarantined
	for _, name := range sel.RejectedNames() {
		q := Quarantined{Name: name, Errors: []string{}, LastGood: sel.FellBack[name]}
		switch f := sel.Parsed[name]; {
		case q.LastGood != "":
			q.Checksum = sel.Superseded[name]
		case f != nil:
			q.Checksum = f.Checksum
		default:
			if ex, ok := d.exclude[name]; ok && slices.Contains(excluded, name) {
				q.Checksum = ex.Checksum
			}
		}
		for _, p := range sel.Rejected[name] {
			q.Errors = append(q.Errors, p.Error())
		}
		since, seen := d.quarSince[name]
		if !seen {
			since = now
			d.Log.Warn("fragment quarantined", "fragment", name, "errors", strings.Join(q.Errors, "; "))
		}
		q.Since = since
		q.Retrying = slices.Contains(d.probe, name)
		list = append(list, q)
	}
	next := map[string]time.Time{}
	for _, q := range list {
		next[q.Name] = q.Since
	}
	for name := range d.quarSince {
		if _, still := next[name]; !still {
			d.Log.Info("fragment no longer quarantined", "fragment", name)
		}
	}
	d.quarSince = next
	if list == nil {
		list = []Quarantined{}
	}
	d.status.Quarantined = list
	d.status.Strays = nil
	for _, p := range sel.Strays {
		d.status.Strays = append(d.status.Strays, p.Error())
	}
	// Publish leaves an excluded fragment out only while it is unchanged:
	// an exclusion it did not apply (the fragment changed or left) is over
	for name := range d.exclude {
		if !slices.Contains(excluded, name) {
			delete(d.exclude, name)
		}
	}
}

// reconcile publishes what is on disk and brings HAProxy to it: through
// the runtime API when it serves the config already (only the host map
// changed), else by a reload. since is when the change was first seen. It
// reports whether it reloaded.
func (d *Daemon) reconcile(ctx context.Context, since time.Time) bool {
	if ctx.Err() != nil {
		return false
	}
	pub, err := d.publish(ctx)
	if err != nil {
		d.status.LastError = err.Error()
		d.setBehind(err.Error())
		d.Log.Error("reconcile failed: retrying", "err", err)
		d.change(retryKey, false) // again once WaitMin has passed
		return false
	}
	d.status.LastError = ""
	g := pub.Generation
	// the marker is a digest of the config: HAProxy serves it already, and
	// the host map (written to the live file by publish) goes in at runtime
	if (g.Marker != "" && d.forceReload == "" && d.servedMarker(ctx) == g.Marker && d.applyMapAtRuntime(ctx, g, since)) ||
		(g.Marker == "" && d.forceReload == "" && !pub.Changed && d.lastGood != nil && d.lastGood.Number == g.Number) {
		d.status.Behind = nil
		if d.status.Live == nil {
			// a restarted HAProxy serves the generation it served before
			d.setLive(g)
		}
		return false
	}
	d.reconcileReload(ctx, pub)
	return true
}

// reconcileReload reloads onto pub's generation and verifies it; on
// failure it puts the last good generation back and holds back the
// fragments that changed.
func (d *Daemon) reconcileReload(ctx context.Context, pub *reconcile.Published) {
	g := pub.Generation
	start := time.Now()
	err := d.reloadVerified(ctx, g.Marker)
	if err != nil && ctx.Err() != nil {
		return // stopping: neither a success nor HAProxy's failure
	}
	res := &ReloadResult{Generation: g.Number, At: start.UTC(), OK: err == nil, DurationMS: float64(time.Since(start).Microseconds()) / 1000}
	d.status.LastReload = res
	if err == nil {
		d.status.Counts.Reloads++
		d.forceReload = ""
		d.checkMapAfter(ctx, "the reload")
		d.setLive(g)
		d.Log.Info("reloaded", "generation", g.Number, "fragments", len(g.Fragments), "duration_ms", res.DurationMS)
		return
	}
	d.status.Counts.ReloadsFailed++
	res.Error = err.Error()
	output := ""
	if d.managed != nil {
		output = d.managed.Since(start)
	}
	d.Log.Error("reload failed", "generation", g.Number, "err", err)
	// only HAProxy refusing the configuration, or a new worker that does
	// not serve it, is a tenant's doing; a socket, bus or command failure
	// is retried as it is once WaitMin has passed
	if !errors.Is(err, reload.ErrReloadFailed) && !errors.Is(err, errNotServing) {
		d.change(retryKey, false)
		d.setBehind(res.Error)
	} else if pub.Selection != nil && d.holdBack(g, err.Error(), output, pub) {
		d.markRescan() // publish again without what was held back
	} else {
		d.setBehind(res.Error) // no fragment to blame: the base, or HAProxy itself
	}
	if d.lastGood == nil || d.lastGood.Number == g.Number {
		return
	}
	if _, rerr := d.eng.Restore(ctx, d.lastGood.Number); rerr != nil {
		d.Log.Error("put the last good generation back", "generation", d.lastGood.Number, "err", rerr)
		return
	}
	d.status.Counts.Rollbacks++
	res.RolledBackTo = d.lastGood.Number
	// a refused reload leaves the old worker serving; anything else gets
	// the last good generation reloaded
	if d.lastGood.Marker != "" && d.servedMarker(ctx) == d.lastGood.Marker {
		d.checkMapAfter(ctx, "the refused reload")
		return
	}
	// the rollback reload is a reload like any other: it waits its turn
	if rerr := d.limiter.Wait(ctx); rerr != nil {
		return
	}
	if rerr := d.reloadVerified(ctx, d.lastGood.Marker); rerr != nil {
		d.Log.Error("reload of the last good generation failed", "generation", d.lastGood.Number, "err", rerr)
		return
	}
	d.checkMapAfter(ctx, "the rollback")
}

// holdBack excludes the fragments that changed since the last good
// generation after HAProxy failed to load g. Those HAProxy's output names
// are quarantined with its message; when it names none, one suspect is
// quarantined and the others are retried one at a time. It reports whether
// it held anything back: without suspects, the failure is not a tenant's.
func (d *Daemon) holdBack(g *reconcile.Generation, reason, output string, pub *reconcile.Published) bool {
	if d.lastGood == nil {
		return false // nothing known good to tell the changes from
	}
	var suspects []string
	for name, sum := range g.Fragments {
		if d.lastGood.Fragments[name] != sum {
			suspects = append(suspects, name)
		}
	}
	slices.Sort(suspects)
	if len(suspects) == 0 {
		return false
	}
	blamed := map[string]assemble.Problems{}
	if pub.Selection != nil && output != "" {
		errs, _ := reload.Explain(pub.Selection.Verdict.Output.Source, d.s.OutputConfig, d.s.OutputMap, reload.ParseMessages(output), nil)
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
			d.probe = append(d.probe, suspects...)
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
		d.exclude[name] = reconcile.Exclusion{Checksum: g.Fragments[name], Problems: ps}
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

// nextProbe lets the first held-back fragment go live again on its own.
func (d *Daemon) nextProbe() {
	if len(d.probe) == 0 {
		return
	}
	name := d.probe[0]
	d.probe = d.probe[1:]
	ex, ok := d.exclude[name]
	if !ok {
		return
	}
	delete(d.exclude, name)
	d.Log.Info("retrying a held-back fragment alone", "fragment", name, "checksum", ex.Checksum)
}

// reloadVerified asks for a reload and waits until the master has a new
// worker (when the master socket is known) and the status endpoint serves
// the marker (when the base config has one).
func (d *Daemon) reloadVerified(ctx context.Context, marker string) error {
	// a runtime update must reach the worker that will serve: not one
	// that is being replaced
	d.runtimeMu.Lock()
	defer d.runtimeMu.Unlock()
	d.rtEntries = nil // the new worker loads the map file
	ctx, cancel := context.WithTimeout(ctx, d.s.VerifyTimeout)
	defer cancel()
	var before *reload.Procs
	if d.cli != nil {
		var err error
		if before, err = d.cli.ShowProc(ctx); err != nil {
			return err
		}
	}
	if err := d.reloader.Reload(ctx); err != nil {
		return err
	}
	if before != nil {
		procs, err := d.cli.WaitReloaded(ctx, before)
		d.status.HAProxy = procs
		if err != nil {
			return err
		}
	}
	return d.verifyMarker(ctx, marker)
}

// errNotServing: the reload went through but the marker never showed.
var errNotServing = errors.New("the new generation is not serving")

// verifyMarker waits until the status endpoint serves marker.
func (d *Daemon) verifyMarker(ctx context.Context, marker string) error {
	if marker == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, d.s.VerifyTimeout)
	defer cancel()
	got := ""
	for {
		if got = d.servedMarker(ctx); got == marker {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w after %s: the status endpoint %s answers %q", errNotServing, d.s.VerifyTimeout, d.s.StatusAddr, got)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// servedMarker asks the status endpoint which generation serves.
func (d *Daemon) servedMarker(ctx context.Context) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.s.StatusAddr+"/", nil)
	if err != nil {
		return ""
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256))
	if err != nil || resp.StatusCode != http.StatusOK {
		return ""
	}
	return strings.TrimSpace(string(body))
}

// setBehind records that what the store holds cannot go live, keeping the
// time it first could not.
func (d *Daemon) setBehind(reason string) {
	if d.status.Behind == nil {
		d.status.Behind = &Behind{Since: time.Now().UTC()}
	}
	d.status.Behind.Reason = reason
}

func (d *Daemon) setLive(g *reconcile.Generation) {
	d.lastGood = g
	d.status.Behind = nil
	if err := d.eng.MarkServing(g.Number); err != nil {
		d.Log.Error("record the serving generation", "err", err)
	}
	d.status.Live = &Live{Generation: g.Number, Since: time.Now().UTC(), Marker: g.Marker, Fragments: len(g.Fragments)}
	d.setCertDomains()
	if d.cli != nil {
		if procs, err := d.cli.ShowProc(context.Background()); err == nil {
			d.status.HAProxy = procs
		}
	}
}

func (d *Daemon) liveGeneration() int {
	if d.lastGood == nil {
		return 0
	}
	return d.lastGood.Number
}

func (d *Daemon) writeStatus() {
	d.status.Updated = time.Now().UTC()
	d.status.Certs = d.certSummary()
	d.metrics.set(&d.status)
	err := writeStatus(d.s.StateDir, &d.status)
	switch {
	case err != nil && !d.statusUnwritten:
		d.Log.Error("write status: retrying until it works", "every", statusRetry, "err", err)
	case err == nil && d.statusUnwritten:
		d.Log.Info("status written again")
	}
	d.statusUnwritten = err != nil
	d.api.StatusWritten()
}

// statusRetry paces the retries of a status write that failed.
const statusRetry = time.Second

// summary is the one-line STATUS= for systemd.
func (d *Daemon) summary() string {
	s := fmt.Sprintf("generation %d live", d.liveGeneration())
	if n := len(d.status.Quarantined); n > 0 {
		s += fmt.Sprintf(", %d quarantined", n)
	}
	if d.status.Held != nil {
		s += fmt.Sprintf(", held at generation %d", d.status.Held.Generation)
	}
	if r := d.status.LastReload; r != nil && !r.OK {
		s += ", last reload failed"
	}
	return s
}
