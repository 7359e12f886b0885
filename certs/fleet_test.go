package certs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// flaky is a shared storage that can be made unreachable.
type flaky struct {
	Storage
	down atomic.Bool
}

var errDown = errors.New("etcd: no quorum")

func (f *flaky) Load(ctx context.Context, key string) ([]byte, error) {
	if f.down.Load() {
		return nil, errDown
	}
	return f.Storage.Load(ctx, key)
}

func (f *flaky) Store(ctx context.Context, key string, v []byte) error {
	if f.down.Load() {
		return errDown
	}
	return f.Storage.Store(ctx, key, v)
}

func (f *flaky) Lock(ctx context.Context, name string) (Lease, error) {
	if f.down.Load() {
		return nil, errDown
	}
	l, err := f.Storage.Lock(ctx, name)
	if err != nil {
		return nil, err
	}
	return flakyLease{Lease: l, f: f}, nil
}

// flakyLease is a lease of a flaky storage: its writes fail while the
// storage is down.
type flakyLease struct {
	Lease
	f *flaky
}

func (l flakyLease) Store(ctx context.Context, key string, v []byte) error {
	if l.f.down.Load() {
		return errDown
	}
	return l.Lease.Store(ctx, key, v)
}

// fleetOf is n managers on rigs of their own that share one storage, one
// CA and one clock.
func fleetOf(t *testing.T, n int, p Policy) (nodes []*rig, shared *flaky) {
	t.Helper()
	shared = &flaky{Storage: NewFileStorage(t.TempDir(), t.TempDir())}
	for i := range n {
		r := newRig(t, p, "")
		if i > 0 {
			r.iss = nodes[0].iss
			r.iss.now = func() time.Time { return nodes[0].now }
		}
		r.join(shared, fmt.Sprintf("node-%d", i+1))
		nodes = append(nodes, r)
	}
	return nodes, shared
}

// join puts the rig's manager in fleet mode on shared.
func (r *rig) join(shared Storage, node string) {
	r.m.Shared, r.m.Node = shared, node
	r.m.LockWait, r.m.FleetRetry = time.Second, 30*time.Second
}

// at sets every node's clock.
func at(nodes []*rig, now time.Time) {
	for _, r := range nodes {
		r.now = now
	}
}

// syncNow runs one resync of r's manager and installs what it returns.
func (r *rig) syncNow() {
	r.t.Helper()
	ctx := context.Background()
	for _, res := range r.m.syncAll(ctx) {
		r.m.finish(ctx, res)
	}
}

func TestFleetOrdersEachDomainOnce(t *testing.T) {
	nodes, shared := fleetOf(t, 3, policy())
	names := []string{"a.example.com", "b.example.com", "c.example.com"}
	for _, r := range nodes {
		r.m.SetDomains(names, nil, nil)
	}
	for _, r := range nodes {
		r.step()
	}
	iss := nodes[0].iss
	if got := iss.count(); got != 3 {
		t.Fatalf("three nodes made %d orders for 3 domains (%v), want 3", got, iss.orders)
	}
	for i, r := range nodes {
		for _, name := range names {
			d := r.domain(name)
			if d.Condition(r.now) != "valid" || d.Serial != nodes[0].domain(name).Serial {
				t.Errorf("node %d, %s: %s with serial %s, want node 1's certificate", i+1, name, d.Condition(r.now), d.Serial)
			}
			if path := filepath.Join(r.dir, "certs", name+".pem"); r.loader.loaded[path] != name {
				t.Errorf("node %d: %s not hot-loaded", i+1, name)
			}
		}
		if st := r.m.Snapshot(); i > 0 && (st.OrdersTotal != 0 || len(st.Orders) != 0) {
			t.Errorf("node %d counts %d orders of its own, want 0", i+1, st.OrdersTotal)
		}
		if len(r.reloads) != 0 {
			t.Errorf("node %d asked for reloads: %v", i+1, r.reloads)
		}
	}
	var budget []time.Time
	if data, err := shared.Load(context.Background(), Keys.Budget()); err != nil || json.Unmarshal(data, &budget) != nil || len(budget) != 3 {
		t.Errorf("the fleet's budget: %d orders (%v), want 3", len(budget), err)
	}
	known := 0
	for i, r := range nodes {
		if n, ok := r.m.FleetOrdersInWindow(); ok {
			known++
			if n < 1 || n > 3 {
				t.Errorf("node %d read the fleet's budget with %d orders, want 1 to 3", i+1, n)
			}
		}
	}
	if known == 0 {
		t.Error("no node knows the fleet's budget after the orders")
	}
	if _, err := shared.Load(context.Background(), Keys.Certificate("a.example.com")); err != nil {
		t.Errorf("the certificate is not in the shared storage: %v", err)
	}

	// the renewal: each node is due (their jitter is the same here), one orders
	renewal := t0.Add(60 * 24 * time.Hour)
	at(nodes, renewal)
	for _, r := range nodes {
		r.step()
	}
	if got := iss.count(); got != 6 {
		t.Errorf("orders after the renewal time = %d, want 6 (3 + one renewal each)", got)
	}
	for i, r := range nodes {
		if d := r.domain("a.example.com"); !d.NotBefore.Equal(renewal) {
			t.Errorf("node %d serves a certificate from %v, want the renewed one", i+1, d.NotBefore)
		}
	}
}

