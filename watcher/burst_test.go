package watcher

import (
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
	"golang.org/x/time/rate"

	"haproxy-config/fragments"
	"haproxy-config/internal/testkit"
	"haproxy-config/reconcile"
	"haproxy-config/settings"
	"haproxy-config/statedir"
)

const (
	testWaitMin = 500 * time.Millisecond
	testWaitMax = 5 * time.Second
)

// burstDaemon is a daemon with only what the burst logic uses: settings
// laid out under a temporary root and an empty burst.
func burstDaemon(t *testing.T) *Daemon {
	t.Helper()
	root := t.TempDir()
	// Run creates the store at start; watch() no longer does
	if err := os.MkdirAll(filepath.Join(root, "etc/haproxy-config/fragments"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := &settings.Settings{
		WaitMin:      testWaitMin,
		WaitMax:      testWaitMax,
		FragmentsDir: filepath.Join(root, "etc/haproxy-config/fragments"),
		BaseConfig:   filepath.Join(root, "etc/haproxy-config/base.cfg"),
		StateDir:     filepath.Join(root, "var/lib/haproxy-config"),
	}
	return &Daemon{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), s: s, eng: newEngine(s, nil), api: &apiServer{}, dirty: map[string]bool{}}
}

// withWatcher gives d a real file watcher, as event() re-adds watches
// when the store itself changes.
func withWatcher(t *testing.T, d *Daemon) {
	t.Helper()
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatalf("file watcher: %v", err)
	}
	t.Cleanup(func() { fsw.Close() })
	d.fsw = fsw
}

func mustDue(t *testing.T, d *Daemon) time.Time {
	t.Helper()
	at, pending := d.dueAt()
	if !pending {
		t.Fatalf("dueAt: nothing pending with dirty=%v rescan=%v", d.dirty, d.rescan)
	}
	return at
}

func TestDueAtNothingPending(t *testing.T) {
	d := burstDaemon(t)
	if at, pending := d.dueAt(); pending {
		t.Fatalf("dueAt on an empty burst = %v, pending; want nothing pending", at)
	}
	// stale times from an earlier burst do not make anything due
	d.firstDirty, d.lastRaw = time.Now().Add(-time.Minute), time.Now().Add(-time.Minute)
	if at, pending := d.dueAt(); pending {
		t.Fatalf("dueAt with stale times but no changes = %v, pending; want nothing pending", at)
	}
}

func TestDueAtArithmetic(t *testing.T) {
	t0 := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		dirty   map[string]bool
		rescan  bool
		lastRaw time.Duration // after t0
		want    time.Duration // after t0
	}{
		{"one raw change settles for WaitMin", map[string]bool{"a": false}, false, 0, testWaitMin},
		{"a later raw change pushes it", map[string]bool{"a": false, "b": false}, false, 300 * time.Millisecond, 800 * time.Millisecond},
		{"raw changes near the cap stop at WaitMax", map[string]bool{"a": false}, false, 4700 * time.Millisecond, testWaitMax},
		{"raw changes past the cap stay at WaitMax", map[string]bool{"a": false}, false, 10 * time.Second, testWaitMax},
		{"vouched only is due at once", map[string]bool{"a": true, "b": true}, false, time.Hour, 0},
		{"vouched plus raw waits for the raw one", map[string]bool{"a": true, "b": false}, false, 200 * time.Millisecond, 700 * time.Millisecond},
		{"rescan alone is due at once", map[string]bool{}, true, time.Hour, 0},
		{"rescan with vouched is due at once", map[string]bool{"a": true}, true, time.Hour, 0},
		{"rescan does not cut a raw change short", map[string]bool{"a": false}, true, 100 * time.Millisecond, 600 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := burstDaemon(t)
			d.dirty, d.rescan = tc.dirty, tc.rescan
			d.firstDirty, d.lastRaw = t0, t0.Add(tc.lastRaw)
			if got := mustDue(t, d); !got.Equal(t0.Add(tc.want)) {
				t.Fatalf("dueAt = t0+%v, want t0+%v", got.Sub(t0), tc.want)
			}
		})
	}
}

func TestChangeRawSettles(t *testing.T) {
	d := burstDaemon(t)
	before := time.Now()
	d.change("a", false)
	after := time.Now()
	if d.firstDirty.Before(before) || d.firstDirty.After(after) {
		t.Fatalf("firstDirty = %v, want the time of the first change (between %v and %v)", d.firstDirty, before, after)
	}
	if !d.lastRaw.Equal(d.firstDirty) {
		t.Fatalf("lastRaw = %v, want the first change's time %v", d.lastRaw, d.firstDirty)
	}
	if got, want := mustDue(t, d), d.lastRaw.Add(testWaitMin); !got.Equal(want) {
		t.Fatalf("dueAt = %v, want lastRaw+WaitMin = %v", got, want)
	}
	if want := map[string]bool{"a": false}; !maps.Equal(d.dirty, want) {
		t.Fatalf("dirty = %v, want %v", d.dirty, want)
	}
}

