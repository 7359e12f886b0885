package watcher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"haproxy-config/assemble"
	"haproxy-config/reconcile"
	"haproxy-config/reload"
	"haproxy-config/settings"
)

// fakeHAProxy stands for the engine, HAProxy (its reloads, workers, status
// endpoint and runtime map) and the rate limit at once, and records what
// the rollout asked of it, in order.
type fakeHAProxy struct {
	calls []string

	gens       map[int]*reconcile.Generation // what Restore and Republish find
	next       *reconcile.Published          // what Publish returns
	nextMap    *reconcile.Published          // what PublishMapOnly returns
	hold       *reconcile.Hold
	publishErr error
	restoreErr error

	live    string          // the marker of the config on the live files
	serving string          // the marker HAProxy's status endpoint answers
	broken  map[string]bool // a worker on this config does not serve it
	master  bool            // a master CLI is known

	reloads   []error // the result of each reload in turn; nil (or none left) works
	starts    []error // the same for each start of the managed HAProxy
	output    string  // HAProxy's output
	updateErr error   // of the runtime map's delta update
	syncErr   error   // of the runtime map's whole comparison
	changed   bool    // the runtime map had to change
}

func (f *fakeHAProxy) call(format string, args ...any) {
	c := fmt.Sprintf(format, args...)
	if n := len(f.calls); n > 0 && f.calls[n-1] == c && c == "Served" {
		return // polled while verifying: once is enough for the order
	}
	f.calls = append(f.calls, c)
}

func (f *fakeHAProxy) CurrentHold() (*reconcile.Hold, error) {
	f.call("CurrentHold")
	return f.hold, nil
}

func (f *fakeHAProxy) Publish(context.Context, map[string]reconcile.Exclusion) (*reconcile.Published, error) {
	f.call("Publish")
	if f.publishErr != nil {
		return nil, f.publishErr
	}
	f.live = f.next.Generation.Marker
	return f.next, nil
}

func (f *fakeHAProxy) PublishMapOnly(context.Context, map[string]reconcile.Exclusion) (*reconcile.Published, error) {
	f.call("PublishMapOnly")
	if f.nextMap == nil {
		return nil, reconcile.ErrNeedsReload
	}
	f.live = f.nextMap.Generation.Marker
	return f.nextMap, nil
}

func (f *fakeHAProxy) Restore(_ context.Context, n int) (*reconcile.Generation, error) {
	f.call("Restore %d", n)
	if f.restoreErr != nil {
		return nil, f.restoreErr
	}
	f.live = f.gens[n].Marker
	return f.gens[n], nil
}

func (f *fakeHAProxy) Republish(_ context.Context, n int) (bool, error) {
	f.call("Republish %d", n)
	f.live = f.gens[n].Marker
	return false, nil
}

func (f *fakeHAProxy) MarkServing(n int) error {
	f.call("MarkServing %d", n)
	return nil
}

// load makes HAProxy load the live files, or fail with the next result.
func (f *fakeHAProxy) load(results *[]error) error {
	var err error
	if len(*results) > 0 {
		err, *results = (*results)[0], (*results)[1:]
	}
	switch {
	case err != nil:
		return err // the old worker, if any, keeps serving
	case f.broken[f.live]:
		f.serving = "old or none"
	default:
		f.serving = f.live
	}
	return nil
}

func (f *fakeHAProxy) Reload(context.Context) error {
	f.call("Reload")
	return f.load(&f.reloads)
}

func (f *fakeHAProxy) Start(context.Context) error {
	f.call("Start")
	if err := f.load(&f.starts); err != nil {
		f.serving = ""
		return err
	}
	return nil
}

func (f *fakeHAProxy) Since(time.Time) string {
	f.call("Since")
	return f.output
}

func (f *fakeHAProxy) ShowProc(context.Context) (*reload.Procs, error) {
	f.call("ShowProc")
	if !f.master {
		return nil, nil
	}
	return &reload.Procs{}, nil
}

func (f *fakeHAProxy) WaitReloaded(context.Context, *reload.Procs) (*reload.Procs, error) {
	f.call("WaitReloaded")
	return &reload.Procs{Workers: []reload.Proc{{}}}, nil
}

func (f *fakeHAProxy) Served(context.Context) string {
	f.call("Served")
	return f.serving
}

func (f *fakeHAProxy) Update(context.Context) (bool, int, error) {
	f.call("Update")
	return f.changed && f.updateErr == nil, 2, f.updateErr
}

