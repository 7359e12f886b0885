package certs

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-acme/lego/v4/acme"
	"github.com/go-acme/lego/v4/acme/api"
	"github.com/go-acme/lego/v4/certcrypto"
	"github.com/go-acme/lego/v4/certificate"
	"github.com/go-acme/lego/v4/lego"
	legolog "github.com/go-acme/lego/v4/log"
	"github.com/go-acme/lego/v4/registration"
)

// Issued is a certificate fresh from the CA.
type Issued struct {
	Chain []byte // leaf first, then the issuers, PEM
	Key   []byte // PEM
	Leaf  *x509.Certificate
}

// Issuer obtains certificates; the manager talks to the CA only through
// it, so its tests use a fake one.
type Issuer interface {
	// Obtain orders one certificate for names (the first is its subject),
	// proved by challenge (HTTP01 or DNS01); replaces names the
	// certificate it renews (RFC 9773 section 5), or is empty.
	Obtain(names []string, challenge, replaces string) (*Issued, error)
	// RenewalInfo asks the CA when to renew cert; ErrNoARI when the CA
	// does not offer renewal information.
	RenewalInfo(cert *x509.Certificate) (*certificate.RenewalInfoResponse, error)
}

// ErrNoARI is RenewalInfo's answer when the CA has no renewal information.
var ErrNoARI = api.ErrNoARI

// ACMEConfig is what the ACME client needs from the settings.
type ACMEConfig struct {
	Directory string
	Email     string
	KeyType   string // ec256, ec384, rsa2048, rsa3072, rsa4096
	Profile   string
	EABKeyID  string
	EABHMAC   string
	Storage   Storage // where the account is kept (Keys.Account)
}

var keyTypes = map[string]certcrypto.KeyType{
	"ec256": certcrypto.EC256, "ec384": certcrypto.EC384,
	"rsa2048": certcrypto.RSA2048, "rsa3072": certcrypto.RSA3072, "rsa4096": certcrypto.RSA4096,
}

// account is the ACME account as lego's registration.User.
type account struct {
	Email        string                 `json:"email"`
	Registration *registration.Resource `json:"registration"`
	key          crypto.PrivateKey
}

func (a *account) GetEmail() string                        { return a.Email }
func (a *account) GetRegistration() *registration.Resource { return a.Registration }
func (a *account) GetPrivateKey() crypto.PrivateKey        { return a.key }

// ACME is the Issuer backed by lego: one client per challenge type, so
// that an order uses the challenge chosen for it and no other.
type ACME struct {
	http    *lego.Client
	dns     *lego.Client // nil without a DNS-01 provider
	profile string
	// the CA's newOrder URL: a refusal there is of the order's request,
	// made before any challenge
	newOrder string
	log      *slog.Logger
}

