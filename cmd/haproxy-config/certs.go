package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"haproxy-config/certs"
	"haproxy-config/reconcile"
	"haproxy-config/watcher"
)

var certsCommand = &cli.Command{
	Name:   "certs",
	Usage:  "list the certificates the daemon keeps: domain, challenge, issuer, expiry, renewal time, state, last error (or why none is ordered), next attempt",
	Flags:  []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
	Action: withEngine(listCerts),
	Subcommands: []*cli.Command{{
		Name:      "renew",
		Usage:     "ask the daemon to renew the certificates of DOMAIN... (all when none is named) now",
		ArgsUsage: "[DOMAIN...]",
		Flags:     waitFlags,
		Action:    withEngine(renewCerts),
	}},
}

// certRow is one domain as "certs --json" prints it.
type certRow struct {
	*certs.Domain
	State string `json:"state"`
}

func listCerts(c *cli.Context, e *reconcile.Engine) error {
	st, err := certs.ReadState(e.S.StateDir)
	if err != nil {
		return err
	}
	now := time.Now()
	rows := []certRow{}
	for _, d := range st.Sorted() {
		rows = append(rows, certRow{Domain: d, State: d.Condition(now)})
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, rows)
	}
	if !e.S.ACME.Enabled {
		fmt.Fprintln(c.App.Writer, "certificates are off (HAPROXY_CONFIG_ACME=false)")
	}
	printCerts(c.App.Writer, rows)
	return nil
}

func printCerts(w io.Writer, rows []certRow) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DOMAIN\tCHALLENGE\tISSUER\tNOT AFTER\tRENEW AT\tSTATE\tNEXT ATTEMPT\tLAST ERROR")
	for _, r := range rows {
		renew := timeOrDash(r.RenewAt)
		if r.RenewBy != "" {
			renew += " (" + r.RenewBy + ")"
		}
		name := r.Name
		if len(r.Names) > 1 {
			name = strings.Join(r.Names, " + ")
		}
		why := r.LastError
		if r.Blocked != "" {
			why = r.Blocked
		}
		// lego's errors span lines: one row per domain
		why = strings.Join(strings.Fields(why), " ")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, dashStr(r.Challenge), dashStr(r.Issuer), timeOrDash(r.NotAfter), renew,
			r.State, timeOrDash(r.NextAttempt), dashStr(why))
	}
	_ = tw.Flush()
}

func renewCerts(c *cli.Context, e *reconcile.Engine) error {
	names := c.Args().Slice()
	what := "every certificate"
	if len(names) > 0 {
		what = fmt.Sprint(slices.Sorted(slices.Values(names)))
	}
	req := &watcher.Request{Op: watcher.OpRenew, Domains: names}
	if handled, err := viaDaemon(c, e, req, func(a *watcher.Answer) {
		fmt.Fprintf(c.App.Writer, "renewal of %s requested: the daemon renews %s (see haproxy-config certs)\n", what, plural(len(a.Renewing), "domain"))
	}); handled {
		return err
	}
	st, err := certs.ReadState(e.S.StateDir)
	if err != nil {
		return err
	}
	for _, n := range names {
		if _, ok := st.Domains[n]; !ok {
			return usageErr("certs renew: %q has no certificate here (see haproxy-config certs)", n)
		}
	}
	if err := certs.RequestRenewal(e.S.StateDir, names); err != nil {
		return err
	}
	if status, err := watcher.ReadStatus(e.S.StateDir); err != nil || !status.Running() {
		return &watcher.NotLiveError{Why: "renewal of " + what + " requested, but no daemon runs: it renews when it starts"}
	}
	fmt.Fprintf(c.App.Writer, "renewal of %s requested: see haproxy-config certs\n", what)
	return nil
}

func timeOrDash(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return when(t)
}

func dashStr(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