func (f *fakeHAProxy) Sync(context.Context) (bool, int, error) {
	f.call("Sync")
	return false, 2, f.syncErr
}

func (f *fakeHAProxy) Forget() { f.call("Forget") }

func (f *fakeHAProxy) Wait(context.Context) error {
	f.call("Wait")
	return nil
}

var (
	// gen1 is the last good generation, serving; gen2 changes b and adds
	// c; gen3 changes only c's version of gen2; gen4 is gen1 with a new
	// host map only (same marker)
	gen1 = &reconcile.Generation{Number: 1, Marker: "m1", Fragments: map[string]string{"a": "a1", "b": "b1"}}
	gen2 = &reconcile.Generation{Number: 2, Marker: "m2", Fragments: map[string]string{"a": "a1", "b": "b2", "c": "c1"}}
	gen3 = &reconcile.Generation{Number: 3, Marker: "m3", Fragments: map[string]string{"a": "a1", "b": "b1", "c": "c1"}}
	gen4 = &reconcile.Generation{Number: 4, Marker: "m1", Fragments: map[string]string{"a": "a2", "b": "b1"}}
)

// selection is a selection of gen2's fragments whose output names
// fragment c's line "bogus" at line n of the live config.
func selection(t *testing.T, cfg string) (sel *reconcile.Selection, alert string) {
	t.Helper()
	frags := []*assemble.Fragment{
		{Name: "a", ConfFile: "a.cfg", Conf: []byte("backend be_a\n    server s1 127.0.0.1:1\n")},
		{Name: "b", ConfFile: "b.cfg", Conf: []byte("backend be_b\n    server s1 127.0.0.1:2\n")},
		{Name: "c", ConfFile: "c.cfg", Conf: []byte("backend be_c\n    bogus\n")},
	}
	out := assemble.Build(&assemble.Base{File: "base.cfg", Text: []byte("global\n")}, frags)
	n := slices.IndexFunc(strings.Split(string(out.Config), "\n"), func(l string) bool { return strings.TrimSpace(l) == "bogus" }) + 1
	if n == 0 {
		t.Fatalf("no bogus line in\n%s", out.Config)
	}
	sel = &reconcile.Selection{Verdict: &reconcile.Verdict{Output: out}, Parsed: map[string]*assemble.Fragment{}}
	for _, f := range frags {
		sel.Parsed[f.Name] = f
	}
	return sel, fmt.Sprintf("[ALERT]    (4711) : config : parsing [%s:%d] : unknown keyword 'bogus' in 'backend' section\n", cfg, n)
}

// newTestRollout is a rollout on f, with gen1 serving as the last good
// generation.
func newTestRollout(f *fakeHAProxy, managed bool) *rollout {
	r := &rollout{pub: f, reload: f, served: f, maps: f, turn: f, runtime: &sync.Mutex{},
		now: time.Now, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		s: &settings.Settings{VerifyTimeout: 20 * time.Millisecond, StatusAddr: "127.0.0.1:1",
			OutputConfig: "/live/haproxy.cfg", OutputMap: "/live/hosts.map", FragmentsDir: "/"},
		exclude: map[string]reconcile.Exclusion{}, lastGood: gen1}
	if managed {
		r.haproxy = f
	}
	f.gens = map[int]*reconcile.Generation{1: gen1, 2: gen2, 3: gen3, 4: gen4}
	f.live, f.serving = gen1.Marker, gen1.Marker
	return r
}

func excluded(r *rollout) []string { return slices.Sorted(maps.Keys(r.exclude)) }

// problems is what each exclusion says.
func problems(r *rollout) map[string]string {
	m := map[string]string{}
	for name, ex := range r.exclude {
		var texts []string
		for _, p := range ex.Problems {
			texts = append(texts, p.Msg)
		}
		m[name] = strings.Join(texts, "; ")
	}
	return m
}

