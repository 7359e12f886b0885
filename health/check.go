// Package health turns the daemon's report into decisions the network acts
// on: a monitoring-plugin check (Nagios, Icinga, Zabbix, keepalived's
// vrrp_script) and the routes "haproxy-config announce" gives ExaBGP.
package health

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"haproxy-config/watcher"
)

// Code is a monitoring plugin's exit code.
type Code int

// The monitoring plugin exit codes.
const (
	OK Code = iota
	Warning
	Critical
	Unknown
)

func (c Code) String() string {
	return [...]string{"OK", "WARNING", "CRITICAL", "UNKNOWN"}[c]
}

// Thresholds are when a condition becomes a warning or critical.
type Thresholds struct {
	CertWarning  time.Duration // a served certificate expires within it: warning
	CertCritical time.Duration // ... within it: critical
	Pending      time.Duration // changes not live for longer: warning
}

// Report is the outcome of a check.
type Report struct {
	Code Code
	// what made the code, worst first; empty when OK
	Problems []string
	// the summary of a healthy node
	Summary string
	Drained bool
	// the node itself fails (daemon, HAProxy, the live generation), as
	// opposed to one certificate: what keepalived and the routes act on
	Down bool
	Perf []Perf
}

// Perf is one item of performance data.
type Perf struct {
	Label     string
	Value     float64
	Warn      float64 // NaN: none
	Crit      float64
	HasLimits bool
}

// Alive reports whether a process runs: HAProxy's, and the daemon whose
// report st is.
type Alive struct {
	PID    func(pid int) bool
	Daemon func(st *watcher.Status) bool
}

// ProcessAlive asks the kernel.
var ProcessAlive = Alive{PID: watcher.ProcessRuns, Daemon: (*watcher.Status).Running}

// Check judges the daemon's report. st is nil when no daemon ever wrote
// one; drained is the drain record (nil: in service).
func Check(st *watcher.Status, drained *watcher.Drained, now time.Time, th Thresholds, alive Alive) Report {
	r := Report{Drained: drained != nil}
	var crit, warn []string
	switch {
	case st == nil:
		crit = append(crit, "no haproxy-config daemon has run here")
	case !alive.Daemon(st):
		crit = append(crit, fmt.Sprintf("the haproxy-config daemon is not running (pid %d, last report %s ago)", st.PID, age(now, st.Updated)))
	}
	if st != nil {
		crit = append(crit, haproxyDown(st, alive)...)
		switch {
		case st.Live == nil && st.LastReload != nil && !st.LastReload.OK:
			crit = append(crit, "the last reload failed and no generation is verified serving: "+st.LastReload.Error)
		case st.Live == nil:
			crit = append(crit, "no generation is verified serving")
		}
		if b := st.Behind; b != nil {
			crit = append(crit, fmt.Sprintf("the stored configuration cannot go live (for %s): %s", age(now, b.Since), b.Reason))
		}
	}
	r.Down = len(crit) > 0
	if st != nil {
		if n := len(st.Quarantined); n > 0 {
			names := make([]string, 0, n)
			for _, q := range st.Quarantined {
				names = append(names, q.Name)
			}
			warn = append(warn, fmt.Sprintf("%d fragment(s) quarantined: %s", n, strings.Join(names, ", ")))
		}
		if p := st.Pending; p != nil && th.Pending > 0 && now.Sub(p.Since) > th.Pending {
			warn = append(warn, fmt.Sprintf("%d change(s) pending for %s", p.Changes, age(now, p.Since)))
		}
		if c := st.Certs; c != nil && c.NextExpiry != nil {
			left := c.NextExpiry.At.Sub(now)
			msg := fmt.Sprintf("the certificate of %s expires in %s", c.NextExpiry.Domain, days(left))
			if left < 0 {
				msg = fmt.Sprintf("the certificate of %s has expired", c.NextExpiry.Domain)
			}
			switch {
			case left < th.CertCritical:
				crit = append(crit, msg)
			case left < th.CertWarning:
				warn = append(warn, msg)
			}
		}
	}
	if f := fleetProblem(st, now); f != "" {
		warn = append(warn, f)
	}
	if drained != nil {
		msg := "drained since " + drained.Since.Local().Format(time.RFC3339)
		if drained.Reason != "" {
			msg += ": " + drained.Reason
		}
		warn = append(warn, msg)
	}
	switch {
	case len(crit) > 0:
		r.Code = Critical
	case len(warn) > 0:
		r.Code = Warning
	}
	r.Problems = append(crit, warn...)
	if st != nil {
		r.Perf = perf(st, now, th)
		if st.Live != nil {
			r.Summary = fmt.Sprintf("generation %d live, %d fragment(s)", st.Live.Generation, st.Live.Fragments)
		}
	}
	return r
}

