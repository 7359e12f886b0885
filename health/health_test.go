package health

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"haproxy-config/reload"
	"haproxy-config/statedir"
	"haproxy-config/watcher"
)

var (
	now = time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	th  = Thresholds{CertWarning: 14 * 24 * time.Hour, CertCritical: 7 * 24 * time.Hour, Pending: 5 * time.Minute}
)

// healthy is the report of a daemon (pid 100) serving generation 7 with
// HAProxy's master 200 and worker 201.
func healthy() *watcher.Status {
	return &watcher.Status{
		PID: 100, State: "ready", Updated: now.Add(-time.Second), Strategy: "managed haproxy, master socket /run/haproxy-config/master.sock",
		Live:    &watcher.Live{Generation: 7, Fragments: 3},
		HAProxy: &reload.Procs{Master: reload.Proc{PID: 200}, Workers: []reload.Proc{{PID: 201}}},
		Counts:  watcher.Counts{Reloads: 4, ReloadsFailed: 1},
		Certs:   &watcher.CertSummary{NextExpiry: &watcher.CertWhen{Domain: "shop.example.com", At: now.Add(60 * 24 * time.Hour)}},
	}
}

func aliveExcept(dead ...int) Alive {
	pid := func(pid int) bool { return pid > 0 && !slices.Contains(dead, pid) }
	return Alive{PID: pid, Daemon: func(st *watcher.Status) bool { return st.State != "stopped" && pid(st.PID) }}
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(st *watcher.Status) *watcher.Status
		drained *watcher.Drained
		dead    []int
		code    Code
		first   string // the first problem, or the summary when OK
		serving bool
	}{
		{"healthy", nil, nil, nil, OK, "generation 7 live, 3 fragment(s)", true},
		{"no report at all", func(*watcher.Status) *watcher.Status { return nil }, nil, nil, Critical, "no haproxy-config daemon has run here", false},
		{"daemon gone", nil, nil, []int{100}, Critical, "the haproxy-config daemon is not running (pid 100", false},
		{"daemon stopped", func(st *watcher.Status) *watcher.Status { st.State = "stopped"; return st }, nil, nil, Critical, "is not running", false},
		{"haproxy master gone", nil, nil, []int{200}, Critical, "haproxy is not running (master pid 200 is gone)", false},
		{"haproxy worker gone", nil, nil, []int{201}, Critical, "haproxy has no worker (pid 201 is gone)", false},
		{"another strategy's haproxy restarted behind the daemon's back", func(st *watcher.Status) *watcher.Status {
			st.Strategy = "master-socket /run/haproxy-master.sock"
			return st
		}, nil, []int{200, 201}, OK, "generation 7 live", true},
		{"nothing verified", func(st *watcher.Status) *watcher.Status { st.Live = nil; return st }, nil, nil, Critical, "no generation is verified serving", false},
		{"reload failed, nothing serves", func(st *watcher.Status) *watcher.Status {
			st.Live, st.LastReload = nil, &watcher.ReloadResult{Error: "haproxy refused generation 8"}
			return st
		}, nil, nil, Critical, "the last reload failed and no generation is verified serving: haproxy refused generation 8", false},
		{"behind", func(st *watcher.Status) *watcher.Status {
			st.Behind = &watcher.Behind{Since: now.Add(-90 * time.Second), Reason: "base.cfg:3: unknown keyword"}
			return st
		}, nil, nil, Critical, "the stored configuration cannot go live (for 1m30s): base.cfg:3: unknown keyword", false},
		{"quarantined", func(st *watcher.Status) *watcher.Status {
			st.Quarantined = []watcher.Quarantined{{Name: "shop"}, {Name: "blog"}}
			return st
		}, nil, nil, Warning, "2 fragment(s) quarantined: shop, blog", true},
		{"pending briefly", func(st *watcher.Status) *watcher.Status {
			st.Pending = &watcher.Pending{Since: now.Add(-time.Minute), Changes: 2}
			return st
		}, nil, nil, OK, "generation 7 live", true},
		{"pending too long", func(st *watcher.Status) *watcher.Status {
			st.Pending = &watcher.Pending{Since: now.Add(-6 * time.Minute), Changes: 2}
			return st
		}, nil, nil, Warning, "2 change(s) pending for 6m0s", true},
		{"certificate within warning", func(st *watcher.Status) *watcher.Status {
			st.Certs.NextExpiry.At = now.Add(10 * 24 * time.Hour)
			return st
		}, nil, nil, Warning, "the certificate of shop.example.com expires in 10 days", true},
		{"certificate within critical", func(st *watcher.Status) *watcher.Status {
			st.Certs.NextExpiry.At = now.Add(30 * time.Hour)
			return st
		}, nil, nil, Critical, "the certificate of shop.example.com expires in 30h0m0s", true},
		{"certificate expired", func(st *watcher.Status) *watcher.Status {
			st.Certs.NextExpiry.At = now.Add(-time.Hour)
			return st
		}, nil, nil, Critical, "the certificate of shop.example.com has expired", true},
		{"etcd reachable", func(st *watcher.Status) *watcher.Status {
			st.Fleet = &watcher.FleetStatus{Node: "lb1", Reachable: true, HeartbeatSeconds: 10}
			return st
		}, nil, nil, OK, "generation 7 live", true},
		{"etcd unreachable for 3 heartbeats", func(st *watcher.Status) *watcher.Status {
			since := now.Add(-30 * time.Second)
			st.Fleet = &watcher.FleetStatus{Node: "lb1", UnreachableSince: &since, LastError: "no quorum", HeartbeatSeconds: 10}
			return st
		}, nil, nil, OK, "generation 7 live", true},
		{"etcd unreachable for longer", func(st *watcher.Status) *watcher.Status {
			since := now.Add(-31 * time.Second)
			st.Fleet = &watcher.FleetStatus{Node: "lb1", UnreachableSince: &since, LastError: "no quorum", HeartbeatSeconds: 10}
			return st
		}, nil, nil, Warning, "etcd unreachable since", true},
		{"drained", nil, &watcher.Drained{Since: now.Add(-time.Hour), Reason: "kernel update"}, nil, Warning, "drained since", false},
		{"critical before warning", func(st *watcher.Status) *watcher.Status {
			st.Quarantined = []watcher.Quarantined{{Name: "shop"}}
			return st
		}, nil, []int{200}, Critical, "haproxy is not running", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := healthy()
			if tt.edit != nil {
				st = tt.edit(st)
			}
			r := Check(st, tt.drained, now, th, aliveExcept(tt.dead...))
			if r.Code != tt.code {
				t.Errorf("code %v, want %v (%q)", r.Code, tt.code, r.Problems)
			}
			got := r.Summary
			if len(r.Problems) > 0 {
				got = r.Problems[0]
			}
			if !strings.Contains(got, tt.first) {
				t.Errorf("first problem %q, want it to contain %q", got, tt.first)
			}
			if r.Serving() != tt.serving {
				t.Errorf("Serving() = %v, want %v (reason %q)", r.Serving(), tt.serving, r.Reason())
			}
			if !tt.serving && r.Reason() == "" {
				t.Error("a node that is not serving gives no reason")
			}
		})
	}
}

