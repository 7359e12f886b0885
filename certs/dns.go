package certs

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	legochallenge "github.com/go-acme/lego/v4/challenge"
	"github.com/go-acme/lego/v4/challenge/dns01"
	"github.com/go-acme/lego/v4/providers/dns/exec"
	"github.com/go-acme/lego/v4/providers/dns/rfc2136"
	"github.com/miekg/dns"
)

// The challenge types an order can use.
const (
	HTTP01 = "http-01"
	DNS01  = "dns-01"
)

// DNSConfig is the DNS-01 provider and how its records are checked.
type DNSConfig struct {
	Provider string // a key of dnsProviders
	// rfc2136: where updates go and how they are signed
	Nameserver    string // HOST:PORT
	TSIGKey       string
	TSIGAlgorithm string
	TSIGSecret    string // the secret (base64), or empty
	// exec: the program called as "PROGRAM present|cleanup FQDN VALUE"
	Program string
	// the servers asked whether a record is visible; empty: the system's
	// resolvers, then every authoritative server of the zone
	Resolvers          []string
	PropagationTimeout time.Duration
	PollingInterval    time.Duration
	// the TXT records' TTL; also the wait between two records of one
	// name (a name and its wildcard), so that no cache holds the first
	TTL time.Duration
}

// dnsProviders are the lego DNS providers built in. Each is imported on
// its own (never lego's all-providers factory, which links every
// provider's SDK); another one is one more entry here and its settings.
var dnsProviders = map[string]func(DNSConfig) (legochallenge.Provider, error){
	"rfc2136": func(c DNSConfig) (legochallenge.Provider, error) {
		return rfc2136.NewDNSProviderConfig(&rfc2136.Config{
			Nameserver: c.Nameserver, DNSTimeout: 10 * time.Second,
			TSIGKey: c.TSIGKey, TSIGSecret: c.TSIGSecret, TSIGAlgorithm: c.TSIGAlgorithm,
			TTL: int(c.TTL / time.Second), PropagationTimeout: c.PropagationTimeout,
			PollingInterval: c.PollingInterval, SequenceInterval: c.TTL,
		})
	},
	"exec": func(c DNSConfig) (legochallenge.Provider, error) {
		return exec.NewDNSProviderConfig(&exec.Config{Program: c.Program, PropagationTimeout: c.PropagationTimeout,
			PollingInterval: c.PollingInterval, SequenceInterval: c.TTL})
	},
}

// DNSProviders are the names of the DNS-01 providers built in.
func DNSProviders() []string { return slices.Sorted(maps.Keys(dnsProviders)) }

// tsigKeyClause is how a tsig-keygen key file starts its key, and
// tsigStatement one statement inside it.
var (
	tsigKeyClause = regexp.MustCompile(`^\s*key\s+"?([^"\s{]+)"?\s*\{`)
	tsigStatement = regexp.MustCompile(`^\s*(algorithm|secret)\s+"?([^";\s]+)"?\s*;`)
)

// ReadTSIGSecret reads a TSIG secret file into cfg: either the base64
// secret alone (the key name comes from cfg.TSIGKey) or a tsig-keygen key
// file, whose name and algorithm must agree with cfg's where those are
// set. The file must belong to the user the daemon runs as (root) and be
// readable by it alone: it lets whoever holds it change the zone. No error
// repeats what the file holds.
func ReadTSIGSecret(path string, cfg *DNSConfig) error {
	if err := CheckSecretFile(path); err != nil {
		return err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("tsig secret: %w", err)
	}
	text := strings.TrimSpace(string(data))
	secret := text
	if m := tsigKeyClause.FindStringSubmatch(text); m != nil {
		secret = ""
		keySecret, algorithm, err := parseTSIGKey(text[len(m[0]):])
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		switch {
		case cfg.TSIGKey != "" && strings.TrimSuffix(cfg.TSIGKey, ".") != strings.TrimSuffix(m[1], "."):
			return fmt.Errorf("%s is the key %q, and ACME_DNS_TSIG_KEY names %q", path, m[1], cfg.TSIGKey)
		case algorithm == "":
			return fmt.Errorf("%s names no algorithm", path)
		case cfg.TSIGAlgorithm != "" && strings.TrimSuffix(cfg.TSIGAlgorithm, ".") != strings.TrimSuffix(algorithm, "."):
			return fmt.Errorf("%s is a %s key, and ACME_DNS_TSIG_ALGORITHM is %s", path, algorithm, cfg.TSIGAlgorithm)
		}
		cfg.TSIGKey, cfg.TSIGAlgorithm, secret = m[1], algorithm, keySecret
	} else if cfg.TSIGKey == "" {
		return fmt.Errorf("%s holds a bare secret: the key's name must be set too (ACME_DNS_TSIG_KEY)", path)
	}
	if _, err := base64.StdEncoding.DecodeString(secret); err != nil || secret == "" || strings.ContainsAny(secret, " \t\n") {
		return fmt.Errorf("%s holds no base64 TSIG secret (neither alone nor as a tsig-keygen key's secret)", path)
	}
	cfg.TSIGSecret = secret
	return nil
}

