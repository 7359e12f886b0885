package watcher

import (
	"os"
	"testing"
	"time"
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
