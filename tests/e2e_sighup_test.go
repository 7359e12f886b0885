package tests

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSIGHUPSettings: SIGHUP takes new settings the daemon can change while
// it runs (RESCAN here: the rescan timer follows it) and keeps those that
// need a restart (OUTPUT), saying so in the log.
func TestSIGHUPSettings(t *testing.T) {
	in := newInstall(t)
	defaults := filepath.Join(in.root, "etc/default/haproxy-config")
	writeFile(t, defaults, "HAPROXY_CONFIG_RESCAN=1h\n")
	d := in.startDaemon(t)
	before := in.status(t).Counts.Reconciles
	writeFile(t, defaults, "HAPROXY_CONFIG_RESCAN=200ms\nHAPROXY_CONFIG_OUTPUT="+filepath.Join(in.root, "elsewhere/haproxy.cfg")+"\n")
	if err := syscall.Kill(d.pid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	// the SIGHUP itself rescans once; every further reconcile is the new timer
	deadline := time.Now().Add(20 * time.Second)
	for in.status(t).Counts.Reconciles < before+5 {
		if time.Now().After(deadline) {
			t.Fatalf("reconciles %d -> %d in 20s after SIGHUP set RESCAN=200ms: the rescan timer kept the old hour\n%s",
				before, in.status(t).Counts.Reconciles, d.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	log := d.output()
	if !strings.Contains(log, "changes only when the daemon restarts") || !strings.Contains(log, "HAPROXY_CONFIG_OUTPUT") {
		t.Errorf("the log does not say OUTPUT needs a restart:\n%s", log)
	}
	if _, err := os.Stat(filepath.Join(in.root, "elsewhere/haproxy.cfg")); err == nil {
		t.Error("the daemon wrote the live config to the OUTPUT it should have kept until a restart")
	}
	if st := in.status(t); st.Live == nil || st.LastError != "" {
		t.Errorf("after SIGHUP: live %+v, last error %q", st.Live, st.LastError)
	}
}