func TestRollout(t *testing.T) {
	errSocket := errors.New("dial unix /run/haproxy/admin.sock: connect: no such file or directory")
	refused := fmt.Errorf("reload: %w", reload.ErrReloadFailed)
	tests := []struct {
		name    string
		managed bool
		setup   func(t *testing.T, f *fakeHAProxy, r *rollout)
		run     func(ctx context.Context, r *rollout) (*outcome, error)
		calls   []string
		check   func(t *testing.T, out *outcome, r *rollout)
	}{{
		name: "reload refused with a last good generation: the old worker serves, one suspect quarantined",
		setup: func(t *testing.T, f *fakeHAProxy, r *rollout) {
			f.next = &reconcile.Published{Generation: gen3, Changed: true, Selection: &reconcile.Selection{}}
			f.reloads = []error{refused}
		},
		calls: []string{"CurrentHold", "Publish", "Served", "Forget", "ShowProc", "Reload", "Restore 1", "Served", "Sync"},
		check: func(t *testing.T, out *outcome, r *rollout) {
			wantReload(t, out, 3, false, 1)
			wantCounts(t, out, Counts{Reconciles: 1, ReloadsFailed: 1, Rollbacks: 1})
			wantExcluded(t, r, "c")
			if !strings.Contains(problems(r)["c"], "HAProxy failed to load the configuration with this fragment: reload: ") {
				t.Errorf("c's exclusion says %q", problems(r)["c"])
			}
			if out.rescanAt.IsZero() || out.live != nil || out.behind != "" || !out.retryAt.IsZero() {
				t.Errorf("want a rescan only, got rescan %v, live %v, behind %q, retry %v", out.rescanAt, out.live, out.behind, out.retryAt)
			}
			if r.lastGood != gen1 {
				t.Errorf("last good is generation %d, want 1", r.lastGood.Number)
			}
		},
	}, {
		name: "reload refused without a last good generation: nothing to roll back to, nobody blamed",
		setup: func(t *testing.T, f *fakeHAProxy, r *rollout) {
			r.lastGood = nil
			f.next = &reconcile.Published{Generation: gen3, Changed: true, Selection: &reconcile.Selection{}}
			f.reloads = []error{refused}
		},
		calls: []string{"CurrentHold", "Publish", "Served", "Forget", "ShowProc", "Reload"},
		check: func(t *testing.T, out *outcome, r *rollout) {
			wantReload(t, out, 3, false, 0)
			wantCounts(t, out, Counts{Reconciles: 1, ReloadsFailed: 1})
			wantExcluded(t, r)
			if out.behind != refused.Error() || !out.rescanAt.IsZero() || !out.retryAt.IsZero() {
				t.Errorf("want behind %q only, got behind %q, rescan %v, retry %v", refused, out.behind, out.rescanAt, out.retryAt)
			}
		},
	}, {
		name: "new worker not serving: verify times out, the last good generation is reloaded in its turn",
		setup: func(t *testing.T, f *fakeHAProxy, r *rollout) {
			f.master = true
			f.broken = map[string]bool{"m3": true}
			f.next = &reconcile.Published{Generation: gen3, Changed: true, Selection: &reconcile.Selection{}}
		},
		calls: []string{"CurrentHold", "Publish", "Served", "Forget", "ShowProc", "Reload", "WaitReloaded", "Served",
			"Restore 1", "Served", "Wait", "Forget", "ShowProc", "Reload", "WaitReloaded", "Served", "Sync"},
		check: func(t *testing.T, out *outcome, r *rollout) {
			wantReload(t, out, 3, false, 1)
			if !strings.Contains(out.reload.Error, errNotServing.Error()) {
				t.Errorf("reload error %q, want %q", out.reload.Error, errNotServing)
			}
			wantCounts(t, out, Counts{Reconciles: 1, ReloadsFailed: 1, Rollbacks: 1})
			wantExcluded(t, r, "c")
			if !out.procsKnown || out.procs == nil || out.live != nil || out.rescanAt.IsZero() {
				t.Errorf("want the processes known, a rescan and nothing live; got procs %v, live %v, rescan %v", out.procs, out.live, out.rescanAt)
			}
		},
	}, {
		name: "runtime socket gone: the map-only change is reloaded instead, counted as a fallback",
		setup: func(t *testing.T, f *fakeHAProxy, r *rollout) {
			f.next = &reconcile.Published{Generation: gen4, Changed: true, Selection: &reconcile.Selection{}}
			f.updateErr = errSocket
		},
		calls: []string{"CurrentHold", "Publish", "Served", "Update", "Forget", "ShowProc", "Reload", "Served", "Sync", "MarkServing 4"},
		check: func(t *testing.T, out *outcome, r *rollout) {
			wantReload(t, out, 4, true, 0)
			wantCounts(t, out, Counts{Reconciles: 1, Reloads: 1, RuntimeFallbacks: 1})
			wantExcluded(t, r)
			if out.live != gen4 || r.lastGood != gen4 || !out.reloaded || out.runtime != nil {
				t.Errorf("want generation 4 live by a reload; got live %v, last good %v, reloaded %v, runtime %v", out.live, r.lastGood, out.reloaded, out.runtime)
			}
		},
	}, {
		name: "runtime socket there: the map-only change goes live without a reload",
		setup: func(t *testing.T, f *fakeHAProxy, r *rollout) {
			f.next = &reconcile.Published{Generation: gen4, Changed: true, Selection: &reconcile.Selection{}}
			f.changed = true
		},
		calls: []string{"CurrentHold", "Publish", "Served", "Update", "MarkServing 4"},
		check: func(t *testing.T, out *outcome, r *rollout) {
			wantCounts(t, out, Counts{Reconciles: 1, RuntimeUpdates: 1})
			if out.live != gen4 || out.reloaded || out.reload != nil || out.runtime == nil || out.runtime.Generation != 4 || !out.caughtUp {
				t.Errorf("want generation 4 live at runtime; got live %v, reloaded %v, reload %v, runtime %v, caught up %v", out.live, out.reloaded, out.reload, out.runtime, out.caughtUp)
			}
		},
	}, {
		name: "rollback failing: the last good generation cannot be restored",
		setup: func(t *testing.T, f *fakeHAProxy, r *rollout) {
			f.next = &reconcile.Published{Generation: gen3, Changed: true, Selection: &reconcile.Selection{}}
			f.reloads = []error{refused}
			f.restoreErr = errors.New("generation 1: disk full")
		},
		calls: []string{"CurrentHold", "Publish", "Served", "Forget", "ShowProc", "Reload", "Restore 1"},
		check: func(t *testing.T, out *outcome, r *rollout) {
			wantReload(t, out, 3, false, 0)
			wantCounts(t, out, Counts{Reconciles: 1, ReloadsFailed: 1})
			wantExcluded(t, r, "c")
		},
	}, {
		name: "rollback reload failing: restored, but HAProxy refuses the last good generation too",
		setup: func(t *testing.T, f *fakeHAProxy, r *rollout) {
			f.broken = map[string]bool{"m3": true}
			f.next = &reconcile.Published{Generation: gen3, Changed: true, Selection: &reconcile.Selection{}}
			f.reloads = []error{nil, refused}
		},
		calls: []string{"CurrentHold", "Publish", "Served", "Forget", "ShowProc", "Reload", "Served",
			"Restore 1", "Served", "Wait", "Forget", "ShowProc", "Reload"},
		check: func(t *testing.T, out *outcome, r *rollout) {
			wantReload(t, out, 3, false, 1)
			wantCounts(t, out, Counts{Reconciles: 1, ReloadsFailed: 1, Rollbacks: 1})
			wantExcluded(t, r, "c")
			if out.live != nil {
				t.Errorf("generation %d reported live", out.live.Number)
			}
		},
	}, {
		name:    "quarantine: HAProxy's output names one of several suspects, which alone is blamed",
		managed: true,
		setup: func(t *testing.T, f *fakeHAProxy, r *rollout) {
			sel, alert := selection(t, r.s.OutputConfig)
			f.next = &reconcile.Published{Generation: gen2, Changed: true, Selection: sel}
			f.reloads = []error{refused}
			f.output = alert
		},
		calls: []string{"CurrentHold", "Publish", "Served", "Forget", "ShowProc", "Reload", "Since", "Restore 1", "Served", "Sync"},
		check: func(t *testing.T, out *outcome, r *rollout) {
			wantExcluded(t, r, "c")
			if got := problems(r)["c"]; !strings.Contains(got, "unknown keyword 'bogus'") {
				t.Errorf("c's exclusion says %q, want HAProxy's message", got)
			}
			if ex := r.exclude["c"]; len(ex.Problems) != 1 || ex.Problems[0].File != "c.cfg" || ex.Problems[0].Line != 2 || ex.Checksum != "c1" {
				t.Errorf("c's exclusion is %+v, want c.cfg:2 at checksum c1", ex)
			}
			if r.probing() {
				t.Errorf("probing %v, want nobody", r.probe)
			}
		},
	}, {
		name:    "quarantine: HAProxy's output names none of several suspects: each is retried alone",
		managed: true,
		setup: func(t *testing.T, f *fakeHAProxy, r *rollout) {
			sel, _ := selection(t, r.s.OutputConfig)
			f.next = &reconcile.Published{Generation: gen2, Changed: true, Selection: sel}
			f.reloads = []error{refused}
			f.output = "[ALERT]    (4711) : something went wrong\n"
		},
		calls: []string{"CurrentHold", "Publish", "Served", "Forget", "ShowProc", "Reload", "Since", "Restore 1", "Served", "Sync"},
		check: func(t *testing.T, out *outcome, r *rollout) {
			wantExcluded(t, r, "b", "c")
			for _, name := range []string{"b", "c"} {
				if got := problems(r)[name]; !strings.Contains(got, "retrying it alone") {
					t.Errorf("%s's exclusion says %q", name, got)
				}
			}
			if r.exclude["b"].Problems[0].File != "b.cfg" {
				t.Errorf("b's exclusion is at %q, want b.cfg", r.exclude["b"].Problems[0].File)
			}
			if !slices.Equal(r.probe, []string{"b", "c"}) {
				t.Fatalf("probing %v, want [b c]", r.probe)
			}
			r.nextProbe()
			wantExcluded(t, r, "c")
			r.nextProbe()
			wantExcluded(t, r)
			if r.probing() {
				t.Errorf("still probing %v", r.probe)
			}
		},
	}, {
		name:    "quarantine: HAProxy's output names nobody and one fragment changed: it is blamed with the alerts",
		managed: true,
		setup: func(t *testing.T, f *fakeHAProxy, r *rollout) {
			sel, _ := selection(t, r.s.OutputConfig)
			f.next = &reconcile.Published{Generation: gen3, Changed: true, Selection: sel}
			f.reloads = []error{refused}
			f.output = "[ALERT]    (4711) : something went wrong\n"
		},
		calls: []string{"CurrentHold", "Publish", "Served", "Forget", "ShowProc", "Reload", "Since", "Restore 1", "Served", "Sync"},
		check: func(t *testing.T, out *outcome, r *rollout) {
			wantExcluded(t, r, "c")
			if got := problems(r)["c"]; !strings.HasSuffix(got, ": something went wrong") {
				t.Errorf("c's exclusion says %q, want HAProxy's alert", got)
			}
			if r.probing() {
				t.Errorf("probing %v, want nobody", r.probe)
			}
		},
	}, {
		name: "a socket failure is no tenant's doing: retried, nobody held back, rolled back",
		setup: func(t *testing.T, f *fakeHAProxy, r *rollout) {
			f.next = &reconcile.Published{Generation: gen3, Changed: true, Selection: &reconcile.Selection{}}
			f.reloads = []error{errSocket}
		},
		calls: []string{"CurrentHold", "Publish", "Served", "Forget", "ShowProc", "Reload", "Restore 1", "Served", "Sync"},
		check: func(t *testing.T, out *outcome, r *rollout) {
			wantReload(t, out, 3, false, 1)
			wantExcluded(t, r)
			if out.retryAt.IsZero() || out.behind != errSocket.Error() || !out.rescanAt.IsZero() {
				t.Errorf("want a retry, behind; got retry %v, behind %q, rescan %v", out.retryAt, out.behind, out.rescanAt)
			}
		},
	}, {
		name: "publish failing: retried, behind, nothing reloaded",
		setup: func(t *testing.T, f *fakeHAProxy, r *rollout) {
			f.publishErr = errors.New("fragment directory: no such file or directory")
		},
		calls: []string{"CurrentHold", "Publish"},
		check: func(t *testing.T, out *outcome, r *rollout) {
			wantCounts(t, out, Counts{Reconciles: 1})
			if out.err == nil || out.retryAt.IsZero() || out.behind == "" || out.reloaded || out.published != nil {
				t.Errorf("want an error, a retry and behind; got err %v, retry %v, behind %q, reloaded %v", out.err, out.retryAt, out.behind, out.reloaded)
			}
		},
	}, {
		name: "hold during a burst: the held generation is restored, not the store published",
		setup: func(t *testing.T, f *fakeHAProxy, r *rollout) {
			f.hold = &reconcile.Hold{Generation: 1}
			f.nextMap = &reconcile.Published{Generation: gen4}
			f.live = "m2" // the burst's change went to the live files
		},
		run: func(ctx context.Context, r *rollout) (*outcome, error) {
			// the burst waits for a reload token: nothing goes out meanwhile
			if out, done := r.mapOnly(ctx, time.Now()); done || out.published != nil {
				return out, fmt.Errorf("map-only part published during a hold: done %v", done)
			}
			return r.reconcile(ctx, time.Now(), true), nil
		},
		calls: []string{"CurrentHold", "CurrentHold", "Restore 1", "Served", "Sync"},
		check: func(t *testing.T, out *outcome, r *rollout) {
			if !out.readHold || out.held == nil || out.held.Generation != 1 || out.published != nil || out.reloaded || !out.caughtUp {
				t.Errorf("want the hold honoured; got held %v, published %v, reloaded %v, caught up %v", out.held, out.published, out.reloaded, out.caughtUp)
			}
			wantCounts(t, out, Counts{Reconciles: 1})
		},
	}, {
		name: "a map-only change while the burst waits for a reload token",
		setup: func(t *testing.T, f *fakeHAProxy, r *rollout) {
			r.s.FragmentsDir = t.TempDir()
			f.nextMap = &reconcile.Published{Generation: gen4, Selection: &reconcile.Selection{}}
			f.changed = true
		},
		run: func(ctx context.Context, r *rollout) (*outcome, error) {
			out, done := r.mapOnly(ctx, time.Now())
			if !done {
				return out, errors.New("map-only change not done")
			}
			return out, nil
		},
		calls: []string{"CurrentHold", "Served", "PublishMapOnly", "Update", "MarkServing 4"},
		check: func(t *testing.T, out *outcome, r *rollout) {
			wantCounts(t, out, Counts{Reconciles: 1, RuntimeUpdates: 1})
			if out.live != gen4 || out.published == nil || out.reconciledAt.IsZero() {
				t.Errorf("want generation 4 live and published; got live %v, published %v", out.live, out.published)
			}
		},
	}, {
		name:    "start: the managed HAProxy does not start on the new generation: the last good one starts",
		managed: true,
		setup: func(t *testing.T, f *fakeHAProxy, r *rollout) {
			f.next = &reconcile.Published{Generation: gen3, Changed: true, Selection: &reconcile.Selection{}}
			f.starts = []error{errors.New("haproxy exited: [ALERT] cannot bind")}
		},
		run: func(ctx context.Context, r *rollout) (*outcome, error) {
			out, publishErr, err := r.start(ctx, time.Now(), false)
			return out, errors.Join(publishErr, err)
		},
		calls: []string{"CurrentHold", "Publish", "Start", "Since", "Restore 1", "Start", "MarkServing 1"},
		check: func(t *testing.T, out *outcome, r *rollout) {
			wantCounts(t, out, Counts{Reconciles: 1, Rollbacks: 1})
			wantExcluded(t, r, "c")
			if out.live != gen1 || out.rescanAt.IsZero() {
				t.Errorf("want generation 1 live and a rescan; got live %v, rescan %v", out.live, out.rescanAt)
			}
		},
	}, {
		name:    "start: the managed HAProxy starts on the new generation",
		managed: true,
		setup: func(t *testing.T, f *fakeHAProxy, r *rollout) {
			f.next = &reconcile.Published{Generation: gen3, Changed: true, Selection: &reconcile.Selection{}}
		},
		run: func(ctx context.Context, r *rollout) (*outcome, error) {
			out, publishErr, err := r.start(ctx, time.Now(), false)
			return out, errors.Join(publishErr, err)
		},
		calls: []string{"CurrentHold", "Publish", "Start", "Served", "Sync", "MarkServing 3"},
		check: func(t *testing.T, out *outcome, r *rollout) {
			wantCounts(t, out, Counts{Reconciles: 1})
			wantExcluded(t, r)
			if out.live != gen3 {
				t.Errorf("want generation 3 live, got %v", out.live)
			}
		},
	}, {
		name: "restart: the last good generation is written again, started and verified",
		setup: func(t *testing.T, f *fakeHAProxy, r *rollout) {
			r.haproxy = f
			f.live, f.serving = "", ""
		},
		run: func(ctx context.Context, r *rollout) (*outcome, error) {
			return r.restart(ctx)
		},
		calls: []string{"Republish 1", "Start", "Served", "Sync", "MarkServing 1"},
		check: func(t *testing.T, out *outcome, r *rollout) {
			if out.live != gen1 || !out.clearErr {
				t.Errorf("want generation 1 live and the error cleared; got live %v, clear %v", out.live, out.clearErr)
			}
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeHAProxy{}
			r := newTestRollout(f, tt.managed)
			tt.setup(t, f, r)
			run := tt.run
			if run == nil {
				run = func(ctx context.Context, r *rollout) (*outcome, error) {
					return r.reconcile(ctx, time.Now(), true), nil
				}
			}
			out, err := run(context.Background(), r)
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			if !slices.Equal(f.calls, tt.calls) {
				t.Errorf("calls\n got %q\nwant %q", f.calls, tt.calls)
			}
			tt.check(t, out, r)
		})
	}
}

