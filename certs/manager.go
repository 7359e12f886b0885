package certs

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// AllDomains is the renewal request for every domain.
const AllDomains = "_all"

// Loader puts certificates into the running HAProxy without a reload.
type Loader interface {
	// Load makes HAProxy serve the bundle at path for names, adding a
	// crt-list line for each name HAProxy does not list it for yet.
	Load(ctx context.Context, path string, bundle []byte, names []string) error
	// Unload takes the certificate at path out of the crt-list (every
	// line naming it) and out of HAProxy.
	Unload(ctx context.Context, path string) error
}

// Manager keeps a certificate for every wanted domain: it orders missing
// ones, renews them on time, backs off on failures within an order budget,
// hot-loads them into HAProxy and lets go of domains that left.
type Manager struct {
	Policy   Policy
	CertsDir string // the PEM files
	CrtList  string // the crt-list HAProxy loads
	StateDir string
	// Storage keeps what the manager persists (see Storage); nil: a
	// FileStorage on StateDir and CertsDir
	Storage Storage
	// Shared, when set, is the storage a fleet of balancers shares (see
	// Fleet mode in fleet.go): the ACME account, the certificates, the
	// order locks, the fleet's order budget and each domain's failure
	// state are kept there; the manager's own state, the renewal
	// requests and the DNS-01 journal stay in Storage, this node's.
	Shared Storage
	// Node names this balancer in the fleet (locks, heartbeats).
	Node string
	// LockWait bounds the wait for a lock in Shared (DefaultLockWait);
	// FleetRetry is when an order put off for want of the shared storage
	// or of the fleet's budget is tried again (DefaultFleetRetry); Resync
	// is how often every certificate is compared with the fleet's
	// (DefaultResync), besides the changes Shared reports as a Watcher.
	LockWait, FleetRetry, Resync time.Duration
	// Issuer connects to the CA; it is called again after a failure, so
	// a CA unreachable at start does not stop the daemon. An error
	// wrapping ErrSharedUnavailable (the account is in an unreachable
	// shared storage) is tried again after FleetRetry, not backed off.
	Issuer func(ctx context.Context) (Issuer, error)
	Loader Loader // nil: files only, every change needs a reload
	// Reload asks the daemon for a reload: the fallback when Loader fails
	Reload func(reason string)
	// Changed, when set, is called after the state changed
	Changed func()
	// Resolve looks a name up for the DNS check; nil skips the check
	Resolve func(ctx context.Context, host string) ([]net.IPAddr, error)
	// Addresses are this balancer's: a domain is ordered only when it
	// resolves to one of them (with Resolve set)
	Addresses []net.IP
	ARI       bool
	Extra     []string // domains wanted besides the mapped ones
	// Selection picks each name's challenge
	Selection Selection
	// DNS, when set, removes at start the TXT records an earlier run left
	DNS    *DNS
	Log    *slog.Logger
	Now    func() time.Time
	Jitter Jitter

	store     Storage
	mu        sync.Mutex
	st        *State
	wanted    map[string]want
	protected map[string]bool
	domains   bool // SetDomains was called: before, nothing is removed
	running   map[string]bool
	issuer    Issuer
	issuerErr string
	// failed connections to the CA in a row
	issuerFailures int
	// the fleet's budget as this node last read it (fleet mode)
	fleetOrders []time.Time
	results     chan result
	wake        chan struct{}
	jobs        sync.WaitGroup
}

type jobKind int

const (
	orderJob jobKind = iota
	ariJob
	adoptJob // fleet mode: install another node's certificate (pem)
)

type result struct {
	kind      jobKind
	domain    string
	names     []string // what the order asks for
	challenge string
	reserved  time.Time // the order budget entry, given back when no order was made
	lease     Lease     // the order's lock, released once its outcome is stored
	ordered   bool      // the order reached the CA
	issued    *Issued
	ari       *ariAdvice
	err       error

	// fleet mode
	have     serving // what this node served when the job started
	failures int     // this node's failures then
	forced   bool    // a renewal was asked for here
	pem      []byte  // the fleet's certificate to install instead of ordering
	// the fleet's failure state: honoured, or the one this order left
	schedule *schedule
	// why the order was put off without a failure (no lock, no budget),
	// and until when at least
	deferred   string
	deferUntil time.Time
}

