package watcher

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"haproxy-config/certs"
	"haproxy-config/certs/etcdstorage"
	"haproxy-config/internal/testkit"
	"haproxy-config/reconcile"
	"haproxy-config/settings"
)

func TestJudgeFleet(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	hb := func(node, digest string, ago time.Duration) Heartbeat {
		return Heartbeat{Node: node, Seen: now.Add(-ago), IntervalSeconds: 10, FragmentsDigest: digest, Generation: 3}
	}
	type verdict struct {
		flagged bool
		why     string // a part of the reason
	}
	tests := []struct {
		name string
		hbs  []Heartbeat
		want map[string]verdict
	}{
		{"one node", []Heartbeat{hb("a", "sha256:aaaa", time.Second)}, map[string]verdict{"a": {}}},
		{"all agree", []Heartbeat{hb("a", "sha256:aaaa", time.Second), hb("b", "sha256:aaaa", 5*time.Second)},
			map[string]verdict{"a": {}, "b": {}}},
		{"the odd one out", []Heartbeat{hb("a", "sha256:aaaa", time.Second), hb("b", "sha256:bbbb", time.Second), hb("c", "sha256:aaaa", time.Second)},
			map[string]verdict{"a": {}, "b": {true, "its fragments differ from the fleet's (bbbb, not aaaa)"}, "c": {}}},
		{"a pair that drifted: both flagged, whichever beat last", []Heartbeat{hb("a", "sha256:aaaa", 8*time.Second), hb("b", "sha256:bbbb", 2*time.Second)},
			map[string]verdict{"a": {true, "no version has a majority (this node's: aaaa)"}, "b": {true, "no version has a majority (this node's: bbbb)"}}},
		{"the same pair, the other beat last", []Heartbeat{hb("a", "sha256:aaaa", 2*time.Second), hb("b", "sha256:bbbb", 8*time.Second)},
			map[string]verdict{"a": {true, "no version has a majority"}, "b": {true, "no version has a majority"}}},
		{"two against two and one", []Heartbeat{hb("a", "sha256:aaaa", time.Second), hb("b", "sha256:aaaa", time.Second),
			hb("c", "sha256:bbbb", time.Second), hb("d", "sha256:bbbb", time.Second), hb("e", "sha256:cccc", time.Second)},
			map[string]verdict{"a": {true, "no version has a majority"}, "b": {true, "no version has a majority"}, "c": {true, "no version has a majority"}, "d": {true, "no version has a majority"}, "e": {true, "(this node's: cccc)"}}},
		{"stale: 30s is 3 intervals, not more", []Heartbeat{hb("a", "sha256:aaaa", 30*time.Second), hb("b", "sha256:aaaa", 31*time.Second)},
			map[string]verdict{"a": {}, "b": {true, "stale: not seen for 31s (heartbeat every 10s)"}}},
		{"stale nodes do not vote", []Heartbeat{hb("a", "sha256:aaaa", time.Second), hb("b", "sha256:bbbb", time.Hour), hb("c", "sha256:bbbb", time.Hour)},
			map[string]verdict{"a": {}, "b": {true, "stale"}, "c": {true, "its fragments differ"}}},
		{"nothing live differs from the fleet", []Heartbeat{hb("a", "sha256:aaaa", time.Second), hb("b", "sha256:aaaa", time.Second), hb("c", "", time.Second)},
			map[string]verdict{"a": {}, "b": {}, "c": {true, "(-, not aaaa)"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nodes := JudgeFleet(tt.hbs, now)
			if !slices.IsSortedFunc(nodes, func(a, b FleetNode) int { return strings.Compare(a.Name, b.Name) }) || len(nodes) != len(tt.want) {
				t.Fatalf("nodes %+v, want %d by name", nodes, len(tt.want))
			}
			for _, n := range nodes {
				w := tt.want[n.Name]
				if n.Flagged != w.flagged || !strings.Contains(n.Why, w.why) || (!w.flagged && n.Why != "") {
					t.Errorf("%s: flagged %v why %q, want %v %q", n.Name, n.Flagged, n.Why, w.flagged, w.why)
				}
				if n.Stale != strings.Contains(n.Why, "stale") || n.Generation != 3 {
					t.Errorf("%s: stale %v, generation %d", n.Name, n.Stale, n.Generation)
				}
			}
		})
	}
}

func TestFragmentsDigest(t *testing.T) {
	a := FragmentsDigest(map[string]string{"shop": "sha256:1", "blog": "sha256:2"})
	if b := FragmentsDigest(map[string]string{"blog": "sha256:2", "shop": "sha256:1"}); a != b {
		t.Errorf("the digest depends on the map's order: %s, %s", a, b)
	}
	for _, other := range []map[string]string{{"shop": "sha256:1"}, {"shop": "sha256:1", "blog": "sha256:3"}, {"shop": "sha256:1", "blg": "sha256:2"}, nil} {
		if FragmentsDigest(other) == a {
			t.Errorf("%v has the digest of another generation", other)
		}
	}
	if !strings.HasPrefix(a, "sha256:") || len(a) != len("sha256:")+64 {
		t.Errorf("digest %q", a)
	}
}

// TestReachabilityIsLoggedOnChange drives a fleet node's view of etcd
// through a failure and back: one log line each way, the status saying
// since when.
func TestReachabilityIsLoggedOnChange(t *testing.T) {
	var logs bytes.Buffer
	f := newFleetNode(nil, settings.Fleet{Node: "lb1", Prefix: "/p", Endpoints: []string{"http://127.0.0.1:1"}, Heartbeat: 10 * time.Second},
		slog.New(slog.NewTextHandler(&logs, nil)))
	changes := 0
	f.changed = func() { changes++ }
	if st := f.snapshot(); st.Reachable || st.UnreachableSince != nil {
		t.Fatalf("before the first check: %+v", st)
	}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	f.reached(nil, t0)
	down := context.DeadlineExceeded
	f.reached(down, t0.Add(10*time.Second))
	f.reached(down, t0.Add(20*time.Second))
	st := f.snapshot()
	if st.Reachable || st.UnreachableSince == nil || !st.UnreachableSince.Equal(t0.Add(10*time.Second)) || st.LastError != down.Error() {
		t.Fatalf("after two failed checks: %+v, want unreachable since the first began", st)
	}
	f.reached(nil, t0.Add(30*time.Second))
	st = f.snapshot()
	if !st.Reachable || st.UnreachableSince != nil || st.LastError == "" {
		t.Errorf("back: %+v", st)
	}
	if n := strings.Count(logs.String(), "etcd unreachable since"); n != 1 {
		t.Errorf("%d lines say etcd is unreachable, want 1:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "etcd reachable again"); n != 1 {
		t.Errorf("%d lines say etcd is back, want 1:\n%s", n, logs.String())
	}
	if changes != 3 { // first check, down, back
		t.Errorf("%d status refreshes, want 3", changes)
	}
}

// TestHeartbeatStoredInEtcd runs a fleet node's heartbeat against a real
// etcd member and reads it back as "haproxy-config fleet" does.
func TestHeartbeatStoredInEtcd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	s := etcdFleet(t, "/haproxy-config/test")
	base := filepath.Join(t.TempDir(), "base.cfg")
	if err := os.WriteFile(base, []byte("global\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	st := openFleet(t, s)
	f := newFleetNode(st, s.Fleet, slog.New(slog.DiscardHandler))
	f.version, f.health, f.served = "1.2.3", func() string { return "OK" }, func() int { return 4 }
	f.setLive(&reconcile.Generation{Number: 9, Fragments: map[string]string{"shop": "sha256:1"}}, base, false)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	var hbs []Heartbeat
	deadline := time.Now().Add(10 * time.Second)
	for len(hbs) == 0 && time.Now().Before(deadline) {
		read, bad, err := ReadHeartbeats(context.Background(), st)
		if err != nil || len(bad) > 0 {
			t.Fatalf("ReadHeartbeats: %v, bad %v", err, bad)
		}
		hbs = read
		if len(hbs) == 0 {
			time.Sleep(20 * time.Millisecond) // polling etcd for the first heartbeat
		}
	}
	if len(hbs) != 1 {
		t.Fatalf("heartbeats %+v, want lb-1's", hbs)
	}
	h := hbs[0]
	data, _ := json.Marshal(h)
	t.Logf("heartbeat: %s", data)
	want := Heartbeat{Node: "lb-1", PID: os.Getpid(), Started: f.started, Seen: h.Seen, IntervalSeconds: 1, Generation: 9,
		FragmentsDigest: FragmentsDigest(map[string]string{"shop": "sha256:1"}), BaseDigest: baseDigest(base, false), Certificates: 4, Health: "OK", Version: "1.2.3"}
	if !h.Started.Equal(want.Started) || h.Started.Location() != time.UTC {
		t.Errorf("started %v, want %v", h.Started, want.Started)
	}
	h.Started = want.Started
	if h != want {
		t.Errorf("heartbeat\n got %+v\nwant %+v", h, want)
	}
	if nodes := JudgeFleet(hbs, time.Now()); len(nodes) != 1 || nodes[0].Flagged {
		t.Errorf("judged %+v", nodes)
	}
	if st := f.snapshot(); !st.Reachable || st.LastHeartbeat.IsZero() {
		t.Errorf("fleet status %+v, want reachable with a heartbeat", st)
	}
	// plain Store: the heartbeat outlives the node, to tell when it was last seen
	if _, err := st.Load(context.Background(), certs.Keys.Node("lb-1")); err != nil {
		t.Errorf("load the heartbeat: %v", err)
	}
}

func TestOpenFleetNamesTheSetting(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "fleet.key")
	if err := os.WriteFile(keyFile, bytes.Repeat([]byte{7}, etcdstorage.KeySize), 0o600); err != nil {
		t.Fatal(err)
	}
	loose := filepath.Join(dir, "loose.key")
	if err := os.WriteFile(loose, bytes.Repeat([]byte{7}, etcdstorage.KeySize), 0o644); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fleet := func(edit func(*settings.Fleet)) *settings.Settings {
		f := settings.Fleet{Endpoints: []string{"https://127.0.0.1:2379"}, Prefix: "/p", SealKey: keyFile, Node: "lb1", Heartbeat: time.Second}
		edit(&f)
		return &settings.Settings{Fleet: f}
	}
	tests := []struct {
		name    string
		edit    func(*settings.Fleet)
		setting string
	}{
		{"no key file", func(f *settings.Fleet) { f.SealKey = filepath.Join(dir, "missing.key") }, "FLEET_KEY_FILE"},
		{"a key file others may read", func(f *settings.Fleet) { f.SealKey = loose }, "FLEET_KEY_FILE"},
		{"no CA file", func(f *settings.Fleet) { f.CAFile = filepath.Join(dir, "missing.pem") }, "ETCD_CA_FILE"},
		{"a CA file without a certificate", func(f *settings.Fleet) { f.CAFile = notPEM }, "ETCD_CA_FILE"},
		{"no client certificate", func(f *settings.Fleet) {
			f.CertFile, f.KeyFile = filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
		}, "ETCD_CERT_FILE"},
		{"TLS files with http endpoints", func(f *settings.Fleet) { f.Endpoints, f.CAFile = []string{"http://127.0.0.1:2379"}, notPEM }, "ETCD_CA_FILE"},
		{"http and https mixed", func(f *settings.Fleet) { f.Endpoints = []string{"http://127.0.0.1:2379", "https://127.0.0.1:2380"} }, "ETCD_ENDPOINTS"},
	}
	for _, tt := range tests {
		st, err := OpenFleet(fleet(tt.edit))
		if st != nil {
			_ = st.Close()
		}
		if KindOf(err) != KindUsage || !strings.Contains(err.Error(), "HAPROXY_CONFIG_"+tt.setting) {
			t.Errorf("%s: err %v, want a usage error naming %s", tt.name, err, tt.setting)
		}
	}
	st, err := OpenFleet(fleet(func(*settings.Fleet) {}))
	if err != nil {
		t.Fatalf("good settings: %v", err)
	}
	_ = st.Close()
	if st, err := OpenFleet(&settings.Settings{}); st != nil || err != nil {
		t.Errorf("fleet mode off: %v, %v; want nil, nil", st, err)
	}
}

// TestTwinNodeNameLogged: two daemons with one NODE_NAME overwrite each
// other's heartbeat; each says so in its log, once, from its second
// heartbeat on (its first may find its own previous run's).
func TestTwinNodeNameLogged(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	s := etcdFleet(t, "/haproxy-config/test")
	var logs [2]bytes.Buffer
	var nodes [2]*fleetNode
	for i := range nodes {
		nodes[i] = newFleetNode(openFleet(t, s), s.Fleet, slog.New(slog.NewTextHandler(&logs[i], nil)))
	}
	nodes[1].pid++ // another process
	ctx := context.Background()
	for range 3 {
		for _, f := range nodes {
			if err := f.store(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range nodes {
		if n := strings.Count(logs[i].String(), "another node stores its heartbeat as this one"); n != 1 {
			t.Errorf("node %d logged the twin %d times, want once:\n%s", i, n, logs[i].String())
		}
	}
	var alone bytes.Buffer
	other := *s
	other.Fleet.Prefix = "/haproxy-config/alone"
	f := newFleetNode(openFleet(t, &other), s.Fleet, slog.New(slog.NewTextHandler(&alone, nil)))
	for range 3 {
		if err := f.store(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Contains(alone.String(), "another node") {
		t.Errorf("a node alone under its name logged a twin:\n%s", alone.String())
	}
}

// etcdFleet starts a one-member etcd and returns fleet settings for node
// lb-1 under prefix, with a seal key file of its own.
func etcdFleet(t *testing.T, prefix string) *settings.Settings {
	t.Helper()
	c := testkit.StartEtcdCluster(t, 1)
	keyFile := filepath.Join(t.TempDir(), "fleet.key")
	if err := os.WriteFile(keyFile, bytes.Repeat([]byte{7}, etcdstorage.KeySize), 0o600); err != nil {
		t.Fatal(err)
	}
	return &settings.Settings{Fleet: settings.Fleet{Endpoints: c.Endpoints(), Prefix: prefix, SealKey: keyFile,
		Node: "lb-1", LockTTL: 15 * time.Second, Heartbeat: time.Second}}
}

// openFleet opens the storage s names, closed at cleanup.
func openFleet(t *testing.T, s *settings.Settings) *etcdstorage.Storage {
	t.Helper()
	st, err := OpenFleet(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}