// TestPluginOutput parses the output the way monitoring systems do: the
// status word, the text, then space-separated label=value;warn;crit.
func TestPluginOutput(t *testing.T) {
	st := healthy()
	st.Quarantined = []watcher.Quarantined{{Name: "shop"}}
	st.Pending = &watcher.Pending{Since: now.Add(-10 * time.Minute), Changes: 1}
	out := Check(st, nil, now, th, aliveExcept()).String()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	head, perfdata, ok := strings.Cut(lines[0], " | ")
	if !ok {
		t.Fatalf("no performance data in %q", lines[0])
	}
	if !strings.HasPrefix(head, "HAPROXY-CONFIG WARNING - 1 fragment(s) quarantined: shop (and 1 more)") {
		t.Errorf("first line %q", head)
	}
	if len(lines) != 2 || !strings.Contains(lines[1], "pending for 10m0s") {
		t.Errorf("long output %q, want the second problem on its own line", lines[1:])
	}
	perf := map[string][]string{}
	for _, item := range strings.Fields(perfdata) {
		label, value, ok := strings.Cut(item, "=")
		if !ok {
			t.Fatalf("perfdata item %q is not label=value", item)
		}
		perf[label] = strings.Split(value, ";")
	}
	want := map[string][]string{
		"reloads": {"4"}, "reloads_failed": {"1"}, "quarantined": {"1"},
		"pending_seconds": {"600", "300", ""}, "cert_min_days": {"60", "14", "7"},
	}
	for label, w := range want {
		if strings.Join(perf[label], ";") != strings.Join(w, ";") {
			t.Errorf("%s=%q, want %q", label, strings.Join(perf[label], ";"), strings.Join(w, ";"))
		}
		if _, err := strconv.ParseFloat(perf[label][0], 64); err != nil {
			t.Errorf("%s: value %q is not a number", label, perf[label][0])
		}
	}
	if len(perf) != len(want) {
		t.Errorf("perfdata %v, want exactly %v", perf, want)
	}
}