func TestFleetNodeInstallsAnotherNodesCertificate(t *testing.T) {
	nodes, _ := fleetOf(t, 2, policy())
	a, b := nodes[0], nodes[1]
	a.m.SetDomains([]string{"a.example.com"}, nil, nil)
	a.step()
	// b maps the domain, learns of the certificate at a resync and never
	// orders
	b.m.SetDomains([]string{"a.example.com"}, nil, nil)
	b.m.tick(context.Background())
	res := <-b.m.results // the order job: it finds a's certificate
	if res.pem == nil || res.ordered {
		t.Fatalf("b's order job: ordered %v, err %v; want a's certificate found under the lock", res.ordered, res.err)
	}
	b.m.finish(context.Background(), res)
	if got := a.iss.count(); got != 1 {
		t.Errorf("orders = %d, want 1", got)
	}
	if d := b.domain("a.example.com"); d.Serial != a.domain("a.example.com").Serial || d.Condition(b.now) != "valid" {
		t.Errorf("b serves %s (%s), want a's certificate", d.Serial, d.Condition(b.now))
	}
	// a renews on its own (forced): b's resync installs the new one
	if err := a.m.Renew([]string{"a.example.com"}); err != nil {
		t.Fatal(err)
	}
	a.now = t0.Add(time.Hour)
	b.now = a.now
	a.step()
	b.syncNow()
	if got := a.iss.count(); got != 2 {
		t.Errorf("orders = %d, want 2", got)
	}
	if d := b.domain("a.example.com"); d.Serial != a.domain("a.example.com").Serial || !d.NotBefore.Equal(a.now) {
		t.Errorf("b serves %s from %v after the resync, want a's renewed certificate", d.Serial, d.NotBefore)
	}
	// a resync with nothing new installs nothing again
	loaded := len(b.loader.loaded)
	b.syncNow()
	if len(b.loader.loaded) != loaded || len(b.reloads) != 0 {
		t.Errorf("an idle resync hot-loaded or reloaded")
	}
}

func TestFleetHonoursAnotherNodesBackoff(t *testing.T) {
	nodes, _ := fleetOf(t, 2, policy())
	a, b := nodes[0], nodes[1]
	a.iss.fail["bad.example.com"] = errors.New("acme: error: 403 :: unauthorized")
	for _, r := range nodes {
		r.m.SetDomains([]string{"bad.example.com"}, nil, nil)
	}
	a.step()
	b.step()
	if got := a.iss.count(); got != 1 {
		t.Fatalf("orders = %d, want 1: b waits out a's backoff", got)
	}
	da, db := a.domain("bad.example.com"), b.domain("bad.example.com")
	if db.Failures != 1 || !db.NextAttempt.Equal(da.NextAttempt) || db.LastError != da.LastError {
		t.Errorf("b: failures %d, next %v, error %q; want a's: 1, %v, %q", db.Failures, db.NextAttempt, db.LastError, da.NextAttempt, da.LastError)
	}
	// b tries once the backoff is over and fails: the fleet's count goes on
	at(nodes, da.NextAttempt)
	b.step()
	a.step()
	if got := a.iss.count(); got != 2 {
		t.Errorf("orders after the first backoff = %d, want 2", got)
	}
	da, db = a.domain("bad.example.com"), b.domain("bad.example.com")
	if db.Failures != 2 || da.Failures != 2 || !da.NextAttempt.Equal(db.NextAttempt) {
		t.Errorf("failures a %d, b %d (next %v, %v), want 2 on both with one next attempt", da.Failures, db.Failures, da.NextAttempt, db.NextAttempt)
	}
	if want := nodes[0].now.Add(10 * time.Minute); !db.NextAttempt.Equal(want) {
		t.Errorf("next attempt %v, want the second backoff, 10 minutes", db.NextAttempt.Sub(nodes[0].now))
	}
	// a renewal asked for on a goes ahead at once
	if err := a.m.Renew([]string{"bad.example.com"}); err != nil {
		t.Fatal(err)
	}
	delete(a.iss.fail, "bad.example.com")
	a.step()
	b.syncNow()
	if got := a.iss.count(); got != 3 {
		t.Errorf("orders after the forced renewal = %d, want 3", got)
	}
	if c := b.domain("bad.example.com").Condition(b.now); c != "valid" {
		t.Errorf("b after a's successful order: %s", c)
	}
}

