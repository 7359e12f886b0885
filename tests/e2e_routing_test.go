package tests

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"haproxy-config/internal/testkit"
)

// haproxyProc is a haproxy master process started by a test.
type haproxyProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the master has exited
	log  string        // its stdout and stderr
}

// startHaproxy runs "haproxy -W -db -f cfg" as a direct child and stops it
// by PID when the test ends: SIGTERM, then SIGKILL after 5 seconds.
func startHaproxy(t *testing.T, bin, cfg string) *haproxyProc {
	t.Helper()
	h := &haproxyProc{done: make(chan struct{}), log: filepath.Join(t.TempDir(), "haproxy.log")}
	logf, err := os.Create(h.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	h.cmd = exec.Command(bin, "-W", "-db", "-f", cfg)
	h.cmd.Stdout, h.cmd.Stderr = logf, logf // files: Wait never waits for the workers' copies
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("start haproxy: %v", err)
	}
	go func() {
		_ = h.cmd.Wait()
		close(h.done)
	}()
	t.Cleanup(func() {
		pid := h.cmd.Process.Pid
		_ = syscall.Kill(pid, syscall.SIGTERM)
		select {
		case <-h.done:
			return
		case <-time.After(5 * time.Second):
		}
		t.Logf("haproxy (pid %d) ignored SIGTERM for 5s; sending SIGKILL", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
		select {
		case <-h.done:
		case <-time.After(5 * time.Second):
			t.Errorf("haproxy (pid %d) did not exit after SIGKILL", pid)
		}
	})
	return h
}

func (h *haproxyProc) exited() bool {
	select {
	case <-h.done:
		return true
	default:
		return false
	}
}

func (h *haproxyProc) output() string {
	data, _ := os.ReadFile(h.log)
	return string(data)
}

// loopbackClient sends every request to 127.0.0.1:port whatever the URL's
// host, so that names resolve to the haproxy under test. It does not
// follow redirects and opens a new connection per request, so a request
// after a reload reaches the new worker.
func loopbackClient(port string) *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", port))
			},
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // the fallback certificate is self-signed
			DisableKeepAlives: true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

type reply struct {
	status   int
	body     string
	location string
}

// get requests url; host, when set, replaces the Host header.
func get(c *http.Client, url, host string) (reply, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return reply{}, err
	}
	if host != "" {
		req.Host = host
	}
	resp, err := c.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return reply{}, err
	}
	return reply{status: resp.StatusCode, body: string(body), location: resp.Header.Get("Location")}, nil
}

const unknownHostPage = "no site is configured"

