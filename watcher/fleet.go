package watcher

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"haproxy-config/assemble"
	"haproxy-config/certs"
	"haproxy-config/certs/etcdstorage"
	"haproxy-config/reconcile"
	"haproxy-config/settings"
)

// Fleet mode (settings.Fleet): the certificate manager shares its account,
// certificates, tokens and locks through etcd, and the daemon stores a
// Heartbeat under certs.Keys.Node every FLEET_HEARTBEAT, pinging etcd
// first: the status, the metrics and the logs say since when etcd is
// unreachable.

// Heartbeat is what a node of a fleet tells the others, stored as JSON at
// certs.Keys.Node(node): "haproxy-config fleet" reads them.
type Heartbeat struct {
	Node    string    `json:"node"`
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
	Seen    time.Time `json:"seen"`
	// how often the node stores its heartbeat: it is stale after
	// StaleAfter of them
	IntervalSeconds float64 `json:"interval_seconds"`
	Generation      int     `json:"generation"` // the live generation, 0 for none
	// FragmentsDigest of the live generation, "" for none
	FragmentsDigest string `json:"fragments_digest"`
	// sha256 of the base config template (it may differ between nodes:
	// their addresses)
	BaseDigest   string `json:"base_digest"`
	Certificates int    `json:"certificates"` // certificates served
	Health       string `json:"health"`       // status --check's level: OK, WARNING, CRITICAL
	Version      string `json:"version"`
}

// StaleAfter is the number of heartbeat intervals after which a node not
// seen again is stale, and etcd unreachable for longer is a warning.
const StaleAfter = 3

// Interval is how often the node stores its heartbeat.
func (h *Heartbeat) Interval() time.Duration {
	return time.Duration(h.IntervalSeconds * float64(time.Second))
}

// Stale reports whether the node was last seen more than StaleAfter
// intervals before now.
func (h *Heartbeat) Stale(now time.Time) bool {
	return now.Sub(h.Seen) > StaleAfter*h.Interval()
}