func TestFleetBudgetCountsEveryNode(t *testing.T) {
	p := policy()
	p.Orders, p.Window = 2, time.Hour
	nodes, _ := fleetOf(t, 2, p)
	a, b := nodes[0], nodes[1]
	a.m.SetDomains([]string{"a.example.com", "b.example.com"}, nil, nil)
	b.m.SetDomains([]string{"c.example.com"}, nil, nil)
	a.step()
	b.step()
	if got := a.iss.count(); got != 2 {
		t.Fatalf("orders = %d, want 2: the fleet's budget is spent", got)
	}
	d := b.domain("c.example.com")
	if d.Failures != 0 || d.NextAttempt.Before(t0.Add(time.Hour)) {
		t.Errorf("c: failures %d, next attempt %v; want none, and no try before the window frees (+1h)", d.Failures, d.NextAttempt.Sub(t0))
	}
	at(nodes, d.NextAttempt)
	b.step()
	if got := a.iss.count(); got != 3 {
		t.Errorf("orders once the window freed = %d, want 3", got)
	}
}

func TestFleetOrdersNothingWithoutItsStorage(t *testing.T) {
	nodes, shared := fleetOf(t, 1, policy())
	r := nodes[0]
	shared.down.Store(true)
	r.m.SetDomains([]string{"a.example.com"}, nil, nil)
	r.step()
	if got := r.iss.count(); got != 0 {
		t.Fatalf("orders with the shared storage down = %d, want 0", got)
	}
	d := r.domain("a.example.com")
	if d.Failures != 0 || !d.NextAttempt.Equal(t0.Add(30*time.Second)) || r.m.Snapshot().OrdersTotal != 0 {
		t.Errorf("put off: failures %d, next attempt +%v, orders %d; want no failure, +30s (FleetRetry), 0", d.Failures, d.NextAttempt.Sub(t0), r.m.Snapshot().OrdersTotal)
	}
	shared.down.Store(false)
	r.now = d.NextAttempt
	r.step()
	if got := r.iss.count(); got != 1 || r.domain("a.example.com").Condition(r.now) != "valid" {
		t.Errorf("orders once the storage is back = %d (%s), want 1 and valid", got, r.domain("a.example.com").Condition(r.now))
	}
}

func TestFleetTakesOverASingleNodesCertificates(t *testing.T) {
	single := newRig(t, policy(), "")
	names := []string{"a.example.com", "b.example.com"}
	single.m.SetDomains(names, nil, nil)
	single.step()
	// switched to fleet mode: the certificates go up, none is ordered
	shared := NewFileStorage(t.TempDir(), t.TempDir())
	single.m = single.manager(policy())
	single.join(shared, "node-1")
	single.m.SetDomains(names, nil, nil)
	single.syncNow()
	single.step()
	joined := newRig(t, policy(), "")
	joined.iss = single.iss
	joined.join(shared, "node-2")
	joined.m.SetDomains(names, nil, nil)
	joined.syncNow()
	joined.step()
	if got := single.iss.count(); got != 2 {
		t.Errorf("orders = %d, want the single node's 2 only", got)
	}
	for _, name := range names {
		if d := joined.domain(name); d.Serial != single.domain(name).Serial || d.Condition(joined.now) != "valid" {
			t.Errorf("the node that joined serves %s for %s (%s), want the first node's", d.Serial, name, d.Condition(joined.now))
		}
	}
}