func TestRoutingThroughHaproxy(t *testing.T) {
	bin := testkit.RequireHaproxy(t)
	in := newInstall(t)
	env := in.env
	sockDir := filepath.Join(in.root, "run/haproxy-config")
	if len(filepath.Join(sockDir, "admin.sock")) > 100 { // sun_path holds 108 bytes
		short, err := os.MkdirTemp("", "hc-sock-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(short) })
		sockDir = short
		env = in.with("HAPROXY_CONFIG_RUNTIME_SOCKET=" + filepath.Join(short, "admin.sock"))
	}

	src := t.TempDir()
	mustRun(t, env, "", "apply", "one",
		writeFile(t, filepath.Join(src, "one.cfg"), backendConf("be_one", "backend-one")),
		writeFile(t, filepath.Join(src, "one.map"), "t1.example.com be_one\n"))
	mustRun(t, env, "", "apply", "wild",
		writeFile(t, filepath.Join(src, "wild.cfg"), backendConf("be_wild", "backend-wild")),
		writeFile(t, filepath.Join(src, "wild.map"), "wild.example.com be_wild\n*.wild.example.com be_wild\n"))
	out := mustRun(t, env, "", "assemble")
	if !strings.Contains(out, "generation 1 written") || !strings.Contains(out, "2 fragments live, 0 rejected") {
		t.Fatalf("assemble printed %q, want generation 1 with 2 fragments live", out)
	}
	if err := os.MkdirAll(sockDir, 0o755); err != nil {
		t.Fatal(err)
	}

	h := startHaproxy(t, bin, in.liveConfig())
	client := loopbackClient(in.httpsPort)
	probe := "https://unknown.example.net/"
	ready := false
	var lastErr error
	for deadline, i := time.Now().Add(10*time.Second), 0; time.Now().Before(deadline) && i < 200; i++ {
		if h.exited() {
			t.Fatalf("haproxy exited at startup:\n%s", h.output())
		}
		if _, lastErr = get(client, probe, ""); lastErr == nil {
			ready = true
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !ready {
		t.Fatalf("haproxy did not answer on https port %s within 10s (last error: %v):\n%s", in.httpsPort, lastErr, h.output())
	}
	if _, err := os.Stat(filepath.Join(sockDir, "admin.sock")); err != nil {
		t.Errorf("the base config's admin socket is missing: %v", err)
	}

	expect := func(url, host string, status int, body string) {
		t.Helper()
		r, err := get(client, url, host)
		if err != nil {
			t.Errorf("GET %s (Host %q): %v", url, host, err)
			return
		}
		if r.status != status || !strings.Contains(r.body, body) {
			t.Errorf("GET %s (Host %q) = %d %q, want %d with %q", url, host, r.status, r.body, status, body)
		}
	}
	expect("https://t1.example.com/", "", 200, "backend-one")
	expect("https://wild.example.com/", "", 200, "backend-wild")
	expect("https://a.wild.example.com/some/path", "", 200, "backend-wild")
	expect("https://b.a.wild.example.com/", "", 404, unknownHostPage) // a wildcard covers one label only
	expect("https://unknown.example.net/", "", 404, unknownHostPage)
	expect("https://t1.example.com/", "T1.EXAMPLE.COM:443", 200, "backend-one")
	expect("https://t1.example.com/", "t1.example.com.evil.net", 404, unknownHostPage)

	// Plain HTTP redirects to HTTPS on the configured port, path and query kept.
	plain := loopbackClient(in.httpPort)
	for _, host := range []string{"", "t1.example.com:" + in.httpPort} {
		r, err := get(plain, "http://t1.example.com/some/path?x=1", host)
		want := fmt.Sprintf("https://t1.example.com:%s/some/path?x=1", in.httpsPort)
		if err != nil || r.status != http.StatusMovedPermanently || r.location != want {
			t.Errorf("plain HTTP (Host %q) = %d Location %q (%v), want 301 to %s", host, r.status, r.location, err, want)
		}
	}
	if t.Failed() {
		t.Logf("haproxy output:\n%s", h.output())
		t.FailNow()
	}

	// Remove one tenant, publish, reload: it is gone, the other stays.
	mustRun(t, env, "", "remove", "one")
	out = mustRun(t, env, "", "assemble")
	if !strings.Contains(out, "generation 2 written") || !strings.Contains(out, "1 fragment live") {
		t.Fatalf("assemble after remove printed %q, want generation 2 with 1 fragment live", out)
	}
	if err := h.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatalf("reload haproxy: %v", err)
	}
	var last reply
	gone := false
	for deadline, i := time.Now().Add(10*time.Second), 0; time.Now().Before(deadline) && i < 200; i++ {
		if h.exited() {
			t.Fatalf("haproxy exited on reload:\n%s", h.output())
		}
		r, err := get(client, "https://t1.example.com/", "")
		if err == nil {
			last = r
			if r.status == http.StatusNotFound && strings.Contains(r.body, unknownHostPage) {
				gone = true
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !gone {
		t.Fatalf("after remove, assemble and reload t1.example.com still answers %d %q\nhaproxy output:\n%s", last.status, last.body, h.output())
	}
	expect("https://wild.example.com/", "", 200, "backend-wild")
	expect("https://a.wild.example.com/", "", 200, "backend-wild")
	if t.Failed() {
		t.Logf("haproxy output:\n%s", h.output())
	}
}
