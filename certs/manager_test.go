package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/certificate"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testCA signs the fake issuer's certificates, so they carry an
// authority key identifier as real ones do (ARI identifiers need it).
type testCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: t0.AddDate(-1, 0, 0), NotAfter: t0.AddDate(5, 0, 0), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, SubjectKeyId: []byte{1, 2, 3, 4}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{key: key, cert: cert}
}

func (ca *testCA) issue(names []string, notBefore, notAfter time.Time, serial int64) (*Issued, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: names[0]},
		DNSNames: names, NotBefore: notBefore, NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, err
	}
	leaf, _ := x509.ParseCertificate(der)
	keyDER, _ := x509.MarshalECPrivateKey(key)
	return &Issued{
		Chain: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		Key:   pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		Leaf:  leaf,
	}, nil
}

// fakeIssuer records orders and answers from its fields.
type fakeIssuer struct {
	ca       *testCA
	mu       sync.Mutex
	now      func() time.Time
	life     time.Duration
	fail     map[string]error // first name -> the error its orders get
	ari      *certificate.RenewalInfoResponse
	ariErr   error
	orders   []string // the names of each order, comma-separated, in order
	chals    []string // the challenge of each order
	replaces []string
	serial   int64
}

func (f *fakeIssuer) Obtain(names []string, challenge, replaces string) (*Issued, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.orders = append(f.orders, strings.Join(names, ","))
	f.chals = append(f.chals, challenge)
	f.replaces = append(f.replaces, replaces)
	if err := f.fail[names[0]]; err != nil {
		return nil, err
	}
	f.serial++
	now := f.now()
	return f.ca.issue(names, now, now.Add(f.life), f.serial+100)
}

func (f *fakeIssuer) RenewalInfo(*x509.Certificate) (*certificate.RenewalInfoResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ariErr != nil {
		return nil, f.ariErr
	}
	return f.ari, nil
}

func (f *fakeIssuer) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.orders)
}

// fakeLoader records what would go into HAProxy.
type fakeLoader struct {
	mu       sync.Mutex
	loaded   map[string]string // path -> names, comma-separated
	unloaded []string
	err      error
}

func (l *fakeLoader) Load(_ context.Context, path string, bundle []byte, names []string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err
	}
	if _, err := readLeafBytes(bundle); err != nil {
		return err
	}
	l.loaded[path] = strings.Join(names, ",")
	return nil
}

func (l *fakeLoader) Unload(_ context.Context, path string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.unloaded = append(l.unloaded, path)
	delete(l.loaded, path)
	return l.err
}

func readLeafBytes(data []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, errors.New("no PEM")
	}
	return x509.ParseCertificate(b.Bytes)
}

// rig is a manager on a fake clock: the test moves the clock, runs a tick
// and delivers the jobs' results itself, so nothing sleeps.
type rig struct {
	t       *testing.T
	m       *Manager
	iss     *fakeIssuer
	loader  *fakeLoader
	now     time.Time
	reloads []string
	dir     string
}

func policy() Policy {
	return Policy{Orders: 300, Window: 3 * time.Hour, InFlight: 4, BackoffMin: 5 * time.Minute,
		BackoffMax: 6 * time.Hour, RemoveGrace: 24 * time.Hour, ARIPoll: 6 * time.Hour}
}

func newRig(t *testing.T, p Policy, dir string) *rig {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	r := &rig{t: t, now: t0, dir: dir, loader: &fakeLoader{loaded: map[string]string{}}}
	r.iss = &fakeIssuer{ca: newTestCA(t), now: func() time.Time { return r.now }, life: 90 * 24 * time.Hour, fail: map[string]error{}}
	r.m = r.manager(p)
	return r
}

// manager returns a manager on the rig's directory, as after a restart.
func (r *rig) manager(p Policy) *Manager {
	r.t.Helper()
	m := &Manager{
		Policy: p, CertsDir: filepath.Join(r.dir, "certs"), CrtList: filepath.Join(r.dir, "certs/crt-list"),
		StateDir: filepath.Join(r.dir, "state"),
		Issuer:   func(context.Context) (Issuer, error) { return r.iss, nil },
		Loader:   r.loader,
		Reload:   func(reason string) { r.reloads = append(r.reloads, reason) },
		Log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now:      func() time.Time { return r.now },
		Jitter:   func(time.Duration) time.Duration { return 0 },
	}
	if err := m.Init(); err != nil {
		r.t.Fatal(err)
	}
	return m
}

