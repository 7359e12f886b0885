package watcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"haproxy-config/assemble"
	"haproxy-config/certs"
	"haproxy-config/reconcile"
	"haproxy-config/reload"
	"haproxy-config/settings"
)

// certsKey is the burst key of a reload the certificate manager asked for.
const certsKey = "(certificates)"

// CertSummary is the certificates part of the status.
type CertSummary struct {
	Domains int `json:"domains"`
	// by condition: valid, renewing, pending, failing, expired, removing, fallback
	Conditions map[string]int `json:"conditions"`
	// the soonest expiry among served certificates
	NextExpiry *CertWhen `json:"next_expiry,omitempty"`
	// the next renewal due
	NextRenewal *CertWhen `json:"next_renewal,omitempty"`
	// orders in the current budget window, of how many allowed
	OrdersInWindow int `json:"orders_in_window"`
	// fleet mode: OrdersInWindow counts the fleet's orders (as this node
	// last read the fleet's budget), not only this node's
	FleetOrders bool   `json:"fleet_orders,omitempty"`
	OrderBudget int    `json:"order_budget"`
	InFlight    int    `json:"in_flight"`
	CAError     string `json:"ca_error,omitempty"`
	// failing domains with their last error
	Failing map[string]string `json:"failing,omitempty"`
	// domains served the fallback, with why none can be ordered
	Fallback map[string]string `json:"fallback,omitempty"`
}

// CertWhen names a domain and a time.
type CertWhen struct {
	Domain string    `json:"domain"`
	At     time.Time `json:"at"`
}

// newCertManager builds the certificate manager from the settings.
func (d *Daemon) newCertManager(s *settings.Settings, ch *certs.Challenges) (*certs.Manager, error) {
	a := s.ACME
	dns, err := newDNS(s, d.Log.With("component", "dns-01"))
	if err != nil {
		return nil, err
	}
	m := &certs.Manager{
		Policy: certs.Policy{Orders: a.Orders, Window: a.OrderWindow, InFlight: a.InFlight,
			BackoffMin: a.BackoffMin, BackoffMax: a.BackoffMax, RemoveGrace: a.RemoveGrace, ARIPoll: 6 * time.Hour},
		CertsDir:  s.CertsDir,
		CrtList:   s.CrtList(),
		StateDir:  s.StateDir,
		ARI:       a.ARI,
		Extra:     a.ExtraDomains,
		Selection: certs.Selection{DNS: dns != nil, DNSSuffixes: a.DNS.Suffixes},
		DNS:       dns,
		Log:       d.Log.With("component", "certs"),
		Issuer: func(ctx context.Context) (certs.Issuer, error) {
			return d.connectCA(ctx, certs.ACMEConfig{Directory: a.Directory, Email: a.Email, KeyType: a.KeyType,
				Profile: a.Profile, EABKeyID: a.EABKeyID, EABHMAC: a.EABHMAC, Storage: certs.NewFileStorage(s.StateDir, s.CertsDir)}, ch, dns)
		},
		Reload:  func(reason string) { d.certEvent(reason) },
		Changed: func() { d.certEvent("") },
		Loader:  runtimeCerts{rt: d.rt, list: s.CrtList(), mu: &d.runtimeMu},
	}
	if d.fleetStore != nil {
		m.Shared, m.Node = d.fleetStore, s.Fleet.Node
	}
	if a.CheckDNS {
		addrs, err := balancerAddresses(a.Addresses)
		if err != nil {
			return nil, err
		}
		m.Addresses = addrs
		m.Resolve = net.DefaultResolver.LookupIPAddr
	}
	return m, m.Init()
}

