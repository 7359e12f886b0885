package reload

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Managed runs HAProxy as a child in master-worker mode (-W -S) and
// reloads it through its master CLI. The child's output goes to the log,
// and its recent ALERT and WARNING lines explain a failed reload.
type Managed struct {
	Haproxy string // binary
	Config  string // the live haproxy.cfg
	CLI     *MasterCLI
	PIDFile string
	Log     *slog.Logger

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	recent []logLine
}

type logLine struct {
	at   time.Time
	text string
}

// recentMax bounds the output lines kept for explaining failures.
const recentMax = 200

// startTimeout bounds how long a new HAProxy may take to come up; 50,000
// backends take about 1.5 s.
const startTimeout = time.Minute

func (m *Managed) String() string { return "managed haproxy, master socket " + m.CLI.Path }

// Start launches HAProxy and returns once its master answers and a worker
// runs. An HAProxy that a killed daemon left behind is soft-stopped first;
// it finishes its connections while the new one takes over the ports.
func (m *Managed) Start(ctx context.Context) error {
	m.stopLeftover()
	if err := os.MkdirAll(filepath.Dir(m.CLI.Path), 0o750); err != nil {
		return &EnvError{fmt.Errorf("master socket directory: %w", err)}
	}
	cmd := exec.Command(m.Haproxy, "-W", "-S", m.CLI.Path+",mode,600", "-f", m.Config, "-p", m.PIDFile)
	// A soft stop (SIGUSR1) if the daemon dies without stopping it, and a
	// process group of its own so a terminal's ^C reaches the daemon only.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGUSR1}
	cmd.Env = Env()
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return &EnvError{fmt.Errorf("start haproxy: %w", err)}
	}
	exited := make(chan struct{})
	logged := make(chan struct{})
	go func() {
		m.follow(out)
		close(logged)
	}()
	go func() {
		<-logged
		err := cmd.Wait()
		m.Log.Warn("haproxy exited", "pid", cmd.Process.Pid, "status", fmt.Sprint(err))
		close(exited)
	}()
	m.mu.Lock()
	m.cmd, m.exited = cmd, exited
	m.mu.Unlock()

	wait, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	for {
		procs, err := m.CLI.ShowProc(wait)
		if err == nil && len(procs.Workers) > 0 {
			m.Log.Info("haproxy started", "master_pid", cmd.Process.Pid, "worker_pid", procs.Workers[0].PID)
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("haproxy exited at start:\n%s", m.Since(time.Time{}))
		case <-wait.Done():
			m.kill()
			return fmt.Errorf("haproxy did not come up within %s: %v", startTimeout, err)
		case <-time.After(pollEvery):
		}
	}
}

// follow logs the child's output line by line and keeps the recent lines.
func (m *Managed) follow(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		text := sc.Text()
		level := slog.LevelInfo
		switch {
		case strings.HasPrefix(text, "[ALERT]"):
			level = slog.LevelError
		case strings.HasPrefix(text, "[WARNING]"):
			level = slog.LevelWarn
		}
		m.Log.Log(context.Background(), level, "haproxy", "line", text)
		m.mu.Lock()
		m.recent = append(m.recent, logLine{time.Now(), text})
		if len(m.recent) > recentMax {
			m.recent = m.recent[len(m.recent)-recentMax:]
		}
		m.mu.Unlock()
	}
}

// Since returns HAProxy's output lines logged at or after t.
func (m *Managed) Since(t time.Time) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b strings.Builder
	for _, l := range m.recent {
		if !l.at.Before(t) {
			b.WriteString(l.text)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// Exited is closed when the running HAProxy exits.
func (m *Managed) Exited() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.exited
}

// Reload asks the master to reload through its CLI.
func (m *Managed) Reload(ctx context.Context) error { return m.CLI.Reload(ctx) }

// Stop soft-stops HAProxy (SIGUSR1: workers finish their connections,
// bounded by hard-stop-after), and kills it if it is still there after
// grace.
func (m *Managed) Stop(grace time.Duration) {
	m.mu.Lock()
	cmd, exited := m.cmd, m.exited
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGUSR1)
	select {
	case <-exited:
		return
	case <-time.After(grace):
	}
	m.Log.Warn("haproxy still running after the grace period: terminating it", "grace", grace)
	m.kill()
}

func (m *Managed) kill() {
	m.mu.Lock()
	cmd, exited := m.cmd, m.exited
	m.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
}

// stopLeftover soft-stops an HAProxy master named by the PID file if it
// still runs this configuration (a daemon killed with -9 leaves one).
func (m *Managed) stopLeftover() {
	data, err := os.ReadFile(m.PIDFile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 1 {
		return
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmdline), "\x00"+m.CLI.Path+",") {
		return
	}
	m.Log.Warn("soft-stopping an haproxy a previous run left", "pid", pid)
	_ = syscall.Kill(pid, syscall.SIGUSR1)
	for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
		// its master socket path is about to be taken over: wait for the
		// process to leave, a few seconds at most
		time.Sleep(50 * time.Millisecond)
	}
	if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
		return
	}
	m.Log.Warn("the leftover haproxy is still finishing connections", "pid", pid)
}
