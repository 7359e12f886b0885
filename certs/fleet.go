package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Fleet mode: Manager.Shared is the storage the balancers of a fleet
// share, and each manager keeps its own state, renewal requests, DNS-01
// journal and certificate files in Storage, on its own disk, so that it
// starts and serves with the shared storage out of reach.
//
//   - An order runs only while its node holds the domain's order lock in
//     Shared (a lease: a node that dies loses it). Holding it, the node
//     reads the fleet's certificate and failure state again: a newer
//     certificate than the one it serves (another node's order) is
//     installed instead of ordering, and another node's backoff after a
//     failed order is honoured (unless a renewal was asked for here).
//   - The order budget counts the fleet's orders (Keys.Budget, changed
//     under Keys.BudgetLock), besides the node's own count in its state.
//   - A certificate obtained is stored in Shared before the lock goes,
//     through the lease (Lease.Store): a node whose lease lapsed mid-order
//     overwrites nothing, and serves its own certificate;
//     the other nodes see it through Watcher (and at each resync) and
//     install it, hot-loaded as their own orders are.
//   - A certificate a node serves that Shared lacks or holds older (a
//     node switched to fleet mode, a store that failed) is uploaded.
//   - A certificate whose domain left a node's map after the grace goes
//     from that node only: the others may still map the domain.
//   - Without the shared storage no order starts: its attempt is put off
//     by FleetRetry, with no failure counted, and renewals resume once
//     the storage answers again.

// Defaults of the fleet mode's settings.
const (
	DefaultLockWait   = 2 * time.Minute
	DefaultFleetRetry = 30 * time.Second
	DefaultResync     = time.Minute
)

