package certs

import (
	"context"
	"errors"
	"net/url"
	"path"
	"strings"
)

// What certs persists goes through a Storage: the ACME account, every
// certificate with its key, the schedule and failure state with the order
// budget, the renewal requests, the DNS-01 journal and the HTTP-01 tokens
// of the orders in flight. A fleet of balancers shares one Storage.
//
// The files HAProxy reads are not storage: CERTS/<domain>.pem, the
// crt-list and the fallback certificate are this balancer's local copy,
// written by the manager from what it stores, so that HAProxy starts and
// serves with the storage out of reach. The crt-list and the fallback are
// local only (the first follows from the state, the second is this node's
// own). FileStorage, the one-balancer implementation, keeps its
// certificates in those very files: one copy on disk, as before.

// Storage keeps values by key and hands out locks. Keys are the ones
// Keys builds: slash-separated, relative, without "." or ".." elements.
//
// An implementation must guarantee:
//   - Store replaces a value atomically: a reader, or a start after a
//     crash at any instant, sees the old value or the new one whole, and
//     once Store returns the new one is durable;
//   - Load of a key holding no value returns an error matching
//     fs.ErrNotExist (errors.Is), Delete of one returns nil;
//   - List returns, sorted, the keys of the values directly under prefix
//     (not those further down), and none for a prefix holding nothing;
//   - every method is safe for concurrent use; ctx bounds the call (an
//     implementation over the network bounds each call on its own too);
//   - a Lease's Store and Delete are fencing writes: each is Store or
//     Delete as above, done only if the lease still holds its lock at
//     the instant the value changes, decided atomically with the change
//     in the storage itself (a holder that checks Lost first still races
//     with an expiry). A lease that was unlocked or lost, or whose lock
//     another lease took since, changes nothing and returns an error
//     matching ErrLockLost; any other error is the storage's own, and
//     the value may or may not have changed.
type Storage interface {
	Load(ctx context.Context, key string) ([]byte, error)
	Store(ctx context.Context, key string, value []byte) error
	Delete(ctx context.Context, key string) error
	List(ctx context.Context, prefix string) ([]string, error)
	// Lock waits until it holds the lock name (names are Keys' lock
	// names, apart from the keys of values) or ctx ends. ctx bounds the
	// wait, not the lease: the lock is held until the lease is unlocked
	// or lost. At most one lease holds a name at a time, among every
	// user of the storage (the fleet, for a shared one); a holder that
	// dies must not keep it for ever: the lock is lost after a bounded
	// time (a lease's TTL), or at once with the holder's process.
	Lock(ctx context.Context, name string) (Lease, error)
	Tokens
}

// Lease is one holder's hold on a lock.
type Lease interface {
	// Lost is closed once the lease no longer holds its lock: after
	// Unlock, or when the storage gave the lock up (a lease that
	// expired); the holder must stop acting under it then.
	Lost() <-chan struct{}
	// Unlock releases the lock if this lease still holds it. It never
	// releases a lock that another lease took since: a second Unlock, or
	// one after the lease was lost, does nothing.
	Unlock(ctx context.Context) error
	// Store is the storage's Store of key, done only while this lease
	// holds its lock (a fencing write, see Storage): a holder whose lease
	// expired mid-work never overwrites what the next holder stored.
	Store(ctx context.Context, key string, value []byte) error
	// Delete is the storage's Delete of key, fenced as Store is.
	Delete(ctx context.Context, key string) error
}

// ErrLockLost is the error (errors.Is) of a Lease's Store or Delete
// refused because the lease no longer holds its lock.
var ErrLockLost = errors.New("the lock is no longer held by this lease")

// Tokens keeps the HTTP-01 challenges of the orders in flight, for every
// challenge handler that may be asked (a distributed solver: on a fleet,
// the CA may reach any balancer). A token is put before the CA is told
// to validate, so PutToken must not return before every handler's
// GetToken can see it. Tokens are short-lived: an implementation may
// drop one that outlived any order (a crashed orderer leaves none for
// ever). GetToken of an unknown token returns an error matching
// fs.ErrNotExist; DeleteToken of one returns nil.
type Tokens interface {
	PutToken(ctx context.Context, token string, t Token) error
	GetToken(ctx context.Context, token string) (Token, error)
	DeleteToken(ctx context.Context, token string) error
}

