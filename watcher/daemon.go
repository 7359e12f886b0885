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

	"haproxy-config/certs"
	"haproxy-config/certs/etcdstorage"
	"haproxy-config/fragments"
	"haproxy-config/reconcile"
	"haproxy-config/reload"
	"haproxy-config/settings"
	"haproxy-config/statedir"
)

// Daemon is one running watcher.
type Daemon struct {
	// Load re-reads the settings on SIGHUP.
	Load func() (*settings.Settings, error)
	// Notify sends a systemd notification (sd_notify); see Notifier.
	Notify func(state string)
	Log    *slog.Logger
	// Version is the daemon's, for the fleet's heartbeats.
	Version string
	// Health, when set, is status --check's level now (OK, WARNING,
	// CRITICAL), for the fleet's heartbeats.
	Health func() string

	s        *settings.Settings
	eng      *reconcile.Engine
	reloader reload.Reloader
	managed  *reload.Managed
	cli      *reload.MasterCLI     // nil when no master socket is known
	rt       *reload.Runtime       // the stats socket: host map updates without a reload
	api      *apiServer            // the API socket: the CLI's changes
	parses   *reconcile.ParseCache // the fragments' parses, shared by the loop's engine and the API's
	limiter  *rate.Limiter
	fsw      *fsnotify.Watcher

	// the burst being gathered: changed fragment (or file) -> vouched
	// for by a committed CLI change, so it need not settle
	dirty      map[string]bool
	firstDirty time.Time
	lastRaw    time.Time
	rescan     bool
	histSize   int64
	read       reconcile.Read // what the last publish read of the store
	readMark   uint64         // the API writer's groups before it began (markRead)
	// how long the last reconcile took: a burst lingers up to that long
	// for the API's writer (lingerFor)
	lastReconcile time.Duration

	// map-only changes (#12): what the runtime host map was last seen
	// holding (nil when unknown), so HAProxy gets only the difference;
	// when the burst last changed; and whether its map-only part went live
	// (or there was none) while the rest waits for a reload token
	rtSeen       *seenMap
	lastDirty    time.Time
	mapOnlyTried bool

	ro        *rollout // the decisions: publish, reload, verify, roll back, hold back
	quarSince map[string]time.Time
	status    Status
	metrics   metrics
	busySince atomic.Int64 // unix ns when the current step began, 0 when idle
	stuckAt   atomic.Int64 // ns one step may take before the watchdog stops pinging (see stuckLimit)
	http      *http.Client

	// the last status write failed (a full disk): it is retried every
	// statusRetry until it works, or status and --wait would say no
	// daemon runs
	statusUnwritten bool

	// certificates (nil manager when ACME is off)
	certs         *certs.Manager
	challenges    *certs.Challenges
	tokenCache    *certs.TokenCache // fleet mode: the challenges' tokens
	certEvents    chan struct{}
	certMu        sync.Mutex
	runtimeMu     sync.Mutex        // held by reloads and by runtime-API updates
	certReload    string            // a reload the manager asked for, not yet taken
	storedDomains []string          // every domain a stored fragment names
	domainOwner   map[string]string // each of them to the fragment naming it, "" when several do

	// fleet mode (nil when off): the shared storage, and this node's
	// heartbeat and view of etcd
	fleetStore *etcdstorage.Storage
	fleet      *fleetNode
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
	// last: the changes of the API and the loop settle before the exit
	defer d.settle()
	if s.Fleet.Enabled() && !s.ACME.Enabled {
		return &reconcile.UsageError{Err: fmt.Errorf("setting %sETCD_ENDPOINTS: fleet mode shares certificates: it needs %sACME=true", settings.EnvPrefix, settings.EnvPrefix)}
	}
	d.dirty, d.quarSince = map[string]bool{}, map[string]time.Time{}
	d.http = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	d.status = Status{PID: os.Getpid(), Started: time.Now().UTC(), State: "starting", Strategy: d.reloader.String(), Quarantined: []Quarantined{}}
	if prev, err := ReadStatus(s.StateDir); err == nil && prev.Live != nil {
		if g, err := d.eng.Generation(prev.Live.Generation); err == nil {
			d.ro.lastGood = g
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
	// every change to the store is heard of from here on
	d.parses.Files.Watch(s.FragmentsDir)
	events := forwardEvents(fsw, d.parses.Files, s.FragmentsDir)
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
	closeFleet, err := d.openFleet()
	if err != nil {
		return err
	}
	// after the certificate manager stopped (deferred later, run earlier)
	defer closeFleet()
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
	defer d.runFleet(ctx)()
	if d.api, err = listenAPI(d.s, d.Log); err != nil {
		return &reload.EnvError{Err: err}
	}
	d.api.certs, d.api.parses = d.certRenewal(), d.parses
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
		case <-events.ready:
			evs, errs, closed := events.take()
			for _, ev := range evs {
				d.event(ev)
			}
			for _, err := range errs {
				// an overflowed queue lost events: read everything again
				d.Log.Warn("file watcher error: rescanning", "err", err)
				d.markRescan()
			}
			if closed {
				return errors.New("file watcher closed")
			}
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
		case <-d.api.Idle():
			// a burst lingering for the writer is due (lingerFor)
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

// restart starts the managed HAProxy again after it exited: see
// rollout.restart.
func (d *Daemon) restart(ctx context.Context) error {
	d.markRead()
	out, err := d.ro.restart(ctx)
	d.fold(out)
	return err
}

// stuckLimit is the longest a healthy step takes (two waits for the store
// lock, three verified reloads, checks), for the current settings: SIGHUP
// may change VERIFY_TIMEOUT.
func (d *Daemon) stuckLimit() {
	d.stuckAt.Store(int64(2*d.eng.LockWait + 3*d.s.VerifyTimeout + 2*time.Minute))
}

// watchdog pings systemd every interval from its own goroutine while the
// loop is responsive: idle, or busy with one step for less than
// stuckLimit. A loop stuck beyond that stops the pings, and systemd acts.
func (d *Daemon) watchdog(every time.Duration) (stop func()) {
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
				if busy := d.busySince.Load(); busy == 0 || time.Since(time.Unix(0, busy)) < time.Duration(d.stuckAt.Load()) {
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

// settle waits for the last commit to settle; one that failed is left in
// the journal, which the next run finishes.
func (d *Daemon) settle() {
	pending, err := d.eng.Store.Settled()
	switch {
	case err != nil:
		d.Log.Warn("the journal", "err", err)
	case pending:
		d.Log.Warn("a change did not settle: the next run finishes it from the journal")
	}
}

// configure builds the engine, the reloader and the limiter.
func (d *Daemon) configure(s *settings.Settings) error {
	d.parses = reconcile.NewParseCache()
	d.s, d.eng = s, newEngine(s, d.parses)
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
			PIDFile: statedir.Layout(s.StateDir).HAProxyPID(), Log: d.Log}
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
	d.ro = d.newRollout()
	d.stuckLimit()
	return nil
}

// newEngine is the daemon's engine: it polls for the store lock every
// millisecond, ahead of CLI writers polling every 5, parses into the
// cache the daemon's engines share, and settles their commits in the
// background.
func newEngine(s *settings.Settings, parses *reconcile.ParseCache) *reconcile.Engine {
	e := reconcile.New(s)
	e.Store.LockPoll = time.Millisecond
	if parses != nil {
		e.Parses, e.Store.Files, e.Store.Later = parses, parses.Files, parses.Later
	}
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
	d.s, d.eng = s, newEngine(s, d.parses)
	d.ro.s = s
	d.stuckLimit()
	// whatever the cause of a failed reload was, it may be gone: retry
	d.ro.forget()
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
	storeWatched := false
	if d.parses != nil {
		// what changed before a watch was (re)added went unreported; a
		// store whose watch could not be added is read whole each time
		defer func() { d.parses.Files.Rewatched(storeWatched) }()
	}
	dirs := []string{d.s.FragmentsDir, filepath.Dir(d.s.FragmentsDir), filepath.Dir(d.s.BaseConfig), d.s.StateDir}
	for _, dir := range dirs {
		_ = d.fsw.Remove(dir)
		if err := d.fsw.Add(dir); err != nil {
			if dir == d.s.StateDir {
				return &reload.EnvError{Err: fmt.Errorf("watch %s: %w", dir, err)}
			}
			d.Log.Warn("cannot watch a directory", "dir", dir, "err", err)
			continue
		}
		storeWatched = storeWatched || dir == d.s.FragmentsDir
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
		name, _ := fragments.PartOf(file)
		if !d.unread(name) {
			return
		}
		d.change(name, false)
	case ev.Name == d.s.FragmentsDir, ev.Name == filepath.Dir(d.s.FragmentsDir) && ev.Op&(fsnotify.Rename|fsnotify.Remove) != 0:
		// the store itself (or its parent) was created, removed or
		// replaced: watch what is there now, and read it once the moves
		// have settled
		if err := d.watch(); err != nil {
			d.Log.Warn("watch directories", "err", err)
		}
		d.change(storeKey, false)
	case ev.Name == d.s.BaseConfig:
		d.change(baseKey, false)
	case dir == d.s.StateDir && file == statedir.History:
		d.readHistory()
	case dir == d.s.StateDir && file == statedir.Hold:
		d.markRescan()
	}
}

// change records a changed fragment (or the base). vouched means a CLI
// change committed it whole, so there is nothing to let settle.
func (d *Daemon) change(key string, vouched bool) {
	d.changeAt(key, vouched, time.Now())
}

// changeAt is change for a change seen at the time now.
func (d *Daemon) changeAt(key string, vouched bool, now time.Time) {
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
	d.markRescanAt(time.Now())
}

// markRescanAt is markRescan for a rescan asked for at the time now.
func (d *Daemon) markRescanAt(now time.Time) {
	if len(d.dirty) == 0 && !d.rescan {
		d.firstDirty = now
	}
	d.rescan = true
	d.lastDirty, d.mapOnlyTried = now, false
	// a rescan reads every file again, trusting no report
	if d.parses != nil {
		d.parses.Files.ChangedAll()
	}
}

func (d *Daemon) historySize() int64 {
	fi, err := os.Stat(statedir.Layout(d.s.StateDir).History())
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
	f, err := os.Open(statedir.Layout(d.s.StateDir).History())
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
		// the API told the loop of its changes when it committed them
		if ev.Via != fragments.ViaAPI {
			d.change(ev.Name, true)
		}
	}
}

// unread reports whether an event on fragment name's files may have
// changed what is read next. The files the API's writer renamed into
// place report events that come before or after the loop hears of the
// commit from the writer, or after a publish that read them: while the
// files hold what the writer left, or what the last publish read, the
// event changes nothing (a vouched change stays vouched). A fragment
// settling already is not read again: the event only moves its settling
// on.
func (d *Daemon) unread(name string) bool {
	vouched, pending := d.dirty[name]
	if pending && !vouched {
		return true
	}
	mark := d.api.wroteMark()
	st, err := d.eng.Store.Read(name)
	if errors.Is(err, fragments.ErrNotFound) {
		st, err = nil, nil
	}
	if err != nil {
		return true
	}
	if d.api.echo(name, st, mark) {
		return false
	}
	if st == nil {
		return !d.read.Lacks(name)
	}
	return !d.read.Same(st)
}

// markRead notes, before a publish may read the store, how many groups the
// API's writer committed: those are superseded by what it reads
// (readBy). The first publish comes before the API listens.
func (d *Daemon) markRead() {
	if d.api != nil {
		d.readMark = d.api.wroteMark()
	}
}

// readBy records what a publish read of the store, and that the writer's
// groups before it began (markRead) have no echoes any more.
func (d *Daemon) readBy(sel *reconcile.Selection) {
	d.read = sel.Read()
	if d.api != nil {
		d.api.forgetWrote(d.readMark)
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
	if wait := d.lingerFor(now); wait > 0 {
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
	d.lastReconcile = time.Since(now)
	if d.ro.probing() {
		d.ro.nextProbe()
		d.markRescan()
	}
	if _, again := d.dueAt(); again {
		timer.Reset(0)
	}
	d.writeStatus()
	d.Notify("STATUS=" + d.summary())
}

// lingerFor is how long a due burst waits for the API's writer while it
// has calls to answer or expects the callers it just answered back:
// callers mid-stream (20 writers) come back with their next change at
// once, and a publish between each two of the writer's groups would make
// every group wait for the store's lock behind one. The burst waits for
// the writer to be idle, at most as long after it began as the last
// reconcile took (up to maxLinger, as long as the writer waits for its
// callers), so the writer gets about half the time. Nothing waits for an
// idle writer: one caller at a time (apply --wait) goes live at once.
func (d *Daemon) lingerFor(now time.Time) time.Duration {
	busy := d.api.Busy(now)
	if busy == 0 {
		return 0
	}
	return min(busy, d.firstDirty.Add(min(d.lastReconcile, maxLinger)).Sub(now))
}

func (d *Daemon) setPending() {
	if d.status.Pending == nil || d.status.Pending.Changes != len(d.dirty) {
		d.status.Pending = &Pending{Since: d.firstDirty.UTC(), Changes: len(d.dirty)}
		d.writeStatus()
	}
}

// start brings HAProxy to the current generation (see rollout.start), or
// serves the live files as they are when the store cannot be published.
func (d *Daemon) start(ctx context.Context) error {
	d.markRead()
	out, publishErr, err := d.ro.start(ctx, time.Now(), d.status.Live != nil)
	d.fold(out)
	if publishErr != nil {
		return d.startStale(ctx, publishErr)
	}
	return err
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
	d.setBehindAt(reason, time.Now())
}

// setBehindAt is setBehind for a reason found at the time at.
func (d *Daemon) setBehindAt(reason string, at time.Time) {
	if d.status.Behind == nil {
		d.status.Behind = &Behind{Since: at.UTC()}
	}
	d.status.Behind.Reason = reason
}

// reconcile publishes what is on disk and brings HAProxy to it (see
// rollout.reconcile). since is when the change was first seen. It reports
// whether it reloaded.
func (d *Daemon) reconcile(ctx context.Context, since time.Time) bool {
	d.markRead()
	out := d.ro.reconcile(ctx, since, d.status.Live != nil)
	d.fold(out)
	return out.reloaded
}

// fold records what the rollout did in the status, and gathers what it
// asks for again into the burst.
func (d *Daemon) fold(out *outcome) {
	if out.readHold {
		d.status.Held = out.held
	}
	if !out.reconciledAt.IsZero() {
		d.status.ReconciledAt = out.reconciledAt
	}
	if out.published != nil {
		d.quarantine(out.published.Selection, out.published.Excluded, out.probing, out.published.Deferred)
		d.noteStored(out.published.Selection)
		if sel := out.published.Selection; sel != nil {
			d.readBy(sel)
		}
	}
	d.status.Counts.add(out.counts)
	if out.reload != nil {
		d.status.LastReload = out.reload
	}
	if out.runtime != nil {
		d.status.LastRuntime = out.runtime
	}
	if out.procsKnown {
		d.status.HAProxy = out.procs
	}
	switch {
	case out.err != nil:
		d.status.LastError = out.err.Error()
	case out.clearErr:
		d.status.LastError = ""
	}
	if out.behind != "" {
		d.setBehindAt(out.behind, out.behindAt)
	}
	if out.caughtUp {
		d.status.Behind = nil
	}
	if out.live != nil {
		d.setLive(out.live)
	}
	if !out.retryAt.IsZero() {
		d.changeAt(retryKey, false, out.retryAt) // again once WaitMin has passed
	}
	if !out.rescanAt.IsZero() {
		d.markRescanAt(out.rescanAt)
	}
}

// quarantine reports the fragments left out; probing are those being
// retried alone. deferred are those a map-only publish kept at their
// served version without judging the stored one: a quarantine of theirs
// stands until a publish judges them.
func (d *Daemon) quarantine(sel *reconcile.Selection, excluded, probing, deferred []string) {
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
			if ex, ok := d.ro.exclude[name]; ok && slices.Contains(excluded, name) {
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
		q.Retrying = slices.Contains(probing, name)
		list = append(list, q)
	}
	for _, q := range d.status.Quarantined {
		if slices.Contains(deferred, q.Name) && !slices.ContainsFunc(list, func(l Quarantined) bool { return l.Name == q.Name }) {
			list = append(list, q)
		}
	}
	slices.SortFunc(list, func(a, b Quarantined) int { return strings.Compare(a.Name, b.Name) })
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
}

// setLive reports g, which the rollout saw serving, live.
func (d *Daemon) setLive(g *reconcile.Generation) {
	d.status.Behind = nil
	d.status.Live = &Live{Generation: g.Number, Since: time.Now().UTC(), Marker: g.Marker, Fragments: len(g.Fragments)}
	d.setCertDomains()
	if d.cli != nil {
		if procs, err := d.cli.ShowProc(context.Background()); err == nil {
			d.status.HAProxy = procs
		}
	}
}

func (d *Daemon) liveGeneration() int {
	if d.ro.lastGood == nil {
		return 0
	}
	return d.ro.lastGood.Number
}

func (d *Daemon) writeStatus() {
	d.status.Updated = time.Now().UTC()
	d.status.Certs = d.certSummary()
	if d.fleet != nil {
		var live *reconcile.Generation
		if g := d.ro.lastGood; g != nil && d.status.Live != nil && d.status.Live.Generation == g.Number {
			live = g
		}
		d.fleet.setLive(live, d.s.BaseConfig, d.s.BaseIsDefault)
		d.status.Fleet = d.fleet.snapshot()
	}
	d.metrics.set(&d.status)
	data, err := writeStatus(d.s.StateDir, &d.status)
	switch {
	case err != nil && !d.statusUnwritten:
		d.Log.Error("write status: retrying until it works", "every", statusRetry, "err", err)
	case err == nil && d.statusUnwritten:
		d.Log.Info("status written again")
	}
	d.statusUnwritten = err != nil
	if data != nil {
		d.api.StatusWritten(data)
	}
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
