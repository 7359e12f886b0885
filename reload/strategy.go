package reload

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Reloader asks HAProxy to load the live configuration again. Reload
// returns once the request is made; whether the new configuration is
// serving is checked afterwards (the master's process table and the
// generation marker), because none of the ways below can tell on 2.6.
type Reloader interface {
	Reload(ctx context.Context) error
	String() string
}

// MasterSocket reloads an HAProxy started by someone else through its
// master CLI (Debian's haproxy.service runs with -S when EXTRAOPTS says so).
type MasterSocket struct{ CLI *MasterCLI }

func (r *MasterSocket) Reload(ctx context.Context) error { return r.CLI.Reload(ctx) }
func (r *MasterSocket) String() string                   { return "master-socket " + r.CLI.Path }

// UnitReloader is the part of a systemd D-Bus connection the systemd
// strategy uses; *dbus.Conn from go-systemd has it.
type UnitReloader interface {
	ReloadUnitContext(ctx context.Context, name string, mode string, ch chan<- string) (int, error)
}

// Systemd reloads a unit (haproxy.service) through systemd's D-Bus API and
// waits for the reload job to finish. The job's "done" only means the
// unit's ExecReload ran; the new worker is verified separately.
type Systemd struct {
	Unit string
	// Connect opens the D-Bus connection on first use.
	Connect func(ctx context.Context) (UnitReloader, error)
	conn    UnitReloader
}

func (r *Systemd) Reload(ctx context.Context) error {
	if r.conn == nil {
		conn, err := r.Connect(ctx)
		if err != nil {
			return fmt.Errorf("connect to systemd: %w", err)
		}
		r.conn = conn
	}
	done := make(chan string, 1)
	if _, err := r.conn.ReloadUnitContext(ctx, r.Unit, "replace", done); err != nil {
		r.conn = nil // the bus may have gone away: connect again next time
		return fmt.Errorf("reload %s: %w", r.Unit, err)
	}
	select {
	case result := <-done:
		if result != "done" {
			return fmt.Errorf("reload %s: systemd job %s", r.Unit, result)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("reload %s: %w", r.Unit, ctx.Err())
	}
}

func (r *Systemd) String() string { return "systemd " + r.Unit }

// Command reloads by running an operator's command through /bin/sh; a
// non-zero exit is a failed reload.
type Command struct{ Line string }

func (r *Command) Reload(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", r.Line)
	// on timeout, kill what the shell started too, not only the shell
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("reload command %q: %w: %s", r.Line, err, strings.TrimSpace(out.String()))
	}
	return nil
}

func (r *Command) String() string { return "command " + r.Line }