func TestChangeContinuingBurst(t *testing.T) {
	d := burstDaemon(t)
	d.change("a", false)
	// the burst began a while ago: a later raw change moves lastRaw, not
	// firstDirty
	first := time.Now().Add(-2 * time.Second)
	d.firstDirty, d.lastRaw = first, first
	before := time.Now()
	d.change("b", false)
	if !d.firstDirty.Equal(first) {
		t.Fatalf("a second change moved firstDirty from %v to %v", first, d.firstDirty)
	}
	if d.lastRaw.Before(before) {
		t.Fatalf("lastRaw = %v, want the second change's time (>= %v)", d.lastRaw, before)
	}
	if got, want := mustDue(t, d), d.lastRaw.Add(testWaitMin); !got.Equal(want) {
		t.Fatalf("dueAt = %v, want the last raw change + WaitMin = %v", got, want)
	}

	// near the cap a new raw change no longer pushes the deadline
	first = time.Now().Add(-testWaitMax + 100*time.Millisecond)
	d.firstDirty = first
	d.change("c", false)
	if got, want := mustDue(t, d), first.Add(testWaitMax); !got.Equal(want) {
		t.Fatalf("dueAt = %v, want firstDirty+WaitMax = %v (a continuing burst is capped)", got, want)
	}
	if d.lastRaw.Add(testWaitMin).Before(first.Add(testWaitMax)) {
		t.Fatalf("test setup: lastRaw+WaitMin %v does not pass the cap %v", d.lastRaw.Add(testWaitMin), first.Add(testWaitMax))
	}
}

func TestChangeVouched(t *testing.T) {
	d := burstDaemon(t)
	before := time.Now()
	d.change("a", true)
	if d.firstDirty.Before(before) {
		t.Fatalf("firstDirty = %v, want the vouched change's time (>= %v)", d.firstDirty, before)
	}
	if !d.lastRaw.IsZero() {
		t.Fatalf("a vouched change set lastRaw to %v", d.lastRaw)
	}
	if got := mustDue(t, d); !got.Equal(d.firstDirty) {
		t.Fatalf("dueAt = %v, want at once (firstDirty %v)", got, d.firstDirty)
	}

	// a raw change to another fragment must settle; the vouched one does
	// not make it due early
	d.change("b", false)
	if got, want := mustDue(t, d), d.lastRaw.Add(testWaitMin); !got.Equal(want) {
		t.Fatalf("dueAt with a raw change = %v, want lastRaw+WaitMin = %v", got, want)
	}
	if want := map[string]bool{"a": true, "b": false}; !maps.Equal(d.dirty, want) {
		t.Fatalf("dirty = %v, want %v", d.dirty, want)
	}

	// a vouched change does not touch lastRaw
	lastRaw := d.lastRaw
	d.change("c", true)
	if !d.lastRaw.Equal(lastRaw) {
		t.Fatalf("a vouched change moved lastRaw from %v to %v", lastRaw, d.lastRaw)
	}
}

func TestMarkRescan(t *testing.T) {
	d := burstDaemon(t)
	before := time.Now()
	d.markRescan()
	after := time.Now()
	if !d.rescan {
		t.Fatal("markRescan did not flag a rescan")
	}
	at := mustDue(t, d)
	if at.Before(before) || at.After(after) {
		t.Fatalf("dueAt after markRescan = %v, want at once (between %v and %v)", at, before, after)
	}

	// a rescan during a burst keeps the burst's start
	d = burstDaemon(t)
	d.change("a", false)
	first := time.Now().Add(-time.Second)
	d.firstDirty = first
	d.markRescan()
	if !d.firstDirty.Equal(first) {
		t.Fatalf("markRescan during a burst moved firstDirty from %v to %v", first, d.firstDirty)
	}
}