// fleetProblem is the warning of a node of a fleet whose etcd has not
// answered for longer than watcher.StaleAfter heartbeats, "" otherwise.
// It serves what it has meanwhile, but orders nothing.
func fleetProblem(st *watcher.Status, now time.Time) string {
	if st == nil || st.Fleet == nil || st.Fleet.UnreachableSince == nil {
		return ""
	}
	f := st.Fleet
	limit := time.Duration(watcher.StaleAfter * f.HeartbeatSeconds * float64(time.Second))
	if now.Sub(*f.UnreachableSince) <= limit {
		return ""
	}
	return fmt.Sprintf("etcd unreachable since %s (for %s): no certificate is ordered or renewed: %s",
		f.UnreachableSince.Local().Format(time.RFC3339), age(now, *f.UnreachableSince), f.LastError)
}

// haproxyDown names HAProxy processes the report lists that are gone. Only
// a managed HAProxy's: the daemon restarts it and records the new PIDs,
// while another strategy's HAProxy may be restarted behind its back.
func haproxyDown(st *watcher.Status, alive Alive) []string {
	p := st.HAProxy
	if p == nil || st.State == "stopped" || !strings.HasPrefix(st.Strategy, "managed") {
		return nil
	}
	if !alive.PID(p.Master.PID) {
		return []string{fmt.Sprintf("haproxy is not running (master pid %d is gone)", p.Master.PID)}
	}
	for _, w := range p.Workers {
		if alive.PID(w.PID) {
			return nil
		}
	}
	if len(p.Workers) > 0 {
		return []string{fmt.Sprintf("haproxy has no worker (pid %d is gone)", p.Workers[0].PID)}
	}
	return nil
}

func perf(st *watcher.Status, now time.Time, th Thresholds) []Perf {
	pending := 0.0
	if st.Pending != nil {
		pending = now.Sub(st.Pending.Since).Seconds()
	}
	ps := []Perf{
		{Label: "reloads", Value: float64(st.Counts.Reloads)},
		{Label: "reloads_failed", Value: float64(st.Counts.ReloadsFailed)},
		{Label: "quarantined", Value: float64(len(st.Quarantined))},
		{Label: "pending_seconds", Value: math.Round(pending), Warn: th.Pending.Seconds(), Crit: math.NaN(), HasLimits: th.Pending > 0},
	}
	if c := st.Certs; c != nil && c.NextExpiry != nil {
		ps = append(ps, Perf{Label: "cert_min_days", Value: math.Floor(c.NextExpiry.At.Sub(now).Hours() / 24),
			Warn: th.CertWarning.Hours() / 24, Crit: th.CertCritical.Hours() / 24, HasLimits: true})
	}
	return ps
}

// String is the plugin's output: one line "HAPROXY-CONFIG CODE - text |
// perfdata", then one line for each further problem.
func (r Report) String() string {
	var b strings.Builder
	b.WriteString("HAPROXY-CONFIG " + r.Code.String() + " - ")
	switch {
	case len(r.Problems) > 0:
		b.WriteString(r.Problems[0])
		if n := len(r.Problems) - 1; n > 0 {
			fmt.Fprintf(&b, " (and %d more)", n)
		}
	case r.Summary != "":
		b.WriteString(r.Summary)
	default:
		b.WriteString("no report")
	}
	if len(r.Perf) > 0 {
		b.WriteString(" |")
		for _, p := range r.Perf {
			fmt.Fprintf(&b, " %s=%s", p.Label, num(p.Value))
			if p.HasLimits {
				fmt.Fprintf(&b, ";%s;%s", num(p.Warn), num(p.Crit))
			}
		}
	}
	b.WriteByte('\n')
	for _, p := range r.Problems[min(1, len(r.Problems)):] {
		b.WriteString(p + "\n")
	}
	return b.String()
}

// num writes a perfdata value: a plain number, or nothing for NaN.
func num(v float64) string {
	if math.IsNaN(v) {
		return ""
	}
	return fmt.Sprintf("%g", v)
}

// Serving reports whether this node may take traffic: a virtual IP held,
// routes announced. Warnings do not stop it, and neither does one
// certificate near its expiry (every node of a fleet would withdraw at
// once); the node failing, an unknown state and drain do.
func (r Report) Serving() bool { return !r.Down && r.Code != Unknown && !r.Drained }

// Reason says why the node is not serving.
func (r Report) Reason() string {
	switch {
	case (r.Down || r.Code == Unknown) && len(r.Problems) > 0:
		return r.Problems[0]
	case r.Down || r.Code == Unknown:
		return r.Code.String()
	case r.Drained:
		return "drained"
	}
	return ""
}

func age(now, t time.Time) string { return now.Sub(t).Truncate(time.Second).String() }

func days(d time.Duration) string {
	if d < 48*time.Hour {
		return d.Truncate(time.Minute).String()
	}
	return fmt.Sprintf("%d days", int(d.Hours()/24))
}

// Read checks the reports in a state directory now.
func Read(stateDir string, th Thresholds) Report {
	drained, err := watcher.ReadDrained(stateDir)
	if err != nil {
		return Report{Code: Unknown, Problems: []string{err.Error()}}
	}
	st, err := watcher.ReadDaemonStatus(stateDir)
	if errors.Is(err, watcher.ErrNoDaemon) {
		st, err = nil, nil
	}
	if err != nil {
		return Report{Code: Unknown, Problems: []string{err.Error()}, Drained: drained != nil}
	}
	return Check(st, drained, time.Now(), th, ProcessAlive)
}