func TestSharedStorageDownIsRetriedWithoutBackoff(t *testing.T) {
	r := newRig(t, policy(), "")
	r.join(&flaky{Storage: NewFileStorage(t.TempDir(), t.TempDir())}, "node-1")
	answers := []error{fmt.Errorf("acme account: %w: %w", ErrSharedUnavailable, errDown), fmt.Errorf("%w: %w", ErrSharedUnavailable, errDown),
		errors.New("connection refused"), nil}
	r.m.Issuer = func(context.Context) (Issuer, error) {
		err := answers[0]
		answers = answers[1:]
		if err != nil {
			return nil, err
		}
		return r.iss, nil
	}
	r.m.SetDomains([]string{"a.example.com"}, nil, nil)
	for i, want := range []time.Duration{30 * time.Second, 30 * time.Second, 5 * time.Minute} {
		next := r.step()
		if got := next.Sub(r.now); got != want {
			t.Fatalf("connect %d: next try in %v, want %v", i+1, got, want)
		}
		r.now = next
	}
	// the CA's failure was the first: the storage's counted none
	if r.m.issuerFailures != 1 {
		t.Errorf("failures to reach the CA = %d, want 1", r.m.issuerFailures)
	}
	r.step()
	if r.iss.count() != 1 || r.m.IssuerError() != "" {
		t.Errorf("orders %d, error %q once the storage and the CA answer", r.iss.count(), r.m.IssuerError())
	}
}

func TestMigrateAccount(t *testing.T) {
	ctx := context.Background()
	const dir = "https://ca.example.net/directory"
	files := func(t *testing.T) *FileStorage { return NewFileStorage(t.TempDir(), t.TempDir()) }
	store := func(t *testing.T, s Storage, key, reg string) {
		t.Helper()
		if err := s.Store(ctx, Keys.AccountKey(dir), []byte(key)); err != nil {
			t.Fatal(err)
		}
		if reg != "" {
			if err := s.Store(ctx, Keys.AccountRegistration(dir), []byte(reg)); err != nil {
				t.Fatal(err)
			}
		}
	}
	load := func(t *testing.T, s Storage, key string) string {
		t.Helper()
		data, err := s.Load(ctx, key)
		if errors.Is(err, fs.ErrNotExist) {
			return "(none)"
		}
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}

	t.Run("copied to a storage without one", func(t *testing.T) {
		from, to := files(t), files(t)
		store(t, from, "node key", `{"email":"a@example.com"}`)
		copied, err := MigrateAccount(ctx, from, to, dir)
		if err != nil || !copied {
			t.Fatalf("MigrateAccount = %v, %v; want true, nil", copied, err)
		}
		if k, r := load(t, to, Keys.AccountKey(dir)), load(t, to, Keys.AccountRegistration(dir)); k != "node key" || r != `{"email":"a@example.com"}` {
			t.Errorf("the fleet's account: key %q, registration %q", k, r)
		}
		if copied, err := MigrateAccount(ctx, from, to, dir); err != nil || copied {
			t.Errorf("second MigrateAccount = %v, %v; want false, nil", copied, err)
		}
	})
	t.Run("the fleet's is never overwritten", func(t *testing.T) {
		from, to := files(t), files(t)
		store(t, from, "node key", "node registration")
		store(t, to, "fleet key", "fleet registration")
		if copied, err := MigrateAccount(ctx, from, to, dir); err != nil || copied {
			t.Fatalf("MigrateAccount = %v, %v; want false, nil", copied, err)
		}
		if k, r := load(t, to, Keys.AccountKey(dir)), load(t, to, Keys.AccountRegistration(dir)); k != "fleet key" || r != "fleet registration" {
			t.Errorf("the fleet's account became key %q, registration %q", k, r)
		}
	})
	t.Run("a key the fleet holds without registration stays", func(t *testing.T) {
		from, to := files(t), files(t)
		store(t, from, "node key", "node registration")
		store(t, to, "fleet key", "")
		if copied, err := MigrateAccount(ctx, from, to, dir); err != nil || copied {
			t.Fatalf("MigrateAccount = %v, %v; want false, nil", copied, err)
		}
		if k, r := load(t, to, Keys.AccountKey(dir)), load(t, to, Keys.AccountRegistration(dir)); k != "fleet key" || r != "(none)" {
			t.Errorf("the fleet's account became key %q, registration %q", k, r)
		}
	})
	t.Run("none registered here: nothing copied", func(t *testing.T) {
		from, to := files(t), files(t)
		store(t, from, "node key", "")
		if copied, err := MigrateAccount(ctx, from, to, dir); err != nil || copied {
			t.Fatalf("MigrateAccount = %v, %v; want false, nil", copied, err)
		}
		if copied, err := MigrateAccount(ctx, files(t), to, dir); err != nil || copied {
			t.Fatalf("MigrateAccount from an empty storage = %v, %v; want false, nil", copied, err)
		}
		if k := load(t, to, Keys.AccountKey(dir)); k != "(none)" {
			t.Errorf("the fleet got key %q", k)
		}
	})
	t.Run("the fleet's storage down", func(t *testing.T) {
		from, to := files(t), &flaky{Storage: files(t)}
		store(t, from, "node key", "node registration")
		to.down.Store(true)
		if copied, err := MigrateAccount(ctx, from, to, dir); !errors.Is(err, errDown) || copied {
			t.Fatalf("MigrateAccount = %v, %v; want false, %v", copied, err, errDown)
		}
		to.down.Store(false)
		if copied, err := MigrateAccount(ctx, from, to, dir); err != nil || !copied {
			t.Fatalf("MigrateAccount once it is back = %v, %v; want true, nil", copied, err)
		}
	})
}

