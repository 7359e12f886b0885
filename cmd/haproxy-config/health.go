package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"os/user"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"haproxy-config/health"
	"haproxy-config/settings"
	"haproxy-config/watcher"
)

// pluginExit ends a monitoring check with its code; its output is printed
// already.
type pluginExit int

func (e pluginExit) Error() string { return "" }
func (e pluginExit) ExitCode() int { return int(e) }

func thresholds(s *settings.Settings) health.Thresholds {
	return health.Thresholds{CertWarning: s.Health.CertWarning, CertCritical: s.Health.CertCritical, Pending: s.Health.Pending}
}

// statusCheck is "status --check": a monitoring plugin.
func statusCheck(c *cli.Context) error {
	s, err := loadSettings(c)
	var r health.Report
	if err != nil {
		r = health.Report{Code: health.Unknown, Problems: []string{"settings: " + err.Error()}}
	} else {
		r = health.Read(s.StateDir, thresholds(s))
	}
	fmt.Fprint(c.App.Writer, r.String())
	code := r.Code
	if c.Bool("vrrp") {
		code = health.OK
		if !r.Serving() {
			code = health.Warning
		}
	}
	if code == health.OK {
		return nil
	}
	return pluginExit(code)
}

func actor() string {
	if u := os.Getenv("SUDO_USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return fmt.Sprintf("uid %d", os.Getuid())
}

func drain(c *cli.Context) error {
	s, err := loadSettings(c)
	if err != nil {
		return err
	}
	d, err := watcher.Drain(s.StateDir, actor(), c.String("reason"))
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "drained since %s by %s: announce withdraws the routes at its next check, status --check reports WARNING "+
		"(--vrrp: failing), HAProxy keeps serving what still reaches it; haproxy-config undrain ends it\n", when(d.Since), d.By)
	return nil
}

func undrain(c *cli.Context) error {
	s, err := loadSettings(c)
	if err != nil {
		return err
	}
	was, err := watcher.Undrain(s.StateDir)
	if err != nil {
		return err
	}
	if was {
		fmt.Fprintln(c.App.Writer, "undrained: routes come back after ANNOUNCE_RISE good checks")
	} else {
		fmt.Fprintln(c.App.Writer, "not drained")
	}
	return nil
}

// announce runs as an ExaBGP process: commands on standard output,
// ExaBGP's acknowledgements on standard input, whose end means ExaBGP is
// gone.
func announce(c *cli.Context) error {
	s, err := loadSettings(c)
	if err != nil {
		return err
	}
	if len(s.Health.Addresses) == 0 {
		return usageErr("announce needs the service addresses: set HAPROXY_CONFIG_ANNOUNCE_ADDRESSES")
	}
	// a write to a closed pipe returns an error here instead of killing
	// the process, so that the report says why the routes are gone
	signal.Ignore(syscall.SIGPIPE)
	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	// this reader ends with the process: a read on standard input cannot
	// be interrupted, and nothing waits for it
	go func() {
		_, _ = io.Copy(io.Discard, c.App.Reader)
		cancel()
	}()
	th := thresholds(s)
	a := &health.Announcer{
		Addrs:    s.Health.Addresses,
		Rise:     s.Health.Rise,
		Fall:     s.Health.Fall,
		Interval: s.Health.Interval,
		Node:     func() health.Report { return health.Read(s.StateDir, th) },
		Out:      c.App.Writer,
		Record:   func(a *watcher.Announced) error { return watcher.WriteAnnounced(s.StateDir, a) },
		Log:      newLogger(c.App.ErrWriter),
		Now:      time.Now,
	}
	if s.Health.CheckPath != "" {
		a.Probe = health.HTTPProbe(s.Health.CheckPort, s.Health.CheckPath)
	}
	return a.Run(ctx)
}