type ariAdvice struct {
	renewAt time.Time
	checkAt time.Time
}

// Init reads the persisted state and makes the files agree with it. Run
// calls it; the daemon calls it earlier so status can report certificates
// while HAProxy starts.
func (m *Manager) Init() error {
	if m.Now == nil {
		m.Now = time.Now
	}
	if m.Jitter == nil {
		m.Jitter = func(n time.Duration) time.Duration { return rand.N(n) }
	}
	m.store = m.Storage
	if m.store == nil {
		m.store = NewFileStorage(m.StateDir, m.CertsDir)
	}
	st, err := LoadState(context.Background(), m.store)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.st = st
	m.running = map[string]bool{}
	m.results = make(chan result)
	m.wake = make(chan struct{}, 1)
	for _, d := range st.Domains {
		if d.File == "" {
			continue
		}
		if leaf, err := readLeaf(filepath.Join(m.CertsDir, d.File)); err != nil {
			m.Log.Warn("certificate file unreadable: ordering a new one", "domain", d.Name, "err", err)
			d.File, d.Covers = "", nil
		} else {
			d.NotBefore, d.NotAfter, d.Covers = leaf.NotBefore, leaf.NotAfter, leaf.DNSNames
		}
	}
	// HAProxy must not be handed a crt-list naming a file that is gone
	want := crtList(m.CertsDir, st)
	if have, err := os.ReadFile(m.CrtList); err != nil || !bytes.Equal(have, want) {
		if err := writeSecret(m.CrtList, want); err != nil {
			return fmt.Errorf("write crt-list: %w", err)
		}
	}
	return m.saveLocked()
}

// SetDomains tells the manager the mapped domains (from the live map) and
// the protected ones (named by any stored fragment, quarantined or not):
// a protected domain's certificate is never removed. A certificate is
// protected while any of its names is.
//
// owner names the fragment that maps each domain: a name and its wildcard
// are one certificate only when one fragment maps both (nil: one owner for
// all).
func (m *Manager) SetDomains(mapped, protected []string, owner map[string]string) {
	wanted := m.Selection.plan(slices.Concat(mapped, m.Extra), owner)
	prot := map[string]bool{}
	for _, name := range protected {
		name = strings.ToLower(strings.TrimSuffix(name, "."))
		prot[name] = true
		if base, wild := strings.CutPrefix(name, "*."); wild {
			prot[base] = true // a SAN pair is kept under its plain name
		}
	}
	m.mu.Lock()
	m.wanted, m.protected, m.domains = wanted, prot, true
	m.mu.Unlock()
	m.poke()
}

// IssuerError is why the CA could not be reached, "" when it could.
func (m *Manager) IssuerError() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.issuerErr
}

func (m *Manager) poke() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Snapshot returns a copy of the state.
func (m *Manager) Snapshot() *State {
	m.mu.Lock()
	defer m.mu.Unlock()
	cp := &State{Domains: map[string]*Domain{}, Orders: slices.Clone(m.st.Orders), OrdersTotal: m.st.OrdersTotal}
	for name, d := range m.st.Domains {
		c := *d
		cp.Domains[name] = &c
	}
	return cp
}

// InFlight is the number of jobs (orders, renewal-information checks)
// running.
func (m *Manager) InFlight() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.running)
}