// FragmentsDigest is the digest of a generation's fragments: sha256 over
// each fragment's name and checksum, by name. The assembled configuration
// is not digested: its base may differ between nodes on purpose.
func FragmentsDigest(fragments map[string]string) string {
	h := sha256.New()
	for _, name := range slices.Sorted(maps.Keys(fragments)) {
		fmt.Fprintf(h, "%s %s\n", name, fragments[name])
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// FleetStatus is the fleet part of the status.
type FleetStatus struct {
	Node      string   `json:"node"`
	Prefix    string   `json:"prefix"`
	Endpoints []string `json:"endpoints"`
	// etcd answered the last check (false too before the first)
	Reachable        bool       `json:"reachable"`
	UnreachableSince *time.Time `json:"unreachable_since,omitempty"`
	LastError        string     `json:"last_error,omitempty"`
	LastErrorAt      time.Time  `json:"last_error_at,omitzero"`
	// the last heartbeat stored, and how often one is
	LastHeartbeat    time.Time `json:"last_heartbeat,omitzero"`
	HeartbeatSeconds float64   `json:"heartbeat_seconds"`
}

// OpenFleet opens the fleet's etcd storage the settings name, nil when
// fleet mode is off. It does not wait for etcd. Settings that cannot work
// (a key file or TLS file that cannot be read) are usage errors naming
// the setting.
func OpenFleet(s *settings.Settings) (*etcdstorage.Storage, error) {
	f := s.Fleet
	if !f.Enabled() {
		return nil, nil
	}
	bad := func(key string, err error) error {
		return &reconcile.UsageError{Err: fmt.Errorf("setting %s%s: %w", settings.EnvPrefix, key, err)}
	}
	tlsConf, err := fleetTLS(f, bad)
	if err != nil {
		return nil, err
	}
	st, err := etcdstorage.Open(etcdstorage.Config{Endpoints: f.Endpoints, TLS: tlsConf, Prefix: f.Prefix,
		KeyFile: f.SealKey, Owner: f.Node, LockTTL: f.LockTTL})
	if err != nil {
		if kf := (*etcdstorage.KeyFileError)(nil); errors.As(err, &kf) {
			return nil, bad("FLEET_KEY_FILE", err)
		}
		return nil, bad("ETCD_ENDPOINTS", err)
	}
	return st, nil
}

// fleetTLS is the TLS configuration of the etcd client: nil for http://
// endpoints.
func fleetTLS(f settings.Fleet, bad func(string, error) error) (*tls.Config, error) {
	secure := slices.ContainsFunc(f.Endpoints, func(e string) bool { return strings.HasPrefix(e, "https://") })
	switch {
	case !secure && f.CAFile != "":
		return nil, bad("ETCD_CA_FILE", errors.New("TLS needs https:// endpoints in HAPROXY_CONFIG_ETCD_ENDPOINTS"))
	case !secure && f.CertFile != "":
		return nil, bad("ETCD_CERT_FILE", errors.New("TLS needs https:// endpoints in HAPROXY_CONFIG_ETCD_ENDPOINTS"))
	case !secure:
		return nil, nil
	case slices.ContainsFunc(f.Endpoints, func(e string) bool { return strings.HasPrefix(e, "http://") }):
		return nil, bad("ETCD_ENDPOINTS", errors.New("mixes http:// and https:// endpoints"))
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.CAFile != "" {
		pem, err := os.ReadFile(f.CAFile)
		if err != nil {
			return nil, bad("ETCD_CA_FILE", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, bad("ETCD_CA_FILE", fmt.Errorf("%s holds no PEM certificate", f.CAFile))
		}
	}
	if f.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return nil, bad("ETCD_CERT_FILE", fmt.Errorf("the client certificate and ETCD_KEY_FILE: %w", err))
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}

// fleetNode keeps this node's part in the fleet: etcd's reachability and
// the heartbeat. The loop hands it what it knows (setLive) and reads its
// status (snapshot); its own goroutine (run) pings and stores.
type fleetNode struct {
	st       *etcdstorage.Storage
	cfg      settings.Fleet
	log      *slog.Logger
	pid      int
	started  time.Time
	version  string
	health   func() string // nil: ""
	served   func() int    // certificates served
	changed  func()        // the status changed: write it
	migrate  func(ctx context.Context) error
	migrated atomic.Bool
	// run's own: a heartbeat was stored, and the last one read was
	// another process's (two nodes with one NODE_NAME)
	stored, twin bool

	mu      sync.Mutex
	status  FleetStatus
	checked bool // etcd was checked once
	live    liveDigest
}

// liveDigest is what the loop knows of the live generation and the base.
type liveDigest struct {
	generation    int
	fragments     string
	base          string // the base config's path
	baseIsDefault bool
}

func newFleetNode(st *etcdstorage.Storage, cfg settings.Fleet, log *slog.Logger) *fleetNode {
	return &fleetNode{st: st, cfg: cfg, log: log, pid: os.Getpid(), started: time.Now().UTC(),
		status: FleetStatus{Node: cfg.Node, Prefix: cfg.Prefix, Endpoints: cfg.Endpoints, HeartbeatSeconds: cfg.Heartbeat.Seconds()}}
}

// setLive tells the live generation (nil: none) and the base config.
func (f *fleetNode) setLive(g *reconcile.Generation, base string, baseIsDefault bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.live.base, f.live.baseIsDefault = base, baseIsDefault
	switch {
	case g == nil:
		f.live.generation, f.live.fragments = 0, ""
	case g.Number != f.live.generation:
		f.live.generation, f.live.fragments = g.Number, FragmentsDigest(g.Fragments)
	}
}

// snapshot is the fleet part of the status now.
func (f *fleetNode) snapshot() *FleetStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.status
	st.Endpoints = slices.Clone(st.Endpoints)
	return &st
}

// run stores a heartbeat at once and then every interval until ctx ends.
func (f *fleetNode) run(ctx context.Context) {
	t := time.NewTicker(f.cfg.Heartbeat)
	defer t.Stop()
	for {
		f.beat(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// beat pings etcd, stores the heartbeat and, once etcd answers, brings
// this node's ACME account to the fleet.
func (f *fleetNode) beat(ctx context.Context) {
	at := time.Now()
	err := f.st.Ping(ctx)
	if err == nil {
		err = f.store(ctx)
	}
	if ctx.Err() != nil {
		return // stopping: not etcd's fault
	}
	f.reached(err, at)
	if err == nil {
		if err := f.migrateOnce(ctx); err != nil {
			f.log.Warn("acme account not copied to the fleet: tried again at the next heartbeat", "err", err)
		}
	}
}

// store writes this node's heartbeat. Once it stored one, it reads the
// stored heartbeat first: another process's there means two nodes share
// NODE_NAME, which the log says (once until it stops).
func (f *fleetNode) store(ctx context.Context) error {
	key := certs.Keys.Node(f.cfg.Node)
	if f.stored {
		if data, err := f.st.Load(ctx, key); err == nil {
			var other Heartbeat
			twin := json.Unmarshal(data, &other) == nil && (other.PID != f.pid || !other.Started.Equal(f.started))
			if twin && !f.twin {
				f.log.Error("another node stores its heartbeat as this one: give each node a NODE_NAME of its own",
					"node", f.cfg.Node, "other_pid", other.PID, "other_started", other.Started.Format(time.RFC3339))
			}
			f.twin = twin
		}
	}
	hb := f.heartbeat(time.Now())
	data, err := json.Marshal(hb)
	if err != nil {
		return err
	}
	if err := f.st.Store(ctx, key, data); err != nil {
		return err
	}
	f.stored = true
	f.mu.Lock()
	f.status.LastHeartbeat = hb.Seen
	f.mu.Unlock()
	return nil
}

// heartbeat is this node's heartbeat at now.
func (f *fleetNode) heartbeat(now time.Time) *Heartbeat {
	f.mu.Lock()
	live := f.live
	f.mu.Unlock()
	hb := &Heartbeat{Node: f.cfg.Node, PID: f.pid, Started: f.started, Seen: now.UTC(), IntervalSeconds: f.cfg.Heartbeat.Seconds(),
		Generation: live.generation, FragmentsDigest: live.fragments, BaseDigest: baseDigest(live.base, live.baseIsDefault), Version: f.version}
	if f.served != nil {
		hb.Certificates = f.served()
	}
	if f.health != nil {
		hb.Health = f.health()
	}
	return hb
}

// baseDigest is the sha256 of the base config template, "" when it
// cannot be read.
func baseDigest(path string, isDefault bool) string {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && isDefault {
		data, err = assemble.DefaultBase, nil
	}
	if err != nil || path == "" {
		return ""
	}
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// reached records the outcome of a check of etcd begun at the time at:
// nil, it answered. The log tells of each change, once.
func (f *fleetNode) reached(err error, at time.Time) {
	now := time.Now().UTC()
	at = at.UTC()
	f.mu.Lock()
	first, was := !f.checked, f.status.Reachable
	f.checked = true
	st := &f.status
	changed := first || was != (err == nil)
	if err != nil {
		changed = changed || st.LastError != err.Error()
		st.LastError, st.LastErrorAt = err.Error(), now
		if was || first {
			st.UnreachableSince = &at
		}
	}
	since := st.UnreachableSince
	st.Reachable = err == nil
	if err == nil {
		st.UnreachableSince = nil
	}
	f.mu.Unlock()
	switch {
	case err != nil && (was || first):
		f.log.Error("etcd unreachable since "+since.Format(time.RFC3339)+": serving what this node has; no order starts until it answers",
			"endpoints", strings.Join(f.cfg.Endpoints, ","), "err", err)
	case err == nil && !was && !first:
		f.log.Info("etcd reachable again", "unreachable_since", since.Format(time.RFC3339), "for", now.Sub(*since).Truncate(time.Second).String())
	case err == nil && first:
		f.log.Info("etcd reachable: fleet mode", "node", f.cfg.Node, "prefix", f.cfg.Prefix)
	}
	if changed && f.changed != nil {
		f.changed()
	}
}

// migrateOnce brings this node's ACME account to the fleet, until it is
// done once.
func (f *fleetNode) migrateOnce(ctx context.Context) error {
	if f.migrate == nil || f.migrated.Load() {
		return nil
	}
	if err := f.migrate(ctx); err != nil {
		return err
	}
	f.migrated.Store(true)
	return nil
}

// ready checks, before the certificate manager connects to the CA, that
// etcd answers and this node's account is in the fleet's storage; an
// error wraps certs.ErrSharedUnavailable.
func (f *fleetNode) ready(ctx context.Context) error {
	err := f.st.Ping(ctx)
	if err == nil {
		err = f.migrateOnce(ctx)
	}
	if err != nil {
		return fmt.Errorf("%w: %w", certs.ErrSharedUnavailable, err)
	}
	return nil
}

// runFleet starts the heartbeat; the returned function stops it and
// waits for it.
func (d *Daemon) runFleet(ctx context.Context) (stop func()) {
	if d.fleet == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.fleet.run(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

// FleetNode is one node as "haproxy-config fleet" shows it.
type FleetNode struct {
	Name            string    `json:"name"`
	Seen            time.Time `json:"seen"`
	Stale           bool      `json:"stale"`
	Generation      int       `json:"generation"`
	FragmentsDigest string    `json:"fragments_digest"`
	BaseDigest      string    `json:"base_digest"`
	Certificates    int       `json:"certificates"`
	Health          string    `json:"health"`
	Flagged         bool      `json:"flagged"`
	Why             string    `json:"why"`
	// the heartbeat's interval, for the age shown
	Interval time.Duration `json:"-"`
}

// JudgeFleet flags the nodes whose fragments differ from the fleet's (the
// digest most live nodes have; when no digest has more nodes than every
// other, as in a pair that drifted, every node) or that are stale at now. Stale nodes do not count in
// the majority, unless every node is stale. The nodes come back by name.
func JudgeFleet(hbs []Heartbeat, now time.Time) []FleetNode {
	count := map[string]int{}
	live := 0
	for _, h := range hbs {
		if !h.Stale(now) {
			live++
		}
	}
	for _, h := range hbs {
		if live > 0 && h.Stale(now) {
			continue
		}
		count[h.FragmentsDigest]++
	}
	fleet, best, tied := "", -1, false
	for digest, n := range count {
		switch {
		case n > best:
			fleet, best, tied = digest, n, false
		case n == best:
			tied = true
		}
	}
	out := make([]FleetNode, 0, len(hbs))
	for _, h := range hbs {
		n := FleetNode{Name: h.Node, Seen: h.Seen, Stale: h.Stale(now), Generation: h.Generation, FragmentsDigest: h.FragmentsDigest,
			BaseDigest: h.BaseDigest, Certificates: h.Certificates, Health: h.Health, Interval: h.Interval()}
		var why []string
		if n.Stale {
			why = append(why, fmt.Sprintf("stale: not seen for %s (heartbeat every %s)", now.Sub(h.Seen).Truncate(time.Second), h.Interval()))
		}
		switch {
		case len(hbs) < 2:
		case tied:
			// a pair that drifted: which node is right is for an operator
			// to tell, not for the order of the heartbeats
			why = append(why, fmt.Sprintf("the nodes' fragments differ and no version has a majority (this node's: %s)", ShortDigest(h.FragmentsDigest)))
		case h.FragmentsDigest != fleet:
			why = append(why, fmt.Sprintf("its fragments differ from the fleet's (%s, not %s)", ShortDigest(h.FragmentsDigest), ShortDigest(fleet)))
		}
		n.Flagged, n.Why = len(why) > 0, strings.Join(why, "; ")
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b FleetNode) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// FlaggedError is "haproxy-config fleet"'s outcome when nodes are
// flagged (exit 8).
type FlaggedError struct{ Nodes []string }

func (e *FlaggedError) Error() string {
	return fmt.Sprintf("%d node(s) flagged: %s", len(e.Nodes), strings.Join(e.Nodes, ", "))
}

// ShortDigest is the first 12 hex digits of a digest, "-" for none.
func ShortDigest(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	if d == "" {
		return "-"
	}
	return d[:min(12, len(d))]
}

// ReadHeartbeats reads every node's heartbeat in the fleet's storage; one
// that does not parse is named in bad with its error.
func ReadHeartbeats(ctx context.Context, s certs.Storage) (hbs []Heartbeat, bad map[string]error, err error) {
	keys, err := s.List(ctx, certs.Keys.Nodes())
	if err != nil {
		return nil, nil, err
	}
	bad = map[string]error{}
	for _, key := range keys {
		data, err := s.Load(ctx, key)
		if errors.Is(err, fs.ErrNotExist) {
			continue // forgotten meanwhile
		}
		if err != nil {
			return nil, nil, err
		}
		var h Heartbeat
		if err := json.Unmarshal(data, &h); err != nil {
			bad[strings.TrimPrefix(key, certs.Keys.Nodes()+"/")] = err
			continue
		}
		hbs = append(hbs, h)
	}
	return hbs, bad, nil
}