// schedule is the fleet's failure state of one domain's orders.
type schedule struct {
	// the certificate (serial) the failed orders were to replace, "" for
	// none: a node serving another one is in another situation
	Serial      string    `json:"serial,omitempty"`
	Failures    int       `json:"failures"`
	NextAttempt time.Time `json:"next_attempt"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// ErrSharedUnavailable marks an error of the fleet's shared storage, as
// opposed to one of the CA: the Manager's Issuer func wraps it (errors.Is)
// when the storage did not answer, and the manager tries again after
// FleetRetry without counting a failure to reach the CA.
var ErrSharedUnavailable = errors.New("the fleet's shared storage is unreachable")

// errUnusable marks a shared certificate that cannot be served.
var errUnusable = errors.New("unusable certificate")

func (m *Manager) lockWait() time.Duration     { return cmpOr(m.LockWait, DefaultLockWait) }
func (m *Manager) fleetRetry() time.Duration   { return cmpOr(m.FleetRetry, DefaultFleetRetry) }
func (m *Manager) resyncPeriod() time.Duration { return cmpOr(m.Resync, DefaultResync) }

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func cmpOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// lock takes name in the shared storage, waiting at most LockWait.
func (m *Manager) lock(ctx context.Context, name string) (Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, m.lockWait())
	defer cancel()
	return m.Shared.Lock(ctx, name)
}

// loadShared reads the fleet's certificate of domain: the bundle, and its
// leaf once the bundle is known to hold a certificate with its key.
func (m *Manager) loadShared(ctx context.Context, domain string) ([]byte, *x509.Certificate, error) {
	data, err := m.Shared.Load(ctx, Keys.Certificate(domain))
	if err != nil {
		return nil, nil, err
	}
	pair, err := tls.X509KeyPair(data, data)
	if err != nil {
		return nil, nil, fmt.Errorf("%w in the fleet's storage for %s: %v", errUnusable, domain, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, fmt.Errorf("%w in the fleet's storage for %s: %v", errUnusable, domain, err)
	}
	return data, leaf, nil
}

// serving is what a node serves for a domain when a job starts.
type serving struct {
	serial   string
	notAfter time.Time // zero: none served
}

func servingOf(d *Domain) serving {
	if d.File == "" {
		return serving{}
	}
	return serving{serial: d.Serial, notAfter: d.NotAfter}
}

// better reports whether leaf, another node's certificate, is to replace
// what this node serves: a different one, unexpired, for every name
// wanted, and expiring later than the one served.
func better(leaf *x509.Certificate, have serving, names []string, now time.Time) bool {
	if leaf.SerialNumber.Text(16) == have.serial || !now.Before(leaf.NotAfter) {
		return false
	}
	if slices.ContainsFunc(names, func(n string) bool { return !slices.Contains(leaf.DNSNames, n) }) {
		return false
	}
	return have.notAfter.IsZero() || leaf.NotAfter.After(have.notAfter)
}

// orderInFleet is an order job in fleet mode (see above). It leaves in r
// the lease, and either the fleet's certificate to install (r.pem), the
// fleet's backoff to honour (r.schedule), why the order was put off
// (r.deferred) or the order's outcome.
func (m *Manager) orderInFleet(ctx context.Context, iss Issuer, r *result, current string) {
	lease, err := m.lock(ctx, Keys.OrderLock(r.domain))
	if err != nil {
		r.deferred = fmt.Sprintf("no order lock: %v", err)
		return
	}
	r.lease = lease
	pemBytes, leaf, err := m.loadShared(ctx, r.domain)
	switch {
	case err == nil && better(leaf, r.have, r.names, m.Now()):
		r.pem = pemBytes // another node ordered it
		return
	case errors.Is(err, errUnusable):
		m.Log.Warn("ordering anew", "err", err)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		r.deferred = err.Error()
		return
	}
	sched, err := m.loadSchedule(ctx, r.domain)
	if err != nil {
		r.deferred = err.Error()
		return
	}
	now := m.Now()
	if sched != nil && sched.Serial != r.have.serial {
		sched = nil // about another certificate: not this one's failures
	}
	if sched != nil && !r.forced && now.Before(sched.NextAttempt) {
		r.schedule = sched
		return
	}
	if r.challenge != DNS01 {
		if err := m.checkDNS(ctx, r.domain); err != nil {
			r.err = err
			return
		}
	}
	free, err := m.reserveBudget(ctx, now)
	if err != nil {
		r.deferred = fmt.Sprintf("the fleet's order budget: %v", err)
		return
	}
	if !free.IsZero() {
		r.deferred, r.deferUntil = "the fleet's order budget is spent", free
		return
	}
	select {
	case <-lease.Lost():
		r.deferred = "the order lock was lost"
		return
	default:
	}
	m.obtain(iss, r, current)
	// a challenge token the storage did not keep fails the order as the
	// CA's failures do, backed off: lego made the order before it asked
	// for the token, so an order put off and made again every FleetRetry
	// would spend the budget while the storage half answers; its error
	// says it was the storage (ErrSharedUnavailable)
	if r.err != nil {
		failures := r.failures + 1
		if sched != nil {
			failures = max(failures, sched.Failures+1)
		}
		at := m.Now()
		r.schedule = &schedule{Serial: r.have.serial, Failures: failures, LastError: r.err.Error(), LastErrorAt: at.UTC(),
			NextAttempt: at.Add(max(m.Policy.backoff(failures, m.Jitter), retryAfter(r.err)))}
		data, err := json.Marshal(r.schedule)
		if err == nil {
			err = lease.Store(ctx, Keys.Schedule(r.domain), data)
		}
		switch {
		case errors.Is(err, ErrLockLost):
			m.Log.Warn("the fleet's failure state not stored: the order lock was lost during the order, the next holder's state stands",
				"domain", r.domain, "err", err)
		case err != nil:
			m.Log.Warn("the fleet's failure state not stored", "domain", r.domain, "err", err)
		}
		return
	}
	r.pem = bundle(r.issued)
	// stored under the lock, and only while this node holds it (a lease
	// lost mid-order must not overwrite the next holder's certificate),
	// even when the daemon stops: the order was made. Refused or not,
	// this node installs and serves its own new certificate.
	err = lease.Store(context.WithoutCancel(ctx), Keys.Certificate(r.domain), r.pem)
	switch {
	case errors.Is(err, ErrLockLost):
		m.Log.Warn("certificate not stored for the fleet: the order lock was lost during the order, so another node may hold it now; served here, and uploaded at a resync if the fleet's is older",
			"domain", r.domain, "serial", r.issued.Leaf.SerialNumber.Text(16), "err", err)
		return
	case err != nil:
		m.Log.Error("certificate not stored for the fleet: uploaded at the next resync", "domain", r.domain, "err", err)
	}
	if sched != nil {
		err := lease.Delete(context.WithoutCancel(ctx), Keys.Schedule(r.domain))
		switch {
		case errors.Is(err, ErrLockLost):
			m.Log.Warn("the fleet's failure state not cleared: the order lock was lost", "domain", r.domain, "err", err)
		case err != nil:
			m.Log.Warn("the fleet's failure state not cleared", "domain", r.domain, "err", err)
		}
	}
}

func (m *Manager) loadSchedule(ctx context.Context, domain string) (*schedule, error) {
	data, err := m.Shared.Load(ctx, Keys.Schedule(domain))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s schedule
	if err := json.Unmarshal(data, &s); err != nil {
		m.Log.Warn("the fleet's failure state unreadable: ignored", "domain", domain, "err", err)
		return nil, nil
	}
	return &s, nil
}

// reserveBudget counts an order starting at now in the fleet's budget; it
// returns when there is room again if there is none now.
func (m *Manager) reserveBudget(ctx context.Context, now time.Time) (free time.Time, err error) {
	lease, err := m.lock(ctx, Keys.BudgetLock())
	if err != nil {
		return time.Time{}, err
	}
	defer func() {
		if uerr := lease.Unlock(context.WithoutCancel(ctx)); uerr != nil {
			m.Log.Warn("release the budget lock", "err", uerr)
		}
	}()
	b := &State{}
	data, err := m.Shared.Load(ctx, Keys.Budget())
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &b.Orders); err != nil {
			m.Log.Warn("the fleet's order budget unreadable: counted afresh", "err", err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return time.Time{}, err
	}
	ok, free := b.budget(now, m.Policy)
	var stored error
	if ok {
		orders := append(slices.Clone(b.Orders), now.UTC())
		var data []byte
		if data, stored = json.Marshal(orders); stored == nil {
			// fenced: a holder whose lease lapsed does not write back a
			// budget another node has counted on since
			stored = lease.Store(ctx, Keys.Budget(), data)
		}
		if stored == nil {
			b.Orders = orders
		}
	}
	m.mu.Lock()
	m.fleetOrders = append([]time.Time{}, b.Orders...)
	m.mu.Unlock()
	return free, stored
}

// FleetOrdersInWindow is the number of orders the fleet made in the
// current budget window, as this node last read the fleet's budget (at
// its last order); known is false before it read it once.
func (m *Manager) FleetOrdersInWindow() (n int, known bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fleetOrders == nil {
		return 0, false
	}
	cut := m.Now().Add(-m.Policy.Window)
	for _, t := range m.fleetOrders {
		if t.After(cut) {
			n++
		}
	}
	return n, true
}

// runFleetSync installs the certificates other nodes store and uploads
// this node's that the fleet lacks: at start, for each change the shared
// storage reports, and every Resync.
func (m *Manager) runFleetSync(ctx context.Context) {
	var events <-chan string
	if w, ok := m.Shared.(Watcher); ok {
		events = w.Watch(ctx, Keys.CertificatesPrefix())
	}
	t := time.NewTicker(m.resyncPeriod())
	defer t.Stop()
	deliver := func(rs []result) {
		for _, r := range rs {
			select {
			case m.results <- r:
			case <-ctx.Done():
				return
			}
		}
	}
	deliver(m.syncAll(ctx))
	for {
		select {
		case <-ctx.Done():
			return
		case key, ok := <-events:
			switch {
			case !ok:
				events = nil
			case key == "":
				deliver(m.syncAll(ctx))
			default:
				if name, ok := m.domainOfKey(key); ok {
					deliver(m.syncDomain(ctx, name))
				}
			}
		case <-t.C:
			deliver(m.syncAll(ctx))
		}
	}
}

// domainOfKey is the domain whose certificate is stored at key.
func (m *Manager) domainOfKey(key string) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for name := range m.st.Domains {
		if Keys.Certificate(name) == key {
			return name, true
		}
	}
	return "", false
}

// syncGiveUp is how many domains in a row may fail to sync before a
// resync stops: the shared storage does not answer, and each further
// domain would wait out its own time bound.
const syncGiveUp = 3

// syncAll syncs every domain with the fleet. A domain that fails (a value
// that does not open, a lock not taken in time) is skipped, not the
// domains after it; syncGiveUp failures in a row end the pass.
func (m *Manager) syncAll(ctx context.Context) []result {
	m.mu.Lock()
	names := make([]string, 0, len(m.st.Domains))
	for _, d := range m.st.Sorted() {
		names = append(names, d.Name)
	}
	m.mu.Unlock()
	var out []result
	failed := 0
	for _, name := range names {
		if ctx.Err() != nil {
			break
		}
		rs, err := m.sync(ctx, name)
		if err != nil {
			m.Log.Warn("certificate not synced with the fleet", "domain", name, "err", err)
			if failed++; failed == syncGiveUp {
				m.Log.Warn("the fleet's storage fails: the other certificates are synced at the next resync", "failures", failed)
				break
			}
			continue
		}
		failed = 0
		out = append(out, rs...)
	}
	return out
}

// syncDomain syncs one domain with the fleet.
func (m *Manager) syncDomain(ctx context.Context, name string) []result {
	rs, err := m.sync(ctx, name)
	if err != nil {
		m.Log.Warn("certificate not synced with the fleet", "domain", name, "err", err)
	}
	return rs
}

// sync compares the fleet's certificate of name with this node's: a
// better one is returned to be installed (an adopt job), one the fleet
// lacks or holds older is uploaded.
func (m *Manager) sync(ctx context.Context, name string) ([]result, error) {
	m.mu.Lock()
	d := m.st.Domains[name]
	if d == nil || !d.RemovedAt.IsZero() {
		m.mu.Unlock()
		return nil, nil
	}
	have, names, file := servingOf(d), slices.Clone(d.names()), d.File
	m.mu.Unlock()
	pemBytes, leaf, err := m.loadShared(ctx, name)
	switch {
	case err == nil && better(leaf, have, names, m.Now()):
		return []result{{kind: adoptJob, domain: name, pem: pemBytes}}, nil
	case err == nil && (leaf.SerialNumber.Text(16) == have.serial || !leaf.NotAfter.Before(have.notAfter)):
		return nil, nil
	case err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, errUnusable):
		return nil, err
	}
	if file == "" {
		return nil, nil
	}
	return nil, m.upload(ctx, name, filepath.Join(m.CertsDir, file), have)
}

// upload stores this node's certificate of name for the fleet, under the
// domain's order lock, unless the fleet's is as good by then.
func (m *Manager) upload(ctx context.Context, name, path string, have serving) error {
	lease, err := m.lock(ctx, Keys.OrderLock(name))
	if err != nil {
		return err
	}
	defer func() {
		if err := lease.Unlock(context.WithoutCancel(ctx)); err != nil {
			m.Log.Warn("release order lock", "domain", name, "err", err)
		}
	}()
	if _, leaf, err := m.loadShared(ctx, name); err == nil && !leaf.NotAfter.Before(have.notAfter) {
		return nil
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, errUnusable) {
		return err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := lease.Store(ctx, Keys.Certificate(name), data); err != nil {
		return err
	}
	m.Log.Info("certificate uploaded for the fleet", "domain", name, "serial", have.serial)
	return nil
}
