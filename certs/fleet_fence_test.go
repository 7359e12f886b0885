package certs

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"sync"
	"testing"
)

// expiring is a shared storage whose order lock of one domain the test
// makes expire, as etcd drops the lease of a partitioned or paused
// holder: the lease is reported lost and its lock is free for another.
type expiring struct {
	Storage
	domain string
	mu     sync.Mutex
	last   *expLease // the latest lease of domain's order lock
}

func (s *expiring) Lock(ctx context.Context, name string) (Lease, error) {
	l, err := s.Storage.Lock(ctx, name)
	if err != nil || name != Keys.OrderLock(s.domain) {
		return l, err
	}
	e := &expLease{Lease: l, lost: make(chan struct{})}
	s.mu.Lock()
	s.last = e
	s.mu.Unlock()
	return e, nil
}

// expireLast makes the latest lease of the domain's order lock expire.
func (s *expiring) expireLast() {
	s.mu.Lock()
	l := s.last
	s.mu.Unlock()
	l.expire()
}

// expLease is a lease that expires when the test says; its writes are
// the storage's own fenced ones.
type expLease struct {
	Lease
	lost chan struct{}
	once sync.Once
}

func (l *expLease) Lost() <-chan struct{} { return l.lost }

func (l *expLease) expire() {
	l.once.Do(func() {
		close(l.lost)
		_ = l.Lease.Unlock(context.Background())
	})
}

func (l *expLease) Unlock(context.Context) error {
	l.expire()
	return nil
}

// hookIssuer runs before once, ahead of the first order it is given.
type hookIssuer struct {
	Issuer
	before func()
}

func (h *hookIssuer) Obtain(names []string, challenge, replaces string) (*Issued, error) {
	if b := h.before; b != nil {
		h.before = nil
		b()
	}
	return h.Issuer.Obtain(names, challenge, replaces)
}

// leaseLostMidOrder is two nodes sharing one CA on an expiring storage;
// a's lease of domain's order lock expires once a's order has started,
// and b, running then, takes the lock and orders; mid (if set) runs after
// b's order, before a's goes to the CA.
func leaseLostMidOrder(t *testing.T, domain string, mid func(a, b *rig)) (a, b *rig, shared *expiring) {
	t.Helper()
	shared = &expiring{Storage: NewFileStorage(t.TempDir(), t.TempDir()), domain: domain}
	a, b = newRig(t, policy(), ""), newRig(t, policy(), "")
	b.iss = a.iss
	a.join(shared, "node-a")
	b.join(shared, "node-b")
	a.m.Issuer = func(context.Context) (Issuer, error) {
		return &hookIssuer{Issuer: a.iss, before: func() {
			shared.expireLast() // past a's last look at Lost
			b.step()
			if mid != nil {
				mid(a, b)
			}
		}}, nil
	}
	a.m.SetDomains([]string{domain}, nil, nil)
	b.m.SetDomains([]string{domain}, nil, nil)
	a.step()
	if n := a.iss.count(); n != 2 {
		t.Fatalf("orders = %d (%v), want 2: b's under the lock, and a's, started before its lease was lost", n, a.iss.orders)
	}
	return a, b, shared
}

// A node whose order lock expired while its order ran (a partition, a
// long pause) does not overwrite the certificate the next holder stored;
// it still serves its own new one.
func TestFleetLeaseLostMidOrderDoesNotOverwrite(t *testing.T) {
	const domain = "a.example.com"
	a, b, shared := leaseLostMidOrder(t, domain, nil)
	ours, theirs := a.domain(domain), b.domain(domain)
	if theirs.Condition(b.now) != "valid" || ours.Condition(a.now) != "valid" || ours.Serial == theirs.Serial {
		t.Fatalf("a serves %s (%s), b %s (%s): want each its own valid certificate",
			ours.Serial, ours.Condition(a.now), theirs.Serial, theirs.Condition(b.now))
	}
	data, err := shared.Load(context.Background(), Keys.Certificate(domain))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := readLeafPEM(data)
	if err != nil {
		t.Fatal(err)
	}
	if got := leaf.SerialNumber.Text(16); got != theirs.Serial {
		t.Errorf("the fleet holds serial %s, want b's %s (a's is %s): a stored after its lease was lost", got, theirs.Serial, ours.Serial)
	}
	if path := filepath.Join(a.dir, "certs", domain+".pem"); a.loader.loaded[path] != domain {
		t.Errorf("a does not serve its own new certificate: loaded %v", a.loader.loaded)
	}
}

// A node whose order lock expired while its order ran, and whose order
// failed, leaves the fleet's failure state to the next holder: b's
// success is not turned into a's backoff.
func TestFleetLeaseLostMidOrderStoresNoFailure(t *testing.T) {
	const domain = "a.example.com"
	a, b, shared := leaseLostMidOrder(t, domain, func(a, _ *rig) {
		a.iss.fail[domain] = errors.New("urn:ietf:params:acme:error:connection: timeout")
	})
	if d := a.domain(domain); d.Failures != 1 {
		t.Errorf("a counts %d failures, want its own 1", d.Failures)
	}
	if _, err := shared.Load(context.Background(), Keys.Schedule(domain)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the fleet's failure state after b's success and a's late failure: %v, want none", err)
	}
	if d := b.domain(domain); d.Condition(b.now) != "valid" {
		t.Errorf("b: %s, want its valid certificate", d.Condition(b.now))
	}
}