func TestRead(t *testing.T) {
	dir := t.TempDir()
	if r := Read(dir, th); r.Code != Critical || !strings.Contains(r.Problems[0], "no haproxy-config daemon") {
		t.Errorf("empty state directory: %v %q", r.Code, r.Problems)
	}
	if _, err := watcher.Drain(dir, "ops", "disk swap"); err != nil {
		t.Fatal(err)
	}
	if r := Read(dir, th); !r.Drained {
		t.Errorf("the drain record is not read: %+v", r)
	}
	if err := os.WriteFile(statedir.Layout(dir).Drained(), []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := Read(dir, th); r.Code != Unknown || !strings.Contains(r.Problems[0], statedir.Drained) {
		t.Errorf("an unreadable drain record: %v %q, want UNKNOWN naming the file", r.Code, r.Problems)
	}
}

// script feeds the announcer one node report per step.
type script struct {
	reports []Report
	i       int
}

func (s *script) next() Report {
	r := s.reports[min(s.i, len(s.reports)-1)]
	s.i++
	return r
}

var (
	up      = Report{Code: OK}
	down    = Report{Code: Critical, Down: true, Problems: []string{"haproxy is not running"}}
	drained = Report{Code: Warning, Drained: true, Problems: []string{"drained"}}
)

func newAnnouncer(reports []Report, out io.Writer, addrs ...string) (*Announcer, []*route) {
	s := &script{reports: reports}
	a := &Announcer{Rise: 3, Fall: 3, Interval: time.Second, Node: s.next, Out: out,
		Log: slog.New(slog.DiscardHandler), Now: func() time.Time { return now }}
	var routes []*route
	for _, addr := range addrs {
		ip := netip.MustParseAddr(addr)
		a.Addrs = append(a.Addrs, ip)
		routes = append(routes, &route{addr: ip})
	}
	return a, routes
}

func steps(t *testing.T, a *Announcer, routes []*route, n int) {
	t.Helper()
	for range n {
		if err := a.step(context.Background(), routes); err != nil {
			t.Fatal(err)
		}
	}
}

func TestAnnounceRiseAndFall(t *testing.T) {
	var out bytes.Buffer
	reports := []Report{up, up, up, up, down, down, up, down, down, down, drained}
	a, routes := newAnnouncer(reports, &out, "192.0.2.10", "2001:db8::1")
	routes[0].reason = "not checked yet"
	steps(t, a, routes, 2)
	if out.Len() != 0 {
		t.Fatalf("announced after 2 good checks of 3: %q", out.String())
	}
	steps(t, a, routes, 1)
	want := "announce route 192.0.2.10/32 next-hop self\nannounce route 2001:db8::1/128 next-hop self\n"
	if out.String() != want {
		t.Fatalf("after 3 good checks: %q, want %q", out.String(), want)
	}
	out.Reset()
	// up, down, down, up: never 3 bad in a row
	steps(t, a, routes, 4)
	if out.Len() != 0 {
		t.Fatalf("withdrawn without 3 bad checks in a row: %q", out.String())
	}
	steps(t, a, routes, 2)
	if out.Len() != 0 {
		t.Fatalf("withdrawn after 2 bad checks of 3: %q", out.String())
	}
	steps(t, a, routes, 1)
	if want := "withdraw route 192.0.2.10/32 next-hop self\nwithdraw route 2001:db8::1/128 next-hop self\n"; out.String() != want {
		t.Fatalf("after 3 bad checks: %q, want %q", out.String(), want)
	}
	if routes[0].reason != "haproxy is not running" {
		t.Errorf("reason %q", routes[0].reason)
	}
}

func TestAnnounceDrainWithdrawsAtOnce(t *testing.T) {
	var out bytes.Buffer
	a, routes := newAnnouncer([]Report{up, up, up, drained}, &out, "192.0.2.10")
	steps(t, a, routes, 3)
	out.Reset()
	steps(t, a, routes, 1)
	if out.String() != "withdraw route 192.0.2.10/32 next-hop self\n" || routes[0].reason != "drained" {
		t.Fatalf("one drained check: %q (reason %q), want the withdrawal", out.String(), routes[0].reason)
	}
}

func TestAnnounceProbePerAddress(t *testing.T) {
	var out bytes.Buffer
	a, routes := newAnnouncer([]Report{up}, &out, "192.0.2.10", "192.0.2.11")
	a.Probe = func(_ context.Context, addr netip.Addr) error {
		if addr.String() == "192.0.2.11" {
			return errors.New("HTTP 503")
		}
		return nil
	}
	steps(t, a, routes, 3)
	if out.String() != "announce route 192.0.2.10/32 next-hop self\n" {
		t.Fatalf("%q, want only the address whose check passes", out.String())
	}
	if routes[1].announced || routes[1].reason != "HTTP 503" {
		t.Errorf("failing address: announced %v, reason %q", routes[1].announced, routes[1].reason)
	}
}

func TestAnnounceRunWithdrawsAtStartAndExit(t *testing.T) {
	var out bytes.Buffer
	var recorded []*watcher.Announced
	a, _ := newAnnouncer([]Report{up}, &out, "192.0.2.10")
	a.Rise, a.Interval = 1, time.Millisecond
	a.Record = func(r *watcher.Announced) error { recorded = append(recorded, r); return nil }
	ctx, cancel := context.WithCancel(context.Background())
	a.Out = writerFunc(func(p []byte) (int, error) {
		out.Write(p)
		if strings.HasPrefix(string(p), "announce") {
			cancel() // stop once the route is out
		}
		return len(p), nil
	})
	if err := a.Run(ctx); err != nil {
		t.Fatal(err)
	}
	want := "withdraw route 192.0.2.10/32 next-hop self\n" + // what an earlier run may have left
		"announce route 192.0.2.10/32 next-hop self\nwithdraw route 192.0.2.10/32 next-hop self\n"
	if out.String() != want {
		t.Errorf("%q, want %q", out.String(), want)
	}
	last := recorded[len(recorded)-1]
	if last.Routes[0].Announced || last.Routes[0].Reason != "announce stopped" {
		t.Errorf("last report %+v", last.Routes[0])
	}
}

// TestAnnounceExaBGPGoneOnExit: ExaBGP ended (its pipe broken) while the
// route was announced; the report must not keep it announced.
func TestAnnounceExaBGPGoneOnExit(t *testing.T) {
	var recorded *watcher.Announced
	a, _ := newAnnouncer([]Report{up}, nil, "192.0.2.10")
	a.Rise, a.Interval = 1, time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	a.Out = writerFunc(func(p []byte) (int, error) {
		if strings.HasPrefix(string(p), "announce") {
			cancel()
			return len(p), nil
		}
		if ctx.Err() != nil {
			return 0, errors.New("broken pipe")
		}
		return len(p), nil
	})
	a.Record = func(r *watcher.Announced) error { recorded = r; return nil }
	if err := a.Run(ctx); err == nil || !strings.Contains(err.Error(), "broken pipe") {
		t.Fatalf("Run: %v, want the broken pipe", err)
	}
	if recorded == nil || recorded.Routes[0].Announced {
		t.Errorf("report %+v, want the route recorded as withdrawn", recorded)
	}
}

func TestAnnounceBrokenPipe(t *testing.T) {
	var recorded *watcher.Announced
	a, _ := newAnnouncer([]Report{up}, nil, "192.0.2.10")
	a.Rise = 1
	a.Out = writerFunc(func(p []byte) (int, error) {
		if strings.HasPrefix(string(p), "withdraw") {
			return len(p), nil // the withdrawals at start
		}
		return 0, errors.New("broken pipe")
	})
	a.Record = func(r *watcher.Announced) error { recorded = r; return nil }
	err := a.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "write to exabgp: broken pipe") {
		t.Fatalf("Run: %v", err)
	}
	if recorded == nil || recorded.Routes[0].Announced {
		t.Errorf("report %+v, want the route recorded as gone", recorded)
	}
}

func TestHTTPProbe(t *testing.T) {
	var failing atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/haproxy-monitor" {
			w.WriteHeader(http.StatusNotFound)
		} else if failing.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(srv.Close)
	ap := netip.MustParseAddrPort(srv.Listener.Addr().String())
	probe := HTTPProbe(ap.Port(), "/haproxy-monitor")
	if err := probe(context.Background(), ap.Addr()); err != nil {
		t.Errorf("healthy: %v", err)
	}
	failing.Store(true)
	if err := probe(context.Background(), ap.Addr()); err == nil || !strings.Contains(err.Error(), "HTTP 503") {
		t.Errorf("monitor fail: %v", err)
	}
	if err := HTTPProbe(ap.Port(), "/elsewhere")(context.Background(), ap.Addr()); err == nil {
		t.Error("a 404 passed")
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