// NewACME loads the account (creating and registering it the first time)
// and returns a client whose requests end when ctx does. The challenge
// provider answers HTTP-01 challenges; dns, when set, DNS-01 ones.
func NewACME(ctx context.Context, cfg ACMEConfig, provider *Challenges, dns *DNS, logger *slog.Logger) (*ACME, error) {
	legolog.Logger = log.New(slogWriter{logger}, "", 0)
	if paths := os.Getenv("LEGO_CA_CERTIFICATES"); paths != "" {
		// lego panics on an unreadable file: say which one instead
		for _, p := range filepath.SplitList(paths) {
			if _, err := os.Stat(p); err != nil {
				return nil, fmt.Errorf("LEGO_CA_CERTIFICATES: %w", err)
			}
		}
	}
	complete, err := accountComplete(ctx, cfg.Storage, cfg.Directory)
	if err != nil {
		return nil, err
	}
	// where the account is written: the storage, or through the lock's
	// lease, so that a holder whose lease lapsed writes nothing
	var w writer = cfg.Storage
	if !complete {
		// made and registered under the lock, the account read again once
		// it is held: nodes of a fleet starting together register one
		lease, err := lockAccount(ctx, cfg.Storage)
		if err != nil {
			return nil, err
		}
		defer func() {
			if err := lease.Unlock(context.WithoutCancel(ctx)); err != nil {
				logger.Warn("release the acme account lock", "err", err)
			}
		}()
		w = lease
	}
	acct, err := loadAccount(ctx, cfg.Storage, w, cfg.Directory, cfg.Email)
	if err != nil {
		return nil, err
	}
	lc := lego.NewConfig(acct)
	lc.CADirURL = cfg.Directory
	lc.UserAgent = "haproxy-config"
	lc.Certificate.KeyType = keyTypes[cfg.KeyType]
	lc.Certificate.Timeout = time.Minute
	lc.HTTPClient.Timeout = time.Minute
	lc.HTTPClient.Transport = ctxTransport{ctx: ctx, base: lc.HTTPClient.Transport}
	client, err := lego.NewClient(lc)
	if err != nil {
		return nil, fmt.Errorf("acme directory %s: %w", cfg.Directory, err)
	}
	if err := client.Challenge.SetHTTP01Provider(provider); err != nil {
		return nil, fmt.Errorf("http-01 provider: %w", err)
	}
	if acct.Registration == nil {
		if cfg.EABKeyID != "" {
			acct.Registration, err = client.Registration.RegisterWithExternalAccountBinding(registration.RegisterEABOptions{
				TermsOfServiceAgreed: true, Kid: cfg.EABKeyID, HmacEncoded: cfg.EABHMAC})
		} else {
			acct.Registration, err = client.Registration.Register(registration.RegisterOptions{TermsOfServiceAgreed: true})
		}
		if err != nil {
			return nil, fmt.Errorf("register acme account at %s: %w", cfg.Directory, err)
		}
		if err := saveAccount(ctx, w, cfg.Directory, acct); err != nil {
			return nil, err
		}
		logger.Info("acme account registered", "directory", cfg.Directory, "account", acct.Registration.URI)
	}
	a := &ACME{http: client, profile: cfg.Profile, log: logger}
	// lego keeps the directory to itself: read it once more for newOrder
	core, err := api.New(lc.HTTPClient, lc.UserAgent, cfg.Directory, "", acct.key)
	if err != nil {
		return nil, fmt.Errorf("acme directory %s: %w", cfg.Directory, err)
	}
	a.newOrder = core.GetDirectory().NewOrderURL
	if dns != nil {
		// made after the registration: the client takes the account's ID
		if a.dns, err = lego.NewClient(lc); err != nil {
			return nil, fmt.Errorf("acme directory %s: %w", cfg.Directory, err)
		}
		if err := a.dns.Challenge.SetDNS01Provider(dns, dns.options(ctx)...); err != nil {
			return nil, fmt.Errorf("dns-01 provider: %w", err)
		}
	}
	return a, nil
}

// Obtain orders a certificate for names with a fresh key.
func (a *ACME) Obtain(names []string, challenge, replaces string) (*Issued, error) {
	client := a.http
	if challenge == DNS01 {
		if client = a.dns; client == nil {
			return nil, errors.New("no dns-01 provider is configured")
		}
	}
	req := certificate.ObtainRequest{Domains: names, Bundle: true, Profile: a.profile, ReplacesCertID: replaces}
	res, err := client.Certificate.Obtain(req)
	if err != nil && replaces != "" && a.refusedReplaces(err) {
		// the certificate is not the account's to replace (another node's
		// account ordered it before the fleet shared one), or the CA cannot
		// match it: order without "replaces" rather than fail every time
		a.log.Warn("the CA refused the order naming the certificate it replaces: ordering without", "domains", strings.Join(names, ","), "err", err)
		req.ReplacesCertID = ""
		res, err = client.Certificate.Obtain(req)
	}
	if err != nil {
		return nil, err
	}
	certs, err := certcrypto.ParsePEMBundle(res.Certificate)
	if err != nil {
		return nil, fmt.Errorf("certificate from the CA: %w", err)
	}
	if len(certs) == 0 {
		return nil, errors.New("the CA sent no certificate")
	}
	return &Issued{Chain: res.Certificate, Key: res.PrivateKey, Leaf: certs[0]}, nil
}

