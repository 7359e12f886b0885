package certs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestFileStorageKeepsTheLayout proves the files are where, and with the
// modes, they were before the storage interface: upgrades find them.
func TestFileStorageKeepsTheLayout(t *testing.T) {
	dir := t.TempDir()
	state, certsDir := filepath.Join(dir, "state"), filepath.Join(dir, "certs")
	s := NewFileStorage(state, certsDir)
	ca := "https://127.0.0.1:14000/dir"
	cases := []struct {
		key, path    string
		mode, dirMod fs.FileMode
	}{
		{Keys.AccountKey(ca), "state/acme/127.0.0.1_14000/account.key", 0o600, 0o700},
		{Keys.AccountRegistration(ca), "state/acme/127.0.0.1_14000/account.json", 0o600, 0o700},
		{Keys.AccountKey("not a url"), "state/acme/ca/account.key", 0o600, 0o700},
		{Keys.State(), "state/acme/state.json", 0o640, 0o750},
		{Keys.DNSJournal(), "state/acme/dns-records.json", 0o600, 0o750},
		{Keys.RenewRequest("shop.example.com"), "state/acme/renew/shop.example.com", 0o640, 0o750},
		{Keys.RenewRequest(AllDomains), "state/acme/renew/_all", 0o640, 0o750},
		{Keys.Certificate("shop.example.com"), "certs/shop.example.com.pem", 0o640, 0o750},
		{Keys.Certificate("*.example.com"), "certs/_wildcard.example.com.pem", 0o640, 0o750},
	}
	for _, tc := range cases {
		// a fresh directory for each: MkdirAll sets the mode of the ones it makes
		_ = os.RemoveAll(state)
		_ = os.RemoveAll(certsDir)
		p, err := s.Path(tc.key)
		if err != nil || p != filepath.Join(dir, tc.path) {
			t.Errorf("%s is at %s (%v), want %s", tc.key, p, err, tc.path)
			continue
		}
		if err := s.Store(context.Background(), tc.key, []byte("x")); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != tc.mode {
			t.Errorf("%s: %v, mode %v, want %v", tc.path, err, fi.Mode().Perm(), tc.mode)
		}
		di, err := os.Stat(filepath.Dir(p))
		if err != nil || di.Mode().Perm() != tc.dirMod {
			t.Errorf("directory of %s: %v, mode %v, want %v", tc.path, err, di.Mode().Perm(), tc.dirMod)
		}
	}
	for _, name := range []string{StateFile, RenewDir, DNSRecordsFile} {
		if p, _ := s.Path(name); p != filepath.Join(state, name) {
			t.Errorf("%s is at %s, not under the state directory", name, p)
		}
	}
}

