package watcher

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"haproxy-config/internal/testkit"
	"haproxy-config/reload"
	"haproxy-config/settings"
	"haproxy-config/statedir"
)

// notifications reads sd_notify datagrams until the socket is closed.
func notifications(conn *net.UnixConn) <-chan string {
	ch := make(chan string, 256)
	go func() {
		defer close(ch)
		buf := make([]byte, 64<<10)
		for {
			n, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return ch
}

// notifyReader waits for datagrams, failing the test on a deadline or
// when the daemon returns first.
type notifyReader struct {
	t    *testing.T
	msgs <-chan string
	done <-chan struct{} // closed when Run returns
	err  *error          // what Run returned, once done is closed
	seen []string
}

// next returns the next datagram that is not a watchdog ping.
func (r *notifyReader) next(what string, timeout time.Duration) string {
	r.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case m, ok := <-r.msgs:
			if !ok {
				r.t.Fatalf("notify socket closed while waiting for %s; seen %q", what, r.seen)
			}
			r.seen = append(r.seen, m)
			if m != "WATCHDOG=1" {
				return m
			}
		case <-r.done:
			r.t.Fatalf("Run returned %v while waiting for %s; seen %q", *r.err, what, r.seen)
		case <-deadline:
			r.t.Fatalf("no %s within %s; seen %q", what, timeout, r.seen)
		}
	}
}

// until returns the first datagram that contains want.
func (r *notifyReader) until(want string, timeout time.Duration) string {
	r.t.Helper()
	end := time.Now().Add(timeout)
	for {
		if m := r.next(want, time.Until(end)); strings.Contains(m, want) {
			return m
		}
	}
}

// watchdogs counts watchdog pings until n arrived, failing after timeout.
func (r *notifyReader) watchdogs(n int, timeout time.Duration) {
	r.t.Helper()
	deadline := time.After(timeout)
	got := 0
	for got < n {
		select {
		case m, ok := <-r.msgs:
			if !ok {
				r.t.Fatalf("notify socket closed after %d watchdog pings", got)
			}
			r.seen = append(r.seen, m)
			if m == "WATCHDOG=1" {
				got++
			}
		case <-r.done:
			r.t.Fatalf("Run returned %v after %d watchdog pings", *r.err, got)
		case <-deadline:
			r.t.Fatalf("%d watchdog pings within %s, want at least %d (WATCHDOG_USEC=200000); seen %q", got, timeout, n, r.seen)
		}
	}
}

// statusLine checks a READY=1 datagram carries a STATUS= line.
func statusLine(t *testing.T, m string) {
	t.Helper()
	lines := strings.Split(m, "\n")
	if lines[0] != "READY=1" {
		t.Fatalf("datagram %q does not start with READY=1", m)
	}
	for _, l := range lines[1:] {
		if s, ok := strings.CutPrefix(l, "STATUS="); ok && strings.HasPrefix(s, "generation ") {
			return
		}
	}
	t.Fatalf("READY=1 datagram %q has no STATUS=generation ... line", m)
}

func pidAlive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	// a zombie no parent has reaped yet has exited all the same
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
		return false
	}
	return true
}

// isHaproxy guards the cleanup's kill against a PID reused since.
func isHaproxy(pid int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && strings.Contains(string(cmdline), "haproxy")
}

func readPIDFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(data)))
}

var monotonicRE = regexp.MustCompile(`(?m)^MONOTONIC_USEC=([0-9]+)$`)