// Run keeps certificates until ctx ends, then waits for the jobs it
// started (their requests end with ctx).
func (m *Manager) Run(ctx context.Context) error {
	if m.st == nil {
		if err := m.Init(); err != nil {
			return err
		}
	}
	if m.DNS != nil {
		// before any order: a new record must not meet an old one
		n, err := m.DNS.RemoveLeftovers()
		if err != nil {
			m.Log.Warn("dns-01 records left by an earlier run not all removed", "removed", n, "err", err)
		}
	}
	if m.Shared != nil {
		m.jobs.Add(1)
		go func() {
			defer m.jobs.Done()
			m.runFleetSync(ctx)
		}()
	}
	var requests <-chan fsnotify.Event
	var watchErrs <-chan error
	if files, ok := m.store.(*FileStorage); ok {
		// renewal requests are files another process writes: watched;
		// elsewhere they are taken at each look
		fsw, err := watchRequests(files)
		if err != nil {
			return err
		}
		defer fsw.Close()
		requests, watchErrs = fsw.Events, fsw.Errors
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if next := m.tick(ctx); next.IsZero() {
			timer.Stop()
		} else {
			timer.Reset(max(next.Sub(m.Now()), 0))
		}
		select {
		case <-ctx.Done():
			done := make(chan struct{})
			go func() {
				m.jobs.Wait()
				close(done)
			}()
			for { // keep what finishing jobs deliver, then stop
				select {
				case r := <-m.results:
					m.finish(ctx, r)
				case <-done:
					return nil
				}
			}
		case <-m.wake:
		case <-timer.C:
		case <-requests:
		case err := <-watchErrs:
			m.Log.Warn("watching renewal requests", "err", err)
		case r := <-m.results:
			m.finish(ctx, r)
			if m.Changed != nil {
				m.Changed()
			}
		}
	}
}

