package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"haproxy-config/certs"
	"haproxy-config/fragments"
	"haproxy-config/health"
	"haproxy-config/reconcile"
	"haproxy-config/settings"
	"haproxy-config/watcher"
)

func watch(c *cli.Context, _ *reconcile.Engine) error {
	log := newLogger(c.App.ErrWriter)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	d := &watcher.Daemon{
		Load:    func() (*settings.Settings, error) { return loadSettings(c) },
		Notify:  watcher.Notifier(log),
		Log:     log,
		Version: version,
	}
	if s, err := loadSettings(c); err == nil {
		// the level status --check reports, for the fleet's heartbeats
		d.Health = func() string { return health.Read(s.StateDir, thresholds(s)).Code.String() }
	}
	return d.Run(c.Context, hup)
}

// newLogger logs key=value lines; under journald (JOURNAL_STREAM set) the
// journal adds the time itself.
func newLogger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{}
	if os.Getenv("JOURNAL_STREAM") != "" {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func status(c *cli.Context, e *reconcile.Engine) error {
	st, err := watcher.ReadStatus(e.S.StateDir)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		if err := printJSON(c.App.Writer, st); err != nil {
			return err
		}
	} else {
		printStatus(c.App.Writer, st)
	}
	if !st.Running() {
		return fmt.Errorf("%w: the report above is its last", watcher.ErrNoDaemon)
	}
	return nil
}

func prefixed(prefix, s string) string {
	if s == "" {
		return ""
	}
	return prefix + s
}

func when(t time.Time) string { return t.Local().Format(time.RFC3339) }

func printStatus(w io.Writer, st *watcher.Status) {
	state := st.State
	if !st.Running() {
		state = "not running"
	}
	fmt.Fprintf(w, "daemon:      %s (pid %d, started %s, reloads by %s)\n", state, st.PID, when(st.Started), st.Strategy)
	if st.Live != nil {
		fmt.Fprintf(w, "live:        generation %d since %s, %s\n", st.Live.Generation, when(st.Live.Since), plural(st.Live.Fragments, "fragment"))
	} else {
		fmt.Fprintln(w, "live:        nothing verified yet")
	}
	if st.Held != nil {
		fmt.Fprintf(w, "held:        generation %d, by %s since %s (haproxy-config resume releases it)\n", st.Held.Generation, st.Held.Actor, when(st.Held.Since))
	}
	if st.Pending != nil {
		fmt.Fprintf(w, "pending:     %s since %s\n", plural(st.Pending.Changes, "change"), when(st.Pending.Since))
	} else {
		fmt.Fprintln(w, "pending:     none")
	}
	if r := st.LastReload; r != nil {
		result := fmt.Sprintf("ok in %.1f ms", r.DurationMS)
		if !r.OK {
			result = "FAILED: " + r.Error
			if r.RolledBackTo > 0 {
				result += fmt.Sprintf(" (rolled back to generation %d)", r.RolledBackTo)
			}
		}
		fmt.Fprintf(w, "last reload: generation %d at %s, %s\n", r.Generation, when(r.At), result)
	}
	if r := st.LastRuntime; r != nil {
		fmt.Fprintf(w, "last runtime update: generation %d at %s, %d map entries in %.1f ms\n", r.Generation, when(r.At), r.Entries, r.DurationMS)
	}
	n := st.Counts
	fmt.Fprintf(w, "counts:      %d reloads, %d failed, %d rollbacks, %d haproxy restarts, %d reconciles\n",
		n.Reloads, n.ReloadsFailed, n.Rollbacks, n.Restarts, n.Reconciles)
	fmt.Fprintf(w, "changes:     %d live at runtime, %d needed a reload; %d runtime map drift repairs, %d runtime fallbacks to a reload\n",
		n.RuntimeUpdates, n.Reloads, n.DriftRepairs, n.RuntimeFallbacks)
	if p := st.HAProxy; p != nil {
		var workers []string
		for _, wk := range p.Workers {
			workers = append(workers, strconv.Itoa(wk.PID))
		}
		fmt.Fprintf(w, "haproxy:     master %d (%d reloads, %d failed), workers %s, %d old workers\n",
			p.Master.PID, p.Master.Reloads, p.Failed, dash(workers), len(p.Old))
	}
	if st.LastError != "" {
		fmt.Fprintf(w, "last error:  %s\n", st.LastError)
	}
	if f := st.Fleet; f != nil {
		printFleetStatus(w, f)
	}
	if b := st.Behind; b != nil {
		fmt.Fprintf(w, "behind:      since %s the stored configuration cannot go live: %s\n", when(b.Since), b.Reason)
	}
	if d := st.Drained; d != nil {
		fmt.Fprintf(w, "drained:     since %s by %s%s (haproxy-config undrain ends it)\n", when(d.Since), d.By, prefixed(": ", d.Reason))
	}
	if a := st.Announce; a != nil {
		for _, r := range a.Routes {
			state := "withdrawn"
			if r.Announced {
				state = "announced"
			}
			fmt.Fprintf(w, "route:       %s %s since %s%s (announce pid %d, report %s)\n", r.Address, state, when(r.Since), prefixed(": ", r.Reason), a.PID, when(a.Updated))
		}
	}
	fmt.Fprintf(w, "quarantined: %d\n", len(st.Quarantined))
	for _, q := range st.Quarantined {
		note := ""
		if q.Retrying {
			note = ", to be retried alone"
		}
		if q.LastGood != "" {
			note += ", the version before it stays live (" + q.LastGood + ")"
		}
		fmt.Fprintf(w, "  %s (since %s%s)\n", q.Name, when(q.Since), note)
		for _, e := range q.Errors {
			fmt.Fprintf(w, "    %s\n", e)
		}
	}
	for _, s := range st.Strays {
		fmt.Fprintf(w, "stray file:  %s\n", s)
	}
	if c := st.Certs; c != nil {
		var conds []string
		for _, k := range certs.Conditions {
			if c.Conditions[k] > 0 {
				conds = append(conds, fmt.Sprintf("%d %s", c.Conditions[k], k))
			}
		}
		whose := ""
		if c.FleetOrders {
			whose = " by the fleet"
		}
		fmt.Fprintf(w, "certs:       %s: %s; %d of %d orders used%s in the window, %d in flight\n",
			plural(c.Domains, "domain"), dash(conds), c.OrdersInWindow, c.OrderBudget, whose, c.InFlight)
		if c.NextExpiry != nil {
			fmt.Fprintf(w, "  next expiry:  %s at %s\n", c.NextExpiry.Domain, when(c.NextExpiry.At))
		}
		if c.NextRenewal != nil {
			fmt.Fprintf(w, "  next renewal: %s at %s\n", c.NextRenewal.Domain, when(c.NextRenewal.At))
		}
		if c.CAError != "" {
			fmt.Fprintf(w, "  CA unreachable: %s\n", c.CAError)
		}
		for _, name := range slices.Sorted(maps.Keys(c.Failing)) {
			fmt.Fprintf(w, "  failing: %s: %s\n", name, c.Failing[name])
		}
		for _, name := range slices.Sorted(maps.Keys(c.Fallback)) {
			fmt.Fprintf(w, "  fallback: %s: %s\n", name, c.Fallback[name])
		}
	}
}