// step runs one tick and delivers every job it started; it returns the
// next wake-up.
func (r *rig) step() time.Time {
	r.t.Helper()
	ctx := context.Background()
	next := r.m.tick(ctx)
	for r.m.InFlight() > 0 {
		select {
		case res := <-r.m.results:
			r.m.finish(ctx, res)
		case <-time.After(10 * time.Second):
			r.t.Fatal("a job did not finish")
		}
	}
	return next
}

func (r *rig) domain(name string) *Domain {
	d := r.m.Snapshot().Domains[name]
	if d == nil {
		r.t.Fatalf("no state for %s", name)
	}
	return d
}

func TestBackoffDoublesToTheCeiling(t *testing.T) {
	p := policy()
	zero := func(time.Duration) time.Duration { return 0 }
	want := []time.Duration{5 * time.Minute, 10 * time.Minute, 20 * time.Minute, 40 * time.Minute, 80 * time.Minute,
		160 * time.Minute, 320 * time.Minute, 6 * time.Hour, 6 * time.Hour}
	for i, w := range want {
		if got := p.backoff(i+1, zero); got != w {
			t.Errorf("backoff(%d) = %v, want %v", i+1, got, w)
		}
	}
	most := func(n time.Duration) time.Duration { return n - 1 }
	if got := p.backoff(1, most); got != 5*time.Minute+30*time.Second {
		t.Errorf("backoff with the most jitter = %v, want 5m30s", got)
	}
}

func TestLifetimeRenewalIsSpread(t *testing.T) {
	nb, na := t0, t0.Add(90*24*time.Hour)
	if got := lifetimeRenewal(nb, na, func(time.Duration) time.Duration { return 0 }); !got.Equal(t0.Add(60 * 24 * time.Hour)) {
		t.Errorf("renewal without jitter = %v, want two thirds into the lifetime", got)
	}
	minutes := map[int64]bool{}
	earliest, latest := na, nb
	for range 1000 {
		at := lifetimeRenewal(nb, na, func(n time.Duration) time.Duration { return randN(n) })
		minutes[at.Unix()/60] = true
		earliest, latest = minTime(earliest, at), maxTime(latest, at)
	}
	if len(minutes) < 900 {
		t.Errorf("1000 certificates issued together renew in only %d distinct minutes", len(minutes))
	}
	if latest.After(t0.Add(60*24*time.Hour)) || earliest.Before(t0.Add(60*24*time.Hour-90*24*time.Hour/20)) {
		t.Errorf("renewals from %v to %v: outside [2/3 lifetime - lifetime/20, 2/3 lifetime]", earliest, latest)
	}
}

func TestOrdersMissingCertificatesAndHotLoads(t *testing.T) {
	r := newRig(t, policy(), "")
	r.m.SetDomains([]string{"a.example.com", "B.example.com.", "*.wild.example.com", "10.0.0.1", "localhost"}, nil, nil)
	r.step()
	if got := r.iss.count(); got != 2 {
		t.Fatalf("orders = %d (%v), want 2: wildcards, addresses and single labels get no HTTP-01 order", got, r.iss.orders)
	}
	for _, name := range []string{"a.example.com", "b.example.com"} {
		d := r.domain(name)
		if d.Condition(r.now) != "valid" || d.File != name+".pem" {
			t.Errorf("%s: condition %s, file %q", name, d.Condition(r.now), d.File)
		}
		path := filepath.Join(r.dir, "certs", name+".pem")
		if r.loader.loaded[path] != name {
			t.Errorf("%s not hot-loaded (loaded: %v)", name, r.loader.loaded)
		}
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != 0o640 {
			t.Errorf("%s: %v, mode %v; want 0640", path, err, fi.Mode())
		}
		if want := t0.Add(60 * 24 * time.Hour); !d.RenewAt.Equal(want) || d.RenewBy != "lifetime" {
			t.Errorf("%s renews at %v by %s, want %v by lifetime (no ARI configured)", name, d.RenewAt, d.RenewBy, want)
		}
	}
	list, _ := os.ReadFile(filepath.Join(r.dir, "certs/crt-list"))
	want := fmt.Sprintf("%s a.example.com\n%s b.example.com\n", filepath.Join(r.dir, "certs/a.example.com.pem"), filepath.Join(r.dir, "certs/b.example.com.pem"))
	if string(list) != want {
		t.Errorf("crt-list:\n%s\nwant:\n%s", list, want)
	}
	if len(r.reloads) != 0 {
		t.Errorf("reloads asked for: %v, want none (hot-loaded)", r.reloads)
	}
	// nothing due until the renewal time; then exactly one order each
	if next := r.step(); !next.Equal(t0.Add(60 * 24 * time.Hour)) {
		t.Errorf("next wake %v, want the renewal time", next)
	}
	r.now = t0.Add(60 * 24 * time.Hour)
	r.step()
	if got := r.iss.count(); got != 4 {
		t.Errorf("orders after the renewal time = %d, want 4", got)
	}
}

