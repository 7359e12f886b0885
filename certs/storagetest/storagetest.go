// Package storagetest is the conformance suite of certs.Storage: every
// implementation runs it in its tests, and passes it.
package storagetest

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"slices"
	"sync"
	"testing"
	"time"

	"haproxy-config/certs"
)

// Suite opens the storage under test.
type Suite struct {
	// New opens an empty storage, closed by the test's cleanup.
	New func(t *testing.T) certs.Storage
	// Peer opens another handle on s, as another balancer of the fleet
	// would; nil for a storage that one process alone uses (FileStorage):
	// s itself stands for the other user then.
	Peer func(t *testing.T, s certs.Storage) certs.Storage
}

// refused is how long a lock that must not be granted is waited for.
const refused = 100 * time.Millisecond

// Run runs every test of the suite.
func (s Suite) Run(t *testing.T) {
	t.Run("MissingKeys", s.missingKeys)
	t.Run("StoreAndReplace", s.storeAndReplace)
	t.Run("AtomicReplace", s.atomicReplace)
	t.Run("List", s.list)
	t.Run("Delete", s.delete)
	t.Run("InvalidKeys", s.invalidKeys)
	t.Run("Layout", s.layout)
	t.Run("LockExclusion", s.lockExclusion)
	t.Run("LockRelease", s.lockRelease)
	t.Run("UnlockOnlyOwn", s.unlockOnlyOwn)
	t.Run("FencedWrites", s.fencedWrites)
	t.Run("Tokens", s.tokens)
}

func (s Suite) peer(t *testing.T, st certs.Storage) certs.Storage {
	if s.Peer == nil {
		return st
	}
	return s.Peer(t, st)
}

func mustStore(t *testing.T, st certs.Storage, key string, value []byte) {
	t.Helper()
	if err := st.Store(context.Background(), key, value); err != nil {
		t.Fatalf("store %s: %v", key, err)
	}
}

func mustLoad(t *testing.T, st certs.Storage, key string) []byte {
	t.Helper()
	v, err := st.Load(context.Background(), key)
	if err != nil {
		t.Fatalf("load %s: %v", key, err)
	}
	return v
}

func mustList(t *testing.T, st certs.Storage, prefix string) []string {
	t.Helper()
	keys, err := st.List(context.Background(), prefix)
	if err != nil {
		t.Fatalf("list %s: %v", prefix, err)
	}
	return keys
}

func (s Suite) missingKeys(t *testing.T) {
	st := s.New(t)
	ctx := context.Background()
	if v, err := st.Load(ctx, "acme/missing.json"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("load of a missing key: %q, %v; want an error matching fs.ErrNotExist", v, err)
	}
	if err := st.Delete(ctx, "acme/missing.json"); err != nil {
		t.Errorf("delete of a missing key: %v, want nil", err)
	}
	if keys, err := st.List(ctx, "acme/nothing"); err != nil || len(keys) != 0 {
		t.Errorf("list of an empty prefix: %q, %v; want none, nil", keys, err)
	}
}

func (s Suite) storeAndReplace(t *testing.T) {
	st := s.New(t)
	mustStore(t, st, "a/value", []byte("one"))
	if v := mustLoad(t, s.peer(t, st), "a/value"); string(v) != "one" {
		t.Errorf("load = %q, want %q", v, "one")
	}
	mustStore(t, st, "a/value", []byte("two"))
	if v := mustLoad(t, st, "a/value"); string(v) != "two" {
		t.Errorf("load after replace = %q, want %q", v, "two")
	}
	// a renewal request is an empty value: stored, not missing
	mustStore(t, st, "a/empty", nil)
	if v := mustLoad(t, st, "a/empty"); len(v) != 0 {
		t.Errorf("empty value loads as %q", v)
	}
}

// atomicReplace reads a key while it is replaced again and again: every
// read is one of the values whole.
func (s Suite) atomicReplace(t *testing.T) {
	st := s.New(t)
	values := [][]byte{bytes.Repeat([]byte("a"), 256<<10), bytes.Repeat([]byte("b"), 300<<10)}
	mustStore(t, st, "big/value", values[0])
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writeErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := st.Store(context.Background(), "big/value", values[i%2]); err != nil {
				writeErr = err
				return
			}
		}
	}()
	reader := s.peer(t, st)
	for i := 0; i < 200 && !t.Failed(); i++ {
		v, err := reader.Load(context.Background(), "big/value")
		if err != nil {
			t.Errorf("read %d during replacements: %v", i, err)
		} else if !bytes.Equal(v, values[0]) && !bytes.Equal(v, values[1]) {
			t.Errorf("read %d during replacements: %d bytes, neither value whole", i, len(v))
		}
	}
	close(stop)
	wg.Wait()
	if writeErr != nil {
		t.Errorf("store during reads: %v", writeErr)
	}
}

