package etcdstorage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"haproxy-config/certs"
	"haproxy-config/certs/storagetest"
	"haproxy-config/internal/testkit"
)

// testTTL is the locks' TTL in these tests.
const testTTL = 3 * time.Second

// cluster starts a 3-member etcd cluster; the tests against etcd are not
// run with -short.
func cluster(t *testing.T) *testkit.EtcdCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("a 3-member etcd cluster: not with -short")
	}
	return testkit.StartEtcdCluster(t, 3)
}

var prefixes atomic.Int64

// fleet is one fleet's configuration on c: a prefix of its own and a key
// file.
func fleet(t *testing.T, c *testkit.EtcdCluster) Config {
	return Config{
		Endpoints:      c.Endpoints(),
		Prefix:         fmt.Sprintf("/haproxy-config/test-%d/", prefixes.Add(1)),
		KeyFile:        writeKeyFile(t, 0o600),
		Owner:          "node-1",
		RequestTimeout: 2 * time.Second,
		LockTTL:        testTTL,
	}
}

// open opens cfg, closed by the test's cleanup.
func open(t *testing.T, cfg Config) *Storage {
	t.Helper()
	s, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// rawClient is a plain etcd client: what any reader of the cluster sees.
func rawClient(t *testing.T, c *testkit.EtcdCluster) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

func TestConformance(t *testing.T) {
	c := cluster(t)
	configs := map[*Storage]Config{}
	storagetest.Suite{
		New: func(t *testing.T) certs.Storage {
			cfg := fleet(t, c)
			s := open(t, cfg)
			configs[s] = cfg
			return s
		},
		Peer: func(t *testing.T, s certs.Storage) certs.Storage {
			cfg := configs[s.(*Storage)]
			cfg.Owner = "node-2"
			return open(t, cfg)
		},
	}.Run(t)
}

func TestValuesAreSealed(t *testing.T) {
	c := cluster(t)
	cfg := fleet(t, c)
	s := open(t, cfg)
	ctx := context.Background()
	pem := "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUYmFzZTY0\n-----END CERTIFICATE-----\n" +
		"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIPrivateKeyMaterial\n-----END EC PRIVATE KEY-----\n"
	secrets := map[string]string{
		certs.Keys.Certificate("shop.example.com"):                     pem,
		certs.Keys.AccountKey("https://acme.example.net/dir"):          "-----BEGIN EC PRIVATE KEY-----\nAccountKeyMaterial\n",
		certs.Keys.AccountRegistration("https://acme.example.net/dir"): `{"email":"ops@example.net"}`,
	}
	for k, v := range secrets {
		if err := s.Store(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutToken(ctx, "tokenSecret123", certs.Token{Domain: "secret-domain.example.com", KeyAuth: "tokenSecret123.thumbprint"}); err != nil {
		t.Fatal(err)
	}
	lease, err := s.Lock(ctx, certs.Keys.OrderLock("shop.example.com"))
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Unlock(ctx)

	resp, err := rawClient(t, c).Get(ctx, strings.TrimRight(cfg.Prefix, "/")+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != len(secrets)+2 {
		t.Errorf("%d keys in etcd, want %d values, a token and a lock", len(resp.Kvs), len(secrets)+2)
	}
	forbidden := []string{"BEGIN", "PRIVATE", "MII", "KeyMaterial", "ops@example.net", "tokenSecret123",
		"thumbprint", "secret-domain", "node-1"}
	for _, kv := range resp.Kvs {
		for _, f := range forbidden {
			if bytes.Contains(kv.Value, []byte(f)) || bytes.Contains(kv.Key, []byte(f)) {
				t.Errorf("etcd key %s (value %d bytes) shows %q", kv.Key, len(kv.Value), f)
			}
		}
		t.Logf("an etcd reader sees %s, %d bytes", kv.Key, len(kv.Value))
	}

	// another fleet's key does not open them
	other := cfg
	other.KeyFile = writeKeyFile(t, 0o600)
	o := open(t, other)
	if _, err := o.Load(ctx, certs.Keys.Certificate("shop.example.com")); !errors.Is(err, errUnsealed) {
		t.Errorf("load with another seal key: %v, want %v", err, errUnsealed)
	}
	if _, err := o.GetToken(ctx, "tokenSecret123"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("token with another seal key: %v, want not found (another name)", err)
	}
}

func TestPrefixesAreSeparate(t *testing.T) {
	c := cluster(t)
	a, b := open(t, fleet(t, c)), open(t, fleet(t, c))
	ctx := context.Background()
	if err := a.Store(ctx, "acme/state.json", []byte("a")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Load(ctx, "acme/state.json"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("another fleet's value: %v, want fs.ErrNotExist", err)
	}
	held, err := a.Lock(ctx, "orders/a.example.com")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Unlock(ctx)
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l, err := b.Lock(lctx, "orders/a.example.com")
	if err != nil {
		t.Fatalf("another fleet's lock of the same name: %v", err)
	}
	_ = l.Unlock(ctx)
}

// lockWithin locks name within d.
func lockWithin(s *Storage, name string, d time.Duration) (certs.Lease, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	l, err := s.Lock(ctx, name)
	return l, time.Since(start), err
}

func TestQuorum(t *testing.T) {
	c := cluster(t)
	cfg := fleet(t, c)
	s := open(t, cfg)
	ctx := context.Background()
	works := func(when string) {
		t.Helper()
		start := time.Now()
		value := []byte("certificate " + when)
		if err := s.Store(ctx, "certificates/a.example.com.pem", value); err != nil {
			t.Fatalf("%s: store: %v", when, err)
		}
		if got, err := s.Load(ctx, "certificates/a.example.com.pem"); err != nil || !bytes.Equal(got, value) {
			t.Fatalf("%s: load: %q, %v", when, got, err)
		}
		l, _, err := lockWithin(s, "orders/a.example.com", 10*time.Second)
		if err != nil {
			t.Fatalf("%s: lock: %v", when, err)
		}
		if err := l.Unlock(ctx); err != nil {
			t.Fatalf("%s: unlock: %v", when, err)
		}
		t.Logf("%s: store, load, lock and unlock in %v", when, time.Since(start).Round(time.Millisecond))
	}
	works("3 members")

	c.Stop(0)
	works("1 member stopped")

	held, _, err := lockWithin(s, "orders/held.example.com", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Stop(1)
	start := time.Now()
	if l, took, err := lockWithin(s, "orders/b.example.com", 3*time.Second); err == nil {
		_ = l.Unlock(ctx)
		t.Fatal("a lock granted with 2 of 3 members stopped")
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("lock without quorum: %v, want the deadline", err)
	} else {
		t.Logf("lock without quorum: refused after %v: %v", took.Round(time.Millisecond), err)
	}
	loadStart := time.Now()
	if _, err := s.Load(ctx, "certificates/a.example.com.pem"); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("load without quorum: %v, want a failure that is not fs.ErrNotExist", err)
	} else {
		t.Logf("load without quorum: failed after %v: %v", time.Since(loadStart).Round(time.Millisecond), err)
	}
	select {
	case <-held.Lost():
		t.Logf("a lease held when the quorum went is lost %v after", time.Since(start).Round(time.Millisecond))
	case <-time.After(2*testTTL + 5*time.Second - time.Since(start)):
		t.Error("a lease held without quorum for twice its TTL is not reported lost")
	}
	_ = held.Unlock(ctx)

	c.Start(0)
	c.Start(1)
	for i := range c.Members {
		c.WaitHealthy(i)
	}
	works("members back")
}

func TestDeadHolderReleasedWithinTTL(t *testing.T) {
	c := cluster(t)
	cfg := fleet(t, c)
	holder, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	other := open(t, cfg)
	held, _, err := lockWithin(holder, "orders/a.example.com", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if l, _, err := lockWithin(other, "orders/a.example.com", 200*time.Millisecond); err == nil {
		_ = l.Unlock(context.Background())
		t.Fatal("a held lock granted to another")
	}
	// the holder's process goes away: its client closes without
	// revoking its lease
	if err := holder.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held.Lost():
	default:
		t.Error("the lease of a closed client is not reported lost")
	}
	l, took, err := lockWithin(other, "orders/a.example.com", testTTL+5*time.Second)
	if err != nil {
		t.Fatalf("the lock of a dead holder is not released within its TTL %v and 5 s: %v", testTTL, err)
	}
	t.Logf("the lock of a dead holder granted to another after %v (TTL %v)", took.Round(time.Millisecond), testTTL)
	// a late Unlock of the dead holder's releases nothing
	_ = held.Unlock(context.Background())
	if l2, _, err := lockWithin(other, "orders/a.example.com", 200*time.Millisecond); err == nil {
		_ = l2.Unlock(context.Background())
		t.Error("the dead holder's late Unlock released the new holder's lock")
	}
	if err := l.Unlock(context.Background()); err != nil {
		t.Error(err)
	}
}

// holderEnv makes the test binary a lock holder: TestMain runs holdLock.
const holderEnv = "ETCDSTORAGE_TEST_HOLDER"

func TestMain(m *testing.M) {
	if cfg := os.Getenv(holderEnv); cfg != "" {
		os.Exit(holdLock(cfg))
	}
	os.Exit(m.Run())
}

// holdLock takes orders/a.example.com with the Config in JSON, says
// "locked" and waits to be killed.
func holdLock(cfgJSON string) int {
	var cfg Config
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	s, err := Open(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer s.Close()
	if _, _, err := lockWithin(s, "orders/a.example.com", 10*time.Second); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println("locked")
	time.Sleep(time.Minute)
	return 1
}

func TestKilledHolderReleasedWithinTTL(t *testing.T) {
	c := cluster(t)
	cfg := fleet(t, c)
	other := open(t, cfg)
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(t.TempDir(), "holder.log")
	holder := testkit.StartProc(t, log, []string{holderEnv + "=" + string(cfgJSON)}, os.Args[0], "-test.run=^$")
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if out, _ := os.ReadFile(log); strings.Contains(string(out), "locked") {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the holder process did not lock: %s", out)
		}
	}
	if l, _, err := lockWithin(other, "orders/a.example.com", 200*time.Millisecond); err == nil {
		_ = l.Unlock(context.Background())
		t.Fatal("a lock held by another process granted")
	}
	if err := holder.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	l, _, err := lockWithin(other, "orders/a.example.com", testTTL+5*time.Second)
	if err != nil {
		t.Fatalf("the lock of a holder killed with -9 is not released within its TTL %v and 5 s: %v", testTTL, err)
	}
	t.Logf("the lock of a holder killed with -9 granted to another %v after the kill (TTL %v)", time.Since(killed).Round(time.Millisecond), testTTL)
	if err := l.Unlock(context.Background()); err != nil {
		t.Error(err)
	}
}

// TestFencedWritesAfterTheLockWent: a holder whose lease expired (etcd
// revokes an expired lease) or whose lock key was deleted, with the lock
// taken by another since, stores and deletes nothing through its lease.
func TestFencedWritesAfterTheLockWent(t *testing.T) {
	c := cluster(t)
	raw := rawClient(t, c)
	ctx := context.Background()
	const name, key, sched = "orders/a.example.com", "certificates/a.example.com.pem", "schedule/a.example.com.json"
	cases := []struct {
		name string
		lose func(t *testing.T, l *lease) // makes l's lock go behind its holder's back
		// Lost stays open: the refusal is etcd's transaction's, not
		// the lease's own check
		stillAlive bool
	}{
		{"lease expired", func(t *testing.T, l *lease) {
			if _, err := raw.Revoke(ctx, l.id); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"lock key broken", func(t *testing.T, l *lease) {
			if _, err := raw.Delete(ctx, l.key); err != nil {
				t.Fatal(err)
			}
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fleet(t, c)
			holder, other := open(t, cfg), open(t, cfg)
			l, _, err := lockWithin(holder, name, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Unlock(ctx)
			held := l.(*lease)
			if err := held.Store(ctx, key, []byte("first")); err != nil {
				t.Fatalf("store under a lease held: %v", err)
			}
			tc.lose(t, held)

			next, _, err := lockWithin(other, name, 10*time.Second)
			if err != nil {
				t.Fatalf("the next holder: %v", err)
			}
			defer next.Unlock(ctx)
			if err := next.Store(ctx, key, []byte("second")); err != nil {
				t.Fatalf("store by the next holder: %v", err)
			}
			if err := other.Store(ctx, sched, []byte("second's failures")); err != nil {
				t.Fatal(err)
			}
			if tc.stillAlive {
				select {
				case <-held.Lost():
					t.Fatal("the first lease is reported lost: the case is to prove etcd's refusal")
				default:
				}
			}
			if err := held.Store(ctx, key, []byte("late")); !errors.Is(err, certs.ErrLockLost) {
				t.Errorf("store once another took the lock: %v, want ErrLockLost", err)
			}
			if err := held.Delete(ctx, sched); !errors.Is(err, certs.ErrLockLost) {
				t.Errorf("delete once another took the lock: %v, want ErrLockLost", err)
			}
			if got, err := holder.Load(ctx, key); err != nil || string(got) != "second" {
				t.Errorf("the next holder's value: %q, %v; want %q", got, err, "second")
			}
			if got, err := holder.Load(ctx, sched); err != nil || string(got) != "second's failures" {
				t.Errorf("the next holder's other value: %q, %v", got, err)
			}
		})
	}
}
