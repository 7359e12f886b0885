package tests

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"haproxy-config/watcher"
)

// daemon is a running "haproxy-config watch" with its managed HAProxy.
type daemon struct {
	in  *install
	cmd *exec.Cmd
	log string // its stderr
}

// startDaemon starts the watcher on the installation and waits until it
// reports ready. The test's cleanup stops it (SIGTERM, then SIGKILL) and
// any HAProxy it left, by PID.
func (in *install) startDaemon(t testing.TB, extra ...string) *daemon {
	t.Helper()
	requireHaproxy(t)
	d := &daemon{in: in, log: filepath.Join(in.root, fmt.Sprintf("daemon-%d.log", time.Now().UnixNano()))}
	logFile, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	d.cmd = exec.Command(binary, "watch")
	d.cmd.Env = childEnv(in.with(extra...))
	d.cmd.Stdout, d.cmd.Stderr = logFile, logFile
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start watch: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = d.cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() { d.stop(t, exited) })
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := watcher.ReadStatus(in.stateDir())
		if err == nil && st.PID == d.cmd.Process.Pid && st.State == "ready" {
			return d
		}
		select {
		case <-exited:
			t.Fatalf("watch exited at start:\n%s", d.output())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("watch not ready after 30s:\n%s", d.output())
		}
	}
}

func (d *daemon) output() string {
	data, _ := os.ReadFile(d.log)
	return string(data)
}

// stop ends the daemon and makes sure no HAProxy of this installation
// outlives the test.
func (d *daemon) stop(t testing.TB, exited <-chan struct{}) {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		t.Errorf("watch did not stop on SIGTERM within 20s; killing it")
		_ = d.cmd.Process.Kill()
		<-exited
	}
	d.in.killHaproxy()
}

// killHaproxy kills the managed HAProxy master named by the PID file, if
// it still runs (after a kill -9 of the daemon it soft-stops by itself).
func (in *install) killHaproxy() {
	data, err := os.ReadFile(filepath.Join(in.stateDir(), "haproxy.pid"))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), in.root) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// status reads the daemon's report.
func (in *install) status(t testing.TB) *watcher.Status {
	t.Helper()
	st, err := watcher.ReadStatus(in.stateDir())
	if err != nil {
		t.Fatalf("read status: %v", err)
	}
	return st
}

// get requests path on the HTTPS frontend with Host (and SNI) host over a
// new connection, and returns the status code and body.
func (in *install) get(host, path string) (int, string, error) {
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			Proxy:             nil,
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true, ServerName: host},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				var dl net.Dialer
				return dl.DialContext(ctx, network, "127.0.0.1:"+in.httpsPort)
			},
		},
	}
	resp, err := client.Get("https://" + host + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// expectBody fails unless host answers 200 with body, now.
func (in *install) expectBody(t *testing.T, host, body string) {
	t.Helper()
	code, got, err := in.get(host, "/")
	if err != nil || code != 200 || got != body {
		t.Fatalf("GET https://%s/: %d %q (%v), want 200 %q", host, code, got, err, body)
	}
}

// expectUnknown fails unless host gets the unknown-host page, now.
func (in *install) expectUnknown(t *testing.T, host string) {
	t.Helper()
	code, got, err := in.get(host, "/")
	if err != nil || code != 404 {
		t.Fatalf("GET https://%s/: %d %q (%v), want the 404 page", host, code, got, err)
	}
}

// eventually polls cond every 20 ms until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var errNotYet = errors.New("not yet")