// TestStartFails covers starts that leave nothing serving: the error
// stands.
func TestStartFails(t *testing.T) {
	errStart := errors.New("haproxy exited: [ALERT] cannot bind")
	t.Run("no last good generation to fall back to", func(t *testing.T) {
		f := &fakeHAProxy{}
		r := newTestRollout(f, true)
		r.lastGood = nil
		f.next = &reconcile.Published{Generation: gen3, Changed: true, Selection: &reconcile.Selection{}}
		f.starts = []error{errStart}
		out, publishErr, err := r.start(context.Background(), time.Now(), false)
		if !errors.Is(err, errStart) || publishErr != nil || out.live != nil {
			t.Fatalf("start = %v, publish %v, live %v; want %v", err, publishErr, out.live, errStart)
		}
		if want := []string{"CurrentHold", "Publish", "Start"}; !slices.Equal(f.calls, want) {
			t.Errorf("calls %q, want %q", f.calls, want)
		}
	})
	t.Run("the last good generation cannot be restored", func(t *testing.T) {
		f := &fakeHAProxy{}
		r := newTestRollout(f, true)
		f.next = &reconcile.Published{Generation: gen3, Changed: true, Selection: &reconcile.Selection{}}
		f.starts = []error{errStart}
		f.restoreErr = errors.New("generation 1: disk full")
		out, _, err := r.start(context.Background(), time.Now(), false)
		if !errors.Is(err, errStart) || !strings.Contains(err.Error(), "disk full") || out.live != nil || out.counts.Rollbacks != 0 {
			t.Fatalf("start = %v, live %v, rollbacks %d; want both errors, nothing live", err, out.live, out.counts.Rollbacks)
		}
		wantExcluded(t, r, "c")
	})
	t.Run("the publish fails: the caller serves the live files", func(t *testing.T) {
		f := &fakeHAProxy{}
		r := newTestRollout(f, true)
		f.publishErr = errors.New("base config: line 3: bad")
		_, publishErr, err := r.start(context.Background(), time.Now(), false)
		if publishErr != f.publishErr || err != nil {
			t.Fatalf("start = %v, publish %v; want the publish error", err, publishErr)
		}
		if want := []string{"CurrentHold", "Publish"}; !slices.Equal(f.calls, want) {
			t.Errorf("calls %q, want %q", f.calls, want)
		}
	})
	t.Run("something else answers on the status address", func(t *testing.T) {
		f := &fakeHAProxy{}
		r := newTestRollout(f, true)
		f.next = &reconcile.Published{Generation: gen3, Changed: true, Selection: &reconcile.Selection{}}
		f.broken = map[string]bool{"m3": true}
		_, _, err := r.start(context.Background(), time.Now(), false)
		var env *reload.EnvError
		if !errors.As(err, &env) || !errors.Is(err, errNotServing) {
			t.Fatalf("start = %v, want an environment error wrapping %v", err, errNotServing)
		}
	})
}