// refusedReplaces tells whether err is the CA refusing a new order (a
// problem answered to the newOrder request, so no challenge was tried)
// for another reason than its rate limits or a nonce: with "replaces" set,
// the field it checks beyond a plain order. Boulder answers 403 "requester
// account did not request the certificate being replaced by this order"
// for a certificate another account ordered, and 400 for a CertID it
// cannot parse or whose names do not overlap; Pebble 403 and 404, and 500
// serverInternal "could not find an order for the given certificate" when
// it does not match the certificate to the order that issued it (seen
// under load, 11 s after the issue). lego itself orders again only after
// "alreadyReplaced" (RFC 9773 section 5).
func (a *ACME) refusedReplaces(err error) bool {
	var p *acme.ProblemDetails
	if !errors.As(err, &p) || a.newOrder == "" || p.URL != a.newOrder {
		return false
	}
	if p.HTTPStatus == 500 && p.Type == serverInternalErr {
		return true
	}
	return p.HTTPStatus >= 400 && p.HTTPStatus < 500 && p.Type != acme.RateLimitedErr && p.Type != acme.BadNonceErr
}

// serverInternalErr is RFC 8555's problem type for an internal error.
const serverInternalErr = "urn:ietf:params:acme:error:serverInternal"

// RenewalInfo asks the CA's renewal information for cert.
func (a *ACME) RenewalInfo(cert *x509.Certificate) (*certificate.RenewalInfoResponse, error) {
	return a.http.Certificate.GetRenewalInfo(certificate.RenewalInfoRequest{Cert: cert})
}

// ARICertID is the RFC 9773 identifier of cert, for "replaces".
func ARICertID(cert *x509.Certificate) string {
	id, err := certificate.MakeARICertID(cert)
	if err != nil {
		return ""
	}
	return id
}

// retryAfter is how long a rate-limited error asks to wait, 0 if err is
// not one or names no time.
func retryAfter(err error) time.Duration {
	var rl *acme.RateLimitedError
	if !errors.As(err, &rl) || rl.RetryAfter == "" {
		return 0
	}
	d, perr := api.ParseRetryAfter(rl.RetryAfter)
	if perr != nil {
		return 0
	}
	return d
}

// accountComplete reports whether s holds the account's key and its
// registration.
func accountComplete(ctx context.Context, s Storage, directory string) (bool, error) {
	for _, key := range []string{Keys.AccountKey(directory), Keys.AccountRegistration(directory)} {
		_, err := s.Load(ctx, key)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("acme account: %w", err)
		}
	}
	return true, nil
}

// lockAccount takes Keys.AccountLock in s, waiting DefaultLockWait at most.
func lockAccount(ctx context.Context, s Storage) (Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, DefaultLockWait)
	defer cancel()
	lease, err := s.Lock(ctx, Keys.AccountLock())
	if err != nil {
		return nil, fmt.Errorf("acme account lock: %w", err)
	}
	return lease, nil
}

// MigrateAccount copies the ACME account at directory, its key and its
// registration, from one storage to another that holds none: a node
// switched to fleet mode brings its account (from its FileStorage) to the
// fleet's storage instead of registering another. An account to holds
// already is never overwritten, and one never registered is not copied.
// It reports whether it copied; the copy is made under to's
// Keys.AccountLock, as registrations are.
func MigrateAccount(ctx context.Context, from, to Storage, directory string) (bool, error) {
	keyKey, regKey := Keys.AccountKey(directory), Keys.AccountRegistration(directory)
	key, err := from.Load(ctx, keyKey)
	if err == nil {
		var reg []byte
		if reg, err = from.Load(ctx, regKey); err == nil {
			return copyAccount(ctx, to, directory, key, reg)
		}
	}
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return false, fmt.Errorf("acme account to migrate: %w", err)
}

