// Command haproxy-config manages a multi-tenant HAProxy from fragments.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"haproxy-config/assemble"
	"haproxy-config/fragments"
	"haproxy-config/health"
	"haproxy-config/reconcile"
	"haproxy-config/reload"
	"haproxy-config/settings"
	"haproxy-config/watcher"
)

const exitCodesHelp = `EXIT CODES:
   0  success
   1  unexpected internal error
   2  usage error (unknown flag or command, wrong arguments, bad setting)
   4  rejected by validation: the input (or a stored fragment, or a stray file) is invalid; nothing changed
      (for "assemble": the rejected fragments stay out, the valid ones were written)
   5  environment problem: haproxy missing, no permission, lock not obtained in time,
      the fragment directory missing or a hold in force ("assemble"), no daemon running ("status")
   6  no such fragment (or generation)
   7  --wait: the change is stored but not live: no daemon runs, a hold is in force, a later change replaced it, or not in time (see "status")
   8  fleet: a node is flagged (its fragments differ from the fleet's, or it is stale)
   status --check exits as a monitoring plugin instead: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN`

var version = "dev"

func main() {
	os.Exit(run(os.Args, os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := newApp(stdin, stdout, stderr)
	var unknown string
	app.CommandNotFound = func(_ *cli.Context, name string) { unknown = name }
	err := app.RunContext(ctx, args)
	if err == nil && unknown != "" {
		err = usageErr("unknown command %q; see --help", unknown)
	}
	if err == nil {
		return watcher.ExitOK
	}
	code := exitCode(err)
	if _, ok := err.(pluginExit); ok {
		return code // the check printed its own output
	}
	if code == watcher.ExitUsage && slices.Contains(args, "status") && slices.Contains(args, "--check") {
		// a monitoring plugin's usage error is UNKNOWN, not CRITICAL
		fmt.Fprintf(stdout, "HAPROXY-CONFIG UNKNOWN - %v\n", err)
		return int(health.Unknown)
	}
	if ps, ok := err.(assemble.Problems); ok {
		fmt.Fprintln(stderr, "haproxy-config: rejected:")
		for _, p := range ps {
			fmt.Fprintln(stderr, "  "+p.Error())
		}
	} else {
		fmt.Fprintln(stderr, "haproxy-config:", err)
	}
	return code
}

// exitCode is err's kind's exit code, or what a urfave/cli error asks for.
func exitCode(err error) int {
	var code cli.ExitCoder
	if k := watcher.KindOf(err); k != watcher.KindInternal || !errors.As(err, &code) {
		return k.ExitCode()
	}
	return code.ExitCode()
}

func usageErr(format string, args ...any) error {
	return &reconcile.UsageError{Err: fmt.Errorf(format, args...)}
}

func newApp(stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	flags := []cli.Flag{
		&cli.StringFlag{Name: "root", Usage: "move the whole default layout under `DIR` [$HAPROXY_CONFIG_ROOT]"},
		&cli.StringFlag{Name: "defaults-file", Usage: "KEY=VALUE settings `FILE` (default ROOT/etc/default/haproxy-config) [$HAPROXY_CONFIG_DEFAULTS]"},
	}
	for _, k := range settings.Keys {
		flags = append(flags, &cli.StringFlag{Name: k.Flag, Usage: fmt.Sprintf("%s (default %q) [$%s]", k.Usage, k.DefaultText("/"), k.Env())})
	}
	app := &cli.App{
		Name:      "haproxy-config",
		Usage:     "validated HAProxy configuration from tenant fragments",
		Version:   version,
		Reader:    stdin,
		Writer:    stdout,
		ErrWriter: stderr,
		Flags:     flags,
		Description: "Tenants hand in fragments: HAProxy sections (CONF) and \"domain backend\" lines (MAP).\n" +
			"Every change is validated with haproxy -c on the exact configuration that would go live.\n\n" + exitCodesHelp,
		CustomAppHelpTemplate: cli.AppHelpTemplate,
		// Without this, urfave/cli prints the help and exits 0 when no
		// command is given, so a script that lost its arguments "succeeds".
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageErr("unknown command %q; see --help", c.Args().First())
			}
			return usageErr("no command given; see --help")
		},
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return &reconcile.UsageError{Err: fmt.Errorf("%w; see --help", err)}
		},
		Commands: []*cli.Command{
			{
				Name:      "apply",
				Usage:     "add or replace fragment NAME after validating it with everything else",
				ArgsUsage: "NAME CONF MAP   (CONF or MAP may be - for standard input; either may be an empty file)",
				Flags:     waitFlags,
				Action:    withEngine(apply),
			},
			{
				Name:      "remove",
				Usage:     "remove fragment NAME after validating what remains",
				ArgsUsage: "NAME",
				Flags:     waitFlags,
				Action:    withEngine(remove),
			},
			{
				Name: "watch",
				Usage: "run the daemon: keep HAProxy serving base + every valid fragment, reloading gracefully " +
					"(SIGHUP re-reads the settings, SIGTERM stops)",
				Action: withEngine(watch),
			},
			{
				Name:  "status",
				Usage: "show what the daemon reports: live generation, pending changes, reloads, quarantined fragments",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "json", Usage: "print JSON"},
					&cli.BoolFlag{Name: "check", Usage: "be a monitoring plugin (Nagios, Icinga, Zabbix): one line and performance data; " +
						"exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (README: Health checks)"},
					&cli.BoolFlag{Name: "vrrp", Usage: "with --check, for keepalived's vrrp_script: exit 0 while this node may hold the virtual IP " +
						"(nothing critical, not drained), 1 otherwise"},
				},
				Action: func(c *cli.Context) error {
					if c.Bool("check") {
						return statusCheck(c)
					}
					if c.Bool("vrrp") {
						return usageErr("--vrrp goes with --check")
					}
					return withEngine(status)(c)
				},
			},
			{
				Name:   "drain",
				Usage:  "take this node out of service for maintenance: routes withdrawn, status --check WARNING, HAProxy keeps serving; lasts until undrain",
				Flags:  []cli.Flag{&cli.StringFlag{Name: "reason", Usage: "why, for status and the monitoring check"}},
				Action: drain,
			},
			{
				Name:   "undrain",
				Usage:  "put this node back in service after drain",
				Action: undrain,
			},
			{
				Name: "announce",
				Usage: "run as an ExaBGP process: announce a route for each HAPROXY_CONFIG_ANNOUNCE_ADDRESSES address while this node is healthy, " +
					"withdraw it when not (README: Route announcement)",
				Action: announce,
			},
			{
				Name:   "history",
				Usage:  "list the kept generations, newest first",
				Flags:  []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
				Action: withEngine(history),
			},
			{
				Name: "rollback",
				Usage: "make the daemon serve generation GEN (default: the one before the live one) and hold it " +
					"there; changes stay pending until resume",
				ArgsUsage: "[GEN]",
				Flags:     waitFlags,
				Action:    withEngine(rollback),
			},
			{
				Name:   "resume",
				Usage:  "release a rollback's hold: the daemon goes back to serving the stored fragments",
				Flags:  waitFlags,
				Action: withEngine(resume),
			},
			certsCommand,
			fleetCommand,
			{
				Name:   "list",
				Usage:  "list stored fragments: name, domains, backends, size, when applied",
				Flags:  []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
				Action: withEngine(list),
			},
			{
				Name:      "show",
				Usage:     "print a stored fragment, config part and map part",
				ArgsUsage: "NAME",
				Action:    withEngine(show),
			},
			{
				Name:   "check",
				Usage:  "assemble and validate everything stored now; change nothing",
				Action: withEngine(check),
			},
			{
				Name:   "assemble",
				Usage:  "write haproxy.cfg and the host map from the valid stored fragments, as a new generation",
				Action: withEngine(assembleCmd),
			},
			{
				Name:  "allowlist",
				Usage: "print what a fragment may contain (Markdown): every keyword, setting, action, fetch and converter",
				Action: func(c *cli.Context) error {
					_, err := io.WriteString(c.App.Writer, fragments.AllowlistMarkdown())
					return err
				},
			},
		},
	}
	app.Commands = append(app.Commands, docCommands()...)
	for _, c := range app.Commands {
		c.OnUsageError = app.OnUsageError
	}
	return app
}