func TestFailureBacksOffAndSurvivesRestart(t *testing.T) {
	r := newRig(t, policy(), "")
	r.iss.fail["bad.example.com"] = errors.New("acme: error: 403 :: urn:ietf:params:acme:error:unauthorized :: invalid response")
	r.m.SetDomains([]string{"bad.example.com"}, nil, nil)
	r.step()
	d := r.domain("bad.example.com")
	if d.Failures != 1 || !d.NextAttempt.Equal(t0.Add(5*time.Minute)) || !strings.Contains(d.LastError, "unauthorized") {
		t.Fatalf("after one failure: failures %d, next %v, error %q", d.Failures, d.NextAttempt, d.LastError)
	}
	// a restart loop re-reads the state and does not order again early
	for i := range 10 {
		r.now = t0.Add(time.Duration(i) * 20 * time.Second)
		r.m = r.manager(policy())
		r.m.SetDomains([]string{"bad.example.com"}, nil, nil)
		r.step()
	}
	if got := r.iss.count(); got != 1 {
		t.Fatalf("orders after 10 restarts within the backoff = %d, want 1", got)
	}
	var gaps []time.Duration
	last := t0
	for range 5 {
		r.now = r.domain("bad.example.com").NextAttempt
		r.step()
		gaps = append(gaps, r.now.Sub(last))
		last = r.now
	}
	want := []time.Duration{5 * time.Minute, 10 * time.Minute, 20 * time.Minute, 40 * time.Minute, 80 * time.Minute}
	if fmt.Sprint(gaps) != fmt.Sprint(want) {
		t.Errorf("retry gaps %v, want %v", gaps, want)
	}
	if got := r.iss.count(); got != 6 {
		t.Errorf("orders = %d, want 6", got)
	}
}

