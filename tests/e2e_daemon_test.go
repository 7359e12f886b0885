package tests

import (
	"cmp"
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

	"haproxy-config/internal/testkit"
	"haproxy-config/watcher"
)

// daemon is a running "haproxy-config watch" with its managed HAProxy.
type daemon struct {
	in      *install
	cmd     *exec.Cmd
	log     string // its stderr
	exited  chan struct{}
	haproxy int // the managed HAProxy master's PID once ready
}

// startDaemon starts the watcher on the installation and waits until it
// reports ready and its HAProxy master runs. The test's cleanup stops it
// (SIGTERM, then SIGKILL) unless it already exited, and kills any HAProxy
// of the installation it left, by PID.
func (in *install) startDaemon(t testing.TB, extra ...string) *daemon {
	t.Helper()
	testkit.RequireHaproxy(t)
	d := &daemon{in: in, exited: make(chan struct{}),
		log: filepath.Join(in.root, fmt.Sprintf("daemon-%d.log", time.Now().UnixNano()))}
	logFile, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	args := []string{binary, "watch"}
	if in.nofile > 0 {
		// prlimit sets the limit and then executes the daemon in its place
		args = append([]string{"prlimit", fmt.Sprintf("--nofile=%d:%d", in.nofile, in.nofile)}, args...)
	}
	if in.netns != "" {
		// so does ip netns exec, in the test's network namespace
		args = append([]string{"ip", "netns", "exec", in.netns}, args...)
	}
	d.cmd = exec.Command(args[0], args[1:]...)
	d.cmd.Env = childEnv(in.with(extra...))
	d.cmd.Stdout, d.cmd.Stderr = logFile, logFile
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start watch: %v", err)
	}
	go func() {
		_ = d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() { d.stop(t) })
	startWait := cmp.Or(in.startWait, 30*time.Second)
	deadline := time.Now().Add(startWait)
	for {
		st, err := watcher.ReadStatus(in.stateDir())
		if err == nil && st.PID == d.pid() && st.State == "ready" {
			break
		}
		select {
		case <-d.exited:
			t.Fatalf("watch exited at start:\n%s", d.output())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("watch not ready after %v:\n%s", startWait, d.output())
		}
	}
	d.haproxy = in.haproxyPID()
	if !runsUnder(in.root, d.haproxy) {
		t.Fatalf("the ready daemon's haproxy.pid names no running HAProxy of this installation (%d)", d.haproxy)
	}
	return d
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

func (d *daemon) output() string {
	data, _ := os.ReadFile(d.log)
	return string(data)
}

// kill9 kills the daemon with SIGKILL and reaps it.
func (d *daemon) kill9() {
	_ = d.cmd.Process.Kill()
	<-d.exited
}

// stop ends the daemon unless it has exited and makes sure no HAProxy of
// this installation it started outlives the test.
func (d *daemon) stop(t testing.TB) {
	select {
	case <-d.exited:
	default:
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(20 * time.Second):
			t.Errorf("watch (pid %d) did not stop on SIGTERM within 20s; killing it", d.pid())
			d.kill9()
		}
	}
	killUnder(d.in.root, d.haproxy)
	killUnder(d.in.root, d.in.haproxyPID())
}

// haproxyPID is the managed HAProxy master the PID file names, 0 if none.
func (in *install) haproxyPID() int {
	data, err := os.ReadFile(in.state().HAProxyPID())
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return pid
}

// cmdlineOf returns a process's command line, "" for a zombie or a
// process that is gone.
func cmdlineOf(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	return strings.ReplaceAll(string(data), "\x00", " ")
}

// runsUnder reports whether pid is a live process whose command line names
// a path under root.
func runsUnder(root string, pid int) bool {
	return pid > 1 && strings.Contains(cmdlineOf(pid), root+"/")
}

// killUnder ends pid (SIGTERM, then SIGKILL) if it still runs as a
// process of the installation under root.
func killUnder(root string, pid int) {
	if !runsUnder(root, pid) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 100 && runsUnder(root, pid); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if runsUnder(root, pid) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
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
func eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
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