var waitFlags = []cli.Flag{
	&cli.BoolFlag{Name: "wait", Usage: "wait until the daemon serves the change (exit 4 if it quarantines it, 7 if not live in time)"},
	&cli.DurationFlag{Name: "timeout", Value: 2 * time.Minute, Usage: "how long --wait waits"},
}

// waitIf runs wait with --timeout when --wait is given, and prints "live"
// once it returns without error.
func waitIf(c *cli.Context, wait func(ctx context.Context) error) error {
	if !c.Bool("wait") {
		return nil
	}
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()
	if err := wait(ctx); err != nil {
		return err
	}
	fmt.Fprintln(c.App.Writer, "live")
	return nil
}

// waitLive waits, when --wait is given, for the daemon to serve fragment
// name at checksum ("" for gone).
func waitLive(c *cli.Context, e *reconcile.Engine, name, checksum string) error {
	committed := time.Now()
	return waitIf(c, func(ctx context.Context) error { return watcher.Wait(ctx, e, name, checksum, committed) })
}

func withEngine(action func(*cli.Context, *reconcile.Engine) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		s, err := loadSettings(c)
		if err != nil {
			return err
		}
		return action(c, reconcile.New(s))
	}
}

// loadSettings resolves the settings from the flags given, the
// environment and the defaults file.
func loadSettings(c *cli.Context) (*settings.Settings, error) {
	given := map[string]string{}
	for _, name := range c.FlagNames() {
		if c.IsSet(name) {
			given[name] = c.String(name)
		}
	}
	s, err := settings.Load(settings.Source{Flags: given})
	if errors.Is(err, fs.ErrPermission) {
		return nil, &reload.EnvError{Err: err}
	}
	if err != nil {
		return nil, &reconcile.UsageError{Err: err}
	}
	return s, nil
}