func TestEventSorting(t *testing.T) {
	for _, tc := range []struct {
		name      string
		file      func(d *Daemon) string
		op        fsnotify.Op
		wantDirty map[string]bool
		rescan    bool
	}{
		{"config part created", frag("shop.cfg"), fsnotify.Create, map[string]bool{"shop": false}, false},
		{"map part written", frag("shop.map"), fsnotify.Write, map[string]bool{"shop": false}, false},
		{"part removed", frag("shop.cfg"), fsnotify.Remove, map[string]bool{"shop": false}, false},
		{"part renamed away", frag("shop.map"), fsnotify.Rename, map[string]bool{"shop": false}, false},
		{"write with chmod", frag("shop.cfg"), fsnotify.Write | fsnotify.Chmod, map[string]bool{"shop": false}, false},
		{"chmod only", frag("shop.cfg"), fsnotify.Chmod, map[string]bool{}, false},
		{"hidden temp file", frag(".shop.cfg.tmp123"), fsnotify.Create, map[string]bool{}, false},
		{"hidden fragment-like file", frag(".shop.cfg"), fsnotify.Write, map[string]bool{}, false},
		{"editor backup", frag("x.cfg~"), fsnotify.Create, map[string]bool{}, false},
		{"swap file", frag(".x.swp"), fsnotify.Write, map[string]bool{}, false},
		{"other suffix", frag("notes.txt"), fsnotify.Create, map[string]bool{}, false},
		{"dpkg leftover", frag("shop.cfg.dpkg-old"), fsnotify.Create, map[string]bool{}, false},
		{"file in a subdirectory of the store", frag("sub/shop.cfg"), fsnotify.Create, map[string]bool{}, false},
		{"base config", func(d *Daemon) string { return d.s.BaseConfig }, fsnotify.Write, map[string]bool{baseKey: false}, false},
		{"base config replaced", func(d *Daemon) string { return d.s.BaseConfig }, fsnotify.Create, map[string]bool{baseKey: false}, false},
		{"base config chmod", func(d *Daemon) string { return d.s.BaseConfig }, fsnotify.Chmod, map[string]bool{}, false},
		{"other file beside the base", func(d *Daemon) string { return filepath.Join(filepath.Dir(d.s.BaseConfig), "other.cfg") }, fsnotify.Write, map[string]bool{}, false},
		{"hold file", func(d *Daemon) string { return statedir.Layout(d.s.StateDir).Hold() }, fsnotify.Create, map[string]bool{}, true},
		{"status file", func(d *Daemon) string { return statedir.Layout(d.s.StateDir).Status() }, fsnotify.Create, map[string]bool{}, false},
		{"store removed", func(d *Daemon) string { return d.s.FragmentsDir }, fsnotify.Remove, map[string]bool{storeKey: false}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := burstDaemon(t)
			withWatcher(t, d)
			d.event(fsnotify.Event{Name: tc.file(d), Op: tc.op})
			if !maps.Equal(d.dirty, tc.wantDirty) {
				t.Errorf("dirty = %v, want %v", d.dirty, tc.wantDirty)
			}
			if d.rescan != tc.rescan {
				t.Errorf("rescan = %v, want %v", d.rescan, tc.rescan)
			}
			_, pending := d.dueAt()
			if want := len(tc.wantDirty) > 0 || tc.rescan; pending != want {
				t.Errorf("pending = %v, want %v", pending, want)
			}
		})
	}
}

func frag(file string) func(d *Daemon) string {
	return func(d *Daemon) string { return filepath.Join(d.s.FragmentsDir, file) }
}