// connectCA makes the ACME client. In fleet mode the account is the
// fleet's, in etcd: etcd must answer first (and this node's own account
// is copied there if the fleet has none), and a failure while etcd does
// not answer wraps certs.ErrSharedUnavailable, so the manager tries again
// soon rather than backing off as from the CA.
func (d *Daemon) connectCA(ctx context.Context, cfg certs.ACMEConfig, ch *certs.Challenges, dns *certs.DNS) (certs.Issuer, error) {
	if d.fleet != nil {
		if err := d.fleet.ready(ctx); err != nil {
			return nil, err
		}
		cfg.Storage = d.fleetStore
	}
	iss, err := certs.NewACME(ctx, cfg, ch, dns, d.Log.With("component", "acme"))
	if err != nil {
		if d.fleet != nil {
			if perr := d.fleetStore.Ping(ctx); perr != nil {
				return nil, fmt.Errorf("%w: %w (%v)", certs.ErrSharedUnavailable, perr, err)
			}
		}
		return nil, err
	}
	return iss, nil
}

// openFleet opens the fleet's storage in fleet mode; the returned
// function closes it. etcd is not waited for: the heartbeat tells when it
// answers.
func (d *Daemon) openFleet() (closeFleet func(), err error) {
	st, err := OpenFleet(d.s)
	if err != nil || st == nil {
		return func() {}, err
	}
	s := d.s
	d.fleetStore = st
	f := newFleetNode(st, s.Fleet, d.Log.With("component", "fleet"))
	f.version, f.health = d.Version, d.Health
	f.changed = func() { d.certEvent("") } // a status refresh
	f.served = func() int {
		if d.certs == nil {
			return 0
		}
		n := 0
		for _, dom := range d.certs.Snapshot().Domains {
			if dom.File != "" {
				n++
			}
		}
		return n
	}
	local := certs.NewFileStorage(s.StateDir, s.CertsDir)
	f.migrate = func(ctx context.Context) error {
		copied, err := certs.MigrateAccount(ctx, local, st, s.ACME.Directory)
		if copied {
			f.log.Info("acme account copied to the fleet: the fleet registers none", "directory", s.ACME.Directory)
		}
		return err
	}
	d.fleet = f
	d.Log.Info("fleet mode", "node", s.Fleet.Node, "prefix", s.Fleet.Prefix, "endpoints", strings.Join(s.Fleet.Endpoints, ","))
	return func() {
		if err := st.Close(); err != nil {
			d.Log.Warn("close the etcd client", "err", err)
		}
	}, nil
}

// newDNS builds the DNS-01 provider the settings name, nil for none. The
// TSIG secret is read here, by the daemon alone.
func newDNS(s *settings.Settings, log *slog.Logger) (*certs.DNS, error) {
	c := s.ACME.DNS
	if c.Provider == "" {
		return nil, nil
	}
	cfg := certs.DNSConfig{Provider: c.Provider, Nameserver: c.Nameserver, TSIGKey: c.TSIGKey, TSIGAlgorithm: c.TSIGAlgorithm,
		Program: c.Exec, Resolvers: c.Resolvers, PropagationTimeout: c.PropagationTimeout, PollingInterval: c.PollingInterval, TTL: c.TTL}
	if c.TSIGSecretFile != "" {
		if err := certs.ReadTSIGSecret(c.TSIGSecretFile, &cfg); err != nil {
			return nil, &reconcile.UsageError{Err: fmt.Errorf("setting %sACME_DNS_TSIG_SECRET_FILE: %w", settings.EnvPrefix, err)}
		}
	}
	dns, err := certs.NewDNS(cfg, certs.NewFileStorage(s.StateDir, s.CertsDir), log)
	if err != nil {
		return nil, &reconcile.UsageError{Err: fmt.Errorf("setting %sACME_DNS_PROVIDER: %w", settings.EnvPrefix, err)}
	}
	return dns, nil
}

// balancerAddresses are the configured addresses (ACME_ADDRESSES, checked
// when the settings are read), or those of the machine's interfaces.
func balancerAddresses(configured []string) ([]net.IP, error) {
	var out []net.IP
	for _, a := range configured {
		out = append(out, net.ParseIP(a)) // checked with the settings
	}
	if len(out) > 0 {
		return out, nil
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("this balancer's addresses: %w", err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			out = append(out, n.IP)
		}
	}
	return out, nil
}

