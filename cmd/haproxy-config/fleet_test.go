package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"haproxy-config/certs"
	"haproxy-config/internal/testkit"
	"haproxy-config/settings"
	"haproxy-config/watcher"
)

// runCLI runs the command line and returns its exit code and output.
func runCLI(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(append([]string{"haproxy-config"}, args...), strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestFleetCommand stores heartbeats in a real etcd member as daemons do
// and reads them with "haproxy-config fleet".
func TestFleetCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd")
	}
	c := testkit.StartEtcdCluster(t, 1)
	root := t.TempDir()
	keyFile := filepath.Join(root, "fleet.key")
	t.Setenv("HAPROXY_CONFIG_ROOT", root)
	t.Setenv("HAPROXY_CONFIG_FLEET_KEY_FILE", keyFile)
	t.Setenv("HAPROXY_CONFIG_ETCD_PREFIX", "/haproxy-config/cmd-test")

	if code, _, stderr := runCLI("fleet"); code != 2 || !strings.Contains(stderr, "fleet mode is off") {
		t.Fatalf("fleet with fleet mode off: exit %d, %q; want 2", code, stderr)
	}
	if code, out, stderr := runCLI("fleet", "key", keyFile); code != 0 || !strings.Contains(out, keyFile) {
		t.Fatalf("fleet key: exit %d, %q %q", code, out, stderr)
	}
	key, err := os.ReadFile(keyFile)
	if fi, serr := os.Stat(keyFile); err != nil || serr != nil || len(key) != 32 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %d bytes, %v, %v", len(key), err, serr)
	}
	if code, _, stderr := runCLI("fleet", "key", keyFile); code != 2 || !strings.Contains(stderr, "exists") {
		t.Fatalf("fleet key over a key: exit %d, %q; want 2", code, stderr)
	}
	if again, _ := os.ReadFile(keyFile); !bytes.Equal(again, key) {
		t.Fatal("the key file was overwritten")
	}

	t.Setenv("HAPROXY_CONFIG_ETCD_ENDPOINTS", strings.Join(c.Endpoints(), ","))
	s, err := settings.Load(settings.Source{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := watcher.OpenFleet(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	now := time.Now().UTC()
	beat := func(node, digest string, ago time.Duration) {
		t.Helper()
		hb := watcher.Heartbeat{Node: node, PID: 1, Started: now.Add(-time.Hour), Seen: now.Add(-ago), IntervalSeconds: 10, Generation: 4,
			FragmentsDigest: digest, BaseDigest: "sha256:base", Certificates: 7, Health: "OK", Version: "test"}
		data, _ := json.Marshal(hb)
		if err := st.Store(context.Background(), certs.Keys.Node(node), data); err != nil {
			t.Fatal(err)
		}
	}
	beat("lb-1", "sha256:aaaa", time.Second)
	beat("lb-2", "sha256:aaaa", 2*time.Second)

	var report struct {
		Prefix string
		Nodes  []map[string]any
	}
	code, out, stderr := runCLI("fleet", "--json")
	if code != 0 {
		t.Fatalf("fleet --json: exit %d, %s", code, stderr)
	}
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		t.Fatalf("fleet --json: %v\n%s", err, out)
	}
	if report.Prefix != "/haproxy-config/cmd-test" || len(report.Nodes) != 2 || report.Nodes[0]["name"] != "lb-1" {
		t.Fatalf("fleet --json:\n%s", out)
	}
	for _, field := range []string{"name", "seen", "stale", "generation", "fragments_digest", "base_digest", "certificates", "health", "flagged", "why"} {
		if _, ok := report.Nodes[0][field]; !ok {
			t.Errorf("fleet --json has no %q: %v", field, report.Nodes[0])
		}
	}

	// lb-3 runs other fragments; lb-2 has stopped: the two live nodes
	// disagree, and neither has a majority
	beat("lb-3", "sha256:cccc", time.Second)
	beat("lb-2", "sha256:aaaa", time.Minute)
	code, out, stderr = runCLI("fleet")
	if code != 8 || !strings.Contains(stderr, "3 node(s) flagged: lb-1, lb-2, lb-3") {
		t.Fatalf("fleet with a stale node and two that differ: exit %d, %q; want 8\n%s", code, stderr, out)
	}
	for _, want := range []string{"FLAGGED: stale", "no version has a majority (this node's: cccc)", "no version has a majority (this node's: aaaa)"} {
		if !strings.Contains(out, want) {
			t.Errorf("fleet output lacks %q:\n%s", want, out)
		}
	}

	if code, _, stderr := runCLI("fleet", "forget", "lb-3"); code != 2 || !strings.Contains(stderr, "may still run") {
		t.Errorf("forget a live node: exit %d, %q; want 2", code, stderr)
	}
	if code, out, stderr := runCLI("fleet", "forget", "lb-2"); code != 0 || !strings.Contains(out, `forgot node "lb-2"`) {
		t.Errorf("forget a stale node: exit %d, %q %q", code, out, stderr)
	}
	if code, _, stderr := runCLI("fleet", "forget", "--force", "lb-3"); code != 0 {
		t.Errorf("forget --force: exit %d, %q", code, stderr)
	}
	if code, out, _ := runCLI("fleet"); code != 0 || strings.Contains(out, "lb-2") || strings.Contains(out, "lb-3") {
		t.Errorf("after forget: exit %d\n%s", code, out)
	}

	c.Stop(0)
	if code, _, stderr := runCLI("fleet"); code != 5 || !strings.Contains(stderr, "etcd unreachable") {
		t.Errorf("fleet with etcd down: exit %d, %q; want 5", code, stderr)
	}
}