// copyAccount stores key and reg as the account at directory in to unless
// to holds a key of its own there.
func copyAccount(ctx context.Context, to Storage, directory string, key, reg []byte) (bool, error) {
	keyKey, regKey := Keys.AccountKey(directory), Keys.AccountRegistration(directory)
	held := func() (bool, error) {
		_, err := to.Load(ctx, keyKey)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("the fleet's acme account: %w", err)
		}
		return true, nil
	}
	if has, err := held(); has || err != nil {
		return false, err
	}
	lease, err := lockAccount(ctx, to)
	if err != nil {
		return false, err
	}
	defer func() { _ = lease.Unlock(context.WithoutCancel(ctx)) }()
	if has, err := held(); has || err != nil { // made by another node meanwhile
		return false, err
	}
	// the key first: a key without its registration is registered again
	// (the CA answers with the account the key has), never replaced
	if err := lease.Store(ctx, keyKey, key); err != nil {
		return false, fmt.Errorf("copy the acme account key: %w", err)
	}
	if err := lease.Store(ctx, regKey, reg); err != nil {
		return false, fmt.Errorf("copy the acme account: %w", err)
	}
	return true, nil
}

// writer stores values: a Storage, or a Lease (fenced).
type writer interface {
	Store(ctx context.Context, key string, value []byte) error
}

// loadAccount reads the account at directory from s, making its key (kept
// through w) the first time.
func loadAccount(ctx context.Context, s Storage, w writer, directory, email string) (*account, error) {
	keyKey := Keys.AccountKey(directory)
	acct := &account{Email: email}
	keyPEM, err := s.Load(ctx, keyKey)
	if errors.Is(err, fs.ErrNotExist) {
		key, err := certcrypto.GeneratePrivateKey(certcrypto.EC256)
		if err != nil {
			return nil, fmt.Errorf("acme account key: %w", err)
		}
		if err := w.Store(ctx, keyKey, certcrypto.PEMEncode(key)); err != nil {
			return nil, fmt.Errorf("write acme account key: %w", err)
		}
		acct.key = key
		return acct, nil
	}
	if err != nil {
		return nil, fmt.Errorf("acme account key: %w", err)
	}
	if acct.key, err = certcrypto.ParsePEMPrivateKey(keyPEM); err != nil {
		return nil, fmt.Errorf("acme account key %s: %w", location(s, keyKey), err)
	}
	regKey := Keys.AccountRegistration(directory)
	data, err := s.Load(ctx, regKey)
	if errors.Is(err, fs.ErrNotExist) {
		return acct, nil // key made, registration not finished: register again
	}
	if err != nil {
		return nil, fmt.Errorf("acme account: %w", err)
	}
	if err := json.Unmarshal(data, acct); err != nil {
		return nil, fmt.Errorf("acme account %s: %w", location(s, regKey), err)
	}
	if email != "" {
		acct.Email = email
	}
	return acct, nil
}

func saveAccount(ctx context.Context, s writer, directory string, acct *account) error {
	data, err := json.MarshalIndent(acct, "", "  ")
	if err != nil {
		return fmt.Errorf("acme account: %w", err)
	}
	if err := s.Store(ctx, Keys.AccountRegistration(directory), append(data, '\n')); err != nil {
		return fmt.Errorf("write acme account: %w", err)
	}
	return nil
}

// ctxTransport ends lego's requests when the manager stops: lego's calls
// take no context.
type ctxTransport struct {
	ctx  context.Context
	base http.RoundTripper
}

func (t ctxTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return t.base.RoundTrip(r.WithContext(t.ctx))
}

// slogWriter passes lego's log lines to slog.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.log.Info(strings.TrimSpace(string(p)), "component", "lego")
	return len(p), nil
}
