// Package etcdstorage is the certs.Storage a fleet of balancers shares:
// every value, lock and token in one etcd cluster, under a key prefix of
// the fleet's own, so that several fleets may share one etcd.
//
// Every value is sealed (XChaCha20-Poly1305, golang.org/x/crypto) under a
// key the nodes share, read from a key file, and bound to the etcd key it
// is stored at. What a reader of the etcd cluster (or of its backups) can
// see: the prefix, the key of every value, which names the kind of value
// and the domain of each certificate and renewal request, the ACME CA's
// host; the lock names, which are "orders/<domain>" while a domain is
// ordered; the number of tokens in flight; every value's size (the
// ciphertext is the plaintext plus 41 bytes) and its revisions, so when
// each was written; and the leases. What it cannot see: the
// certificates, their private keys, the ACME account key and
// registration, the state (schedule, failures, budget), the node holding
// a lock, the tokens (named by an HMAC of the token) and their key
// authorizations. A reader without the key file cannot forge or move a
// value either: a tampered value fails to load. One who may write to etcd
// can still delete values and take or break locks: etcd's own access
// control (TLS client certificates, roles on the prefix) keeps writers
// out.
package etcdstorage

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"haproxy-config/certs"
)

// Config opens a Storage.
type Config struct {
	// Endpoints are the etcd members' client URLs.
	Endpoints []string
	// TLS is the client's TLS configuration (CA, client certificate);
	// nil for plain connections.
	TLS *tls.Config
	// Prefix is the fleet's key prefix, for example
	// "/haproxy-config/edge-eu": every key of the Storage is under
	// Prefix + "/".
	Prefix string
	// KeyFile holds the seal key: KeySize random bytes, mode 0600 or
	// 0400, the same file on every node of the fleet.
	KeyFile string
	// Owner names this node in the locks it holds (sealed).
	Owner string
	// DialTimeout bounds connecting to a member (default 5 s).
	DialTimeout time.Duration
	// RequestTimeout bounds each call to etcd (default 5 s).
	RequestTimeout time.Duration
	// LockTTL is the TTL of a lock's lease: a holder that dies or loses
	// etcd loses its locks after it (default 15 s; etcd's minimum, about
	// 2 s, applies).
	LockTTL time.Duration
	// TokenTTL is how long a token is kept at most (default 30 min).
	TokenTTL time.Duration
}

// Defaults of Config.
const (
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 5 * time.Second
	DefaultLockTTL        = 15 * time.Second
	DefaultTokenTTL       = 30 * time.Minute
)

// KeyFileError is Open's error when the key file cannot be used: missing,
// unreadable, open to the group or others, or not KeySize bytes.
type KeyFileError struct{ Err error }

func (e *KeyFileError) Error() string { return e.Err.Error() }
func (e *KeyFileError) Unwrap() error { return e.Err }

// Storage is a certs.Storage in etcd. Close it.
type Storage struct {
	cli            *clientv3.Client
	seal           *sealer
	values, locks  string // etcd key prefixes, each ending in "/"
	tokens         string
	owner          string
	requestTimeout time.Duration
	lockTTL        int64 // seconds
	tokenTTL       int64

	keepers sync.WaitGroup // one per lease held, until its keep-alive ends
}

var _ certs.Storage = (*Storage)(nil)

// Open reads the key file and makes a client of the cluster. It does not
// wait for the cluster: a call fails, in its time bound, while no member
// with a quorum answers.
func Open(cfg Config) (*Storage, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	prefix := strings.TrimRight(cfg.Prefix, "/")
	if prefix == "" {
		return nil, errors.New("etcd: empty key prefix")
	}
	key, err := readKeyFile(cfg.KeyFile)
	if err != nil {
		return nil, &KeyFileError{Err: err}
	}
	seal, err := newSealer(key)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		TLS:         cfg.TLS,
		DialTimeout: orDefault(cfg.DialTimeout, DefaultDialTimeout),
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client of %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	return &Storage{
		cli:            cli,
		seal:           seal,
		values:         prefix + "/values/",
		locks:          prefix + "/locks/",
		tokens:         prefix + "/tokens/",
		owner:          cfg.Owner,
		requestTimeout: orDefault(cfg.RequestTimeout, DefaultRequestTimeout),
		lockTTL:        seconds(orDefault(cfg.LockTTL, DefaultLockTTL)),
		tokenTTL:       seconds(orDefault(cfg.TokenTTL, DefaultTokenTTL)),
	}, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// seconds rounds d up to whole seconds, the unit of etcd's leases.
func seconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}