func (s Suite) list(t *testing.T) {
	st := s.New(t)
	for _, k := range []string{"p/c", "p/a", "p/b", "p/sub/deeper", "q/other", "pp/near"} {
		mustStore(t, st, k, []byte(k))
	}
	if got, want := mustList(t, s.peer(t, st), "p"), []string{"p/a", "p/b", "p/c"}; !slices.Equal(got, want) {
		t.Errorf("list p = %q, want %q: the values directly under p, sorted", got, want)
	}
	if got, want := mustList(t, st, "p/sub"), []string{"p/sub/deeper"}; !slices.Equal(got, want) {
		t.Errorf("list p/sub = %q, want %q", got, want)
	}
}

func (s Suite) delete(t *testing.T) {
	st := s.New(t)
	ctx := context.Background()
	mustStore(t, st, "d/x", []byte("x"))
	mustStore(t, st, "d/y", []byte("y"))
	if err := st.Delete(ctx, "d/x"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.peer(t, st).Load(ctx, "d/x"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("load after delete: %v, want fs.ErrNotExist", err)
	}
	if got := mustList(t, st, "d"); !slices.Equal(got, []string{"d/y"}) {
		t.Errorf("list after delete = %q, want only d/y", got)
	}
	if err := st.Delete(ctx, "d/x"); err != nil {
		t.Errorf("second delete: %v, want nil", err)
	}
	if v := mustLoad(t, st, "d/y"); string(v) != "y" {
		t.Errorf("the other value: %q", v)
	}
}

func (s Suite) invalidKeys(t *testing.T) {
	st := s.New(t)
	ctx := context.Background()
	for _, k := range []string{"", "/abs", "../up", "a/../b", "a//b", "a/./b", "a/", "."} {
		if err := st.Store(ctx, k, []byte("x")); err == nil {
			t.Errorf("store of key %q accepted", k)
		}
		if _, err := st.Load(ctx, k); err == nil || errors.Is(err, fs.ErrNotExist) {
			t.Errorf("load of key %q: %v, want a refusal", k, err)
		}
	}
}

// layout stores a value at every kind of key certs uses.
func (s Suite) layout(t *testing.T) {
	st := s.New(t)
	dir := "https://acme.example.net:14000/dir"
	keys := []string{certs.Keys.AccountKey(dir), certs.Keys.AccountRegistration(dir), certs.Keys.State(),
		certs.Keys.DNSJournal(), certs.Keys.Certificate("shop.example.com"), certs.Keys.Certificate("*.example.com"),
		certs.Keys.RenewRequest("shop.example.com"), certs.Keys.RenewRequest(certs.AllDomains)}
	for _, k := range keys {
		mustStore(t, st, k, []byte("value of "+k))
	}
	for _, k := range keys {
		if v := mustLoad(t, st, k); string(v) != "value of "+k {
			t.Errorf("%s holds %q", k, v)
		}
	}
	want := []string{certs.Keys.RenewRequest(certs.AllDomains), certs.Keys.RenewRequest("shop.example.com")}
	if got := mustList(t, st, certs.Keys.RenewRequests()); !slices.Equal(got, want) {
		t.Errorf("renewal requests = %q, want %q", got, want)
	}
}

func lock(t *testing.T, st certs.Storage, name string) certs.Lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := st.Lock(ctx, name)
	if err != nil {
		t.Fatalf("lock %s: %v", name, err)
	}
	return l
}

// mustBeHeld fails unless name is locked.
func mustBeHeld(t *testing.T, st certs.Storage, name, why string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), refused)
	defer cancel()
	if l, err := st.Lock(ctx, name); err == nil {
		_ = l.Unlock(context.Background())
		t.Fatalf("lock %s granted %s", name, why)
	}
}

func (s Suite) lockExclusion(t *testing.T) {
	st := s.New(t)
	other := s.peer(t, st)
	held := lock(t, st, "orders/a.example.com")
	defer held.Unlock(context.Background())
	mustBeHeld(t, other, "orders/a.example.com", "while another lease holds it")
	l := lock(t, other, "orders/b.example.com") // another name is free
	if err := l.Unlock(context.Background()); err != nil {
		t.Error(err)
	}
}

