package watcher

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestDrainLastsUntilUndrain(t *testing.T) {
	dir := t.TempDir()
	first, err := Drain(dir, "ops", "disk swap")
	if err != nil {
		t.Fatal(err)
	}
	again, err := Drain(dir, "ops", "disk swap, then the kernel")
	if err != nil {
		t.Fatal(err)
	}
	if !again.Since.Equal(first.Since) || again.Reason != "disk swap, then the kernel" {
		t.Errorf("drained twice: %+v, want the first time kept and the new reason", again)
	}
	d, err := ReadDrained(dir)
	if err != nil || d == nil || d.By != "ops" {
		t.Fatalf("read back: %+v, %v", d, err)
	}
	for _, want := range []bool{true, false} {
		was, err := Undrain(dir)
		if err != nil || was != want {
			t.Errorf("undrain: %v, %v, want %v", was, err, want)
		}
	}
	if d, err := ReadDrained(dir); d != nil || err != nil {
		t.Errorf("after undrain: %+v, %v", d, err)
	}
}

// TestRunningNotAReusedPID: a report whose PID now belongs to a process
// that started after the report's daemon (after a reboot) is no daemon.
func TestRunningNotAReusedPID(t *testing.T) {
	started, ok := processStart(os.Getpid())
	if !ok {
		t.Skip("SKIPPING: /proc gives no process start time here")
	}
	if d := time.Since(started); d < 0 || d > time.Hour {
		t.Fatalf("this test process started %s ago by /proc", d)
	}
	st := &Status{PID: os.Getpid(), State: "ready", Started: time.Now()}
	if !st.Running() {
		t.Error("the daemon that wrote the report (this process) is not seen running")
	}
	st.Started = started.Add(-time.Hour)
	if st.Running() {
		t.Error("a process that started an hour after the report's daemon is taken for it")
	}
	st.Started, st.State = time.Now(), "stopped"
	if st.Running() {
		t.Error("a stopped report is taken for a running daemon")
	}
}

func TestHealthMetrics(t *testing.T) {
	dir := t.TempDir()
	m := &metrics{stateDir: dir}
	m.set(&Status{Behind: &Behind{Reason: "base.cfg:3: unknown keyword"}})
	if _, err := Drain(dir, "ops", ""); err != nil {
		t.Fatal(err)
	}
	routes := []AnnouncedAddr{{Address: "192.0.2.10", Announced: true}, {Address: "192.0.2.11"}}
	if err := WriteAnnounced(dir, &Announced{PID: os.Getpid(), Routes: routes}); err != nil {
		t.Fatal(err)
	}
	want := `# HELP haproxy_config_behind 1 while what the store holds cannot go live (HAProxy serves an older generation).
# TYPE haproxy_config_behind gauge
haproxy_config_behind 1
# HELP haproxy_config_drained 1 while this node is drained for maintenance.
# TYPE haproxy_config_drained gauge
haproxy_config_drained 1
# HELP haproxy_config_route_announced 1 for each service address whose route announce has announced, 0 while withdrawn.
# TYPE haproxy_config_route_announced gauge
haproxy_config_route_announced{address="192.0.2.10"} 1
haproxy_config_route_announced{address="192.0.2.11"} 0
`
	names := []string{"haproxy_config_behind", "haproxy_config_drained", "haproxy_config_route_announced"}
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	// an announce that is gone announces nothing, whatever its last report says
	if err := WriteAnnounced(dir, &Announced{PID: 1 << 30, Routes: routes}); err != nil {
		t.Fatal(err)
	}
	want = strings.Replace(want, `{address="192.0.2.10"} 1`, `{address="192.0.2.10"} 0`, 1)
	if err := testutil.CollectAndCompare(m, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
}