func TestStartedOrderIsNotRepeatedAfterACrash(t *testing.T) {
	r := newRig(t, policy(), "")
	r.m.SetDomains([]string{"a.example.com"}, nil, nil)
	// the order starts, and the daemon dies before it ends
	r.m.tick(context.Background())
	st, err := ReadState(r.m.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if d := st.Domains["a.example.com"]; d == nil || !d.NextAttempt.After(r.now) || len(st.Orders) != 1 {
		t.Fatalf("state saved before the order: %+v, orders %v", d, st.Orders)
	}
	<-r.m.results // the orphaned job
	r.m = r.manager(policy())
	r.m.SetDomains([]string{"a.example.com"}, nil, nil)
	r.now = t0.Add(time.Minute)
	r.step()
	if got := r.iss.count(); got != 1 {
		t.Errorf("orders after the crash = %d, want 1", got)
	}
}

func TestRateLimitedHonoursRetryAfter(t *testing.T) {
	r := newRig(t, policy(), "")
	r.iss.fail["a.example.com"] = &acme.RateLimitedError{
		ProblemDetails: &acme.ProblemDetails{Type: acme.RateLimitedErr, Detail: "too many certificates", HTTPStatus: 429},
		RetryAfter:     "7200"}
	r.m.SetDomains([]string{"a.example.com"}, nil, nil)
	r.step()
	if d := r.domain("a.example.com"); !d.NextAttempt.Equal(t0.Add(2 * time.Hour)) {
		t.Errorf("next attempt %v, want Retry-After's two hours", d.NextAttempt.Sub(t0))
	}
}

func TestBudgetSpreadsOrdersAcrossWindows(t *testing.T) {
	p := policy()
	p.Orders, p.Window, p.InFlight = 2, time.Hour, 10
	r := newRig(t, p, "")
	var names []string
	for i := range 5 {
		names = append(names, fmt.Sprintf("d%d.example.com", i))
	}
	r.m.SetDomains(names, nil, nil)
	next := r.step()
	if got := r.iss.count(); got != 2 {
		t.Fatalf("orders in the first window = %d, want 2", got)
	}
	if !next.Equal(t0.Add(time.Hour)) {
		t.Errorf("next wake %v, want when the window frees (+1h)", next.Sub(t0))
	}
	r.now = t0.Add(59 * time.Minute)
	r.step()
	if got := r.iss.count(); got != 2 {
		t.Errorf("orders before the window frees = %d, want 2", got)
	}
	r.now = t0.Add(time.Hour)
	r.step()
	r.now = t0.Add(2 * time.Hour)
	r.step()
	if got := r.iss.count(); got != 5 {
		t.Errorf("orders after three windows = %d, want 5", got)
	}
	for _, n := range names {
		if c := r.domain(n).Condition(r.now); c != "valid" {
			t.Errorf("%s is %s", n, c)
		}
	}
}

func TestInFlightIsBounded(t *testing.T) {
	p := policy()
	p.InFlight = 3
	r := newRig(t, p, "")
	var names []string
	for i := range 10 {
		names = append(names, fmt.Sprintf("d%d.example.com", i))
	}
	r.m.SetDomains(names, nil, nil)
	r.m.tick(context.Background())
	if got := r.m.InFlight(); got != 3 {
		t.Errorf("jobs in flight = %d, want 3", got)
	}
	for r.m.InFlight() > 0 {
		r.m.finish(context.Background(), <-r.m.results)
	}
	for range 4 {
		r.step()
	}
	if got := r.iss.count(); got != 10 {
		t.Errorf("orders = %d, want 10", got)
	}
}

func TestDNSCheckMakesNoOrder(t *testing.T) {
	r := newRig(t, policy(), "")
	r.m.Addresses = []net.IP{net.ParseIP("192.0.2.10")}
	r.m.Resolve = func(_ context.Context, host string) ([]net.IPAddr, error) {
		if host == "here.example.com" {
			return []net.IPAddr{{IP: net.ParseIP("192.0.2.10")}}, nil
		}
		return []net.IPAddr{{IP: net.ParseIP("198.51.100.7")}}, nil
	}
	r.m.SetDomains([]string{"here.example.com", "elsewhere.example.com"}, nil, nil)
	r.step()
	if fmt.Sprint(r.iss.orders) != "[here.example.com]" {
		t.Errorf("orders %v, want only the domain that points here", r.iss.orders)
	}
	d := r.domain("elsewhere.example.com")
	if !strings.Contains(d.LastError, "does not resolve to this balancer") || !strings.Contains(d.LastError, "198.51.100.7") {
		t.Errorf("last error %q", d.LastError)
	}
	if st := r.m.Snapshot(); len(st.Orders) != 1 || st.OrdersTotal != 1 {
		t.Errorf("budget holds %d orders (total %d), want 1: no order was made for the other", len(st.Orders), st.OrdersTotal)
	}
}

func TestARIScheduleAndReplaces(t *testing.T) {
	r := newRig(t, policy(), "")
	r.m.ARI = true
	r.iss.ari = &certificate.RenewalInfoResponse{}
	r.iss.ari.SuggestedWindow.Start = t0.Add(10 * 24 * time.Hour)
	r.iss.ari.SuggestedWindow.End = t0.Add(10*24*time.Hour + time.Hour)
	r.m.SetDomains([]string{"a.example.com"}, nil, nil)
	r.step() // order
	r.step() // renewal information
	d := r.domain("a.example.com")
	if d.RenewBy != "ari" || d.RenewAt.Before(r.iss.ari.SuggestedWindow.Start) || d.RenewAt.After(r.iss.ari.SuggestedWindow.End) {
		t.Fatalf("renew at %v by %q, want inside the CA's window", d.RenewAt, d.RenewBy)
	}
	if !d.ARICheckAt.Equal(t0.Add(6 * time.Hour)) {
		t.Errorf("next ARI check %v, want +6h", d.ARICheckAt.Sub(t0))
	}
	// the CA moves the window into the past (a revocation, say)
	r.iss.ari.SuggestedWindow.Start = t0.Add(-2 * time.Hour)
	r.iss.ari.SuggestedWindow.End = t0.Add(-time.Hour)
	r.now = d.ARICheckAt
	r.step() // renewal information: renew now
	r.step() // the renewal
	if got := r.iss.count(); got != 2 {
		t.Fatalf("orders = %d, want the renewal", got)
	}
	if r.iss.replaces[1] == "" || !strings.Contains(r.iss.replaces[1], ".") {
		t.Errorf("renewal replaces %q, want the old certificate's ARI identifier", r.iss.replaces[1])
	}
	// a CA without ARI: the lifetime rule, no more checks
	r.iss.ariErr = ErrNoARI
	r.m.SetDomains([]string{"a.example.com", "b.example.com"}, nil, nil)
	r.step()
	r.step()
	if d := r.domain("b.example.com"); d.RenewBy != "lifetime" || !d.ARICheckAt.IsZero() {
		t.Errorf("without ARI: renew by %q, next check %v", d.RenewBy, d.ARICheckAt)
	}
}

func TestRemovalAfterGraceUnlessProtected(t *testing.T) {
	r := newRig(t, policy(), "")
	r.m.SetDomains([]string{"a.example.com", "b.example.com"}, nil, nil)
	r.step()
	// both leave the live map; b is still named by a (quarantined) fragment
	r.m.SetDomains(nil, []string{"b.example.com"}, nil)
	r.now = t0.Add(time.Hour)
	next := r.step()
	if !next.Equal(t0.Add(25 * time.Hour)) {
		t.Errorf("next wake %v, want the end of the grace (+25h)", next.Sub(t0))
	}
	if c := r.domain("a.example.com").Condition(r.now); c != "removing" {
		t.Errorf("a is %s, want removing", c)
	}
	r.now = t0.Add(25 * time.Hour)
	r.step()
	st := r.m.Snapshot()
	if st.Domains["a.example.com"] != nil {
		t.Error("a still in the state after its grace")
	}
	if st.Domains["b.example.com"] == nil {
		t.Error("b removed although a fragment still maps it")
	}
	aPath := filepath.Join(r.dir, "certs/a.example.com.pem")
	if _, err := os.Stat(aPath); !os.IsNotExist(err) {
		t.Errorf("a's file: %v, want removed", err)
	}
	if fmt.Sprint(r.loader.unloaded) != fmt.Sprint([]string{aPath}) {
		t.Errorf("unloaded %v", r.loader.unloaded)
	}
	list, _ := os.ReadFile(filepath.Join(r.dir, "certs/crt-list"))
	if strings.Contains(string(list), "a.example.com") || !strings.Contains(string(list), "b.example.com") {
		t.Errorf("crt-list after removal:\n%s", list)
	}
	// a domain that comes back within its grace keeps its certificate
	r.m.SetDomains([]string{"b.example.com"}, nil, nil)
	r.step()
	if d := r.domain("b.example.com"); d.Condition(r.now) != "valid" || r.iss.count() != 2 {
		t.Errorf("b back in the map: %s, orders %d", d.Condition(r.now), r.iss.count())
	}
}

func TestRuntimeFailureFallsBackToReload(t *testing.T) {
	r := newRig(t, policy(), "")
	r.loader.err = errors.New("socket gone")
	r.m.SetDomains([]string{"a.example.com"}, nil, nil)
	r.step()
	if len(r.reloads) != 1 || !strings.Contains(r.reloads[0], "a.example.com") {
		t.Errorf("reloads asked for: %v", r.reloads)
	}
}

func TestRenewalRequest(t *testing.T) {
	r := newRig(t, policy(), "")
	r.m.SetDomains([]string{"a.example.com", "b.example.com"}, nil, nil)
	r.step()
	if err := RequestRenewal(r.m.StateDir, []string{"b.example.com"}); err != nil {
		t.Fatal(err)
	}
	if err := RequestRenewal(r.m.StateDir, []string{"../x"}); err == nil {
		t.Error("a request naming no domain was accepted")
	}
	r.now = t0.Add(time.Minute)
	r.step()
	if got := strings.Count(fmt.Sprint(r.iss.orders), "b.example.com"); got != 2 || r.iss.count() != 3 {
		t.Errorf("orders %v, want b renewed on request and a left alone", r.iss.orders)
	}
	if d := r.domain("b.example.com"); d.Forced || !d.NotBefore.Equal(r.now) {
		t.Errorf("b after the forced renewal: forced %v, not before %v", d.Forced, d.NotBefore)
	}
}

func TestCAUnreachableIsRetried(t *testing.T) {
	r := newRig(t, policy(), "")
	calls := 0
	r.m.Issuer = func(context.Context) (Issuer, error) {
		calls++
		if calls == 1 {
			return nil, errors.New("connection refused")
		}
		return r.iss, nil
	}
	r.m.SetDomains([]string{"a.example.com"}, nil, nil)
	next := r.step()
	if r.m.IssuerError() == "" || !next.Equal(t0.Add(5*time.Minute)) {
		t.Fatalf("after a failed connect: error %q, next %v", r.m.IssuerError(), next.Sub(t0))
	}
	r.now = next
	r.step()
	if r.iss.count() != 1 || r.m.IssuerError() != "" {
		t.Errorf("orders %d, error %q after the CA came back", r.iss.count(), r.m.IssuerError())
	}
}

func randN(n time.Duration) time.Duration { return time.Duration(mrand.Int64N(int64(n))) }

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func TestRestartDropsMissingFiles(t *testing.T) {
	r := newRig(t, policy(), "")
	r.m.SetDomains([]string{"a.example.com", "b.example.com"}, nil, nil)
	r.step()
	if err := os.Remove(filepath.Join(r.dir, "certs/a.example.com.pem")); err != nil {
		t.Fatal(err)
	}
	r.m = r.manager(policy())
	list, _ := os.ReadFile(filepath.Join(r.dir, "certs/crt-list"))
	if strings.Contains(string(list), "a.example.com") || !strings.Contains(string(list), "b.example.com") {
		t.Errorf("crt-list after a restart with a.example.com's file gone:\n%s", list)
	}
	r.m.SetDomains([]string{"a.example.com", "b.example.com"}, nil, nil)
	r.step()
	if got := r.iss.count(); got != 3 {
		t.Errorf("orders = %d, want 3: the missing certificate ordered again", got)
	}
}

func TestNextWakeIsNeverInThePast(t *testing.T) {
	p := policy()
	p.InFlight = 1
	r := newRig(t, p, "")
	r.m.ARI = true
	r.iss.ari = &certificate.RenewalInfoResponse{}
	r.iss.ari.SuggestedWindow.Start = t0.Add(50 * 24 * time.Hour)
	r.iss.ari.SuggestedWindow.End = t0.Add(51 * 24 * time.Hour)
	r.m.SetDomains([]string{"a.example.com", "b.example.com", "c.example.com"}, nil, nil)
	for range 8 {
		r.step()
	}
	for _, d := range r.m.Snapshot().Domains {
		if d.File == "" || d.RenewBy != "ari" {
			t.Fatalf("%s not issued and scheduled: %+v", d.Name, d)
		}
	}
	// b leaves the map but a quarantined fragment still names it; long
	// after its grace nothing is due for it
	r.m.SetDomains([]string{"a.example.com", "c.example.com"}, []string{"b.example.com."}, nil)
	r.now = t0.Add(48 * time.Hour)
	if next := r.step(); !next.After(r.now) {
		t.Errorf("next wake %v is not after now %v", next, r.now)
	}
	if r.m.Snapshot().Domains["b.example.com"] == nil {
		t.Error("a protected domain was removed")
	}
	// a renewal-information check is due while the only slot is taken:
	// the job's end, not a timer in the past, wakes the manager
	r.now = r.domain("a.example.com").ARICheckAt
	r.m.mu.Lock()
	r.m.running["c.example.com"] = true
	next := r.m.st.nextWake(r.now, r.m.Policy, r.m.running, r.m.protected, true)
	r.m.mu.Unlock()
	if !next.IsZero() && !next.After(r.now) {
		t.Errorf("next wake %v with no free slot is not after now %v", next, r.now)
	}
}

func TestRestartLoopDuringOrdersBacksOff(t *testing.T) {
	r := newRig(t, policy(), "")
	var starts []time.Duration
	for range 5 {
		r.m.SetDomains([]string{"a.example.com"}, nil, nil)
		if r.m.tick(context.Background()); r.m.InFlight() > 0 {
			starts = append(starts, r.now.Sub(t0))
			<-r.m.results // killed during the order
		}
		r.m = r.manager(policy())
		r.now = r.domain("a.example.com").NextAttempt
	}
	want := []time.Duration{0, 5 * time.Minute, 15 * time.Minute, 35 * time.Minute, 75 * time.Minute}
	if fmt.Sprint(starts) != fmt.Sprint(want) {
		t.Errorf("orders started at %v, want %v: each start counts before the order", starts, want)
	}
}

func TestNoOrderWhenTheStateCannotBeSaved(t *testing.T) {
	r := newRig(t, policy(), "")
	// a directory where the state file goes: every save fails
	_ = os.Remove(filepath.Join(r.m.StateDir, StateFile))
	if err := os.MkdirAll(filepath.Join(r.m.StateDir, StateFile, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	r.m.SetDomains([]string{"a.example.com"}, nil, nil)
	r.step()
	if got := r.iss.count(); got != 0 {
		t.Errorf("orders = %d, want none while the state cannot record them", got)
	}
}
