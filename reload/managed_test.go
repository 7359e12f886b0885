package reload

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"haproxy-config/internal/testkit"
)

// writeConfig writes a master-worker config whose frontend binds the ports
// and answers body.
func writeConfig(t *testing.T, path, body string, ports ...int) {
	t.Helper()
	var binds strings.Builder
	for _, p := range ports {
		fmt.Fprintf(&binds, "    bind 127.0.0.1:%d\n", p)
	}
	cfg := "global\n" +
		"    master-worker\n" +
		"\n" +
		"defaults\n" +
		"    mode http\n" +
		"    timeout connect 5s\n" +
		"    timeout client 5s\n" +
		"    timeout server 5s\n" +
		"\n" +
		"frontend fe\n" +
		binds.String() +
		"    http-request return status 200 content-type text/plain string \"" + body + "\"\n"
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatalf("write config: %v", err)
	}
}

// newManaged describes an HAProxy whose socket, PID file and config live in
// dir.
func newManaged(t *testing.T, dir, config string) *Managed {
	t.Helper()
	return newManagedLog(t, dir, config, io.Discard)
}

// newManagedLog is newManaged logging to w.
func newManagedLog(t *testing.T, dir, config string, w io.Writer) *Managed {
	t.Helper()
	sock := filepath.Join(dir, "master.sock")
	// HAProxy binds through "<path>.<pid>.tmp"; sun_path holds 107 bytes
	if len(sock)+16 > 107 {
		t.Fatalf("socket path %s is too long for a unix socket", sock)
	}
	return &Managed{
		Haproxy: testkit.RequireHaproxy(t),
		Config:  config,
		CLI:     &MasterCLI{Path: sock},
		PIDFile: filepath.Join(dir, "haproxy.pid"),
		Log:     slog.New(slog.NewTextHandler(w, nil)),
	}
}

// startManaged starts m and stops it when the test ends.
func startManaged(t *testing.T, m *Managed) {
	t.Helper()
	t.Cleanup(func() { stopManaged(t, m) })
	if err := m.Start(testContext(t, 30*time.Second)); err != nil {
		t.Fatalf("Start: %v", err)
	}
}

// stopManaged stops m, then kills whatever HAProxy of this test the PID file
// still names.
func stopManaged(t *testing.T, m *Managed) {
	t.Helper()
	m.Stop(5 * time.Second)
	data, err := os.ReadFile(m.PIDFile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), m.CLI.Path) {
		return
	}
	t.Errorf("haproxy %d still runs after Stop: killing it", pid)
	testkit.KillGroup(pid)
}