// initCerts builds the certificate manager when ACME is on. Its Init
// makes the crt-list agree with the certificate files on disk, so it runs
// before HAProxy loads them.
func (d *Daemon) initCerts() error {
	if !d.s.ACME.Enabled {
		return nil
	}
	d.challenges = certs.NewChallenges()
	if d.fleetStore != nil {
		// any node answers any token, from its copy of the fleet's
		d.tokenCache = certs.NewTokenCache(d.fleetStore, certs.TokenMissRate, certs.TokenMissBurst, certs.TokenMissWait)
		d.challenges = certs.ChallengesIn(d.tokenCache)
	}
	m, err := d.newCertManager(d.s, d.challenges)
	if err != nil {
		return err
	}
	d.certs = m
	return nil
}

// runCerts serves HTTP-01 challenges (in fleet mode from the token
// cache, which it keeps up to date) and runs the certificate manager;
// the returned function stops them and waits for them.
func (d *Daemon) runCerts(ctx context.Context) (stop func(), err error) {
	if d.certs == nil {
		return func() {}, nil
	}
	stopHandler, err := d.challenges.Serve(d.s.ChallengeAddr, d.Log)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	var caching sync.WaitGroup
	if d.tokenCache != nil {
		caching.Go(func() { d.tokenCache.Run(ctx) })
	}
	d.setCertDomains()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := d.certs.Run(ctx); err != nil {
			d.Log.Error("certificate manager stopped", "err", err)
		}
	}()
	return func() {
		cancel()
		<-done
		stopHandler()
		caching.Wait()
	}, nil
}

// certEvent hands a request of the certificate manager to the loop: a
// reload (reason set) or a status refresh. It never blocks: the loop may
// be stopping.
func (d *Daemon) certEvent(reason string) {
	if reason != "" {
		d.certMu.Lock()
		d.certReload = reason
		d.certMu.Unlock()
	}
	select {
	case d.certEvents <- struct{}{}:
	default: // the loop has not taken the previous one yet
	}
}

// onCertEvent runs in the loop.
func (d *Daemon) onCertEvent() {
	d.certMu.Lock()
	reason := d.certReload
	d.certReload = ""
	d.certMu.Unlock()
	if reason != "" {
		d.Log.Info("reload asked for by the certificate manager", "reason", reason)
		d.ro.force = reason
		d.change(certsKey, true)
	}
	d.writeStatus()
}

// setCertDomains tells the certificate manager the live map's domains and
// the ones any stored fragment names.
func (d *Daemon) setCertDomains() {
	if d.certs == nil {
		return
	}
	live, err := readMapFile(d.s.OutputMap)
	if err != nil {
		d.Log.Warn("read the live map for certificates", "err", err)
		return
	}
	d.certs.SetDomains(slices.Collect(maps.Keys(live)), d.storedDomains, d.domainOwner)
}

// noteStored remembers every domain the stored fragments name, valid or
// not: their certificates are never removed.
func (d *Daemon) noteStored(sel *reconcile.Selection) {
	if sel == nil || d.certs == nil {
		// only the certificate manager asks (at 10,000 fragments this
		// is 50,000 domains sorted on every publish)
		return
	}
	var names []string
	d.domainOwner = map[string]string{}
	for _, st := range sel.Stored {
		keys := assemble.HostMapKeys(st.Map)
		names = append(names, keys...)
		for _, k := range keys {
			if o, seen := d.domainOwner[k]; seen && o != st.Name {
				d.domainOwner[k] = "" // stored twice: nobody's for pairing
			} else {
				d.domainOwner[k] = st.Name
			}
		}
	}
	slices.Sort(names)
	d.storedDomains = slices.Compact(names)
}

