package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"haproxy-config/certs"
	"haproxy-config/certs/etcdstorage"
	"haproxy-config/reload"
	"haproxy-config/settings"
	"haproxy-config/watcher"
)

var fleetCommand = &cli.Command{
	Name: "fleet",
	Usage: "fleet mode: every node of the fleet with when it was last seen, its live generation, fragments digest, certificates and health; " +
		"a node whose fragments differ from the fleet's, or that is stale, is FLAGGED (exit 8; README: Fleet)",
	Flags:  []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
	Action: fleetShow,
	Subcommands: []*cli.Command{
		{
			Name:      "key",
			Usage:     "write a new random seal key to FILE (mode 0600, never over an existing file) for FLEET_KEY_FILE; copy it to every node",
			ArgsUsage: "FILE",
			Action:    fleetKey,
		},
		{
			Name:      "forget",
			Usage:     "delete the heartbeat of NODE, a node taken out of the fleet (refused while it was seen within 3 heartbeats, unless --force)",
			ArgsUsage: "NODE",
			Flags:     []cli.Flag{&cli.BoolFlag{Name: "force", Usage: "forget a node seen recently"}},
			Action:    fleetForget,
		},
	},
}

// fleetTimeout bounds the fleet commands' calls to etcd.
const fleetTimeout = 20 * time.Second

// openFleet opens the fleet's storage for a command and checks that etcd
// answers: exit 2 when fleet mode is off, 5 when etcd does not answer.
func openFleet(c *cli.Context) (*settings.Settings, *etcdstorage.Storage, error) {
	s, err := loadSettings(c)
	if err != nil {
		return nil, nil, err
	}
	if !s.Fleet.Enabled() {
		return nil, nil, usageErr("fleet mode is off: set %sETCD_ENDPOINTS (README: Fleet)", settings.EnvPrefix)
	}
	st, err := watcher.OpenFleet(s)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(c.Context, fleetTimeout)
	defer cancel()
	if err := st.Ping(ctx); err != nil {
		_ = st.Close()
		return nil, nil, &reload.EnvError{Err: fmt.Errorf("etcd unreachable: %w", err)}
	}
	return s, st, nil
}

// fleetReport is what "fleet --json" prints.
type fleetReport struct {
	Prefix string              `json:"prefix"`
	Nodes  []watcher.FleetNode `json:"nodes"`
}

func fleetShow(c *cli.Context) error {
	s, st, err := openFleet(c)
	if err != nil {
		return err
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(c.Context, fleetTimeout)
	defer cancel()
	hbs, bad, err := watcher.ReadHeartbeats(ctx, st)
	if err != nil {
		return &reload.EnvError{Err: fmt.Errorf("read the fleet's heartbeats: %w", err)}
	}
	now := time.Now()
	nodes := watcher.JudgeFleet(hbs, now)
	for name, err := range bad {
		nodes = append(nodes, watcher.FleetNode{Name: name, Flagged: true, Why: "heartbeat unreadable: " + err.Error()})
	}
	slices.SortFunc(nodes, func(a, b watcher.FleetNode) int { return strings.Compare(a.Name, b.Name) })
	var flagged []string
	for _, n := range nodes {
		if n.Flagged {
			flagged = append(flagged, n.Name)
		}
	}
	if c.Bool("json") {
		err = printJSON(c.App.Writer, fleetReport{Prefix: s.Fleet.Prefix, Nodes: nodes})
	} else {
		printFleet(c.App.Writer, s.Fleet.Prefix, nodes, now)
	}
	if err != nil {
		return err
	}
	if len(flagged) > 0 {
		return &watcher.FlaggedError{Nodes: flagged}
	}
	return nil
}

func printFleet(w io.Writer, prefix string, nodes []watcher.FleetNode, now time.Time) {
	if len(nodes) == 0 {
		fmt.Fprintf(w, "no node has stored a heartbeat under %s yet\n", prefix)
		return
	}
	fmt.Fprintf(w, "fleet %s: %s\n", prefix, plural(len(nodes), "node"))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSEEN\tGENERATION\tFRAGMENTS\tCERTS\tHEALTH\tSTATE")
	for _, n := range nodes {
		seen := "-"
		if !n.Seen.IsZero() {
			seen = now.Sub(n.Seen).Truncate(time.Second).String() + " ago"
		}
		state := "ok"
		if n.Flagged {
			state = "FLAGGED: " + n.Why
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\t%s\n", n.Name, seen, n.Generation, watcher.ShortDigest(n.FragmentsDigest),
			n.Certificates, dashStr(n.Health), state)
	}
	_ = tw.Flush()
}

func fleetKey(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageErr("fleet key takes FILE, got %d arguments", c.NArg())
	}
	name := c.Args().First()
	key := make([]byte, etcdstorage.KeySize)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("random key: %w", err)
	}
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return usageErr("%s exists: a key file is never overwritten (the fleet's values are sealed with it); remove it first to make a new fleet", name)
	}
	if err != nil {
		return &reload.EnvError{Err: fmt.Errorf("fleet key: %w", err)}
	}
	_, err = f.Write(key)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return &reload.EnvError{Err: fmt.Errorf("fleet key %s: %w", name, err)}
	}
	fmt.Fprintf(c.App.Writer, "wrote a new fleet key to %s (mode 0600): copy it to every node of the fleet as %sFLEET_KEY_FILE\n", name, settings.EnvPrefix)
	return nil
}