var httpClient = &http.Client{
	Timeout:   2 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

// get returns the body served on port.
func get(port int) (string, error) {
	resp, err := httpClient.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return string(body), nil
}

// waitServes polls port until it serves want, for a few seconds at most.
func waitServes(t *testing.T, port int, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := get(port)
		if err == nil && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("port %d serves %q (err %v), want %q", port, got, err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitExited waits for m's HAProxy to exit.
func waitExited(t *testing.T, m *Managed, within time.Duration) {
	t.Helper()
	select {
	case <-m.Exited():
	case <-time.After(within):
		t.Fatalf("haproxy did not exit within %s", within)
	}
}

// managedServing starts an HAProxy answering "one" on a free port.
func managedServing(t *testing.T) (m *Managed, cfg string, port int) {
	t.Helper()
	return managedServingLog(t, io.Discard)
}

// managedServingLog is managedServing logging to w.
func managedServingLog(t *testing.T, w io.Writer) (m *Managed, cfg string, port int) {
	t.Helper()
	dir := t.TempDir()
	cfg = filepath.Join(dir, "haproxy.cfg")
	port = testkit.FreePort(t)
	writeConfig(t, cfg, "one", port)
	m = newManagedLog(t, dir, cfg, w)
	startManaged(t, m)
	if got, err := get(port); err != nil || got != "one" {
		t.Fatalf("after Start, GET = %q, %v; want \"one\"", got, err)
	}
	return m, cfg, port
}

func TestManagedReload(t *testing.T) {
	m, cfg, port := managedServing(t)
	ctx := testContext(t, 30*time.Second)

	writeConfig(t, cfg, "two", port)
	before, err := m.CLI.ShowProc(ctx)
	if err != nil {
		t.Fatalf("ShowProc: %v", err)
	}
	if err := m.Reload(ctx); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	now, err := m.CLI.WaitReloaded(ctx, before)
	if err != nil {
		t.Fatalf("WaitReloaded: %v\nhaproxy said:\n%s", err, m.Since(time.Time{}))
	}
	if now.Master.PID != before.Master.PID || now.Master.Reloads != before.Master.Reloads+1 {
		t.Errorf("master %+v after the reload, want PID %d with %d reloads", now.Master, before.Master.PID, before.Master.Reloads+1)
	}
	waitServes(t, port, "two")

	// a reload HAProxy refuses: the new bind's port is taken
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer held.Close()
	writeConfig(t, cfg, "three", port, held.Addr().(*net.TCPAddr).Port)
	before, err = m.CLI.ShowProc(ctx)
	if err != nil {
		t.Fatalf("ShowProc: %v", err)
	}
	t0 := time.Now()
	if err := m.Reload(ctx); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	now, err = m.CLI.WaitReloaded(ctx, before)
	if !errors.Is(err, ErrReloadFailed) {
		t.Fatalf("WaitReloaded of a config binding a taken port: err = %v, want ErrReloadFailed\nhaproxy said:\n%s", err, m.Since(t0))
	}
	if now == nil || now.Failed <= before.Failed {
		t.Errorf("WaitReloaded = %+v, want the failed counter above %d", now, before.Failed)
	}
	waitServes(t, port, "two")
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(m.Since(t0), "cannot bind socket") {
		if time.Now().After(deadline) {
			t.Fatalf("haproxy's output since the reload does not explain it:\n%s", m.Since(t0))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestManagedSinceFiltersByTime(t *testing.T) {
	m, _, _ := managedServing(t)
	all := m.Since(time.Time{})
	if !strings.Contains(all, "Loading success") {
		t.Errorf("haproxy's start output lacks \"Loading success\":\n%s", all)
	}
	if later := m.Since(time.Now().Add(time.Hour)); later != "" {
		t.Errorf("Since a time to come = %q, want nothing", later)
	}
}

// syncBuffer is a log destination goroutines may share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestManagedStop(t *testing.T) {
	var log syncBuffer
	m, _, port := managedServingLog(t, &log)
	procs, err := m.CLI.ShowProc(testContext(t, 10*time.Second))
	if err != nil {
		t.Fatalf("ShowProc: %v", err)
	}
	pid := procs.Master.PID
	m.Stop(5 * time.Second)
	waitExited(t, m, 5*time.Second)
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("kill(%d, 0) after Stop = %v, want ESRCH", pid, err)
	}
	if got, err := get(port); err == nil {
		t.Errorf("port %d still serves %q after Stop", port, got)
	}
	// the soft stop was enough: no termination after the grace period
	if strings.Contains(log.String(), "grace period") {
		t.Errorf("Stop had to terminate haproxy:\n%s", log.String())
	}
}

func TestManagedStartFails(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "haproxy.cfg")
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer held.Close()
	writeConfig(t, cfg, "one", held.Addr().(*net.TCPAddr).Port)
	m := newManaged(t, dir, cfg)
	t.Cleanup(func() { stopManaged(t, m) })
	err = m.Start(testContext(t, 30*time.Second))
	if err == nil {
		t.Fatal("Start of a config binding a taken port returned no error")
	}
	if !strings.Contains(err.Error(), "cannot bind socket") {
		t.Errorf("Start err = %v, want haproxy's explanation in it", err)
	}
	waitExited(t, m, time.Second)
}

func TestManagedStartStopsLeftover(t *testing.T) {
	first, _, port := managedServing(t)
	firstPID := first.cmd.Process.Pid

	dir := filepath.Dir(first.Config)
	cfg := filepath.Join(dir, "second.cfg")
	writeConfig(t, cfg, "second", port)
	second := newManaged(t, dir, cfg)
	startManaged(t, second)

	waitExited(t, first, 5*time.Second)
	waitServes(t, port, "second")
	procs, err := second.CLI.ShowProc(testContext(t, 10*time.Second))
	if err != nil {
		t.Fatalf("ShowProc: %v", err)
	}
	if procs.Master.PID == firstPID || procs.Master.PID != second.cmd.Process.Pid {
		t.Errorf("the master socket answers for master %d, want the second haproxy %d (the first was %d)",
			procs.Master.PID, second.cmd.Process.Pid, firstPID)
	}
}