// Token is what a challenge handler answers for one token.
type Token struct {
	Domain  string `json:"domain"` // the host it is answered for, lower case
	KeyAuth string `json:"key_auth"`
}

// The keys whose files the command line and the tests read, relative to
// the state directory in FileStorage.
const (
	// StateFile is the certificate manager's persisted state. The
	// manager writes it before every order, so a daemon restarted in a
	// loop never orders again what it just ordered.
	StateFile = "acme/state.json"
	// RenewDir holds renewal requests ("certs renew"): one empty value
	// per domain, or AllDomains. The manager takes and deletes them.
	RenewDir = "acme/renew"
	// DNSRecordsFile lists the TXT records added and not yet removed:
	// what a crashed daemon left is removed at the next start.
	DNSRecordsFile = "acme/dns-records.json"
)

// certificatesPrefix is the prefix of the certificates' keys.
const certificatesPrefix = "certificates"

// KeyBuilder names every key and lock certs uses: the one home of the
// storage layout.
type KeyBuilder struct{}

// Keys is the storage layout.
var Keys KeyBuilder

// Account is the prefix of the ACME account at the CA directory names.
func (KeyBuilder) Account(directory string) string {
	host := "ca"
	if u, err := url.Parse(directory); err == nil && u.Host != "" {
		host = strings.NewReplacer(":", "_", "/", "_").Replace(u.Host)
	}
	return path.Join("acme", host)
}

// AccountKey is the account's private key (PEM).
func (k KeyBuilder) AccountKey(directory string) string {
	return path.Join(k.Account(directory), "account.key")
}

// AccountRegistration is the account's e-mail and registration (JSON).
func (k KeyBuilder) AccountRegistration(directory string) string {
	return path.Join(k.Account(directory), "account.json")
}

// State is the manager's State (JSON).
func (KeyBuilder) State() string { return StateFile }

// RenewRequests is the prefix of the renewal requests.
func (KeyBuilder) RenewRequests() string { return RenewDir }

// RenewRequest is the renewal request of domain (or AllDomains).
func (KeyBuilder) RenewRequest(domain string) string { return path.Join(RenewDir, domain) }

// DNSJournal is the DNS-01 journal (JSON).
func (KeyBuilder) DNSJournal() string { return DNSRecordsFile }

// Certificate is the certificate of domain: the PEM bundle HAProxy loads,
// its chain, then its key.
func (KeyBuilder) Certificate(domain string) string {
	return path.Join(certificatesPrefix, fileName(domain))
}

// OrderLock is the lock held while ordering the certificate of domain.
func (KeyBuilder) OrderLock(domain string) string { return path.Join("orders", domain) }

// What only a fleet's shared storage holds (Manager.Shared).

// Schedule is the fleet's failure state of domain's orders (JSON): the
// backoff every node honours after one node's failed order.
func (KeyBuilder) Schedule(domain string) string {
	return path.Join("schedule", strings.TrimSuffix(fileName(domain), ".pem")+".json")
}

// Budget is the fleet's order budget: when each order of the current
// window started (JSON), changed only under BudgetLock.
func (KeyBuilder) Budget() string { return "acme/budget.json" }

// BudgetLock is the lock held while the budget is read and changed.
func (KeyBuilder) BudgetLock() string { return "budget" }

// AccountLock is the lock held while the ACME account is made and
// registered, or copied into the fleet's storage: two nodes starting
// together register one account.
func (KeyBuilder) AccountLock() string { return "account" }

// nodesPrefix is the prefix of the heartbeats.
const nodesPrefix = "nodes"

// Node is the heartbeat of the fleet's node name (JSON, written by the
// daemon).
func (KeyBuilder) Node(name string) string { return path.Join(nodesPrefix, name) }

// Nodes is the prefix of every node's heartbeat.
func (KeyBuilder) Nodes() string { return nodesPrefix }

// Watcher is a Storage that tells of the changes others make to it.
type Watcher interface {
	// Watch sends the key of every value stored or deleted under prefix
	// (at any depth) until ctx ends, then closes the channel. It sends
	// "" when changes may have been missed (the watch broke and was made
	// again, or the storage was out of reach): everything under prefix is
	// to be read again.
	Watch(ctx context.Context, prefix string) <-chan string
}

// CertificatesPrefix is the prefix of every certificate's key.
func (KeyBuilder) CertificatesPrefix() string { return certificatesPrefix }