func (s Suite) lockRelease(t *testing.T) {
	st := s.New(t)
	other := s.peer(t, st)
	held := lock(t, st, "orders/a.example.com")
	select {
	case <-held.Lost():
		t.Fatal("a lease held is reported lost")
	default:
	}
	got := make(chan certs.Lease)
	errs := make(chan error, 1)
	go func() { // a waiter, granted once the lock is released
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		l, err := other.Lock(ctx, "orders/a.example.com")
		if err != nil {
			errs <- err
			return
		}
		got <- l
	}()
	if err := held.Unlock(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held.Lost():
	default:
		t.Error("Lost is not closed after Unlock")
	}
	select {
	case l := <-got:
		_ = l.Unlock(context.Background())
	case err := <-errs:
		t.Fatalf("the waiter was not granted the released lock: %v", err)
	}
}

func (s Suite) unlockOnlyOwn(t *testing.T) {
	st := s.New(t)
	other := s.peer(t, st)
	first := lock(t, st, "orders/a.example.com")
	if err := first.Unlock(context.Background()); err != nil {
		t.Fatal(err)
	}
	second := lock(t, other, "orders/a.example.com")
	defer second.Unlock(context.Background())
	_ = first.Unlock(context.Background()) // late: must not release second's
	mustBeHeld(t, st, "orders/a.example.com", "after a released lease unlocked again")
}

// fencedWrites: a lease stores and deletes while it holds its lock; once
// unlocked, and with the lock taken by another since, it changes nothing
// and says ErrLockLost.
func (s Suite) fencedWrites(t *testing.T) {
	st := s.New(t)
	other := s.peer(t, st)
	ctx := context.Background()
	const name, key, gone = "orders/a.example.com", "certificates/a.example.com.pem", "schedule/a.example.com.json"
	first := lock(t, st, name)
	if err := first.Store(ctx, key, []byte("first")); err != nil {
		t.Fatalf("store under a lease held: %v", err)
	}
	if v := mustLoad(t, other, key); string(v) != "first" {
		t.Errorf("load of a fenced store = %q, want %q", v, "first")
	}
	mustStore(t, st, gone, []byte("failures"))
	if err := first.Delete(ctx, gone); err != nil {
		t.Fatalf("delete under a lease held: %v", err)
	}
	if _, err := other.Load(ctx, gone); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("load after a fenced delete: %v, want fs.ErrNotExist", err)
	}
	if err := first.Store(ctx, "certificates/../up", []byte("x")); err == nil || errors.Is(err, certs.ErrLockLost) {
		t.Errorf("fenced store of an invalid key: %v, want a refusal of the key", err)
	}
	if err := first.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := first.Store(ctx, key, []byte("late")); !errors.Is(err, certs.ErrLockLost) {
		t.Errorf("store under an unlocked lease: %v, want ErrLockLost", err)
	}

	second := lock(t, other, name)
	defer second.Unlock(ctx)
	if err := second.Store(ctx, key, []byte("second")); err != nil {
		t.Fatalf("store under the next holder's lease: %v", err)
	}
	mustStore(t, other, gone, []byte("second's failures"))
	if err := first.Store(ctx, key, []byte("late")); !errors.Is(err, certs.ErrLockLost) {
		t.Errorf("store under a lease whose lock another took since: %v, want ErrLockLost", err)
	}
	if err := first.Delete(ctx, gone); !errors.Is(err, certs.ErrLockLost) {
		t.Errorf("delete under a lease whose lock another took since: %v, want ErrLockLost", err)
	}
	if v := mustLoad(t, st, key); string(v) != "second" {
		t.Errorf("the next holder's value became %q", v)
	}
	if v := mustLoad(t, st, gone); string(v) != "second's failures" {
		t.Errorf("the next holder's other value became %q", v)
	}
}

func (s Suite) tokens(t *testing.T) {
	st := s.New(t)
	other := s.peer(t, st)
	ctx := context.Background()
	if tok, err := other.GetToken(ctx, "tok1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("unknown token: %+v, %v; want fs.ErrNotExist", tok, err)
	}
	want := certs.Token{Domain: "shop.example.com", KeyAuth: "tok1.thumb"}
	if err := st.PutToken(ctx, "tok1", want); err != nil {
		t.Fatal(err)
	}
	if got, err := other.GetToken(ctx, "tok1"); err != nil || got != want {
		t.Errorf("token = %+v, %v; want %+v", got, err, want)
	}
	if err := st.PutToken(ctx, "tok2", certs.Token{Domain: "b.example.com", KeyAuth: "tok2.thumb"}); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteToken(ctx, "tok1"); err != nil {
		t.Fatal(err)
	}
	if _, err := other.GetToken(ctx, "tok1"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("deleted token: %v, want fs.ErrNotExist", err)
	}
	if got, err := other.GetToken(ctx, "tok2"); err != nil || got.KeyAuth != "tok2.thumb" {
		t.Errorf("the other token: %+v, %v", got, err)
	}
	if err := st.DeleteToken(ctx, "tok1"); err != nil {
		t.Errorf("second delete: %v, want nil", err)
	}
}