// readPart reads one part given to apply, at most one byte past max (the
// per-part limit, which Parse then reports with the file named).
func readPart(c *cli.Context, arg string, max int64, stdinUsed *bool) ([]byte, string, error) {
	var r io.Reader
	name := arg
	if arg == "-" {
		if *stdinUsed {
			return nil, "", usageErr("only one of CONF and MAP can be - (standard input)")
		}
		*stdinUsed = true
		r, name = c.App.Reader, "<stdin>"
	} else {
		f, err := os.Open(arg)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, "", usageErr("%s: no such file", arg)
		}
		if err != nil {
			return nil, "", err
		}
		defer f.Close()
		if fi, err := f.Stat(); err == nil && fi.IsDir() {
			return nil, "", usageErr("%s is a directory", arg)
		}
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, max+1))
	return data, name, err
}

func apply(c *cli.Context, e *reconcile.Engine) error {
	if c.NArg() != 3 {
		return usageErr("apply takes NAME CONF MAP, got %d arguments", c.NArg())
	}
	ch := reconcile.Change{Name: c.Args().Get(0)}
	if err := fragments.ValidName(ch.Name); err != nil {
		return &reconcile.UsageError{Err: err}
	}
	var stdinUsed bool
	var err error
	if ch.Conf, ch.ConfFile, err = readPart(c, c.Args().Get(1), e.S.MaxFragmentBytes, &stdinUsed); err != nil {
		return err
	}
	if ch.Map, ch.MapFile, err = readPart(c, c.Args().Get(2), e.S.MaxFragmentBytes, &stdinUsed); err != nil {
		return err
	}
	req := &watcher.Request{Op: watcher.OpApply, Name: ch.Name, ConfFile: ch.ConfFile, Conf: ch.Conf, MapFile: ch.MapFile, Map: ch.Map}
	if handled, err := viaDaemon(c, e, req, func(a *watcher.Answer) { printApplied(c, a.Applied) }); handled {
		return err
	}
	res, err := e.Apply(c.Context, ch)
	if err != nil {
		return err
	}
	printWarnings(c, res.Warnings)
	f := res.Fragment
	printApplied(c, &watcher.Applied{Name: f.Name, Checksum: f.Checksum, Replaced: res.Replaced, Domains: len(f.Map), Backends: f.Backends()})
	return waitLive(c, e, f.Name, f.Checksum)
}

func printApplied(c *cli.Context, a *watcher.Applied) {
	if a == nil {
		return
	}
	verb := "added"
	if a.Replaced {
		verb = "replaced"
	}
	fmt.Fprintf(c.App.Writer, "%s fragment %q: %s, backends %s (%s)\n", verb, a.Name, plural(a.Domains, "domain"), dash(a.Backends), a.Checksum)
}

// viaDaemon sends req to the daemon when one listens on the API socket and
// reports handled; accepted prints the first answer, and with --wait the
// second is awaited when there is one (Answer.Waits). Without a daemon the
// caller does the work itself.
func viaDaemon(c *cli.Context, e *reconcile.Engine, req *watcher.Request, accepted func(*watcher.Answer)) (handled bool, err error) {
	req.Actor, req.Wait, req.Timeout = fragments.Actor(), c.Bool("wait"), c.Duration("timeout")
	var client *watcher.Client
	var a *watcher.Answer
	// a daemon that went away before it read the request did nothing with
	// it: ask again, which finds the next daemon or none
	for attempt := 0; ; attempt++ {
		client, err = watcher.Dial(e.S.APISocket)
		if errors.Is(err, watcher.ErrNoDaemonAPI) {
			return false, nil
		}
		if err != nil {
			return true, err
		}
		defer client.Close()
		// the first answer comes after the groups ahead and this one's
		// checks: as long as the CLI itself may wait for the lock and
		// check, twice
		sendCtx, cancelSend := context.WithTimeout(c.Context, 2*(e.LockWait+e.S.CheckTimeout))
		a, err = client.Send(sendCtx, req)
		cancelSend()
		if !errors.Is(err, watcher.ErrNotSent) || attempt > 0 {
			break
		}
	}
	if a != nil {
		printWarnings(c, a.Warnings)
	}
	if err != nil {
		return true, err
	}
	accepted(a)
	if !a.Waits(req) {
		return true, nil
	}
	// the daemon says why when the time is up; this is in case it cannot
	ctx, cancel := context.WithTimeout(c.Context, req.Timeout+5*time.Second)
	defer cancel()
	if err := client.Wait(ctx); err != nil {
		return true, err
	}
	fmt.Fprintln(c.App.Writer, "live")
	return true, nil
}