// parseTSIGKey reads the statements of a key clause up to its "};": the
// secret and the algorithm.
func parseTSIGKey(body string) (secret, algorithm string, err error) {
	for _, line := range strings.Split(body, "\n") {
		line = strings.TrimSpace(line)
		for line != "" {
			if strings.HasPrefix(line, "}") {
				return secret, algorithm, nil
			}
			m := tsigStatement.FindStringSubmatch(line)
			if m == nil {
				return "", "", errors.New("is not a tsig-keygen key file: a statement in its key clause is neither algorithm nor secret")
			}
			if m[1] == "secret" {
				secret = m[2]
			} else {
				algorithm = m[2]
			}
			line = strings.TrimSpace(line[len(m[0]):])
		}
	}
	return "", "", errors.New("is not a tsig-keygen key file: its key clause does not end")
}

// CheckSecretFile refuses a secret file that is missing, not a regular
// file, owned by another user than this process's, or open to its group
// or others.
func CheckSecretFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s is open to its group or others (mode %04o): it must be readable by its owner only (chmod 600)", path, perm)
	}
	if uid, ok := fileOwner(fi); ok && uid != 0 && uid != os.Geteuid() {
		return fmt.Errorf("%s belongs to uid %d: it must belong to root", path, uid)
	}
	return nil
}

// DNS solves DNS-01 challenges through a lego provider. Every TXT record
// it adds is written to a journal first and leaves it once removed, so
// that no record outlives its order, not even across a crash.
type DNS struct {
	name     string
	provider legochallenge.Provider
	cfg      DNSConfig
	store    Storage // holds the journal (Keys.DNSJournal)
	log      *slog.Logger
	ctx      context.Context // ends the propagation wait when the daemon stops

	mu        sync.Mutex
	presented map[string]time.Time // TXT value -> when it was added
}

// txtRecord is one journal entry: what lego's CleanUp needs.
type txtRecord struct {
	Domain  string    `json:"domain"`
	Token   string    `json:"token"`
	KeyAuth string    `json:"key_auth"`
	FQDN    string    `json:"fqdn"`
	Value   string    `json:"value"`
	Added   time.Time `json:"added"`
}

// NewDNS builds the provider cfg names; its journal is kept in store.
func NewDNS(cfg DNSConfig, store Storage, log *slog.Logger) (*DNS, error) {
	mk, ok := dnsProviders[cfg.Provider]
	if !ok {
		return nil, fmt.Errorf("no dns-01 provider %q (built in: %s)", cfg.Provider, strings.Join(DNSProviders(), ", "))
	}
	p, err := mk(cfg)
	if err != nil {
		return nil, fmt.Errorf("dns-01 provider %s: %w", cfg.Provider, err)
	}
	return newDNS(cfg, p, store, log), nil
}

func newDNS(cfg DNSConfig, p legochallenge.Provider, store Storage, log *slog.Logger) *DNS {
	return &DNS{name: cfg.Provider, provider: p, cfg: cfg, store: store,
		log: log, ctx: context.Background(), presented: map[string]time.Time{}}
}

// Present adds the TXT record of a challenge, recorded in the journal
// before it is added.
func (d *DNS) Present(domain, token, keyAuth string) error {
	info := dns01.GetChallengeInfo(domain, keyAuth)
	rec := txtRecord{Domain: domain, Token: token, KeyAuth: keyAuth, FQDN: info.EffectiveFQDN, Value: info.Value, Added: time.Now().UTC()}
	if err := d.edit(func(recs []txtRecord) []txtRecord { return append(recs, rec) }); err != nil {
		return err
	}
	if err := d.provider.Present(domain, token, keyAuth); err != nil {
		// refused: nothing was added. An add that timed out may have been
		// applied all the same: it stays in the journal (removed at the
		// next start) unless taking it back now works.
		var netErr net.Error
		if !(errors.As(err, &netErr) && netErr.Timeout()) || d.provider.CleanUp(domain, token, keyAuth) == nil {
			d.forget(rec)
		}
		return fmt.Errorf("%s: add TXT %s: %w%s", d.name, rec.FQDN, err, hint(err))
	}
	d.mu.Lock()
	d.presented[rec.Value] = time.Now()
	d.mu.Unlock()
	d.log.Info("dns-01 record added", "provider", d.name, "fqdn", rec.FQDN)
	return nil
}

// CleanUp removes the TXT record of a challenge; one that cannot be
// removed stays in the journal for the next start. A record whose
// addition was refused is not in the journal: it is asked to go all the
// same, and a failure then is no failure.
func (d *DNS) CleanUp(domain, token, keyAuth string) error {
	info := dns01.GetChallengeInfo(domain, keyAuth)
	rec := txtRecord{Domain: domain, Token: token, FQDN: info.EffectiveFQDN, Value: info.Value}
	d.mu.Lock()
	delete(d.presented, info.Value)
	recs, err := d.read()
	d.mu.Unlock()
	added := err != nil || slices.ContainsFunc(recs, func(r txtRecord) bool { return r.FQDN == rec.FQDN && r.Value == rec.Value })
	if err := d.provider.CleanUp(domain, token, keyAuth); err != nil {
		if !added {
			return nil
		}
		d.log.Warn("dns-01 record not removed: retried at the next start", "provider", d.name, "fqdn", rec.FQDN, "err", err)
		return fmt.Errorf("%s: remove TXT %s: %w%s", d.name, rec.FQDN, err, hint(err))
	}
	d.forget(rec)
	d.log.Info("dns-01 record removed", "provider", d.name, "fqdn", rec.FQDN)
	return nil
}