// Close closes the client without revoking the leases held: their locks
// and tokens expire after their TTL, as a crashed node's would. It waits
// for the keep-alives to end.
func (s *Storage) Close() error {
	err := s.cli.Close()
	s.keepers.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("close the etcd client: %w", err)
	}
	return nil
}

// call bounds one call to etcd.
func (s *Storage) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.requestTimeout)
}

// checkKey refuses what is not a key Keys builds, as FileStorage does.
func checkKey(key string) error {
	if !fs.ValidPath(key) || key == "." || strings.Contains(key, `\`) {
		return fmt.Errorf("storage key %q is not a relative slash-separated path", key)
	}
	return nil
}

// Load reads key.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	if err := checkKey(key); err != nil {
		return nil, err
	}
	at := s.values + key
	c, cancel := s.call(ctx)
	defer cancel()
	resp, err := s.cli.Get(c, at)
	if err != nil {
		return nil, fmt.Errorf("etcd: load %s: %w", key, s.explain(ctx, err))
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("etcd: load %s: %w", key, fs.ErrNotExist)
	}
	value, err := s.seal.open(at, resp.Kvs[0].Value)
	if err != nil {
		return nil, fmt.Errorf("etcd: load %s: %w", key, err)
	}
	return value, nil
}

// Store writes key: one put, atomic and durable on a quorum once it
// returns.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	if err := checkKey(key); err != nil {
		return err
	}
	at := s.values + key
	c, cancel := s.call(ctx)
	defer cancel()
	if _, err := s.cli.Put(c, at, string(s.seal.seal(at, value))); err != nil {
		return fmt.Errorf("etcd: store %s: %w", key, s.explain(ctx, err))
	}
	return nil
}

// Delete removes key.
func (s *Storage) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	c, cancel := s.call(ctx)
	defer cancel()
	if _, err := s.cli.Delete(c, s.values+key); err != nil {
		return fmt.Errorf("etcd: delete %s: %w", key, s.explain(ctx, err))
	}
	return nil
}

// List returns the keys directly under prefix.
func (s *Storage) List(ctx context.Context, prefix string) ([]string, error) {
	if err := checkKey(prefix); err != nil {
		return nil, err
	}
	under := s.values + prefix + "/"
	c, cancel := s.call(ctx)
	defer cancel()
	resp, err := s.cli.Get(c, under, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, fmt.Errorf("etcd: list %s: %w", prefix, s.explain(ctx, err))
	}
	var keys []string
	for _, kv := range resp.Kvs {
		name := strings.TrimPrefix(string(kv.Key), under)
		if !strings.Contains(name, "/") {
			keys = append(keys, prefix+"/"+name)
		}
	}
	slices.Sort(keys)
	return keys, nil
}

// retryPause is the pause between two tries of a lock after an error.
const retryPause = 250 * time.Millisecond

// Lock takes the lock name: a key under the fleet's locks prefix, put
// only while absent and attached to a lease of this call's own that the
// client keeps alive. The lease is the owner token: Unlock revokes it,
// which deletes the key only if it is still this lease's, and a holder
// that dies or loses etcd loses the lock after LockTTL. The lease's Store
// and Delete are fenced by the same token: each is one transaction that
// changes the value only if the lock's key is still attached to this
// lease.
func (s *Storage) Lock(ctx context.Context, name string) (certs.Lease, error) {
	if err := checkKey(name); err != nil {
		return nil, err
	}
	grant, err := s.grantLockLease(ctx)
	if err != nil {
		return nil, fmt.Errorf("etcd: lock %s: grant a lease: %w", name, err)
	}
	keepCtx, stopKeeping := context.WithCancel(context.Background())
	alive, err := s.cli.KeepAlive(keepCtx, grant.ID)
	if err != nil {
		stopKeeping()
		_ = s.revoke(context.Background(), grant.ID)
		return nil, fmt.Errorf("etcd: lock %s: keep the lease alive: %w", name, err)
	}
	l := &lease{s: s, name: name, key: s.locks + name, id: grant.ID, stopKeeping: stopKeeping, lost: make(chan struct{})}
	s.keepers.Add(1)
	go l.keep(alive)
	if err := s.acquire(ctx, l.key, l); err != nil {
		_ = l.Unlock(context.Background())
		return nil, fmt.Errorf("etcd: lock %s: %w", name, err)
	}
	return l, nil
}

// grantLockLease grants a lease of LockTTL, trying again until ctx ends.
func (s *Storage) grantLockLease(ctx context.Context) (*clientv3.LeaseGrantResponse, error) {
	for {
		c, cancel := s.call(ctx)
		grant, err := s.cli.Grant(c, s.lockTTL)
		cancel()
		if err == nil {
			return grant, nil
		}
		if ctx.Err() != nil {
			return nil, ended(ctx, err)
		}
		t := time.NewTimer(retryPause)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
}

// ended is the error of a wait that ctx ended, with the last try's error
// when that was not ctx's end.
func ended(ctx context.Context, err error) error {
	if errors.Is(err, ctx.Err()) {
		return ctx.Err()
	}
	return fmt.Errorf("%w (last try: %w)", ctx.Err(), err)
}

// explain names what a call that ran out of its own time bound (not the
// caller's) waited for.
func (s *Storage) explain(ctx context.Context, err error) error {
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return fmt.Errorf("no answer from a quorum of %s within %v: %w", strings.Join(s.cli.Endpoints(), ","), s.requestTimeout, err)
	}
	return err
}

// acquire puts key under l's lease once no other lease holds it.
func (s *Storage) acquire(ctx context.Context, key string, l *lease) error {
	value := string(s.seal.seal(key, []byte(s.owner)))
	for {
		c, cancel := s.call(ctx)
		resp, err := s.cli.Txn(c).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, value, clientv3.WithLease(l.id))).
			Else(clientv3.OpGet(key)).
			Commit()
		cancel()
		var rev int64
		switch {
		case err != nil:
			// a put that timed out may have been applied: the next try
			// finds the key under this lease
			if ctx.Err() != nil {
				return ended(ctx, err)
			}
			if err := pause(ctx, l); err != nil {
				return err
			}
			continue
		case resp.Succeeded:
			return nil
		default:
			kvs := resp.Responses[0].GetResponseRange().Kvs
			if len(kvs) > 0 && clientv3.LeaseID(kvs[0].Lease) == l.id {
				return nil
			}
			rev = resp.Header.Revision + 1
		}
		if err := s.waitDelete(ctx, key, rev, l); err != nil {
			return err
		}
	}
}

// pause waits retryPause, or returns why the wait must end.
func pause(ctx context.Context, l *lease) error {
	t := time.NewTimer(retryPause)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-l.lost:
		return errors.New("the lease expired while waiting")
	}
}

// waitDelete returns once key may be free: deleted after revision rev
// (or the watch ended otherwise: the caller tries again).
func (s *Storage) waitDelete(ctx context.Context, key string, rev int64, l *lease) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	events := s.cli.Watch(wctx, key, clientv3.WithRev(rev))
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-l.lost:
			return errors.New("the lease expired while waiting")
		case wr, ok := <-events:
			if !ok || wr.Err() != nil {
				return pause(ctx, l)
			}
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					return nil
				}
			}
		}
	}
}

// revoke revokes a lease, in a call's time bound; a lease already gone
// is no error.
func (s *Storage) revoke(ctx context.Context, id clientv3.LeaseID) error {
	c, cancel := s.call(ctx)
	defer cancel()
	if _, err := s.cli.Revoke(c, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return err
	}
	return nil
}

// lease is one Lock's hold: its etcd lease and the keep-alive of it.
type lease struct {
	s           *Storage
	name, key   string // the lock's name, and its etcd key
	id          clientv3.LeaseID
	stopKeeping context.CancelFunc
	lost        chan struct{} // closed by keep
	unlock      sync.Once
	unlockErr   error
}

// keep drains the keep-alive's answers; the client closes the channel
// once the lease expired, went unanswered for its TTL, was no longer
// kept alive or the client closed: the lock is lost then.
func (l *lease) keep(alive <-chan *clientv3.LeaseKeepAliveResponse) {
	defer l.s.keepers.Done()
	for range alive {
	}
	close(l.lost)
}

func (l *lease) Lost() <-chan struct{} { return l.lost }

// Unlock stops the keep-alive, waits until Lost is closed, and revokes
// the lease, which deletes the lock's key only if this lease holds it.
// A lease that could not be revoked (etcd out of reach) expires after
// its TTL.
func (l *lease) Unlock(ctx context.Context) error {
	l.unlock.Do(func() {
		l.stopKeeping()
		<-l.lost
		if err := l.s.revoke(ctx, l.id); err != nil {
			l.unlockErr = fmt.Errorf("etcd: revoke lease %x: %w", int64(l.id), err)
		}
	})
	return l.unlockErr
}

// Store writes key as Storage.Store does, in one transaction that puts
// the value only if the lock's key is still attached to this lease: once
// the lease expired or was revoked, its key went with it, and a key put
// since by another Lock carries that lock's lease.
func (l *lease) Store(ctx context.Context, key string, value []byte) error {
	if err := checkKey(key); err != nil {
		return err
	}
	at := l.s.values + key
	return l.fenced(ctx, "store "+key, clientv3.OpPut(at, string(l.s.seal.seal(at, value))))
}

// Delete removes key as Storage.Delete does, fenced as Store is.
func (l *lease) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	return l.fenced(ctx, "delete "+key, clientv3.OpDelete(l.s.values+key))
}

// fenced runs op only if the lock's key carries this lease. A lease
// reported lost is not tried: its holder is to stop acting under it.
func (l *lease) fenced(ctx context.Context, what string, op clientv3.Op) error {
	select {
	case <-l.lost:
		return fmt.Errorf("etcd: %s under lock %s: %w", what, l.name, certs.ErrLockLost)
	default:
	}
	c, cancel := l.s.call(ctx)
	defer cancel()
	resp, err := l.s.cli.Txn(c).
		If(clientv3.Compare(clientv3.LeaseValue(l.key), "=", l.id)).
		Then(op).
		Commit()
	if err != nil {
		return fmt.Errorf("etcd: %s under lock %s: %w", what, l.name, l.s.explain(ctx, err))
	}
	if !resp.Succeeded {
		return fmt.Errorf("etcd: %s under lock %s: %w", what, l.name, certs.ErrLockLost)
	}
	return nil
}

// PutToken keeps t under an HMAC of token, on a lease of TokenTTL.
func (s *Storage) PutToken(ctx context.Context, token string, t certs.Token) error {
	if token == "" {
		return errors.New("etcd: put an empty token")
	}
	value, err := json.Marshal(t)
	if err != nil {
		return fmt.Errorf("etcd: put token: %w", err)
	}
	at := s.tokens + s.seal.tokenName(token)
	c, cancel := s.call(ctx)
	defer cancel()
	grant, err := s.cli.Grant(c, s.tokenTTL)
	if err != nil {
		return fmt.Errorf("etcd: put token: grant a lease: %w", s.explain(ctx, err))
	}
	if _, err := s.cli.Put(c, at, string(s.seal.seal(at, value)), clientv3.WithLease(grant.ID)); err != nil {
		return fmt.Errorf("etcd: put token: %w", s.explain(ctx, err))
	}
	return nil
}

// GetToken reads what PutToken kept.
func (s *Storage) GetToken(ctx context.Context, token string) (certs.Token, error) {
	var t certs.Token
	at := s.tokens + s.seal.tokenName(token)
	c, cancel := s.call(ctx)
	defer cancel()
	resp, err := s.cli.Get(c, at)
	if err != nil {
		return t, fmt.Errorf("etcd: get token: %w", s.explain(ctx, err))
	}
	if len(resp.Kvs) == 0 {
		return t, fmt.Errorf("etcd: get token: %w", fs.ErrNotExist)
	}
	value, err := s.seal.open(at, resp.Kvs[0].Value)
	if err != nil {
		return t, fmt.Errorf("etcd: get token: %w", err)
	}
	if err := json.Unmarshal(value, &t); err != nil {
		return t, fmt.Errorf("etcd: get token: %w", err)
	}
	return t, nil
}

// DeleteToken removes a token and revokes its lease, which would
// otherwise outlive it by TokenTTL: one lease per order's token.
func (s *Storage) DeleteToken(ctx context.Context, token string) error {
	c, cancel := s.call(ctx)
	defer cancel()
	resp, err := s.cli.Delete(c, s.tokens+s.seal.tokenName(token), clientv3.WithPrevKV())
	if err != nil {
		return fmt.Errorf("etcd: delete token: %w", s.explain(ctx, err))
	}
	for _, kv := range resp.PrevKvs {
		if id := clientv3.LeaseID(kv.Lease); id != clientv3.NoLease {
			// the token is gone already: a lease left expires at its TTL
			_ = s.revoke(c, id)
		}
	}
	return nil
}