func printWarnings(c *cli.Context, ws assemble.Problems) {
	for _, w := range ws {
		fmt.Fprintln(c.App.ErrWriter, "warning:", w.Error())
	}
}

func remove(c *cli.Context, e *reconcile.Engine) error {
	if c.NArg() != 1 {
		return usageErr("remove takes NAME, got %d arguments", c.NArg())
	}
	name := c.Args().First()
	removed := func(*watcher.Answer) { fmt.Fprintf(c.App.Writer, "removed fragment %q\n", name) }
	if err := fragments.ValidName(name); err != nil {
		return &reconcile.UsageError{Err: err}
	}
	if handled, err := viaDaemon(c, e, &watcher.Request{Op: watcher.OpRemove, Name: name}, removed); handled {
		return err
	}
	if err := e.Remove(c.Context, name); err != nil {
		return err
	}
	removed(nil)
	return waitLive(c, e, name, "")
}

func list(c *cli.Context, e *reconcile.Engine) error {
	infos, err := e.List()
	if err != nil {
		return err
	}
	if st, err := watcher.ReadDaemonStatus(e.S.StateDir); err == nil && st.Running() {
		st.MarkQuarantined(infos)
	}
	if c.Bool("json") {
		return printJSON(c.App.Writer, infos)
	}
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tDOMAINS\tBACKENDS\tSIZE\tAPPLIED\tSTATUS")
	for _, in := range infos {
		status := "ok"
		switch {
		case !in.Valid:
			status = "invalid: " + in.Problems[0]
		case len(in.Quarantined) > 0:
			status = "quarantined by the daemon: " + in.Quarantined[0]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", in.Name, dash(in.Domains), dash(in.Backends), in.Size, in.Applied.Format(time.RFC3339), status)
	}
	return tw.Flush()
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// printJSON writes v as indented JSON (the --json output of every command).
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func dash(items []string) string {
	if len(items) == 0 {
		return "-"
	}
	return strings.Join(items, ",")
}

func show(c *cli.Context, e *reconcile.Engine) error {
	if c.NArg() != 1 {
		return usageErr("show takes NAME, got %d arguments", c.NArg())
	}
	st, err := e.Store.Read(c.Args().First())
	if err != nil {
		if !errors.Is(err, fragments.ErrNotFound) && !errors.Is(err, fs.ErrPermission) {
			return &reconcile.UsageError{Err: err}
		}
		return err
	}
	confPath, mapPath := e.Store.Paths(st.Name)
	fmt.Fprintf(c.App.Writer, "# config part: %s\n%s", confPath, st.Conf)
	fmt.Fprintf(c.App.Writer, "# map part: %s\n%s", mapPath, st.Map)
	return nil
}

func check(c *cli.Context, e *reconcile.Engine) error {
	sel, err := e.Check(c.Context)
	if err != nil {
		return err
	}
	printWarnings(c, sel.Verdict.Warnings)
	fmt.Fprintf(c.App.Writer, "%s valid, %d rejected%s\n", plural(len(sel.Live), "fragment"), len(sel.Rejected), strays(sel))
	return rejection(sel)
}

// strays is ", N stray files" when files in the fragment directory are not
// fragments, "" otherwise.
func strays(sel *reconcile.Selection) string {
	if len(sel.Strays) == 0 {
		return ""
	}
	return ", " + plural(len(sel.Strays), "stray file")
}

// rejection returns the problems of rejected fragments and stray files.
func rejection(sel *reconcile.Selection) error {
	ps := sel.Strays
	for _, name := range sel.RejectedNames() {
		ps = append(ps, sel.Rejected[name]...)
	}
	return ps.Err()
}

func assembleCmd(c *cli.Context, e *reconcile.Engine) error {
	pub, err := e.Publish(c.Context, nil)
	if err != nil {
		return err
	}
	printWarnings(c, pub.Selection.Verdict.Warnings)
	g := pub.Generation
	state := "written"
	if !pub.Changed {
		state = "unchanged"
	}
	fmt.Fprintf(c.App.Writer, "generation %d %s: %s and %s (%s live, %d rejected%s)\n",
		g.Number, state, e.S.OutputConfig, e.S.OutputMap, plural(len(pub.Selection.Live), "fragment"), len(pub.Selection.Rejected), strays(pub.Selection))
	return rejection(pub.Selection)
}