func fleetForget(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageErr("fleet forget takes NODE, got %d arguments", c.NArg())
	}
	node := c.Args().First()
	if !settings.ValidNodeName(node) {
		return usageErr("%q is not a node name", node)
	}
	s, st, err := openFleet(c)
	if err != nil {
		return err
	}
	defer st.Close()
	ctx, cancel := context.WithTimeout(c.Context, fleetTimeout)
	defer cancel()
	data, err := st.Load(ctx, certs.Keys.Node(node))
	if errors.Is(err, fs.ErrNotExist) {
		return usageErr("no heartbeat of node %q under %s (see haproxy-config fleet)", node, s.Fleet.Prefix)
	}
	if err != nil {
		return &reload.EnvError{Err: err}
	}
	var hb watcher.Heartbeat
	if err := json.Unmarshal(data, &hb); err == nil && !hb.Stale(time.Now()) && !c.Bool("force") {
		return usageErr("node %q was seen %s ago: it may still run (stop it first, or --force)", node, time.Since(hb.Seen).Truncate(time.Second))
	}
	if err := st.Delete(ctx, certs.Keys.Node(node)); err != nil {
		return &reload.EnvError{Err: err}
	}
	seen := "an unreadable heartbeat"
	if !hb.Seen.IsZero() {
		seen = "last seen " + when(hb.Seen)
	}
	fmt.Fprintf(c.App.Writer, "forgot node %q (%s); a daemon still running there stores its heartbeat again\n", node, seen)
	return nil
}

// printFleetStatus is the fleet part of "status".
func printFleetStatus(w io.Writer, f *watcher.FleetStatus) {
	etcd := "not checked yet"
	switch {
	case f.Reachable:
		etcd = "reachable"
		if !f.LastHeartbeat.IsZero() {
			etcd += ", last heartbeat at " + when(f.LastHeartbeat)
		}
	case f.UnreachableSince != nil:
		etcd = "UNREACHABLE since " + when(*f.UnreachableSince) + ": " + strings.Join(strings.Fields(f.LastError), " ")
	}
	fmt.Fprintf(w, "fleet:       node %s, prefix %s, etcd %s: %s\n", f.Node, f.Prefix, strings.Join(f.Endpoints, ","), etcd)
	if f.Reachable && f.LastError != "" {
		fmt.Fprintf(w, "  last etcd error at %s: %s\n", when(f.LastErrorAt), strings.Join(strings.Fields(f.LastError), " "))
	}
}
