package health

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"time"

	"haproxy-config/watcher"
)

// Announcer writes ExaBGP's text API commands: a route for each service
// address while this node serves it, its withdrawal when not. Rise
// consecutive good checks announce a route and Fall bad ones withdraw it,
// so that a flapping check does not flap the route; drain withdraws at
// once. Run starts by withdrawing every route (one an earlier announce
// left, killed before it could, must not stay) and withdraws every route
// it announced before it returns.
type Announcer struct {
	Addrs    []netip.Addr
	Rise     int
	Fall     int
	Interval time.Duration
	// Node judges this node, each interval.
	Node func() Report
	// Probe checks one address through HAProxy; nil: no per-address check.
	Probe func(ctx context.Context, addr netip.Addr) error
	// Out is ExaBGP's pipe (the process's standard output).
	Out io.Writer
	// Record keeps the routes' state for status and the metrics; nil: not kept.
	Record func(*watcher.Announced) error
	Log    *slog.Logger
	Now    func() time.Time

	recorded time.Time
}

type route struct {
	addr      netip.Addr
	announced bool
	streak    int // consecutive checks that disagree with announced
	since     time.Time
	reason    string
}

// Run checks every Interval until ctx ends or ExaBGP's pipe breaks.
func (a *Announcer) Run(ctx context.Context) error {
	routes := make([]*route, len(a.Addrs))
	for i, addr := range a.Addrs {
		routes[i] = &route{addr: addr, since: a.Now(), reason: "not checked yet"}
		if err := a.write("withdraw", addr); err != nil {
			return err
		}
	}
	tick := time.NewTicker(a.Interval)
	defer tick.Stop()
	for {
		if err := a.step(ctx, routes); err != nil {
			// ExaBGP is gone, and its sessions with it
			for _, r := range routes {
				r.announced, r.reason = false, err.Error()
			}
			a.record(routes)
			return err
		}
		select {
		case <-ctx.Done():
			return a.withdrawAll(routes)
		case <-tick.C:
		}
	}
}

// step checks once and announces or withdraws what changed.
func (a *Announcer) step(ctx context.Context, routes []*route) error {
	node := a.Node()
	results := make([]error, len(routes))
	if node.Serving() && a.Probe != nil {
		var wg sync.WaitGroup
		for i, r := range routes {
			wg.Go(func() {
				pctx, cancel := context.WithTimeout(ctx, min(a.Interval, probeTimeout))
				defer cancel()
				results[i] = a.Probe(pctx, r.addr)
			})
		}
		wg.Wait()
	}
	if ctx.Err() != nil {
		return nil // stopping: a check cut short says nothing
	}
	changed := false
	for i, r := range routes {
		ok, why := node.Serving(), node.Reason()
		if ok && results[i] != nil {
			ok, why = false, results[i].Error()
		}
		switch {
		case !ok:
			r.reason = why
		case r.announced:
			r.reason = "" // a failed check that did not withdraw it is over
		}
		if ok == r.announced {
			r.streak = 0
			continue
		}
		r.streak++
		if (ok && r.streak >= a.Rise) || (!ok && (r.streak >= a.Fall || node.Drained)) {
			if err := a.set(r, ok); err != nil {
				return err
			}
			changed = true
		}
	}
	if changed || a.Now().Sub(a.recorded) >= time.Minute {
		a.record(routes)
	}
	return nil
}

// probeTimeout bounds one check of an address, whatever the interval.
const probeTimeout = 5 * time.Second

func (a *Announcer) write(verb string, addr netip.Addr) error {
	if _, err := fmt.Fprintf(a.Out, "%s route %s/%d next-hop self\n", verb, addr, addr.BitLen()); err != nil {
		return fmt.Errorf("write to exabgp: %w", err)
	}
	return nil
}

// set announces or withdraws r. A withdrawal that cannot be written still
// counts: ExaBGP, gone, took its sessions and their routes with it.
func (a *Announcer) set(r *route, announce bool) error {
	verb := "withdraw"
	if announce {
		verb = "announce"
	}
	err := a.write(verb, r.addr)
	if err != nil && announce {
		return err
	}
	r.announced, r.streak, r.since = announce, 0, a.Now()
	if announce {
		r.reason = ""
	}
	a.Log.Info(verb+" route", "address", r.addr.String(), "reason", r.reason)
	return err
}

func (a *Announcer) withdrawAll(routes []*route) error {
	var first error
	for _, r := range routes {
		if r.announced {
			r.reason = "announce stopped"
			if err := a.set(r, false); err != nil && first == nil {
				first = err
			}
		}
	}
	a.record(routes)
	return first
}

func (a *Announcer) record(routes []*route) {
	if a.Record == nil {
		return
	}
	a.recorded = a.Now()
	rep := &watcher.Announced{PID: os.Getpid(), Updated: a.recorded.UTC()}
	for _, r := range routes {
		rep.Routes = append(rep.Routes, watcher.AnnouncedAddr{Address: r.addr.String(), Announced: r.announced, Since: r.since.UTC(), Reason: r.reason})
	}
	if err := a.Record(rep); err != nil {
		a.Log.Warn("cannot record the announced routes for status", "err", err)
	}
}

// HTTPProbe checks an address by asking HAProxy for path on port there,
// expecting 200 (HAProxy's monitor-uri answers 200, or 503 when a "monitor
// fail" condition holds).
func HTTPProbe(port uint16, path string) func(ctx context.Context, addr netip.Addr) error {
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return func(ctx context.Context, addr netip.Addr) error {
		url := "http://" + netip.AddrPortFrom(addr, port).String() + path
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("check %s: %w", url, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("check %s: HTTP %d", url, resp.StatusCode)
		}
		return nil
	}
}