// tick does what is due at the current time and returns when to look
// again (zero: only on a change).
func (m *Manager) tick(ctx context.Context) time.Time {
	now := m.Now()
	m.takeRequests(now)
	m.mu.Lock()
	if m.domains && m.st.setDomains(now, m.wanted) {
		m.saveLocked()
	}
	expired := m.st.expired(now, m.Policy, m.protected)
	m.mu.Unlock()
	for _, d := range expired {
		m.remove(ctx, d)
	}

	m.mu.Lock()
	connect := m.issuer == nil && m.needsIssuer(now)
	m.mu.Unlock()
	if connect {
		// outside the lock: status must not wait for the network
		iss, err := m.Issuer(ctx)
		if err != nil {
			shared := errors.Is(err, ErrSharedUnavailable)
			if m.IssuerError() != err.Error() {
				if shared {
					m.Log.Error("the fleet's storage is unreachable: no order starts until it answers", "retry", m.fleetRetry(), "err", err)
				} else {
					m.Log.Error("cannot reach the acme directory: retrying", "err", err)
				}
			}
			m.mu.Lock()
			m.issuerErr = err.Error()
			// the storage is not the CA: no backoff, and tried again soon
			wait := m.fleetRetry()
			if !shared {
				m.issuerFailures++
				wait = max(m.Policy.backoff(m.issuerFailures, m.Jitter), retryAfter(err))
			}
			m.mu.Unlock()
			return now.Add(wait)
		}
		m.mu.Lock()
		m.issuer, m.issuerErr, m.issuerFailures = iss, "", 0
		m.mu.Unlock()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.issuer != nil {
		m.startJobs(ctx, now)
	}
	return m.st.nextWake(now, m.Policy, m.running, m.protected, m.ARI)
}

// fleetNode is this node's name in fleet mode, "" otherwise.
func (m *Manager) fleetNode() string {
	if m.Shared == nil {
		return ""
	}
	return m.Node
}

// needsIssuer reports whether anything due needs the CA.
func (m *Manager) needsIssuer(now time.Time) bool {
	for _, d := range m.st.Domains {
		// whether one is due, not which first: no sort on every tick
		if d.dueNow(now, m.running) {
			return true
		}
		if !d.ARICheckAt.IsZero() && !now.Before(d.ARICheckAt) && d.RemovedAt.IsZero() {
			return true
		}
	}
	return false
}

// startJobs starts renewal-information checks and orders that are due,
// within the in-flight bound and the order budget. The state, with the
// budget entry and a provisional next attempt, is saved before an order
// starts: a crash during the order does not repeat it at once.
func (m *Manager) startJobs(ctx context.Context, now time.Time) {
	if m.ARI {
		for _, d := range m.st.Sorted() {
			if len(m.running) >= m.Policy.InFlight {
				return
			}
			if d.ARICheckAt.IsZero() || now.Before(d.ARICheckAt) || !d.RemovedAt.IsZero() || d.wants(now) || m.running[d.Name] {
				continue
			}
			d.ARICheckAt = time.Time{}
			m.launch(ctx, result{kind: ariJob, domain: d.Name}, d)
		}
	}
	var orders []*Domain
	for _, d := range m.st.due(now, m.running, m.fleetNode()) {
		if len(m.running)+len(orders) >= m.Policy.InFlight {
			break
		}
		if ok, _ := m.st.budget(now, m.Policy); !ok {
			break
		}
		m.st.Orders = append(m.st.Orders, now)
		m.st.OrdersTotal++
		// counted before the order: a daemon killed during orders, again
		// and again, still backs off
		d.Started++
		d.NextAttempt = now.Add(m.Policy.backoff(max(d.Started, d.Failures+1), m.Jitter))
		orders = append(orders, d)
	}
	if len(orders) == 0 {
		return
	}
	if err := m.saveLocked(); err != nil {
		// an order the state does not record could be repeated by the
		// next start: none starts
		for _, d := range orders {
			d.Started--
			m.st.Orders = m.st.Orders[:len(m.st.Orders)-1]
			m.st.OrdersTotal--
			d.NextAttempt = now.Add(m.Policy.BackoffMin)
		}
		return
	}
	for _, d := range orders {
		m.launch(ctx, result{kind: orderJob, domain: d.Name, names: slices.Clone(d.names()), challenge: d.Challenge, reserved: now}, d)
	}
}

// launch runs one job; its result comes back to the Run loop.
func (m *Manager) launch(ctx context.Context, r result, d *Domain) {
	m.running[d.Name] = true
	r.have, r.failures, r.forced = servingOf(d), d.Failures, d.Forced
	iss := m.issuer
	file := ""
	if d.File != "" {
		file = filepath.Join(m.CertsDir, d.File)
	}
	m.jobs.Add(1)
	go func() {
		defer m.jobs.Done()
		switch r.kind {
		case orderJob:
			if m.Shared != nil {
				m.orderInFleet(ctx, iss, &r, file)
			} else if r.lease, r.err = m.store.Lock(ctx, Keys.OrderLock(r.domain)); r.err == nil {
				m.order(ctx, iss, &r, file)
			}
		case ariJob:
			m.checkARI(iss, &r, file)
		}
		m.results <- r
	}()
}

// order checks the domain's DNS (for HTTP-01, where the CA must reach
// this balancer) and orders its certificate, naming the one it replaces
// when the CA offers renewal information.
func (m *Manager) order(ctx context.Context, iss Issuer, r *result, current string) {
	if r.challenge != DNS01 {
		if err := m.checkDNS(ctx, r.domain); err != nil {
			r.err = err
			return
		}
	}
	m.obtain(iss, r, current)
}

// obtain orders the certificate, naming the one it replaces when the CA
// offers renewal information.
func (m *Manager) obtain(iss Issuer, r *result, current string) {
	replaces := ""
	if m.ARI && current != "" {
		if leaf, err := readLeaf(current); err == nil {
			replaces = ARICertID(leaf)
		}
	}
	// lego orders again without "replaces" when the CA answers that the
	// certificate was replaced already, ACME.Obtain when it refuses the
	// field otherwise (refusedReplaces)
	r.ordered = true
	r.issued, r.err = iss.Obtain(r.names, r.challenge, replaces)
}

// checkARI asks the CA when to renew the current certificate.
func (m *Manager) checkARI(iss Issuer, r *result, current string) {
	leaf, err := readLeaf(current)
	if err != nil {
		r.err = err
		return
	}
	info, err := iss.RenewalInfo(leaf)
	if err != nil {
		r.err = err
		return
	}
	now := m.Now()
	poll := m.Policy.ARIPoll
	if info.RetryAfter > 0 {
		poll = min(max(info.RetryAfter, time.Minute), m.Policy.ARIPoll)
	}
	// a tenth of jitter: certificates issued together do not ask together
	adv := &ariAdvice{checkAt: now.Add(poll - m.Jitter(poll/10+1)), renewAt: info.SuggestedWindow.End}
	if at := info.ShouldRenewAt(now, poll); at != nil {
		adv.renewAt = *at
	}
	r.ari = adv
}

// errDNS marks a domain that does not point at this balancer.
var errDNS = errors.New("does not resolve to this balancer")

func (m *Manager) checkDNS(ctx context.Context, domain string) error {
	if m.Resolve == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	addrs, err := m.Resolve(ctx, domain)
	if err != nil {
		return fmt.Errorf("%s %w: %v", domain, errDNS, err)
	}
	var seen []string
	for _, a := range addrs {
		for _, mine := range m.Addresses {
			if a.IP.Equal(mine) {
				return nil
			}
		}
		seen = append(seen, a.IP.String())
	}
	return fmt.Errorf("%s %w (it resolves to %s)", domain, errDNS, strings.Join(seen, ", "))
}

// finish records a job's outcome.
func (m *Manager) finish(ctx context.Context, r result) {
	if r.lease != nil {
		defer func() {
			if err := r.lease.Unlock(context.WithoutCancel(ctx)); err != nil {
				m.Log.Warn("release order lock", "domain", r.domain, "err", err)
			}
		}()
	}
	now := m.Now()
	m.mu.Lock()
	if r.kind != adoptJob {
		delete(m.running, r.domain)
	}
	d := m.st.Domains[r.domain]
	if d == nil { // removed while the job ran
		m.mu.Unlock()
		return
	}
	if r.kind == ariJob {
		m.finishARI(d, r, now)
		m.saveLocked()
		m.mu.Unlock()
		return
	}
	if !r.ordered && r.kind == orderJob {
		// no order reached the CA: its budget entry is given back
		if i := slices.IndexFunc(m.st.Orders, func(t time.Time) bool { return t.Equal(r.reserved) }); i >= 0 {
			m.st.Orders = slices.Delete(m.st.Orders, i, i+1)
			m.st.OrdersTotal--
		}
		d.Started = max(d.Started-1, 0)
	}
	switch {
	case r.deferred != "":
		d.NextAttempt = maxTime(r.deferUntil, now.Add(m.fleetRetry()))
		m.Log.Warn("certificate order put off", "domain", d.Name, "why", r.deferred,
			"next_attempt", d.NextAttempt.UTC().Format(time.RFC3339))
		m.saveLocked()
		m.mu.Unlock()
		return
	case r.err != nil && r.schedule != nil: // the fleet's count, which includes this node's
		d.Failures, d.NextAttempt = r.schedule.Failures, r.schedule.NextAttempt
		d.LastError, d.LastErrorAt = r.schedule.LastError, r.schedule.LastErrorAt
	case r.err != nil:
		d.Failures++
		d.LastError, d.LastErrorAt = r.err.Error(), now.UTC()
		d.NextAttempt = now.Add(max(m.Policy.backoff(max(d.Failures, d.Started), m.Jitter), retryAfter(r.err)))
	case r.schedule != nil: // another node failed: its backoff holds here too
		d.Failures, d.NextAttempt = r.schedule.Failures, r.schedule.NextAttempt
		d.LastError, d.LastErrorAt = r.schedule.LastError, r.schedule.LastErrorAt
		m.Log.Info("certificate order put off: another node's order failed", "domain", d.Name,
			"next_attempt", d.NextAttempt.UTC().Format(time.RFC3339), "err", d.LastError)
		m.saveLocked()
		m.mu.Unlock()
		return
	}
	if r.err != nil {
		m.Log.Warn("certificate order failed", "domain", d.Name, "failures", d.Failures,
			"next_attempt", d.NextAttempt.UTC().Format(time.RFC3339), "err", r.err)
		m.saveLocked()
		m.mu.Unlock()
		return
	}
	path := filepath.Join(m.CertsDir, fileName(d.Name))
	pemBytes, leaf := r.pem, (*x509.Certificate)(nil)
	if r.issued != nil {
		pemBytes, leaf = bundle(r.issued), r.issued.Leaf
	} else if l, err := readLeafPEM(pemBytes); err == nil && better(l, servingOf(d), d.names(), now) {
		leaf = l
	}
	if leaf == nil { // the fleet's certificate is no better than this node's by now
		m.mu.Unlock()
		return
	}
	// stored even when the daemon stops: the order was made
	if err := m.keep(context.WithoutCancel(ctx), d.Name, path, pemBytes); err != nil {
		d.Failures++
		d.LastError, d.LastErrorAt = err.Error(), now.UTC()
		d.NextAttempt = now.Add(m.Policy.backoff(d.Failures, m.Jitter))
		m.Log.Error("write certificate", "domain", d.Name, "err", err)
		m.saveLocked()
		m.mu.Unlock()
		return
	}
	renewed := d.File != ""
	d.File, d.Covers = fileName(d.Name), leaf.DNSNames
	d.Issuer, d.Serial = leaf.Issuer.CommonName, leaf.SerialNumber.Text(16)
	d.NotBefore, d.NotAfter = leaf.NotBefore, leaf.NotAfter
	d.Failures, d.Started, d.LastError, d.LastErrorAt, d.NextAttempt, d.Forced = 0, 0, "", time.Time{}, time.Time{}, false
	d.RenewAt, d.RenewBy = lifetimeRenewal(leaf.NotBefore, leaf.NotAfter, m.Jitter), "lifetime"
	d.ARICheckAt = time.Time{}
	if m.ARI {
		d.ARICheckAt = now // ask the CA at once; the lifetime rule stands if it cannot say
	}
	listErr := writeSecret(m.CrtList, crtList(m.CertsDir, m.st))
	m.saveLocked()
	m.mu.Unlock()
	served := d.served()
	how := "certificate obtained"
	if r.issued == nil {
		how = "certificate installed from the fleet"
	}
	m.Log.Info(how, "domain", d.Name, "names", strings.Join(leaf.DNSNames, ","), "challenge", r.challenge,
		"renewal", renewed, "not_after", leaf.NotAfter.UTC().Format(time.RFC3339))
	if listErr != nil {
		m.Log.Error("write crt-list", "err", listErr)
	}
	m.install(ctx, d.Name, path, pemBytes, served)
}

func (m *Manager) finishARI(d *Domain, r result, now time.Time) {
	switch {
	case errors.Is(r.err, ErrNoARI):
		d.RenewBy, d.ARICheckAt = "lifetime", time.Time{}
	case r.err != nil:
		m.Log.Warn("renewal information unavailable: keeping the lifetime schedule", "domain", d.Name, "err", r.err)
		d.ARICheckAt = now.Add(min(m.Policy.ARIPoll, time.Hour))
	default:
		d.RenewAt, d.RenewBy, d.ARICheckAt = r.ari.renewAt, "ari", r.ari.checkAt
	}
}

// install hot-loads a certificate, falling back to a reload.
func (m *Manager) install(ctx context.Context, domain, path string, pemBytes []byte, names []string) {
	if m.Loader == nil {
		m.Reload("certificate for " + domain)
		return
	}
	if err := m.Loader.Load(ctx, path, pemBytes, names); err != nil {
		m.Log.Warn("runtime certificate update failed: reloading instead", "domain", domain, "err", err)
		m.Reload("certificate for " + domain)
	}
}

// remove lets go of a domain whose grace is over: out of HAProxy, off the
// disk, out of the state.
func (m *Manager) remove(ctx context.Context, d *Domain) {
	m.mu.Lock()
	if m.running[d.Name] {
		m.mu.Unlock()
		return
	}
	file := d.File
	delete(m.st.Domains, d.Name)
	listErr := writeSecret(m.CrtList, crtList(m.CertsDir, m.st))
	m.saveLocked()
	m.mu.Unlock()
	m.Log.Info("certificate removed: its domain left the map", "domain", d.Name, "left", d.RemovedAt.UTC().Format(time.RFC3339))
	if file == "" {
		return
	}
	path := filepath.Join(m.CertsDir, file)
	if listErr != nil {
		m.Log.Error("write crt-list", "err", listErr)
	}
	if m.Loader == nil {
		m.Reload("certificate removed for " + d.Name)
	} else if err := m.Loader.Unload(ctx, path); err != nil {
		m.Log.Warn("runtime certificate removal failed: reloading instead", "domain", d.Name, "err", err)
		m.Reload("certificate removed for " + d.Name)
	}
	if err := m.drop(ctx, d.Name, path); err != nil {
		m.Log.Warn("remove certificate file", "path", path, "err", err)
	}
}

// keep stores the certificate of domain and writes the local file HAProxy
// loads, path, when the storage does not keep it in that very file.
func (m *Manager) keep(ctx context.Context, domain, path string, pemBytes []byte) error {
	if err := m.store.Store(ctx, Keys.Certificate(domain), pemBytes); err != nil {
		return err
	}
	if m.isLocal(domain, path) {
		return nil
	}
	return writeSecret(path, pemBytes)
}

// drop deletes the certificate of domain from the storage and its local
// file, path.
func (m *Manager) drop(ctx context.Context, domain, path string) error {
	err := m.store.Delete(ctx, Keys.Certificate(domain))
	if !m.isLocal(domain, path) {
		if rerr := os.Remove(path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

// isLocal reports whether the storage keeps domain's certificate in the
// local file path.
func (m *Manager) isLocal(domain, path string) bool {
	files, ok := m.store.(*FileStorage)
	if !ok {
		return false
	}
	p, err := files.Path(Keys.Certificate(domain))
	return err == nil && p == path
}

// takeRequests marks the domains named in the renewal requests.
func (m *Manager) takeRequests(now time.Time) {
	ctx := context.Background()
	keys, err := m.store.List(ctx, Keys.RenewRequests())
	if err != nil || len(keys) == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, key := range keys {
		name := path.Base(key)
		for _, d := range m.st.Domains {
			if (name == AllDomains || name == d.Name) && d.RemovedAt.IsZero() {
				d.Forced, d.NextAttempt, d.Failures = true, time.Time{}, 0
				m.Log.Info("certificate renewal requested", "domain", d.Name)
			}
		}
	}
	// a request is deleted once the state recording it is saved: a
	// failed save leaves it to be taken again
	if m.saveLocked() != nil {
		return
	}
	for _, key := range keys {
		_ = m.store.Delete(ctx, key)
	}
}

func (m *Manager) saveLocked() error {
	if err := m.st.save(context.Background(), m.store); err != nil {
		m.Log.Error("save certificate state", "err", err)
		return err
	}
	return nil
}

// Renew asks this manager to renew domains now (all of them when none are
// named): the request is stored as RequestRenewal stores it, so that it
// outlives a stop, and the manager takes it at once.
func (m *Manager) Renew(domains []string) error {
	if err := requestRenewal(context.Background(), m.store, domains); err != nil {
		return err
	}
	m.poke()
	return nil
}

// RequestRenewal asks a running manager to renew domains now (all of them
// when none are named).
func RequestRenewal(stateDir string, domains []string) error {
	return requestRenewal(context.Background(), NewFileStorage(stateDir, ""), domains)
}

func requestRenewal(ctx context.Context, s Storage, domains []string) error {
	if len(domains) == 0 {
		domains = []string{AllDomains}
	}
	for _, name := range domains {
		if name != AllDomains && !ValidDomain(name) {
			return fmt.Errorf("%q is not a domain name", name)
		}
		if err := s.Store(ctx, Keys.RenewRequest(name), nil); err != nil {
			return fmt.Errorf("renewal request: %w", err)
		}
	}
	return nil
}

// watchRequests watches the directory of the renewal requests.
func watchRequests(files *FileStorage) (*fsnotify.Watcher, error) {
	dir, err := files.Path(Keys.RenewRequests())
	if err != nil {
		return nil, fmt.Errorf("renewal requests: %w", err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("renewal requests: %w", err)
	}
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch renewal requests: %w", err)
	}
	if err := fsw.Add(dir); err != nil {
		fsw.Close()
		return nil, fmt.Errorf("watch renewal requests: %w", err)
	}
	return fsw, nil
}

// readLeaf parses the first certificate of a PEM file.
func readLeaf(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	leaf, err := readLeafPEM(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return leaf, nil
}

// readLeafPEM parses the first certificate of a PEM bundle.
func readLeafPEM(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no certificate in the bundle")
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}