// TestFoldOutcome checks that the daemon reports what the rollout did.
func TestFoldOutcome(t *testing.T) {
	d := burstDaemon(t)
	d.quarSince = map[string]time.Time{}
	d.ro = &rollout{exclude: map[string]reconcile.Exclusion{"c": {Checksum: "c1"}}}
	var logs bytes.Buffer
	d.Log = slog.New(slog.NewTextHandler(&logs, nil))
	at := time.Now().Add(-time.Second)
	sel := &reconcile.Selection{Rejected: map[string]assemble.Problems{"c": {{Msg: "held back"}}}, Parsed: map[string]*assemble.Fragment{}}
	d.fold(&outcome{
		published: &reconcile.Published{Generation: gen3, Selection: sel, Excluded: []string{"c"}},
		probing:   []string{"c"},
		counts:    Counts{Reconciles: 1, ReloadsFailed: 1},
		reload:    &ReloadResult{Generation: 3, Error: "refused"},
		behind:    "refused", behindAt: at,
		retryAt: at,
	})
	st := d.status
	if st.Counts != (Counts{Reconciles: 1, ReloadsFailed: 1}) || st.LastReload == nil || st.LastReload.Generation != 3 {
		t.Errorf("counts %+v, last reload %+v", st.Counts, st.LastReload)
	}
	if len(st.Quarantined) != 1 || st.Quarantined[0].Name != "c" || st.Quarantined[0].Checksum != "c1" || !st.Quarantined[0].Retrying {
		t.Errorf("quarantined %+v, want c at c1, retrying", st.Quarantined)
	}
	if st.Behind == nil || st.Behind.Reason != "refused" || !st.Behind.Since.Equal(at.UTC()) {
		t.Errorf("behind %+v, want refused since %v", st.Behind, at)
	}
	if v, ok := d.dirty[retryKey]; !ok || v || !d.lastRaw.Equal(at) {
		t.Errorf("burst %v, last raw %v: want the retry, not vouched, at %v", d.dirty, d.lastRaw, at)
	}
	d.fold(&outcome{counts: Counts{Reloads: 1}, caughtUp: true, clearErr: true})
	if d.status.Behind != nil || d.status.Counts.Reloads != 1 || d.status.Counts.ReloadsFailed != 1 {
		t.Errorf("after catching up: behind %+v, counts %+v", d.status.Behind, d.status.Counts)
	}
}