// Timeout is how long and how often lego checks that a record is visible.
func (d *DNS) Timeout() (timeout, interval time.Duration) {
	return d.cfg.PropagationTimeout, d.cfg.PollingInterval
}

// Sequential makes lego solve one challenge after the other, a TTL apart:
// a name and its wildcard share one TXT name, and a provider may replace
// the whole record set.
func (d *DNS) Sequential() time.Duration { return d.cfg.TTL }

// RemoveLeftovers removes the records the journal still lists: those of
// a daemon that died during an order, or whose removal failed. It returns
// how many it removed.
func (d *DNS) RemoveLeftovers() (int, error) {
	d.mu.Lock()
	recs, err := d.read()
	d.mu.Unlock()
	if err != nil {
		return 0, err
	}
	removed := 0
	var errs []error
	for _, r := range recs {
		if err := d.provider.CleanUp(r.Domain, r.Token, r.KeyAuth); err != nil {
			errs = append(errs, fmt.Errorf("%s: remove TXT %s left since %s: %w", d.name, r.FQDN, r.Added.Format(time.RFC3339), err))
			continue
		}
		d.forget(r)
		removed++
		d.log.Info("dns-01 record left by an earlier run removed", "provider", d.name, "fqdn", r.FQDN, "added", r.Added.Format(time.RFC3339))
	}
	return removed, errors.Join(errs...)
}

// options are the dns01 options: the resolvers to ask, and a check that
// ends when ctx does and logs how long each record took to be seen.
func (d *DNS) options(ctx context.Context) []dns01.ChallengeOption {
	d.mu.Lock()
	d.ctx = ctx
	d.mu.Unlock()
	opts := []dns01.ChallengeOption{dns01.WrapPreCheck(d.preCheck)}
	if len(d.cfg.Resolvers) > 0 {
		opts = append(opts, dns01.AddRecursiveNameservers(d.cfg.Resolvers),
			dns01.RecursiveNSsPropagationRequirement(), dns01.DisableAuthoritativeNssPropagationRequirement())
	}
	return opts
}

func (d *DNS) preCheck(domain, fqdn, value string, check dns01.PreCheckFunc) (bool, error) {
	d.mu.Lock()
	ctx := d.ctx
	d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return true, fmt.Errorf("propagation check of %s stopped: %w", fqdn, err)
	}
	ok, err := check(fqdn, value)
	if ok && err == nil {
		d.mu.Lock()
		added := d.presented[value]
		d.mu.Unlock()
		if !added.IsZero() {
			d.log.Info("dns-01 record propagated", "domain", domain, "fqdn", fqdn, "waited", time.Since(added).Round(time.Millisecond))
		}
	}
	return ok, err
}

func (d *DNS) forget(rec txtRecord) {
	err := d.edit(func(recs []txtRecord) []txtRecord {
		return slices.DeleteFunc(recs, func(r txtRecord) bool { return r.FQDN == rec.FQDN && r.Value == rec.Value })
	})
	if err != nil {
		d.log.Error("dns-01 record journal", "err", err)
	}
}

// edit changes the journal under the lock.
func (d *DNS) edit(change func([]txtRecord) []txtRecord) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	recs, err := d.read()
	if err != nil {
		return err
	}
	data, err := json.MarshalIndent(change(recs), "", "  ")
	if err != nil {
		return fmt.Errorf("dns-01 record journal: %w", err)
	}
	if err := d.store.Store(context.Background(), Keys.DNSJournal(), append(data, '\n')); err != nil {
		return fmt.Errorf("write dns-01 record journal: %w", err)
	}
	return nil
}

func (d *DNS) read() ([]txtRecord, error) {
	data, err := d.store.Load(context.Background(), Keys.DNSJournal())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dns-01 record journal: %w", err)
	}
	var recs []txtRecord
	if err := json.Unmarshal(data, &recs); err != nil {
		return nil, fmt.Errorf("dns-01 record journal %s: %w", location(d.store, Keys.DNSJournal()), err)
	}
	return recs, nil
}

// hint says what a refused signature means.
func hint(err error) string {
	if errors.Is(err, dns.ErrAuth) || errors.Is(err, dns.ErrSig) {
		return " (the server refused the TSIG signature: check ACME_DNS_TSIG_KEY, ACME_DNS_TSIG_ALGORITHM and the secret in ACME_DNS_TSIG_SECRET_FILE)"
	}
	return ""
}

// fileOwner is the uid owning a file, when the system says.
func fileOwner(fi fs.FileInfo) (int, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return int(st.Uid), true
}