// certSummary summarises the manager's state for the status.
func (d *Daemon) certSummary() *CertSummary {
	if d.certs == nil {
		return nil
	}
	st := d.certs.Snapshot()
	now := time.Now()
	sum := &CertSummary{Domains: len(st.Domains), Conditions: map[string]int{}, OrderBudget: d.s.ACME.Orders,
		InFlight: d.certs.InFlight(), CAError: d.certs.IssuerError()}
	for _, t := range st.Orders {
		if t.After(now.Add(-d.s.ACME.OrderWindow)) {
			sum.OrdersInWindow++
		}
	}
	if n, known := d.certs.FleetOrdersInWindow(); known {
		// the budget is the fleet's: its orders, as last read
		sum.OrdersInWindow, sum.FleetOrders = n, true
	}
	for _, dom := range st.Sorted() {
		c := dom.Condition(now)
		sum.Conditions[c]++
		if c == "fallback" {
			if sum.Fallback == nil {
				sum.Fallback = map[string]string{}
			}
			sum.Fallback[dom.Name] = dom.Blocked
		}
		if dom.LastError != "" {
			if sum.Failing == nil {
				sum.Failing = map[string]string{}
			}
			sum.Failing[dom.Name] = dom.LastError
		}
		if dom.File != "" && (sum.NextExpiry == nil || dom.NotAfter.Before(sum.NextExpiry.At)) {
			sum.NextExpiry = &CertWhen{Domain: dom.Name, At: dom.NotAfter.UTC()}
		}
		if !dom.RenewAt.IsZero() && dom.RemovedAt.IsZero() && (sum.NextRenewal == nil || dom.RenewAt.Before(sum.NextRenewal.At)) {
			sum.NextRenewal = &CertWhen{Domain: dom.Name, At: dom.RenewAt.UTC()}
		}
	}
	return sum
}

// runtimeCerts puts certificates into the running HAProxy through the
// runtime API. It holds the runtime lock, so it never talks to a worker
// that a reload is replacing.
type runtimeCerts struct {
	rt   *reload.Runtime
	list string      // the crt-list the HTTPS frontend loads
	mu   *sync.Mutex // the daemon's runtime lock
}

func (l runtimeCerts) Load(ctx context.Context, path string, bundle []byte, names []string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.rt.SetCert(ctx, path, bundle); err != nil {
		return err
	}
	entries, err := l.rt.ShowCrtList(ctx, l.list)
	if err != nil {
		return err
	}
	for _, name := range names {
		if slices.ContainsFunc(entries, func(e reload.CrtListEntry) bool { return e.Cert == path && slices.Contains(e.SNIs, name) }) {
			continue
		}
		if err := l.rt.AddCrtList(ctx, l.list, path, []string{name}); err != nil {
			return err
		}
	}
	return nil
}

func (l runtimeCerts) Unload(ctx context.Context, path string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	lines, err := l.lines(ctx, path)
	if err != nil {
		return err
	}
	// the last line first: the numbers of those before it stay put
	for _, n := range slices.Backward(lines) {
		ref := path
		if len(lines) > 1 {
			// HAProxy refuses to guess which line of a certificate listed twice
			ref = path + ":" + strconv.Itoa(n)
		}
		if err := l.rt.DelCrtList(ctx, l.list, ref); err != nil {
			return err
		}
	}
	known, err := l.rt.CertKnown(ctx, path)
	if err != nil || !known {
		return err
	}
	return l.rt.DelCert(ctx, path)
}

// lines are the numbers of HAProxy's crt-list lines for path, ascending.
func (l runtimeCerts) lines(ctx context.Context, path string) ([]int, error) {
	out, err := l.rt.Command(ctx, "show ssl crt-list -n "+l.list, nil)
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(out, "# ") {
		return nil, &reload.RefusedError{Command: "show ssl crt-list -n " + l.list, Answer: out}
	}
	var lines []int
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		i := strings.LastIndexByte(f[0], ':')
		if n, err := strconv.Atoi(f[0][i+1:]); i > 0 && err == nil && f[0][:i] == path {
			lines = append(lines, n)
		}
	}
	slices.Sort(lines)
	return lines, nil
}

// certRenewal renews certificates for the API: the manager, and the
// runtime API that tells which certificate HAProxy serves.
type certRenewal struct {
	m  *certs.Manager
	rt *reload.Runtime
	mu *sync.Mutex // the daemon's runtime lock
}

// certRenewal is what the API needs to renew certificates, nil when ACME
// is off.
func (d *Daemon) certRenewal() *certRenewal {
	if d.certs == nil {
		return nil
	}
	return &certRenewal{m: d.certs, rt: d.rt, mu: &d.runtimeMu}
}