func wantReload(t *testing.T, out *outcome, gen int, ok bool, rolledBackTo int) {
	t.Helper()
	if out.reload == nil {
		t.Fatalf("no reload reported, want generation %d", gen)
	}
	if out.reload.Generation != gen || out.reload.OK != ok || out.reload.RolledBackTo != rolledBackTo || (out.reload.Error == "") != ok {
		t.Errorf("reload %+v, want generation %d ok %v rolled back to %d", out.reload, gen, ok, rolledBackTo)
	}
}

func wantCounts(t *testing.T, out *outcome, want Counts) {
	t.Helper()
	if out.counts != want {
		t.Errorf("counts %+v, want %+v", out.counts, want)
	}
}

func wantExcluded(t *testing.T, r *rollout, names ...string) {
	t.Helper()
	if got := excluded(r); !slices.Equal(got, names) {
		t.Errorf("excluded %q, want %q", got, names)
	}
}

// TestFoldMapOnlyKeepsQuarantine: a map-only publish keeps a fragment
// whose stored version is quarantined at its served version (Deferred)
// without judging that stored version: its quarantine stands, with the
// time it began, instead of vanishing until the reload's publish brings
// it back (status, list and the metrics flapping).
func TestFoldMapOnlyKeepsQuarantine(t *testing.T) {
	d := burstDaemon(t)
	d.quarSince = map[string]time.Time{}
	d.ro = &rollout{exclude: map[string]reconcile.Exclusion{}}
	full := &reconcile.Selection{
		Rejected:   map[string]assemble.Problems{"shop": {{Msg: "haproxy -c: unknown keyword"}}},
		Parsed:     map[string]*assemble.Fragment{"shop": {Name: "shop", Checksum: "v1"}},
		FellBack:   map[string]string{"shop": "v1"},
		Superseded: map[string]string{"shop": "v2"},
	}
	d.fold(&outcome{published: &reconcile.Published{Generation: gen3, Selection: full}})
	if len(d.status.Quarantined) != 1 {
		t.Fatalf("quarantined %+v after the full publish, want shop", d.status.Quarantined)
	}
	since := d.status.Quarantined[0].Since
	mapOnly := &reconcile.Selection{Rejected: map[string]assemble.Problems{},
		Parsed: map[string]*assemble.Fragment{"shop": {Name: "shop", Checksum: "v1"}}}
	d.fold(&outcome{published: &reconcile.Published{Generation: gen3, Selection: mapOnly, Deferred: []string{"shop"}}})
	if q := d.status.Quarantine("shop"); q == nil || q.Checksum != "v2" || q.LastGood != "v1" || !q.Since.Equal(since) {
		t.Errorf("after a map-only publish deferring shop: quarantined %+v, want shop at v2 since %v", d.status.Quarantined, since)
	}
	d.fold(&outcome{published: &reconcile.Published{Generation: gen3, Selection: mapOnly}})
	if len(d.status.Quarantined) != 0 {
		t.Errorf("a publish that judged shop and took it: quarantined %+v, want none", d.status.Quarantined)
	}
}