func TestFileStorageListSkipsTempFilesAndDirectories(t *testing.T) {
	dir := t.TempDir()
	s := NewFileStorage(dir, "")
	if err := RequestRenewal(dir, []string{"a.example.com"}); err != nil {
		t.Fatal(err)
	}
	renew := filepath.Join(dir, RenewDir)
	if err := os.WriteFile(filepath.Join(renew, ".b.example.com123"), nil, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(renew, "sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	keys, err := s.List(context.Background(), Keys.RenewRequests())
	if err != nil || !slices.Equal(keys, []string{"acme/renew/a.example.com"}) {
		t.Errorf("list = %q, %v; want the request alone", keys, err)
	}
	if _, err := s.Path(Keys.Certificate("a.example.com")); err == nil {
		t.Error("a certificate key has a path without a certificate directory")
	}
}

// sharedStorage stands for a shared storage: a FileStorage elsewhere,
// which the manager cannot take for its local files. It records the keys
// stored and whether the order lock was held while the CA was asked.
type sharedStorage struct {
	*FileStorage
	mu     sync.Mutex
	stored []string
}

func (s *sharedStorage) Store(ctx context.Context, key string, value []byte) error {
	s.mu.Lock()
	s.stored = append(s.stored, key)
	s.mu.Unlock()
	return s.FileStorage.Store(ctx, key, value)
}

// lockedIssuer fails an order unless its domain's lock is held.
type lockedIssuer struct {
	Issuer
	store Storage
}

func (l lockedIssuer) Obtain(names []string, challenge, replaces string) (*Issued, error) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if lease, err := l.store.Lock(ctx, Keys.OrderLock(names[0])); err == nil {
		_ = lease.Unlock(ctx)
		return nil, fmt.Errorf("ordered %s without holding its lock", names[0])
	}
	return l.Issuer.Obtain(names, challenge, replaces)
}

// TestManagerPersistsThroughItsStorage runs the manager on a storage that
// is not its local files: everything it persists is in that storage,
// nothing in its state directory, and its certificate directory holds the
// local copy HAProxy reads.
func TestManagerPersistsThroughItsStorage(t *testing.T) {
	r := newRig(t, policy(), "")
	shared := &sharedStorage{FileStorage: NewFileStorage(filepath.Join(r.dir, "shared"), filepath.Join(r.dir, "shared-certs"))}
	m := r.m
	m.Storage, m.StateDir, m.CertsDir = shared, filepath.Join(r.dir, "unused-state"), filepath.Join(r.dir, "local")
	m.CrtList = filepath.Join(m.CertsDir, "crt-list")
	m.Issuer = func(context.Context) (Issuer, error) { return lockedIssuer{Issuer: r.iss, store: shared}, nil }
	m.issuer = nil
	if err := m.Init(); err != nil {
		t.Fatal(err)
	}
	if err := m.Renew([]string{"a.example.com"}); err != nil {
		t.Fatal(err)
	}
	m.SetDomains([]string{"a.example.com"}, nil, nil)
	r.step()
	if d := r.domain("a.example.com"); d.Condition(r.now) != "valid" || d.LastError != "" {
		t.Fatalf("a.example.com: %s, %s", d.Condition(r.now), d.LastError)
	}
	for _, key := range []string{Keys.State(), Keys.Certificate("a.example.com")} {
		if !slices.Contains(shared.stored, key) {
			t.Errorf("%s was not stored (stored: %q)", key, shared.stored)
		}
	}
	stored, err := shared.Load(context.Background(), Keys.Certificate("a.example.com"))
	if err != nil {
		t.Fatal(err)
	}
	local, err := os.ReadFile(filepath.Join(m.CertsDir, "a.example.com.pem"))
	if err != nil || !bytes.Equal(local, stored) {
		t.Errorf("local copy: %v, equal to the stored one: %v", err, bytes.Equal(local, stored))
	}
	if keys, _ := shared.List(context.Background(), Keys.RenewRequests()); len(keys) != 0 {
		t.Errorf("renewal requests left: %q", keys)
	}
	if _, err := os.Stat(m.StateDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the state directory was written to: %v", err)
	}
	st, err := LoadState(context.Background(), shared)
	if err != nil || st.Domains["a.example.com"] == nil || st.OrdersTotal != 1 {
		t.Errorf("stored state: %+v, %v", st, err)
	}
	lease, err := shared.Lock(context.Background(), Keys.OrderLock("a.example.com"))
	if err != nil {
		t.Fatalf("the order lock is still held: %v", err)
	}
	_ = lease.Unlock(context.Background())

	// removal: out of the storage and the local directory
	r.now = r.now.Add(time.Hour)
	m.SetDomains(nil, nil, nil)
	r.step()
	r.now = r.now.Add(25 * time.Hour)
	r.step()
	if _, err := shared.Load(context.Background(), Keys.Certificate("a.example.com")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stored certificate after removal: %v", err)
	}
	if _, err := os.Stat(filepath.Join(m.CertsDir, "a.example.com.pem")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("local certificate after removal: %v", err)
	}
}

// TestChallengesAnswerFromTheirStorage: a token another balancer put in
// the storage is answered, and one presented here is in the storage.
func TestChallengesAnswerFromTheirStorage(t *testing.T) {
	s := NewFileStorage(t.TempDir(), "")
	c := ChallengesIn(s)
	ctx := context.Background()
	if err := s.PutToken(ctx, "elsewhere", Token{Domain: "x.example.com", KeyAuth: "elsewhere.k"}); err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	c.ServeHTTP(w, httptest.NewRequest("GET", "http://x.example.com"+ChallengePath+"elsewhere", nil))
	if w.Code != 200 || w.Body.String() != "elsewhere.k" {
		t.Errorf("a stored token: %d %q", w.Code, w.Body.String())
	}
	if err := c.Present("Y.example.com", "here", "here.k"); err != nil {
		t.Fatal(err)
	}
	if tok, err := s.GetToken(ctx, "here"); err != nil || tok != (Token{Domain: "y.example.com", KeyAuth: "here.k"}) {
		t.Errorf("presented token in the storage: %+v, %v", tok, err)
	}
	if err := c.CleanUp("y.example.com", "here", "here.k"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetToken(ctx, "here"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("token after CleanUp: %v", err)
	}
}

// stateFailing fails every Store of the state once fail is set.
type stateFailing struct {
	*FileStorage
	fail *bool
}

func (s stateFailing) Store(ctx context.Context, key string, value []byte) error {
	if *s.fail && key == Keys.State() {
		return errors.New("disk full")
	}
	return s.FileStorage.Store(ctx, key, value)
}

// TestRenewalRequestKeptUntilStateSaved: a renewal request is deleted only
// once the state that records it is saved, so a failed save loses none.
func TestRenewalRequestKeptUntilStateSaved(t *testing.T) {
	r := newRig(t, policy(), "")
	files := NewFileStorage(filepath.Join(r.dir, "store"), filepath.Join(r.dir, "store-certs"))
	m := r.m
	fail := false
	m.Storage = stateFailing{files, &fail}
	if err := m.Init(); err != nil {
		t.Fatal(err)
	}
	m.st.Domains["a.example.com"] = &Domain{Name: "a.example.com"}
	if err := m.Renew([]string{"a.example.com"}); err != nil {
		t.Fatal(err)
	}
	fail = true
	m.takeRequests(r.now)
	if keys, err := files.List(context.Background(), Keys.RenewRequests()); err != nil || len(keys) != 1 {
		t.Errorf("renewal requests after a failed state save: %q, %v; want the request kept", keys, err)
	}
}