// TestDueSpreadsFleetNodes: given the same new domains, the nodes of a
// fleet start with different ones (so that their first orders do not all
// wait on the same locks), each in an order of its own that does not
// change between calls; one node alone orders by name.
func TestDueSpreadsFleetNodes(t *testing.T) {
	st := &State{Domains: map[string]*Domain{}}
	for i := range 48 {
		name := fmt.Sprintf("site%02d.example.com", i)
		st.Domains[name] = &Domain{Name: name}
	}
	now := time.Now()
	first := func(node string, k int) []string {
		var names []string
		for _, d := range st.due(now, nil, node)[:k] {
			names = append(names, d.Name)
		}
		return names
	}
	if got := first("", 3); fmt.Sprint(got) != "[site00.example.com site01.example.com site02.example.com]" {
		t.Errorf("one node's first orders: %v, want by name", got)
	}
	const slots = 16 // ACME_IN_FLIGHT in the benchmark
	starts := map[string]int{}
	for _, node := range []string{"node0", "node1", "node2"} {
		if a, b := first(node, slots), first(node, slots); fmt.Sprint(a) != fmt.Sprint(b) {
			t.Errorf("%s: %v, then %v: want one order", node, a, b)
		}
		for _, name := range first(node, slots) {
			starts[name]++
		}
	}
	// 3 nodes × 16 slots over 48 domains: by name, 16 distinct; spread,
	// far more
	if len(starts) < 2*slots {
		t.Errorf("the 3 nodes' first %d orders name %d distinct domains, want at least %d", slots, len(starts), 2*slots)
	}
}

// unopenable is a shared storage where the values of some keys do not
// open (another seal key, a tampered value), and every Load is counted.
type unopenable struct {
	Storage
	bad   func(key string) bool
	loads atomic.Int32
}

func (u *unopenable) Load(ctx context.Context, key string) ([]byte, error) {
	u.loads.Add(1)
	if u.bad(key) {
		return nil, errors.New("the value does not open with this seal key")
	}
	return u.Storage.Load(ctx, key)
}

// TestFleetSyncSkipsABadValue: a value that does not open is that
// domain's problem: the resync installs the domains after it; but a
// storage that fails for syncGiveUp domains in a row ends the pass rather
// than wait on every domain.
func TestFleetSyncSkipsABadValue(t *testing.T) {
	nodes, shared := fleetOf(t, 2, policy())
	a, b := nodes[0], nodes[1]
	names := []string{"a.example.com", "b.example.com", "c.example.com"}
	a.m.SetDomains(names, nil, nil)
	a.step()
	bad := &unopenable{Storage: shared, bad: func(key string) bool { return key == Keys.Certificate("a.example.com") }}
	b.join(bad, "node-2")
	b.m.Issuer = func(context.Context) (Issuer, error) { return nil, errors.New("the CA is not asked here") }
	b.m.SetDomains(names, nil, nil)
	b.m.tick(context.Background())
	b.syncNow()
	for _, name := range names[1:] {
		if d := b.domain(name); d.File == "" {
			t.Errorf("%s not installed by the resync after a.example.com's bad value", name)
		}
	}

	down := &unopenable{Storage: shared, bad: func(string) bool { return true }}
	c := newRig(t, policy(), "")
	c.join(down, "node-3")
	c.m.Issuer = b.m.Issuer
	var many []string
	for i := range 10 {
		many = append(many, fmt.Sprintf("d%d.example.com", i))
	}
	c.m.SetDomains(many, nil, nil)
	c.m.tick(context.Background())
	c.syncNow()
	if got := down.loads.Load(); got != syncGiveUp {
		t.Errorf("a storage failing every read was read %d times in one pass over %d domains, want %d", got, len(many), syncGiveUp)
	}
}
