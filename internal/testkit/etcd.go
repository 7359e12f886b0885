package testkit

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// EtcdBinary finds etcd: PATH, then Debian's /usr/bin/etcd.
func EtcdBinary() (string, error) { return findBinary("etcd", "/usr/bin/etcd") }

// RequireEtcd returns etcd's path, or skips a test that cannot run
// without it.
func RequireEtcd(tb testing.TB) string {
	tb.Helper()
	return require(tb, EtcdBinary, "etcd", "etcd-server")
}

// EtcdCluster is an etcd cluster on loopback ports, each member a process
// in a temp directory of its own, stopped by the test by its PID.
type EtcdCluster struct {
	tb      testing.TB
	bin     string
	Members []*EtcdMember
}

// EtcdMember is one member of an EtcdCluster.
type EtcdMember struct {
	Name      string
	ClientURL string
	PeerURL   string
	Dir       string // its data directory and log
	args      []string
	exited    chan struct{} // nil while stopped
	cmd       *exec.Cmd
	starts    int
}

// StartEtcdCluster starts an etcd cluster of n members and waits until
// every member reports healthy. It skips the test without etcd.
func StartEtcdCluster(tb testing.TB, n int) *EtcdCluster {
	tb.Helper()
	c := &EtcdCluster{tb: tb, bin: RequireEtcd(tb)}
	var initial []string
	token := fmt.Sprintf("test-%d", FreePort(tb)) // one per cluster
	for i := range n {
		m := &EtcdMember{
			Name:      fmt.Sprintf("m%d", i),
			ClientURL: "http://" + FreeAddr(tb),
			PeerURL:   "http://" + FreeAddr(tb),
			Dir:       tb.TempDir(),
		}
		c.Members = append(c.Members, m)
		initial = append(initial, m.Name+"="+m.PeerURL)
	}
	for _, m := range c.Members {
		m.args = []string{
			"--name", m.Name,
			"--data-dir", filepath.Join(m.Dir, "data"),
			"--listen-client-urls", m.ClientURL,
			"--advertise-client-urls", m.ClientURL,
			"--listen-peer-urls", m.PeerURL,
			"--initial-advertise-peer-urls", m.PeerURL,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-token", token,
			"--initial-cluster-state", "new",
			"--logger", "zap",
			"--log-level", "warn",
		}
		c.start(m)
	}
	for i := range c.Members {
		c.WaitHealthy(i)
	}
	return c
}

// Endpoints are the members' client URLs.
func (c *EtcdCluster) Endpoints() []string {
	var urls []string
	for _, m := range c.Members {
		urls = append(urls, m.ClientURL)
	}
	return urls
}

func (c *EtcdCluster) start(m *EtcdMember) {
	c.tb.Helper()
	m.starts++
	out, err := os.Create(filepath.Join(m.Dir, fmt.Sprintf("etcd-%d.log", m.starts)))
	if err != nil {
		c.tb.Fatal(err)
	}
	cmd := exec.Command(c.bin, m.args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		c.tb.Fatalf("start etcd member %s: %v", m.Name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		out.Close()
		close(exited)
	}()
	m.cmd, m.exited = cmd, exited
	c.tb.Cleanup(func() { stopProc(cmd, exited) })
}

// Stop stops member i and waits until it has exited.
func (c *EtcdCluster) Stop(i int) {
	c.tb.Helper()
	m := c.Members[i]
	if m.exited == nil {
		c.tb.Fatalf("etcd member %s is stopped already", m.Name)
	}
	stopProc(m.cmd, m.exited)
	m.cmd, m.exited = nil, nil
}

// Start starts member i again, on its data directory, without waiting
// (a member alone has no quorum to be healthy with): see WaitHealthy.
func (c *EtcdCluster) Start(i int) {
	c.tb.Helper()
	m := c.Members[i]
	if m.exited != nil {
		c.tb.Fatalf("etcd member %s is running already", m.Name)
	}
	c.start(m)
}

// WaitHealthy waits up to 30 s until member i reports healthy: it runs
// and its cluster has a leader and a quorum.
func (c *EtcdCluster) WaitHealthy(i int) {
	c.tb.Helper()
	m := c.Members[i]
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		select {
		case <-m.exited:
			c.tb.Fatalf("etcd member %s exited: see %s", m.Name, m.Dir)
		default:
		}
		resp, err := client.Get(m.ClientURL + "/health")
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			last = fmt.Sprintf("%s %s", resp.Status, body)
			if resp.StatusCode == http.StatusOK && strings.Contains(last, `"health":"true"`) {
				return
			}
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.tb.Fatalf("etcd member %s not healthy after 30 s: %s (logs in %s)", m.Name, last, m.Dir)
}