// TestNotifyProtocol runs the daemon with its managed HAProxy on loopback
// ports and checks what it tells systemd: ready, watchdog pings, a reload
// cycle on SIGHUP, stopping; then that HAProxy is gone.
func TestNotifyProtocol(t *testing.T) {
	if _, err := (&reload.Validator{}).Binary(); err != nil {
		t.Skipf("SKIPPING: haproxy not installed, the sd_notify test needs it: %v", err)
	}
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatalf("notify socket: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

	root := t.TempDir()
	// haproxy -c runs as the unprivileged check user when the tests run as root
	for _, d := range []string{filepath.Dir(root), root} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	env := map[string]string{
		"HAPROXY_CONFIG_ROOT":           root,
		"HAPROXY_CONFIG_HTTP_ADDR":      testkit.FreeAddr(t),
		"HAPROXY_CONFIG_HTTPS_ADDR":     testkit.FreeAddr(t),
		"HAPROXY_CONFIG_STATUS_ADDR":    testkit.FreeAddr(t),
		"HAPROXY_CONFIG_CHALLENGE_ADDR": testkit.FreeAddr(t),
	}
	load := func() (*settings.Settings, error) {
		return settings.Load(settings.Source{Getenv: func(k string) (string, bool) {
			v, ok := env[k]
			return v, ok
		}})
	}
	s, err := load()
	if err != nil {
		t.Fatalf("settings: %v", err)
	}
	stateDir := filepath.Join(root, "var/lib/haproxy-config")
	if s.StateDir != stateDir {
		t.Fatalf("state directory %s, want the default layout under the root (%s)", s.StateDir, stateDir)
	}
	pidFile := statedir.Layout(stateDir).HAProxyPID()

	logBuf := &logBuffer{}
	log := slog.New(slog.NewTextHandler(logBuf, nil))
	d := &Daemon{Load: load, Notify: Notifier(log), Log: log}
	ctx, cancel := context.WithCancel(context.Background())
	hup := make(chan os.Signal, 1)
	done := make(chan struct{})
	var runErr error
	go func() {
		runErr = d.Run(ctx, hup)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("Run did not return within 30s of the cancel")
		}
		if pid, err := readPIDFile(pidFile); err == nil && pid > 1 && pidAlive(pid) && isHaproxy(pid) {
			testkit.KillGroup(pid)
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", logBuf.String())
		}
	})

	r := &notifyReader{t: t, msgs: notifications(conn), done: done, err: &runErr}

	ready := r.next("READY=1", 60*time.Second)
	statusLine(t, ready)

	// WATCHDOG_USEC=200000: a ping every 100ms
	r.watchdogs(2, time.Second)

	hup <- syscall.SIGHUP
	reloading := r.until("RELOADING=1", 10*time.Second)
	if !strings.HasPrefix(reloading, "RELOADING=1\n") || !monotonicRE.MatchString(reloading) {
		t.Fatalf("reload datagram %q, want RELOADING=1 and a MONOTONIC_USEC=<decimal> line", reloading)
	}
	readyAgain := r.next("READY=1 after RELOADING=1", 15*time.Second)
	statusLine(t, readyAgain)
	// the rescan SIGHUP asks for finds HAProxy serving the generation
	if m := r.next("STATUS= after the rescan", 15*time.Second); !strings.HasPrefix(m, "STATUS=generation ") || strings.Contains(m, "failed") {
		t.Fatalf("after the rescan: %q, want STATUS=generation ... without a failure", m)
	}

	st, err := ReadStatus(stateDir)
	if err != nil {
		t.Fatalf("status while running: %v", err)
	}
	if st.State != "ready" || st.PID != os.Getpid() || st.Live == nil {
		t.Fatalf("status while running: state %q pid %d live %+v, want ready, pid %d, a live generation", st.State, st.PID, st.Live, os.Getpid())
	}
	if st.Counts.Reconciles != 2 || st.Counts.Reloads != 0 || st.LastReload != nil {
		t.Fatalf("status while running: counts %+v, last reload %+v; want 2 reconciles (start, SIGHUP) and no reload", st.Counts, st.LastReload)
	}
	pid, err := readPIDFile(pidFile)
	if err != nil {
		t.Fatalf("haproxy pid file: %v", err)
	}
	if !pidAlive(pid) {
		t.Fatalf("the managed haproxy (pid %d) is not running while the daemon is ready", pid)
	}
	var workers []int
	if st.HAProxy != nil {
		for _, w := range st.HAProxy.Workers {
			workers = append(workers, w.PID)
		}
	}
	if len(workers) == 0 {
		t.Fatalf("status names no haproxy worker: %+v", st.HAProxy)
	}

	cancel()
	r.until("STOPPING=1", 10*time.Second)
	select {
	case <-done:
		if runErr != nil {
			t.Fatalf("Run returned %v after the cancel, want nil", runErr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of the cancel")
	}

	for _, p := range append([]int{pid}, workers...) {
		deadline := time.Now().Add(5 * time.Second)
		for pidAlive(p) {
			if time.Now().After(deadline) {
				t.Fatalf("haproxy process %d still runs 5s after the daemon returned", p)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	st, err = ReadStatus(stateDir)
	if err != nil {
		t.Fatalf("status after the stop: %v", err)
	}
	if st.State != "stopped" {
		t.Fatalf("status after the stop: state %q, want stopped", st.State)
	}
	if st.Running() {
		t.Fatal("status after the stop says the daemon runs")
	}
}

// logBuffer keeps the daemon's log: the daemon and HAProxy's output
// follower log from different goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