// renew asks the certificate manager to renew the certificates of names
// (every one it may order when none are named) and returns the first
// answer, and how to wait until HAProxy serves the new certificates.
func (a *apiServer) renew(names []string) (*Answer, func(context.Context) error) {
	if a.certs == nil {
		return &Answer{Error: toWire(&reconcile.UsageError{Err: errors.New("certs renew: certificates are off (HAPROXY_CONFIG_ACME=false)")})}, nil
	}
	st := a.certs.m.Snapshot()
	for _, n := range names {
		if _, ok := st.Domains[n]; !ok {
			return &Answer{Error: toWire(&reconcile.UsageError{Err: fmt.Errorf("certs renew: %q has no certificate here (see haproxy-config certs)", n)})}, nil
		}
	}
	asked := time.Now()
	if err := a.certs.m.Renew(names); err != nil {
		return &Answer{Error: toWire(err)}, nil
	}
	renewing := slices.Clone(names)
	if len(renewing) == 0 {
		for name, d := range st.Domains {
			if d.RemovedAt.IsZero() && d.Blocked == "" {
				renewing = append(renewing, name)
			}
		}
	}
	slices.Sort(renewing)
	renewing = slices.Compact(renewing)
	before := map[string]string{}
	for _, n := range renewing {
		before[n] = st.Domains[n].Serial
	}
	a.log.Info("API: certificate renewal requested", "domains", strings.Join(renewing, ","))
	return &Answer{Renewing: renewing}, func(ctx context.Context) error {
		return a.certs.wait(ctx, before, asked, a.statusChanged)
	}
}

// wait blocks until HAProxy serves a certificate other than the one with
// the serial in before for each domain there, re-reading whenever changed's
// channel is closed. It fails when an order asked for after asked fails,
// or a domain cannot be renewed.
func (r *certRenewal) wait(ctx context.Context, before map[string]string, asked time.Time, changed func() <-chan struct{}) error {
	for {
		next := changed() // before the read, so that no change is missed
		pending, err := r.pending(ctx, before, asked)
		if err != nil || len(pending) == 0 {
			return err
		}
		select {
		case <-ctx.Done():
			return &NotLiveError{Why: fmt.Sprintf("timed out waiting for the renewed certificates of %s (see haproxy-config certs)", strings.Join(pending, ", "))}
		case <-next:
		case <-pollAfter(next):
		}
	}
}

// pending returns the domains of before whose new certificate HAProxy does
// not serve yet.
func (r *certRenewal) pending(ctx context.Context, before map[string]string, asked time.Time) ([]string, error) {
	st := r.m.Snapshot()
	var pending []string
	for _, name := range slices.Sorted(maps.Keys(before)) {
		d := st.Domains[name]
		switch {
		case d == nil || !d.RemovedAt.IsZero():
			return nil, &NotLiveError{Why: fmt.Sprintf("%s left the map: its certificate is not renewed", name)}
		case d.Blocked != "":
			return nil, &NotLiveError{Why: fmt.Sprintf("no certificate can be ordered for %s: %s", name, d.Blocked)}
		case d.LastErrorAt.After(asked):
			return nil, &NotLiveError{Why: fmt.Sprintf("the renewal of %s failed: %s; next attempt at %s (see haproxy-config certs)",
				name, d.LastError, d.NextAttempt.UTC().Format(time.RFC3339))}
		case d.File == "" || d.Serial == before[name]:
			pending = append(pending, name)
			continue
		}
		if served, err := r.served(ctx, filepath.Join(r.m.CertsDir, d.File)); err != nil || !sameSerial(served, d.Serial) {
			pending = append(pending, name)
		}
	}
	return pending, nil
}

// served is the serial of the certificate HAProxy stores under path.
func (r *certRenewal) served(ctx context.Context, path string) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rt.CertSerial(ctx, path)
}

// sameSerial compares two hexadecimal serial numbers, whatever their case
// and leading zeros.
func sameSerial(a, b string) bool {
	norm := func(s string) string { return strings.TrimLeft(strings.ToLower(s), "0") }
	return a != "" && norm(a) == norm(b)
}