func history(c *cli.Context, e *reconcile.Engine) error {
	gens, err := e.Generations()
	if err != nil {
		return err
	}
	live := 0
	if st, err := watcher.ReadStatus(e.S.StateDir); err == nil && st.Live != nil {
		live = st.Live.Generation
	}
	hold, err := e.CurrentHold()
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, gens)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GEN\tTIME\tBY\tFRAGMENTS\tREJECTED\tSTATE")
	for _, g := range gens {
		var state []string
		if g.Number == live {
			state = append(state, "live")
		}
		if hold != nil && hold.Generation == g.Number {
			state = append(state, "held")
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\n", g.Number, when(g.Time), g.Actor, len(g.Fragments), dash(g.Rejected), dash(state))
	}
	return tw.Flush()
}

func rollback(c *cli.Context, e *reconcile.Engine) error {
	if c.NArg() > 1 {
		return usageErr("rollback takes at most GEN, got %d arguments", c.NArg())
	}
	var n int
	if c.NArg() == 1 {
		var err error
		if n, err = strconv.Atoi(strings.TrimPrefix(c.Args().First(), "#")); err != nil || n < 1 {
			return usageErr("rollback: %q is not a generation number (see haproxy-config history)", c.Args().First())
		}
	} else {
		var err error
		if n, err = previousGeneration(e); err != nil {
			return err
		}
	}
	holding := func(n int) {
		fmt.Fprintf(c.App.Writer, "holding generation %d: the daemon serves it and leaves changes pending until haproxy-config resume\n", n)
	}
	req := &watcher.Request{Op: watcher.OpRollback, Generation: n}
	if handled, err := viaDaemon(c, e, req, func(a *watcher.Answer) { holding(a.Held.Generation) }); handled {
		return err
	}
	h, err := e.SetHold(c.Context, n, fragments.Actor())
	if err != nil {
		return err
	}
	holding(h.Generation)
	return waitIf(c, func(ctx context.Context) error { return watcher.WaitGeneration(ctx, e, n) })
}

// previousGeneration is the newest kept generation older than the live one.
func previousGeneration(e *reconcile.Engine) (int, error) {
	gens, err := e.Generations()
	if err != nil {
		return 0, err
	}
	live := 0
	if st, err := watcher.ReadStatus(e.S.StateDir); err == nil && st.Live != nil {
		live = st.Live.Generation
	} else if len(gens) > 0 {
		live = gens[0].Number
	}
	for _, g := range gens {
		if g.Number < live {
			return g.Number, nil
		}
	}
	return 0, usageErr("rollback: no generation older than the live one (%d) is kept; see haproxy-config history", live)
}

func resume(c *cli.Context, e *reconcile.Engine) error {
	released := func(released bool) {
		if released {
			fmt.Fprintln(c.App.Writer, "hold released: the daemon serves the stored fragments again")
		} else {
			fmt.Fprintln(c.App.Writer, "no hold in force")
		}
	}
	if handled, err := viaDaemon(c, e, &watcher.Request{Op: watcher.OpResume}, func(a *watcher.Answer) { released(a.Released) }); handled {
		return err
	}
	ok, err := e.ReleaseHold()
	if err != nil {
		return err
	}
	released(ok)
	if !ok {
		return nil
	}
	return waitIf(c, func(ctx context.Context) error { return watcher.WaitResumed(ctx, e) })
}
