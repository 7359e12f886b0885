package reload

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// MasterCLI is HAProxy's master CLI, the socket a master-worker HAProxy
// opens with -S.
type MasterCLI struct {
	Path string
}

// Proc is one line of the master's "show proc".
type Proc struct {
	PID     int    `json:"pid"`
	Kind    string `json:"kind"`    // "master" or "worker"
	Reloads int    `json:"reloads"` // for a worker: reloads it has outlived
	Uptime  string `json:"uptime"`
	Version string `json:"version"`
}

// Procs is the master's process table.
type Procs struct {
	Master  Proc   `json:"master"`
	Failed  int    `json:"failed"`  // failed reloads (2.6 resets it when a reload succeeds)
	Workers []Proc `json:"workers"` // the current worker(s)
	Old     []Proc `json:"old_workers,omitempty"`
}

// Command sends one command and returns HAProxy's whole answer.
func (m *MasterCLI) Command(ctx context.Context, cmd string) (string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", m.Path)
	if err != nil {
		return "", fmt.Errorf("master socket: %w", err)
	}
	defer conn.Close()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(10 * time.Second)
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return "", err
	}
	if _, err := io.WriteString(conn, cmd+"\n"); err != nil {
		return "", fmt.Errorf("master socket: send %q: %w", cmd, err)
	}
	// the CLI answers once the sending side is closed, then closes
	if err := conn.(*net.UnixConn).CloseWrite(); err != nil {
		return "", fmt.Errorf("master socket: %w", err)
	}
	out, err := io.ReadAll(conn)
	if err != nil {
		return "", fmt.Errorf("master socket: read answer to %q: %w", cmd, err)
	}
	return string(out), nil
}

// ShowProc reads the process table.
func (m *MasterCLI) ShowProc(ctx context.Context) (*Procs, error) {
	out, err := m.Command(ctx, "show proc")
	if err != nil {
		return nil, err
	}
	return ParseProcs(out)
}

// ParseProcs reads the answer to "show proc" (HAProxy 2.6 layout: a master
// line with "N [failed: F]", then "# workers", "# old workers" and
// "# programs" blocks).
func ParseProcs(out string) (*Procs, error) {
	p := &Procs{}
	block, sawMaster := "", false
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "":
			continue
		case strings.HasPrefix(line, "#<PID>"):
			continue
		case strings.HasPrefix(line, "#"):
			block = strings.TrimSpace(strings.TrimPrefix(line, "#"))
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 {
			return nil, fmt.Errorf("show proc: unexpected line %q", line)
		}
		pid, err1 := strconv.Atoi(f[0])
		reloads, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("show proc: unexpected line %q", line)
		}
		proc := Proc{PID: pid, Kind: f[1], Reloads: reloads}
		rest := f[3:]
		if len(rest) >= 2 && rest[0] == "[failed:" {
			failed, err := strconv.Atoi(strings.TrimSuffix(rest[1], "]"))
			if err != nil {
				return nil, fmt.Errorf("show proc: unexpected line %q", line)
			}
			p.Failed = failed
			rest = rest[2:]
		}
		if len(rest) > 0 {
			proc.Uptime = rest[0]
		}
		if len(rest) > 1 {
			proc.Version = rest[1]
		}
		switch {
		case block == "" && proc.Kind == "master": // a program may be called "master" too
			p.Master, sawMaster = proc, true
		case block == "workers" && proc.Kind == "worker":
			p.Workers = append(p.Workers, proc)
		case block == "old workers" && proc.Kind == "worker":
			p.Old = append(p.Old, proc)
		}
	}
	if !sawMaster {
		return nil, fmt.Errorf("show proc: no master line in %q", out)
	}
	return p, nil
}

// ErrReloadFailed means HAProxy refused the new configuration and kept the
// previous worker serving.
var ErrReloadFailed = errors.New("haproxy refused the reload and kept the previous configuration")

// Reload asks the master to reload. HAProxy 2.6 answers nothing and does
// not wait: WaitReloaded tells the outcome.
func (m *MasterCLI) Reload(ctx context.Context) error {
	_, err := m.Command(ctx, "reload")
	return err
}

// pollEvery paces show proc while a reload is in progress: the master
// refuses connections while it re-executes, for tens of milliseconds.
const pollEvery = 2 * time.Millisecond

// attemptTimeout bounds one show proc while waiting for a reload.
const attemptTimeout = 250 * time.Millisecond

// WaitReloaded polls the master until it has counted a reload beyond
// before, then reports whether it succeeded: a failed reload raises the
// failed counter and leaves the old worker serving (ErrReloadFailed).
func (m *MasterCLI) WaitReloaded(ctx context.Context, before *Procs) (*Procs, error) {
	var lastErr error
	for {
		// right after a refused reload one connection hangs for seconds
		// before it is reset: give up on it early and ask again
		attempt, cancel := context.WithTimeout(ctx, attemptTimeout)
		now, err := m.ShowProc(attempt)
		cancel()
		switch {
		case err != nil:
			lastErr = err
		case now.Master.Reloads > before.Master.Reloads || now.Master.PID != before.Master.PID:
			if now.Failed > before.Failed {
				return now, ErrReloadFailed
			}
			if !hasNewWorker(before, now) {
				return now, fmt.Errorf("%w: no new worker after the reload", ErrReloadFailed)
			}
			return now, nil
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return nil, fmt.Errorf("reload not seen in time: %w", lastErr)
			}
			return nil, fmt.Errorf("reload not seen in time: %w", ctx.Err())
		case <-time.After(pollEvery):
		}
	}
}

func hasNewWorker(before, now *Procs) bool {
	old := map[int]bool{}
	for _, w := range before.Workers {
		old[w.PID] = true
	}
	for _, w := range now.Workers {
		if !old[w.PID] {
			return true
		}
	}
	return false
}