// The store replaced whole: the event names the store itself; the daemon
// rescans and watches the new directory.
func TestEventStoreReplaced(t *testing.T) {
	d := burstDaemon(t)
	withWatcher(t, d)
	if err := d.watch(); err != nil {
		t.Fatalf("watch: %v", err)
	}
	// replace the store: the old directory's watch goes with it
	if err := os.RemoveAll(d.s.FragmentsDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(d.s.FragmentsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	drain(d.fsw)

	before := time.Now()
	d.event(fsnotify.Event{Name: d.s.FragmentsDir, Op: fsnotify.Create})
	if !maps.Equal(d.dirty, map[string]bool{storeKey: false}) {
		t.Fatalf("after the store was replaced: dirty=%v, want the store as a change that must settle", d.dirty)
	}
	// moves of whole directories settle like any direct write
	if at := mustDue(t, d); at.Before(before.Add(testWaitMin)) || at.After(time.Now().Add(testWaitMin)) {
		t.Fatalf("dueAt = %v, want WaitMin after the event", at)
	}
	if !slices.Contains(d.fsw.WatchList(), d.s.FragmentsDir) {
		t.Fatalf("the new store is not watched; watching %v", d.fsw.WatchList())
	}

	// the fresh watch reports files in the new directory
	path := filepath.Join(d.s.FragmentsDir, "shop.cfg")
	if err := os.WriteFile(path, []byte("backend shop\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(5 * time.Second)
	for {
		select {
		case ev := <-d.fsw.Events:
			if ev.Name == path {
				return
			}
		case err := <-d.fsw.Errors:
			t.Fatalf("file watcher: %v", err)
		case <-deadline:
			t.Fatalf("no event for %s within 5s: the replaced store is not watched", path)
		}
	}
}

// drain discards the events already queued.
func drain(fsw *fsnotify.Watcher) {
	for {
		select {
		case <-fsw.Events:
		case <-fsw.Errors:
		case <-time.After(50 * time.Millisecond):
			return
		}
	}
}

// historyLine is one history event as the CLI writes it.
func historyLine(name string) string {
	return fmt.Sprintf(`{"time":"2024-05-01T12:00:00Z","action":"apply","name":%q,"checksum":"sha256:%064x","actor":"x"}`+"\n", name, len(name))
}

func writeHistory(t *testing.T, d *Daemon, data string) {
	t.Helper()
	if err := os.MkdirAll(d.s.StateDir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(statedir.Layout(d.s.StateDir).History(), []byte(data), 0o640); err != nil {
		t.Fatal(err)
	}
}

func appendHistory(t *testing.T, d *Daemon, data string) {
	t.Helper()
	f, err := os.OpenFile(statedir.Layout(d.s.StateDir).History(), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
}

func historyLen(t *testing.T, d *Daemon) int64 {
	t.Helper()
	fi, err := os.Stat(statedir.Layout(d.s.StateDir).History())
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func expectDirty(t *testing.T, d *Daemon, want map[string]bool) {
	t.Helper()
	if !maps.Equal(d.dirty, want) {
		t.Fatalf("dirty = %v, want %v", d.dirty, want)
	}
}

func TestReadHistoryFromStart(t *testing.T) {
	d := burstDaemon(t)
	writeHistory(t, d, historyLine("a")+historyLine("b"))
	d.readHistory()
	expectDirty(t, d, map[string]bool{"a": true, "b": true})
	if got, want := d.histSize, historyLen(t, d); got != want {
		t.Fatalf("histSize = %d, want the whole file (%d)", got, want)
	}
	if got := mustDue(t, d); !got.Equal(d.firstDirty) {
		t.Fatalf("dueAt = %v, want at once (%v): every change is vouched", got, d.firstDirty)
	}

	// nothing new: nothing vouched again
	d.dirty = map[string]bool{}
	d.readHistory()
	expectDirty(t, d, map[string]bool{})
}

func TestReadHistoryFromEnd(t *testing.T) {
	d := burstDaemon(t)
	writeHistory(t, d, historyLine("old1")+historyLine("old2"))
	d.histSize = d.historySize()
	if d.histSize != historyLen(t, d) {
		t.Fatalf("historySize = %d, want %d", d.histSize, historyLen(t, d))
	}
	appendHistory(t, d, historyLine("new"))
	d.readHistory()
	expectDirty(t, d, map[string]bool{"new": true})
}

func TestReadHistoryVouchesRawChange(t *testing.T) {
	d := burstDaemon(t)
	writeHistory(t, d, "")
	d.change("c", false)
	raw := d.lastRaw

	// a line for another fragment leaves the raw change raw
	appendHistory(t, d, historyLine("a"))
	d.readHistory()
	expectDirty(t, d, map[string]bool{"a": true, "c": false})
	if got, want := mustDue(t, d), raw.Add(testWaitMin); !got.Equal(want) {
		t.Fatalf("dueAt = %v, want the raw change to settle (%v)", got, want)
	}

	// the CLI's line for it vouches it: due at once
	appendHistory(t, d, historyLine("c"))
	d.readHistory()
	expectDirty(t, d, map[string]bool{"a": true, "c": true})
	if got := mustDue(t, d); !got.Equal(d.firstDirty) {
		t.Fatalf("dueAt = %v, want at once (%v)", got, d.firstDirty)
	}
}

func TestReadHistoryTornLine(t *testing.T) {
	d := burstDaemon(t)
	whole := historyLine("d")
	cut := len(whole) / 2
	writeHistory(t, d, historyLine("a")+whole[:cut])
	d.readHistory()
	expectDirty(t, d, map[string]bool{"a": true})
	if got, want := d.histSize, int64(len(historyLine("a"))); got != want {
		t.Fatalf("histSize = %d, want %d: the torn line must not be consumed", got, want)
	}

	// a torn line alone is left for later too
	d.dirty = map[string]bool{}
	d.readHistory()
	expectDirty(t, d, map[string]bool{})

	// completed: it vouches its fragment
	appendHistory(t, d, whole[cut:])
	d.readHistory()
	expectDirty(t, d, map[string]bool{"d": true})
	if got, want := d.histSize, historyLen(t, d); got != want {
		t.Fatalf("histSize = %d, want %d", got, want)
	}
}

func TestReadHistoryCompleteJSONWithoutNewline(t *testing.T) {
	d := burstDaemon(t)
	line := historyLine("e")
	writeHistory(t, d, line[:len(line)-1])
	d.readHistory()
	expectDirty(t, d, map[string]bool{})
	if d.histSize != 0 {
		t.Fatalf("histSize = %d, want 0: a line is complete only with its newline", d.histSize)
	}
}

func TestReadHistoryBadLine(t *testing.T) {
	d := burstDaemon(t)
	writeHistory(t, d, "not json\n"+historyLine("a"))
	d.readHistory()
	expectDirty(t, d, map[string]bool{"a": true})
	if got, want := d.histSize, historyLen(t, d); got != want {
		t.Fatalf("histSize = %d, want %d: a bad line is skipped, not retried", got, want)
	}
}

func TestReadHistoryTrimmed(t *testing.T) {
	d := burstDaemon(t)
	writeHistory(t, d, historyLine("a")+historyLine("b")+historyLine("c"))
	d.histSize = historyLen(t, d)

	// rewritten shorter: vouches nothing, the offset starts over
	writeHistory(t, d, historyLine("t"))
	d.readHistory()
	expectDirty(t, d, map[string]bool{})
	if got, want := d.histSize, historyLen(t, d); got != want {
		t.Fatalf("histSize after a trim = %d, want the new size %d", got, want)
	}

	// what is appended after the trim is read from the new offset
	appendHistory(t, d, historyLine("f"))
	d.readHistory()
	expectDirty(t, d, map[string]bool{"f": true})
}

func TestReadHistoryMissing(t *testing.T) {
	d := burstDaemon(t)
	d.readHistory()
	expectDirty(t, d, map[string]bool{})
	if d.histSize != 0 {
		t.Fatalf("histSize = %d, want 0", d.histSize)
	}
}

// A history event reaches readHistory through event().
func TestEventHistory(t *testing.T) {
	d := burstDaemon(t)
	withWatcher(t, d)
	writeHistory(t, d, historyLine("shop"))
	d.event(fsnotify.Event{Name: statedir.Layout(d.s.StateDir).History(), Op: fsnotify.Write})
	expectDirty(t, d, map[string]bool{"shop": true})
}

// TestSIGHUPMovesWatchdogLimit: SIGHUP applies a longer VERIFY_TIMEOUT,
// so the watchdog must allow the longer steps that come with it, or
// systemd kills a daemon busy verifying a slow reload.
func TestSIGHUPMovesWatchdogLimit(t *testing.T) {
	d := burstDaemon(t)
	withWatcher(t, d)
	root := filepath.Dir(filepath.Dir(filepath.Dir(d.s.FragmentsDir)))
	verify := "30s"
	d.Load = func() (*settings.Settings, error) {
		return settings.Load(settings.Source{Getenv: func(k string) (string, bool) {
			switch k {
			case "HAPROXY_CONFIG_ROOT":
				return root, true
			case "HAPROXY_CONFIG_VERIFY_TIMEOUT":
				return verify, true
			}
			return "", false
		}})
	}
	s, err := d.Load()
	if err != nil {
		t.Fatal(err)
	}
	d.s, d.eng = s, newEngine(s, nil)
	d.limiter = rate.NewLimiter(rate.Every(s.ReloadInterval), s.ReloadBurst)
	d.ro = &rollout{exclude: map[string]reconcile.Exclusion{}}
	d.stuckLimit()
	before := time.Duration(d.stuckAt.Load())
	verify = "10m"
	d.rereadSettings()
	if d.s.VerifyTimeout != 10*time.Minute {
		t.Fatalf("VERIFY_TIMEOUT after SIGHUP: %v, want 10m", d.s.VerifyTimeout)
	}
	if after := time.Duration(d.stuckAt.Load()); after < 3*10*time.Minute || after <= before {
		t.Errorf("watchdog limit %v after VERIFY_TIMEOUT went to 10m (was %v): three verified reloads no longer fit", after, before)
	}
}

// readDaemon is burstDaemon with a real engine that has checked the store
// (haproxy -c), as a publish would have read it.
func readDaemon(t *testing.T, fragments map[string][2]string) *Daemon {
	t.Helper()
	testkit.RequireHaproxy(t)
	d := burstDaemon(t)
	root := testkit.OpenTempDir(t) // haproxy -c runs as the check user
	s, err := settings.Load(settings.Source{Getenv: func(k string) (string, bool) {
		v, ok := map[string]string{"HAPROXY_CONFIG_ROOT": root, "HAPROXY_CONFIG_ALLOW_NETWORKS": "127.0.0.0/8",
			"HAPROXY_CONFIG_HTTP_ADDR": "127.0.0.1:18080", "HAPROXY_CONFIG_HTTPS_ADDR": "127.0.0.1:18443"}[k]
		return v, ok
	}})
	if err != nil {
		t.Fatal(err)
	}
	s.WaitMin, s.WaitMax = testWaitMin, testWaitMax
	d.s, d.eng = s, newEngine(s, nil)
	if err := os.MkdirAll(s.FragmentsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, parts := range fragments {
		writeFragment(t, d, name, parts[0], parts[1])
	}
	sel, err := d.eng.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(sel.Live) != len(fragments) {
		t.Fatalf("%d fragments live after the check, want %d: %v", len(sel.Live), len(fragments), sel.Rejected)
	}
	d.read = sel.Read()
	return d
}

func writeFragment(t *testing.T, d *Daemon, name, conf, hostMap string) {
	t.Helper()
	c, m := d.eng.Store.Paths(name)
	if err := os.WriteFile(c, []byte(conf), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m, []byte(hostMap), 0o640); err != nil {
		t.Fatal(err)
	}
}

// TestEventOnFilesAsReadIgnored: an event on a fragment's files changes
// nothing while they hold what the last publish read (the API's writer
// renames them into place while the loop publishes the commit), unless
// the fragment is settling (a direct write in progress).
func TestEventOnFilesAsReadIgnored(t *testing.T) {
	const conf, hostMap = "backend shop_web\n    server s1 127.0.0.1:8081\n", "shop.example.com shop_web\n"
	d := readDaemon(t, map[string][2]string{"shop": {conf, hostMap}})
	shopMap := filepath.Join(d.s.FragmentsDir, "shop.map")
	for _, op := range []fsnotify.Op{fsnotify.Create, fsnotify.Write, fsnotify.Rename} {
		d.event(fsnotify.Event{Name: shopMap, Op: op})
		expectDirty(t, d, map[string]bool{})
	}
	// a removal of a fragment that was not stored changes nothing either
	d.event(fsnotify.Event{Name: filepath.Join(d.s.FragmentsDir, "gone.cfg"), Op: fsnotify.Remove})
	expectDirty(t, d, map[string]bool{})

	// part of the burst, vouched: it stays so; settling: it settles on
	d.change("shop", true)
	d.event(fsnotify.Event{Name: shopMap, Op: fsnotify.Create})
	expectDirty(t, d, map[string]bool{"shop": true})
	d.change("shop", false)
	raw := time.Now().Add(-time.Second)
	d.lastRaw = raw
	d.event(fsnotify.Event{Name: shopMap, Op: fsnotify.Write})
	expectDirty(t, d, map[string]bool{"shop": false})
	if !d.lastRaw.After(raw) {
		t.Error("an event on a settling fragment did not move its settling on")
	}

	for _, tc := range []struct {
		name  string
		write func()
	}{
		{"map part changed", func() { writeFragment(t, d, "shop", conf, "other.example.com shop_web\n") }},
		{"same bytes, other part missing", func() {
			writeFragment(t, d, "shop", conf, hostMap)
			if err := os.Remove(filepath.Join(d.s.FragmentsDir, "shop.cfg")); err != nil {
				t.Fatal(err)
			}
		}},
		{"both parts removed", func() {
			if err := os.Remove(shopMap); err != nil {
				t.Fatal(err)
			}
		}},
		{"a new fragment", func() { writeFragment(t, d, "new", conf, "") }},
	} {
		d.dirty = map[string]bool{}
		tc.write()
		for _, name := range []string{"shop", "new"} {
			d.event(fsnotify.Event{Name: filepath.Join(d.s.FragmentsDir, name+".cfg"), Op: fsnotify.Create})
		}
		want := map[string]bool{"shop": false}
		if tc.name == "a new fragment" {
			want = map[string]bool{"new": false, "shop": false}
		}
		if !maps.Equal(d.dirty, want) {
			t.Errorf("%s: dirty = %v, want %v", tc.name, d.dirty, want)
		}
	}

	// nothing read yet: every event counts
	d = burstDaemon(t)
	writeFragment(t, d, "shop", conf, hostMap)
	d.event(fsnotify.Event{Name: filepath.Join(d.s.FragmentsDir, "shop.map"), Op: fsnotify.Create})
	expectDirty(t, d, map[string]bool{"shop": false})
}

// TestReadHistorySkipsTheAPIsLines: the API tells the loop of what it
// commits; its history lines are not news.
func TestReadHistorySkipsTheAPIsLines(t *testing.T) {
	d := burstDaemon(t)
	api := strings.Replace(historyLine("viaapi"), `"actor":"x"`, `"actor":"x","via":"api"`, 1)
	writeHistory(t, d, historyLine("a")+api+historyLine("b"))
	d.readHistory()
	expectDirty(t, d, map[string]bool{"a": true, "b": true})
	if got, want := d.histSize, historyLen(t, d); got != want {
		t.Fatalf("histSize = %d, want the whole file (%d)", got, want)
	}
}

// TestEventEchoOfTheWritersFiles: the file events of the API writer's own
// renames change nothing, whether they come before or after the loop took
// the commit (vouched, part of the burst); once the files hold anything
// else, they count again, even when that is the writer's bytes back.
func TestEventEchoOfTheWritersFiles(t *testing.T) {
	const conf, hostMap = "backend shop_web\n    server s1 127.0.0.1:8081\n", "shop.example.com shop_web\n"
	d := burstDaemon(t)
	wrote := &fragments.Stored{Name: "shop", Conf: []byte(conf), Map: []byte(hostMap)}
	wrote.ConfPath, wrote.MapPath = d.eng.Store.Paths("shop")
	d.api.wroteSeq = 1
	d.api.wrote = map[string]wroteFiles{"shop": {wrote, 1}, "gone": {nil, 1}}
	writeFragment(t, d, "shop", conf, hostMap)
	shopMap := filepath.Join(d.s.FragmentsDir, "shop.map")

	d.event(fsnotify.Event{Name: shopMap, Op: fsnotify.Create})
	expectDirty(t, d, map[string]bool{})
	d.change("shop", true)
	d.event(fsnotify.Event{Name: shopMap, Op: fsnotify.Rename})
	expectDirty(t, d, map[string]bool{"shop": true})
	d.event(fsnotify.Event{Name: filepath.Join(d.s.FragmentsDir, "gone.cfg"), Op: fsnotify.Remove})
	expectDirty(t, d, map[string]bool{"shop": true})

	// a direct write over the writer's files
	writeFragment(t, d, "shop", conf, "other.example.com shop_web\n")
	d.event(fsnotify.Event{Name: shopMap, Op: fsnotify.Write})
	expectDirty(t, d, map[string]bool{"shop": false})
	d.dirty = map[string]bool{}
	writeFragment(t, d, "shop", conf, hostMap)
	d.event(fsnotify.Event{Name: shopMap, Op: fsnotify.Write})
	expectDirty(t, d, map[string]bool{"shop": false})
	if _, ok := d.api.wrote["shop"]; ok {
		t.Error("the writer's files are still remembered after a direct write over them")
	}
}

// TestBurstLingersForABusyWriter: a due burst waits while the API's writer
// has calls to answer or expects its callers back, at most as long after
// it began as the last reconcile took (and never more than maxLinger);
// not at all for an idle writer.
func TestBurstLingersForABusyWriter(t *testing.T) {
	d := burstDaemon(t)
	now := time.Now()
	d.firstDirty, d.lastReconcile = now.Add(-10*time.Millisecond), 50*time.Millisecond
	if got := d.lingerFor(now); got != 0 {
		t.Errorf("idle writer: lingers %v, want 0", got)
	}
	d.api.expect.Store(now.Add(5 * time.Millisecond).UnixNano())
	if got := d.lingerFor(now); got != 5*time.Millisecond {
		t.Errorf("writer waiting 5ms more for its callers: lingers %v, want 5ms", got)
	}
	d.api.asked.Add(1)
	if got := d.lingerFor(now); got != 40*time.Millisecond {
		t.Errorf("busy writer: lingers %v, want 40ms (the last reconcile's 50ms since the burst began)", got)
	}
	d.lastReconcile = time.Hour
	if got, want := d.lingerFor(now), maxLinger-10*time.Millisecond; got != want {
		t.Errorf("after a slow reconcile: lingers %v, want %v", got, want)
	}
	d.firstDirty = now.Add(-time.Hour)
	if got := d.lingerFor(now); got > 0 {
		t.Errorf("a burst older than the bound: lingers %v, want none", got)
	}
}

const (
	echoConf  = "backend shop_web\n    server s1 127.0.0.1:8081\n"
	echoConf2 = "backend shop_web\n    server s1 127.0.0.1:8082\n"
	echoMap   = "shop.example.com shop_web\n"
)

// withWriter gives d an API writer's state, and returns it with an engine
// for it.
func withWriter(d *Daemon) (*apiServer, *reconcile.Engine) {
	d.api = &apiServer{log: slog.New(slog.NewTextHandler(io.Discard, nil)), stored: map[string]storedVersion{},
		wrote: map[string]wroteFiles{}, kick: make(chan struct{}, 1), idle: make(chan struct{}, 1)}
	return d.api, newEngine(d.s, nil)
}

// commitOps commits ops as the writer's goroutine does, and the loop takes
// the commit.
func commitOps(t *testing.T, d *Daemon, eng *reconcile.Engine, ops ...reconcile.Op) {
	t.Helper()
	calls := make([]*apiCall, len(ops))
	for i, op := range ops {
		calls[i] = &apiCall{op: op, answer: make(chan callResult, 1)}
	}
	d.api.commit(t.Context(), eng, calls)
	for _, c := range calls {
		if res := <-c.answer; res.Err != nil {
			t.Fatalf("commit %s: %v", c.op.Name, res.Err)
		}
	}
	for _, name := range d.api.TakeCommitted() {
		d.change(name, true)
	}
}

// publishRead is what step does around a publish, for what the loop
// remembers: the burst cleared, the store read, and that read recorded.
func publishRead(t *testing.T, d *Daemon) *reconcile.Selection {
	t.Helper()
	d.dirty = map[string]bool{}
	d.markRead()
	sel, err := d.eng.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	d.readBy(sel)
	return sel
}

// TestEchoEndsWhenAPublishReadOtherFiles: what the writer left is no
// echo once a publish read the store after it, and something else there:
// an in-place copy of the writer's bytes (cp) truncates the file just as
// the publish the commit asked for reads it, then writes the bytes; the
// API removes a fragment that Ansible copies in again, the publish reads
// it, then Ansible removes it. Both end as the writer left them, but not
// as last read: they count (found by review).
func TestEchoEndsWhenAPublishReadOtherFiles(t *testing.T) {
	d := readDaemon(t, map[string][2]string{"shop": {echoConf, echoMap}})
	_, weng := withWriter(d)
	commitOps(t, d, weng, reconcile.Op{Change: reconcile.Change{Name: "shop", Conf: []byte(echoConf2), Map: []byte(echoMap)}})
	confPath, mapPath := d.eng.Store.Paths("shop")
	if err := os.Truncate(confPath, 0); err != nil {
		t.Fatal(err)
	}
	publishRead(t, d)
	if err := os.WriteFile(confPath, []byte(echoConf2), 0o640); err != nil {
		t.Fatal(err)
	}
	d.event(fsnotify.Event{Name: confPath, Op: fsnotify.Write})
	expectDirty(t, d, map[string]bool{"shop": false})

	commitOps(t, d, weng, reconcile.Op{Change: reconcile.Change{Name: "shop"}, Remove: true})
	writeFragment(t, d, "shop", echoConf2, echoMap)
	if sel := publishRead(t, d); sel.Stored["shop"] == nil {
		t.Fatal("the publish did not read the copied-in shop")
	}
	for _, p := range []string{confPath, mapPath} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	d.event(fsnotify.Event{Name: confPath, Op: fsnotify.Remove})
	expectDirty(t, d, map[string]bool{"shop": false})

	// a group after the publish began keeps its echoes
	commitOps(t, d, weng, reconcile.Op{Change: reconcile.Change{Name: "shop", Conf: []byte(echoConf), Map: []byte(echoMap)}})
	d.dirty = map[string]bool{}
	d.readBy(&reconcile.Selection{})
	d.event(fsnotify.Event{Name: confPath, Op: fsnotify.Create})
	expectDirty(t, d, map[string]bool{})
}

// TestEventOnAStrayOrTroubledFile: a file named like a part of another
// fragment ("shop.map.cfg" is fragment shop.map, a stray) and the removal
// of a fragment whose part was refused (a symlink) change what the status
// reports: they count, though shop is as read and the troubled fragment
// was never read (found by review).
func TestEventOnAStrayOrTroubledFile(t *testing.T) {
	d := readDaemon(t, map[string][2]string{"shop": {echoConf, echoMap}})
	stray := filepath.Join(d.s.FragmentsDir, "shop.map.cfg")
	if err := os.WriteFile(stray, []byte(echoConf), 0o640); err != nil {
		t.Fatal(err)
	}
	d.event(fsnotify.Event{Name: stray, Op: fsnotify.Create})
	expectDirty(t, d, map[string]bool{"shop.map": false})

	if err := os.Remove(stray); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(d.s.FragmentsDir, "bad.cfg")
	if err := os.Symlink("/etc/passwd", bad); err != nil {
		t.Fatal(err)
	}
	if sel := publishRead(t, d); len(sel.Strays) != 1 {
		t.Fatalf("strays %v: want the symlink reported", sel.Strays)
	}
	if err := os.Remove(bad); err != nil {
		t.Fatal(err)
	}
	d.event(fsnotify.Event{Name: bad, Op: fsnotify.Remove})
	expectDirty(t, d, map[string]bool{"bad": false})
}

// TestWriterAndLoopRace runs the writer's commits against the loop's
// event handling, linger and commit taking, for the race detector (found
// sound by review).
func TestWriterAndLoopRace(t *testing.T) {
	d := readDaemon(t, map[string][2]string{"shop": {echoConf, echoMap}})
	a, weng := withWriter(d)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 10 {
			conf := []string{echoConf, echoConf2}[i%2]
			c := &apiCall{op: reconcile.Op{Change: reconcile.Change{Name: "shop", Conf: []byte(conf), Map: []byte(echoMap)}}, answer: make(chan callResult, 1)}
			a.asked.Add(1)
			a.commit(t.Context(), weng, []*apiCall{c})
			<-c.answer
			a.asked.Add(-1)
		}
	}()
	confPath, _ := d.eng.Store.Paths("shop")
	for {
		select {
		case <-done:
			return
		default:
		}
		d.event(fsnotify.Event{Name: confPath, Op: fsnotify.Write})
		for _, name := range a.TakeCommitted() {
			d.change(name, true)
		}
		d.dirty = map[string]bool{}
		_ = d.lingerFor(time.Now())
	}
}

// TestEchoAfterItsGroupWasRead: a publish that read the writer's group
// forgets its echoes; the group's own rename events, handled after, leave
// its vouched change vouched (no WAIT_MIN), whether that publish came
// before the loop took the commit or was a map-only publish while the
// burst waits for a reload token (found by review).
func TestEchoAfterItsGroupWasRead(t *testing.T) {
	d := readDaemon(t, map[string][2]string{"shop": {echoConf, echoMap}})
	a, weng := withWriter(d)
	c := &apiCall{op: reconcile.Op{Change: reconcile.Change{Name: "shop", Conf: []byte(echoConf2), Map: []byte(echoMap)}}, answer: make(chan callResult, 1)}
	a.commit(t.Context(), weng, []*apiCall{c})
	if res := <-c.answer; res.Err != nil {
		t.Fatal(res.Err)
	}
	publishRead(t, d) // a step begun before the loop took the commit
	for _, name := range a.TakeCommitted() {
		d.change(name, true)
	}
	confPath, mapPath := d.eng.Store.Paths("shop")
	d.event(fsnotify.Event{Name: confPath, Op: fsnotify.Create})
	expectDirty(t, d, map[string]bool{"shop": true})

	// a map-only publish keeps the burst (the config change deferred)
	commitOps(t, d, weng, reconcile.Op{Change: reconcile.Change{Name: "shop", Conf: []byte(echoConf), Map: []byte(echoMap)}})
	d.markRead()
	sel, err := d.eng.Check(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	d.readBy(sel)
	for _, p := range []string{confPath, mapPath} {
		d.event(fsnotify.Event{Name: p, Op: fsnotify.Create})
	}
	expectDirty(t, d, map[string]bool{"shop": true})
}
