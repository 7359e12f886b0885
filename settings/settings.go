// Package settings resolves the paths and options the CLI and the daemon
// share. Each setting has a flag and an environment variable
// HAPROXY_CONFIG_<NAME>, and can be given in /etc/default/haproxy-config
// (KEY=VALUE), so that "haproxy-config apply" run by Ansible finds the
// daemon's directories without flags. Precedence: flag, environment,
// defaults file, built-in default. HAPROXY_CONFIG_ROOT=DIR moves the whole
// default layout under DIR.
package settings

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"haproxy-config/assemble"
	"haproxy-config/certs"
	"haproxy-config/fragments"
	"haproxy-config/statedir"
)

// EnvPrefix starts every environment variable and defaults-file key.
const EnvPrefix = "HAPROXY_CONFIG_"

// Settings are resolved settings.
type Settings struct {
	Root             string
	DefaultsFile     string
	BaseConfig       string
	BaseIsDefault    bool // BaseConfig was not chosen by the operator
	FragmentsDir     string
	OutputConfig     string
	OutputMap        string
	StateDir         string
	Haproxy          string
	RuntimeSocket    string
	APISocket        string
	CertsDir         string
	HTTPAddr         string
	HTTPSAddr        string
	ChallengeAddr    string
	AllowSections    []string
	AllowDirectives  []string
	AllowNetworks    []netip.Prefix
	DomainOwners     fragments.DomainOwners
	Exports          []string
	CheckUser        string
	CheckTimeout     time.Duration
	CrossRefs        bool
	MaxFragmentBytes int64
	KeepGenerations  int

	// the watcher daemon
	StatusAddr     string
	MasterSocket   string
	Reload         string // strategy: managed, master-socket, systemd, command
	ReloadCommand  string
	ReloadUnit     string
	WaitMin        time.Duration
	WaitMax        time.Duration
	ReloadInterval time.Duration
	ReloadBurst    int
	Rescan         time.Duration
	VerifyTimeout  time.Duration
	MetricsAddr    string

	Health Health
	ACME   ACME
	Fleet  Fleet

	// Raw is each setting's value as given (or its default), by Key.Name.
	Raw map[string]string
}

// Health are the settings of status --check and announce.
type Health struct {
	CertWarning  time.Duration
	CertCritical time.Duration
	Pending      time.Duration
	Addresses    []netip.Addr
	CheckPath    string
	CheckPort    uint16
	Interval     time.Duration
	Rise         int
	Fall         int
}

// ACME are the certificate settings.
type ACME struct {
	Enabled      bool
	Directory    string
	Email        string
	KeyType      string
	Profile      string
	EABKeyID     string
	EABHMAC      string
	ExtraDomains []string
	CheckDNS     bool
	Addresses    []string
	ARI          bool
	Orders       int
	OrderWindow  time.Duration
	InFlight     int
	BackoffMin   time.Duration
	BackoffMax   time.Duration
	RemoveGrace  time.Duration
	DNS          DNS
}

// Fleet are the settings of fleet mode: balancers sharing their
// certificates, ACME account, challenges and order locks through etcd.
type Fleet struct {
	Endpoints []string // etcd client URLs; none: fleet mode is off
	Prefix    string   // the fleet's key prefix in etcd
	CAFile    string   // TLS to etcd: the CA that signs the members' certificates
	CertFile  string   // ... the client certificate, with KeyFile
	KeyFile   string
	SealKey   string // the key file the values are sealed with (FLEET_KEY_FILE)
	Node      string // this balancer's name in the fleet
	LockTTL   time.Duration
	Heartbeat time.Duration
}

// Enabled reports whether fleet mode is on.
func (f Fleet) Enabled() bool { return len(f.Endpoints) > 0 }

// ValidNodeName reports whether name can name a node: letters, digits and
// ".-_", not "." or "..", at most 253 characters.
func ValidNodeName(name string) bool {
	if name == "" || name == "." || name == ".." || len(name) > 253 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// hostName is the default node name: the host name, "localhost" when the
// system does not tell.
func hostName(string) string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}

// DNS are the DNS-01 settings.
type DNS struct {
	Provider string   // empty: no DNS-01, wildcards get the fallback
	Suffixes []string // plain names under these use DNS-01 too
	// rfc2136
	Nameserver     string // HOST:PORT
	TSIGKey        string
	TSIGAlgorithm  string
	TSIGSecretFile string
	// exec
	Exec string
	// the propagation check
	Resolvers          []string // HOST:PORT
	PropagationTimeout time.Duration
	PollingInterval    time.Duration
	TTL                time.Duration
}

// TSIGAlgorithms are the TSIG algorithms ACME_DNS_TSIG_ALGORITHM accepts.
var TSIGAlgorithms = []string{"hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512"}

// Let's Encrypt's directories; ACME_STAGING picks the second.
const (
	LetsEncrypt        = "https://acme-v02.api.letsencrypt.org/directory"
	LetsEncryptStaging = "https://acme-staging-v02.api.letsencrypt.org/directory"
)

// KeyTypes are the certificate key types ACME_KEY_TYPE accepts.
var KeyTypes = []string{"ec256", "ec384", "rsa2048", "rsa3072", "rsa4096"}

// Strategies are the ways the daemon can reload HAProxy.
var Strategies = []string{"managed", "master-socket", "systemd", "command"}

// Key describes one setting.
type Key struct {
	Name    string // suffix of the environment variable
	Flag    string // long flag name
	Usage   string
	Default func(root string) string
	set     func(s *Settings, v string) error
}

// DefaultText is the default as help shows it: the value, or what it is
// made of where it depends on the machine (the host name).
func (k Key) DefaultText(root string) string {
	if k.Name == "NODE_NAME" {
		return "the host name"
	}
	return k.Default(root)
}

// Env is the setting's environment variable and defaults-file key.
func (k Key) Env() string { return EnvPrefix + k.Name }

// NeedsRestart tells whether the daemon takes the setting only when it
// starts: what the running HAProxy was started with (paths it loads,
// addresses, the reload strategy) and what the daemon opened at start
// (sockets, listeners, the certificate manager). SIGHUP applies the rest.
func (k Key) NeedsRestart() bool {
	return restartOnly[k.Name] || strings.HasPrefix(k.Name, "ACME") || strings.HasPrefix(k.Name, "ETCD") || strings.HasPrefix(k.Name, "FLEET")
}

// Secret tells whether the value must not be shown (in logs, in errors).
func (k Key) Secret() bool { return k.Name == "ACME_EAB_HMAC" }

var restartOnly = map[string]bool{
	"OUTPUT": true, "MAP": true, "STATE": true, "CERTS": true, "HAPROXY": true, "RUNTIME_SOCKET": true,
	"CHALLENGE_ADDR": true, "STATUS_ADDR": true, "MASTER_SOCKET": true, "RELOAD": true,
	"RELOAD_COMMAND": true, "RELOAD_UNIT": true, "METRICS_ADDR": true, "API_SOCKET": true, "NODE_NAME": true,
}

// Ignored is a setting that changed but needs a restart, and the value
// that was not taken.
type Ignored struct {
	Key   Key
	Value string
}

// KeepRestartOnly puts back prev's value of every setting that needs a
// restart, when any of them differs in s, and returns those that differed.
// All of them are set again, in order, because some depend on others
// (ACME_STAGING on ACME_DIRECTORY).
func (s *Settings) KeepRestartOnly(prev *Settings) []Ignored {
	var ignored []Ignored
	for _, k := range Keys {
		if k.NeedsRestart() && s.Raw[k.Name] != prev.Raw[k.Name] {
			ignored = append(ignored, Ignored{Key: k, Value: s.Raw[k.Name]})
		}
	}
	if len(ignored) == 0 {
		return nil
	}
	for _, k := range Keys {
		if k.NeedsRestart() {
			// prev's values were accepted by this same code when it loaded
			_ = k.set(s, prev.Raw[k.Name])
			s.Raw[k.Name] = prev.Raw[k.Name]
		}
	}
	return ignored
}

func fixed(v string) func(string) string { return func(string) string { return v } }

func under(p string) func(string) string {
	return func(root string) string { return filepath.Join(root, p) }
}

func str(dst func(*Settings) *string) func(*Settings, string) error {
	return func(s *Settings, v string) error { *dst(s) = v; return nil }
}

// path stores a path in clean form: file events and prefixes are compared
// with it byte for byte.
func path(dst func(*Settings) *string) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		if v != "" {
			v = filepath.Clean(v)
		}
		*dst(s) = v
		return nil
	}
}

func splitList(v string) []string {
	if f := strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' }); len(f) > 0 {
		return f
	}
	return nil
}

func list(dst func(*Settings) *[]string) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		*dst(s) = splitList(v)
		return nil
	}
}

// oneOf is a list whose members must be among valid.
func oneOf(valid []string, what string, dst func(*Settings) *[]string) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		*dst(s) = splitList(v)
		for _, f := range *dst(s) {
			if !slices.Contains(valid, f) {
				return fmt.Errorf("%q is not %s: use %s", f, what, strings.Join(valid, ", "))
			}
		}
		return nil
	}
}

func addr(dst func(*Settings) *string) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		if _, port, err := net.SplitHostPort(v); err != nil || port == "" {
			return fmt.Errorf("%q is not HOST:PORT (use :PORT for all addresses)", v)
		}
		*dst(s) = v
		return nil
	}
}

// Keys lists every setting. The root and the defaults file are resolved
// first and are not part of this list.
var Keys = []Key{
	{"BASE", "base", "base config template `FILE` (the embedded default is used while the default path does not exist)",
		under("/etc/haproxy-config/base.cfg"), path(func(s *Settings) *string { return &s.BaseConfig })},
	{"FRAGMENTS", "fragments", "fragment store `DIR` (NAME.cfg + NAME.map per tenant)",
		under("/etc/haproxy-config/fragments"), path(func(s *Settings) *string { return &s.FragmentsDir })},
	{"OUTPUT", "output", "generated haproxy.cfg `FILE` that HAProxy loads",
		under("/var/lib/haproxy-config/live/haproxy.cfg"), path(func(s *Settings) *string { return &s.OutputConfig })},
	{"MAP", "map", "generated host map `FILE`",
		under("/var/lib/haproxy-config/live/hosts.map"), path(func(s *Settings) *string { return &s.OutputMap })},
	{"STATE", "state", "state `DIR`: lock, history, generations",
		under("/var/lib/haproxy-config"), path(func(s *Settings) *string { return &s.StateDir })},
	{"CERTS", "certs", "certificate `DIR`: crt-list and fallback certificate",
		under("/var/lib/haproxy-config/certs"), path(func(s *Settings) *string { return &s.CertsDir })},
	{"HAPROXY", "haproxy", "haproxy `BINARY`",
		fixed("haproxy"), str(func(s *Settings) *string { return &s.Haproxy })},
	{"RUNTIME_SOCKET", "runtime-socket", "HAProxy stats socket `PATH` (level admin) the base config opens",
		under("/run/haproxy-config/admin.sock"), path(func(s *Settings) *string { return &s.RuntimeSocket })},
	{"API_SOCKET", "api-socket", "unix socket `PATH` where the daemon takes apply and remove (root and the haproxy-config group); in the state directory, which that group may enter",
		under(filepath.Join("/var/lib/haproxy-config", statedir.APISocket)), path(func(s *Settings) *string { return &s.APISocket })},
	{"HTTP_ADDR", "http-addr", "`HOST:PORT` the HTTP frontend binds",
		fixed(":80"), addr(func(s *Settings) *string { return &s.HTTPAddr })},
	{"HTTPS_ADDR", "https-addr", "`HOST:PORT` the HTTPS frontend binds",
		fixed(":443"), addr(func(s *Settings) *string { return &s.HTTPSAddr })},
	{"CHALLENGE_ADDR", "challenge-addr", "`HOST:PORT` of the ACME HTTP-01 challenge handler",
		fixed("127.0.0.1:8402"), addr(func(s *Settings) *string { return &s.ChallengeAddr })},
	{"ALLOW_SECTIONS", "allow-sections", "section `KINDS` fragments may define besides backend (comma-separated: " + strings.Join(fragments.SectionKinds(), ", ") + ")",
		fixed(""), oneOf(fragments.SectionKinds(), "a section kind fragments can be allowed (global, defaults, frontend, listen, program and the others are never)",
			func(s *Settings) *[]string { return &s.AllowSections })},
	{"ALLOW_DIRECTIVES", "allow-directives", "allowlist `EXTENSIONS` that let fragments run code (comma-separated: " + strings.Join(fragments.Extensions(), ", ") + "; README: What a fragment may contain)",
		fixed(""), oneOf(fragments.Extensions(), "an allowlist extension", func(s *Settings) *[]string { return &s.AllowDirectives })},
	{"ALLOW_NETWORKS", "allow-networks", "`NETWORKS` servers may be in although they are loopback, link-local or this balancer's own (comma-separated CIDRs or IPs)",
		fixed(""), func(s *Settings, v string) error {
			s.AllowNetworks = nil
			for _, f := range splitList(v) {
				p, err := netip.ParsePrefix(f)
				if err != nil {
					ip, ierr := netip.ParseAddr(f)
					if ierr != nil {
						return fmt.Errorf("%q is not a network (CIDR such as 127.0.0.0/8) or an IP address", f)
					}
					p = netip.PrefixFrom(ip, ip.BitLen())
				}
				s.AllowNetworks = append(s.AllowNetworks, p.Masked())
			}
			return nil
		}},
	{"DOMAIN_OWNERS", "domain-owners", "which domains each fragment may map: `ENTRIES` NAME=SUFFIX[,SUFFIX] (NAME may end in *), or the path of a file of them; empty: first come, first served",
		fixed(""), func(s *Settings, v string) error {
			text := v
			if strings.HasPrefix(v, "/") {
				data, err := os.ReadFile(v)
				if err != nil {
					return fmt.Errorf("domain owners file: %w", err)
				}
				text = string(data)
			}
			owners, err := fragments.ParseDomainOwners(text)
			s.DomainOwners = owners
			return err
		}},
	{"EXPORTS", "exports", "base config section `NAMES` fragments may refer to: route to, read the state of, use (comma-separated)",
		fixed(""), list(func(s *Settings) *[]string { return &s.Exports })},
	{"CHECK_USER", "check-user", "`USER` haproxy -c runs as when haproxy-config runs as root (root: no change of user)",
		fixed("haproxy"), str(func(s *Settings) *string { return &s.CheckUser })},
	{"CHECK_TIMEOUT", "check-timeout", "how long one haproxy -c may take (`DURATION`); a fragment that makes it take longer is quarantined",
		fixed("1m"), duration(func(s *Settings) *time.Duration { return &s.CheckTimeout })},
	{"CROSS_REFS", "cross-refs", "let map lines route to backends of other fragments (`BOOL`); remove then refuses to orphan them",
		fixed("false"), func(s *Settings, v string) (err error) { s.CrossRefs, err = parseBool(v); return err }},
	{"MAX_FRAGMENT_BYTES", "max-fragment-bytes", "size limit of each fragment part in `BYTES`",
		fixed("262144"), func(s *Settings, v string) (err error) {
			s.MaxFragmentBytes, err = strconv.ParseInt(v, 10, 64)
			if err == nil && s.MaxFragmentBytes <= 0 {
				err = errors.New("must be positive")
			}
			return err
		}},
	{"KEEP_GENERATIONS", "keep-generations", "assembled generations to keep (`N`)",
		fixed("20"), func(s *Settings, v string) (err error) {
			s.KeepGenerations, err = strconv.Atoi(v)
			if err == nil && s.KeepGenerations < 1 {
				err = errors.New("must be at least 1")
			}
			return err
		}},
	{"STATUS_ADDR", "status-addr", "loopback `HOST:PORT` where HAProxy serves the live generation's marker (checked after each reload)",
		fixed("127.0.0.1:8404"), addr(func(s *Settings) *string { return &s.StatusAddr })},
	{"MASTER_SOCKET", "master-socket", "HAProxy master CLI socket `PATH` (-S): the managed HAProxy opens it; other strategies use it to verify reloads when set",
		under("/run/haproxy-config/master.sock"), path(func(s *Settings) *string { return &s.MasterSocket })},
	{"RELOAD", "reload", "how the daemon reloads HAProxy: `STRATEGY` managed (runs HAProxy itself), master-socket, systemd or command",
		fixed("managed"), func(s *Settings, v string) error {
			if !slices.Contains(Strategies, v) {
				return fmt.Errorf("%q is not one of %s", v, strings.Join(Strategies, ", "))
			}
			s.Reload = v
			return nil
		}},
	{"RELOAD_COMMAND", "reload-command", "shell `COMMAND` for the command strategy",
		fixed(""), str(func(s *Settings) *string { return &s.ReloadCommand })},
	{"RELOAD_UNIT", "reload-unit", "systemd `UNIT` for the systemd strategy",
		fixed("haproxy.service"), str(func(s *Settings) *string { return &s.ReloadUnit })},
	{"WAIT_MIN", "wait-min", "quiet `DURATION` a burst of direct file changes must settle for before it is read",
		fixed("500ms"), duration(func(s *Settings) *time.Duration { return &s.WaitMin })},
	{"WAIT_MAX", "wait-max", "longest `DURATION` a continuing burst of file changes is waited for",
		fixed("5s"), duration(func(s *Settings) *time.Duration { return &s.WaitMax })},
	{"RELOAD_INTERVAL", "reload-interval", "minimum `DURATION` between reloads on average (rate limit)",
		fixed("2s"), duration(func(s *Settings) *time.Duration { return &s.ReloadInterval })},
	{"RELOAD_BURST", "reload-burst", "reloads allowed back to back before the interval applies (`N`)",
		fixed("3"), func(s *Settings, v string) (err error) {
			s.ReloadBurst, err = strconv.Atoi(v)
			if err == nil && s.ReloadBurst < 1 {
				err = errors.New("must be at least 1")
			}
			return err
		}},
	{"RESCAN", "rescan", "full rescan `DURATION`, catching changes no file event reported",
		fixed("1m"), duration(func(s *Settings) *time.Duration { return &s.Rescan })},
	{"VERIFY_TIMEOUT", "verify-timeout", "how long a reload may take to be seen serving (`DURATION`) before it is rolled back",
		fixed("30s"), duration(func(s *Settings) *time.Duration { return &s.VerifyTimeout })},
	{"METRICS_ADDR", "metrics-addr", "`HOST:PORT` where the daemon serves Prometheus metrics at /metrics (empty: off)",
		fixed(""), func(s *Settings, v string) error {
			if v == "" {
				s.MetricsAddr = ""
				return nil
			}
			return addr(func(s *Settings) *string { return &s.MetricsAddr })(s, v)
		}},
	{"HEALTH_CERT_WARNING_DAYS", "health-cert-warning-days", "status --check warns when a served certificate expires within `DAYS`",
		fixed("14"), days(func(s *Settings) *time.Duration { return &s.Health.CertWarning })},
	{"HEALTH_CERT_CRITICAL_DAYS", "health-cert-critical-days", "status --check is critical when a served certificate expires within `DAYS`",
		fixed("7"), days(func(s *Settings) *time.Duration { return &s.Health.CertCritical })},
	{"HEALTH_PENDING_WARNING", "health-pending-warning", "status --check warns when changes are pending for longer than `DURATION`",
		fixed("5m"), duration(func(s *Settings) *time.Duration { return &s.Health.Pending })},
	{"ANNOUNCE_ADDRESSES", "announce-addresses", "service `IPS` announce gives ExaBGP as /32 or /128 routes while this node is healthy (comma-separated)",
		fixed(""), func(s *Settings, v string) error {
			s.Health.Addresses = nil
			for _, f := range splitList(v) {
				ip, err := netip.ParseAddr(f)
				if err != nil || ip.Zone() != "" {
					return fmt.Errorf("%q is not an IP address", f)
				}
				if !slices.Contains(s.Health.Addresses, ip.Unmap()) {
					s.Health.Addresses = append(s.Health.Addresses, ip.Unmap())
				}
			}
			return nil
		}},
	{"ANNOUNCE_CHECK_PATH", "announce-check-path", "`PATH` (HAProxy's monitor-uri) announce requests on each service address, which must answer 200 for its route to stay (empty: no request)",
		fixed(""), func(s *Settings, v string) error {
			if v != "" && (!strings.HasPrefix(v, "/") || strings.ContainsAny(v, " \t\r\n")) {
				return fmt.Errorf("%q is not a URL path (it starts with /, without spaces)", v)
			}
			s.Health.CheckPath = v
			return nil
		}},
	{"ANNOUNCE_CHECK_PORT", "announce-check-port", "`PORT` of the announce check on each service address",
		fixed("80"), func(s *Settings, v string) error {
			n, err := strconv.ParseUint(v, 10, 16)
			if err != nil || n == 0 {
				return fmt.Errorf("%q is not a port (1-65535)", v)
			}
			s.Health.CheckPort = uint16(n)
			return nil
		}},
	{"ANNOUNCE_INTERVAL", "announce-interval", "how often announce checks (`DURATION`)",
		fixed("1s"), duration(func(s *Settings) *time.Duration { return &s.Health.Interval })},
	{"ANNOUNCE_RISE", "announce-rise", "good checks in a row before a route is announced (`N`)",
		fixed("3"), atLeast(1, func(s *Settings) *int { return &s.Health.Rise })},
	{"ANNOUNCE_FALL", "announce-fall", "bad checks in a row before a route is withdrawn (`N`; drain withdraws at once)",
		fixed("3"), atLeast(1, func(s *Settings) *int { return &s.Health.Fall })},
	{"ACME", "acme", "obtain and renew certificates for every mapped domain (`BOOL`)",
		fixed("false"), boolean(func(s *Settings) *bool { return &s.ACME.Enabled })},
	{"ACME_DIRECTORY", "acme-directory", "ACME directory `URL` (Let's Encrypt by default; any RFC 8555 CA)",
		fixed(LetsEncrypt), str(func(s *Settings) *string { return &s.ACME.Directory })},
	{"ACME_STAGING", "acme-staging", "use Let's Encrypt's staging directory instead of the default one (`BOOL`)",
		fixed("false"), func(s *Settings, v string) error {
			staging, err := parseBool(v)
			if staging && s.ACME.Directory == LetsEncrypt {
				s.ACME.Directory = LetsEncryptStaging
			}
			return err
		}},
	{"ACME_EMAIL", "acme-email", "contact `ADDRESS` of the ACME account (expiry notices)",
		fixed(""), str(func(s *Settings) *string { return &s.ACME.Email })},
	{"ACME_KEY_TYPE", "acme-key-type", "certificate key `TYPE`: " + strings.Join(KeyTypes, ", "),
		fixed("ec256"), func(s *Settings, v string) error {
			if !slices.Contains(KeyTypes, v) {
				return fmt.Errorf("%q is not one of %s", v, strings.Join(KeyTypes, ", "))
			}
			s.ACME.KeyType = v
			return nil
		}},
	{"ACME_PROFILE", "acme-profile", "certificate `PROFILE` to ask the CA for (empty: the CA's default)",
		fixed(""), str(func(s *Settings) *string { return &s.ACME.Profile })},
	{"ACME_EAB_KID", "acme-eab-kid", "External Account Binding key `ID`, for CAs that require one",
		fixed(""), str(func(s *Settings) *string { return &s.ACME.EABKeyID })},
	{"ACME_EAB_HMAC", "acme-eab-hmac", "External Account Binding `KEY` (base64url)",
		fixed(""), str(func(s *Settings) *string { return &s.ACME.EABHMAC })},
	{"ACME_EXTRA_DOMAINS", "acme-extra-domains", "`NAMES` to keep certificates for besides the mapped domains (comma-separated)",
		fixed(""), func(s *Settings, v string) error {
			if err := list(func(s *Settings) *[]string { return &s.ACME.ExtraDomains })(s, v); err != nil {
				return err
			}
			for _, d := range s.ACME.ExtraDomains {
				if !certs.ValidDomain(d) || strings.HasPrefix(d, "*.") {
					return fmt.Errorf("%q is not a domain name that can have an HTTP-01 certificate", d)
				}
			}
			return nil
		}},
	{"ACME_CHECK_DNS", "acme-check-dns", "order only for domains that resolve to one of this balancer's addresses (`BOOL`)",
		fixed("true"), boolean(func(s *Settings) *bool { return &s.ACME.CheckDNS })},
	{"ACME_ADDRESSES", "acme-addresses", "this balancer's public `IPS` for the DNS check (comma-separated; empty: the addresses of its interfaces)",
		fixed(""), func(s *Settings, v string) error {
			if err := list(func(s *Settings) *[]string { return &s.ACME.Addresses })(s, v); err != nil {
				return err
			}
			for _, a := range s.ACME.Addresses {
				if net.ParseIP(a) == nil {
					return fmt.Errorf("%q is not an IP address", a)
				}
			}
			return nil
		}},
	{"ACME_ARI", "acme-ari", "ask the CA when to renew (ACME Renewal Information, RFC 9773) when it offers it (`BOOL`)",
		fixed("true"), boolean(func(s *Settings) *bool { return &s.ACME.ARI })},
	{"ACME_ORDERS", "acme-orders", "new orders allowed per ACME_ORDER_WINDOW (`N`; Let's Encrypt allows 300 per 3 hours)",
		fixed("300"), atLeast(1, func(s *Settings) *int { return &s.ACME.Orders })},
	{"ACME_ORDER_WINDOW", "acme-order-window", "the `DURATION` ACME_ORDERS counts over",
		fixed("3h"), duration(func(s *Settings) *time.Duration { return &s.ACME.OrderWindow })},
	{"ACME_IN_FLIGHT", "acme-in-flight", "orders in flight at once (`N`)",
		fixed("4"), atLeast(1, func(s *Settings) *int { return &s.ACME.InFlight })},
	{"ACME_BACKOFF_MIN", "acme-backoff-min", "first retry `DURATION` after a failed order; it doubles with each failure",
		fixed("5m"), duration(func(s *Settings) *time.Duration { return &s.ACME.BackoffMin })},
	{"ACME_BACKOFF_MAX", "acme-backoff-max", "longest retry `DURATION` after failed orders",
		fixed("6h"), duration(func(s *Settings) *time.Duration { return &s.ACME.BackoffMax })},
	{"ACME_REMOVE_GRACE", "acme-remove-grace", "how long (`DURATION`) a certificate stays in HAProxy after its domain left the map",
		fixed("24h"), duration(func(s *Settings) *time.Duration { return &s.ACME.RemoveGrace })},
	{"ACME_DNS_PROVIDER", "acme-dns-provider", "DNS-01 `PROVIDER` for wildcards and ACME_DNS_SUFFIXES: " + strings.Join(certs.DNSProviders(), ", ") + " (empty: none; wildcards get the fallback certificate)",
		fixed(""), func(s *Settings, v string) error {
			if v != "" && !slices.Contains(certs.DNSProviders(), v) {
				return fmt.Errorf("%q is not a DNS-01 provider: use %s", v, strings.Join(certs.DNSProviders(), ", "))
			}
			s.ACME.DNS.Provider = v
			return nil
		}},
	{"ACME_DNS_SUFFIXES", "acme-dns-suffixes", "domain `SUFFIXES` whose plain names use DNS-01 too (comma-separated; wildcards always do)",
		fixed(""), func(s *Settings, v string) error {
			s.ACME.DNS.Suffixes = nil
			for _, f := range splitList(v) {
				f = strings.ToLower(strings.Trim(f, "."))
				if !certs.ValidDomain(f) || strings.HasPrefix(f, "*.") {
					return fmt.Errorf("%q is not a domain suffix (such as example.com)", f)
				}
				s.ACME.DNS.Suffixes = append(s.ACME.DNS.Suffixes, f)
			}
			return nil
		}},
	{"ACME_DNS_NAMESERVER", "acme-dns-nameserver", "rfc2136: the primary server's `HOST[:PORT]` that takes the updates",
		fixed(""), func(s *Settings, v string) (err error) {
			s.ACME.DNS.Nameserver, err = hostPort(v, "53")
			return err
		}},
	{"ACME_DNS_TSIG_KEY", "acme-dns-tsig-key", "rfc2136: TSIG key `NAME` (empty with a key file, which names it)",
		fixed(""), str(func(s *Settings) *string { return &s.ACME.DNS.TSIGKey })},
	{"ACME_DNS_TSIG_ALGORITHM", "acme-dns-tsig-algorithm", "rfc2136: TSIG `ALGORITHM`: " + strings.Join(TSIGAlgorithms, ", "),
		fixed("hmac-sha256"), func(s *Settings, v string) error {
			if !slices.Contains(TSIGAlgorithms, v) {
				return fmt.Errorf("%q is not one of %s", v, strings.Join(TSIGAlgorithms, ", "))
			}
			s.ACME.DNS.TSIGAlgorithm = v
			return nil
		}},
	{"ACME_DNS_TSIG_SECRET_FILE", "acme-dns-tsig-secret-file", "rfc2136: `FILE` holding the TSIG secret (base64) or a tsig-keygen key; root's, mode 0600 (secrets never come from flags or the environment)",
		fixed(""), func(s *Settings, v string) error {
			if v == "" {
				s.ACME.DNS.TSIGSecretFile = ""
				return nil
			}
			if !filepath.IsAbs(v) {
				return fmt.Errorf("%q is not an absolute path", v)
			}
			if err := certs.CheckSecretFile(v); err != nil {
				return err
			}
			s.ACME.DNS.TSIGSecretFile = filepath.Clean(v)
			return nil
		}},
	{"ACME_DNS_EXEC", "acme-dns-exec", "exec: `PROGRAM` run as PROGRAM present|cleanup FQDN VALUE to add and remove a TXT record",
		fixed(""), func(s *Settings, v string) error {
			if v == "" {
				s.ACME.DNS.Exec = ""
				return nil
			}
			fi, err := os.Stat(v)
			if err != nil {
				return err
			}
			if !filepath.IsAbs(v) || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
				return fmt.Errorf("%q is not an executable file named by an absolute path", v)
			}
			// the daemon runs it as itself (root): nobody else may change it
			if fi.Mode().Perm()&0o022 != 0 {
				return fmt.Errorf("%q may be written by its group or others (mode %04o): chmod go-w", v, fi.Mode().Perm())
			}
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
				return fmt.Errorf("%q belongs to uid %d: it must belong to root", v, st.Uid)
			}
			s.ACME.DNS.Exec = filepath.Clean(v)
			return nil
		}},
	{"ACME_DNS_RESOLVERS", "acme-dns-resolvers", "`SERVERS` (HOST[:PORT], comma-separated) that must all show a TXT record before the CA is asked to check it (empty: the system's resolvers, then every authoritative server of the zone)",
		fixed(""), func(s *Settings, v string) error {
			s.ACME.DNS.Resolvers = nil
			for _, f := range splitList(v) {
				hp, err := hostPort(f, "53")
				if err != nil {
					return err
				}
				s.ACME.DNS.Resolvers = append(s.ACME.DNS.Resolvers, hp)
			}
			return nil
		}},
	{"ACME_DNS_PROPAGATION_TIMEOUT", "acme-dns-propagation-timeout", "how long (`DURATION`) a TXT record may take to be seen before the order fails",
		fixed("2m"), duration(func(s *Settings) *time.Duration { return &s.ACME.DNS.PropagationTimeout })},
	{"ACME_DNS_POLLING_INTERVAL", "acme-dns-polling-interval", "how often (`DURATION`, at least 100ms) the propagation check asks",
		fixed("2s"), func(s *Settings, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d < 100*time.Millisecond {
				return fmt.Errorf("%q is not a duration of at least 100ms", v)
			}
			s.ACME.DNS.PollingInterval = d
			return nil
		}},
	{"ACME_DNS_TTL", "acme-dns-ttl", "TTL (`DURATION`, whole seconds) of the TXT records; a name and its wildcard are proved this long apart, so no cache holds the first record",
		fixed("1m"), func(s *Settings, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d < time.Second || d > 10*time.Minute || d%time.Second != 0 {
				return fmt.Errorf("%q is not a whole number of seconds from 1s to 10m", v)
			}
			s.ACME.DNS.TTL = d
			return nil
		}},
	{"ETCD_ENDPOINTS", "etcd-endpoints", "fleet mode: etcd client `URLS` (comma-separated http:// or https://); empty: fleet mode is off (README: Fleet)",
		fixed(""), func(s *Settings, v string) error {
			s.Fleet.Endpoints = nil
			for _, f := range splitList(v) {
				u, err := url.Parse(f)
				if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
					return fmt.Errorf("%q is not an etcd client URL (http://HOST:PORT or https://HOST:PORT)", f)
				}
				s.Fleet.Endpoints = append(s.Fleet.Endpoints, f)
			}
			return nil
		}},
	{"ETCD_PREFIX", "etcd-prefix", "the fleet's key `PREFIX` in etcd (several fleets may share one etcd)",
		fixed("/haproxy-config/default"), func(s *Settings, v string) error {
			p := strings.TrimRight(v, "/")
			if !strings.HasPrefix(p, "/") || p == "" || strings.ContainsAny(p, " \t\r\n") || strings.Contains(p, "//") {
				return fmt.Errorf("%q is not a key prefix (such as /haproxy-config/edge-eu)", v)
			}
			s.Fleet.Prefix = p
			return nil
		}},
	{"ETCD_CA_FILE", "etcd-ca-file", "TLS to etcd: the CA `FILE` (PEM) that signs the members' certificates (empty: plain connections, or the system's CAs for https://)",
		fixed(""), path(func(s *Settings) *string { return &s.Fleet.CAFile })},
	{"ETCD_CERT_FILE", "etcd-cert-file", "TLS to etcd: this node's client certificate `FILE` (PEM), with ETCD_KEY_FILE",
		fixed(""), path(func(s *Settings) *string { return &s.Fleet.CertFile })},
	{"ETCD_KEY_FILE", "etcd-key-file", "TLS to etcd: the client certificate's key `FILE` (PEM)",
		fixed(""), path(func(s *Settings) *string { return &s.Fleet.KeyFile })},
	{"FLEET_KEY_FILE", "fleet-key-file", "`FILE` of the key the fleet's values in etcd are sealed with: the same on every node, mode 0600 (haproxy-config fleet key makes one)",
		under("/etc/haproxy-config/fleet.key"), path(func(s *Settings) *string { return &s.Fleet.SealKey })},
	{"NODE_NAME", "node-name", "this balancer's `NAME` in the fleet (letters, digits, .-_; default: the host name)",
		hostName, func(s *Settings, v string) error {
			// checked with the fleet's settings: with fleet mode off, a
			// host name that names no node is no error
			s.Fleet.Node = v
			return nil
		}},
	{"ETCD_LOCK_TTL", "etcd-lock-ttl", "how long (`DURATION`, at least 2s) a node that died or lost etcd keeps its order locks",
		fixed("15s"), func(s *Settings, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d < 2*time.Second {
				return fmt.Errorf("%q is not a duration of at least 2s", v)
			}
			s.Fleet.LockTTL = d
			return nil
		}},
	{"FLEET_HEARTBEAT", "fleet-heartbeat", "how often (`DURATION`, 1s to 1h) the daemon checks etcd and stores its heartbeat for haproxy-config fleet",
		fixed("10s"), func(s *Settings, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil || d < time.Second || d > time.Hour {
				return fmt.Errorf("%q is not a duration from 1s to 1h", v)
			}
			s.Fleet.Heartbeat = d
			return nil
		}},
}

// checkFleet refuses fleet settings that do not go together.
func checkFleet(f Fleet, origin map[string]string) error {
	switch {
	case f.Enabled() && !ValidNodeName(f.Node):
		return fmt.Errorf("setting %s: %q is not a node name (letters, digits, '.', '-' and '_'): set %sNODE_NAME", origin["NODE_NAME"], f.Node, EnvPrefix)
	case f.CertFile != "" && f.KeyFile == "":
		return fmt.Errorf("setting %s: a client certificate needs its key: set %sETCD_KEY_FILE", origin["ETCD_CERT_FILE"], EnvPrefix)
	case f.KeyFile != "" && f.CertFile == "":
		return fmt.Errorf("setting %s: a client key needs its certificate: set %sETCD_CERT_FILE", origin["ETCD_KEY_FILE"], EnvPrefix)
	}
	return nil
}

// hostPort adds port to an address without one; "" stays "".
func hostPort(v, port string) (string, error) {
	if v == "" {
		return "", nil
	}
	if _, p, err := net.SplitHostPort(v); err == nil {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return "", fmt.Errorf("%q names no port (1-65535)", v)
		}
		return v, nil
	}
	if strings.Contains(v, ":") && net.ParseIP(v) == nil || strings.ContainsAny(v, "[] /") {
		return "", fmt.Errorf("%q is not HOST or HOST:PORT", v)
	}
	return net.JoinHostPort(v, port), nil
}

// checkDNS refuses DNS-01 settings that do not go together; origin names
// where each setting came from.
func checkDNS(d DNS, origin map[string]string) error {
	bad := func(key, format string, args ...any) error {
		where := origin[key]
		if strings.HasPrefix(where, "default of ") {
			where = EnvPrefix + key // not given: name the setting alone
		}
		return fmt.Errorf("setting %s: %s", where, fmt.Sprintf(format, args...))
	}
	only := map[string]string{"ACME_DNS_NAMESERVER": d.Nameserver, "ACME_DNS_TSIG_KEY": d.TSIGKey,
		"ACME_DNS_TSIG_SECRET_FILE": d.TSIGSecretFile, "ACME_DNS_EXEC": d.Exec}
	owner := map[string]string{"ACME_DNS_NAMESERVER": "rfc2136", "ACME_DNS_TSIG_KEY": "rfc2136",
		"ACME_DNS_TSIG_SECRET_FILE": "rfc2136", "ACME_DNS_EXEC": "exec"}
	for _, key := range slices.Sorted(maps.Keys(only)) {
		if only[key] != "" && owner[key] != d.Provider {
			return bad(key, "is for the %s DNS-01 provider, and ACME_DNS_PROVIDER is %q", owner[key], d.Provider)
		}
	}
	switch {
	case d.Provider == "" && len(d.Suffixes) > 0:
		return bad("ACME_DNS_SUFFIXES", "needs a DNS-01 provider (ACME_DNS_PROVIDER)")
	case d.Provider == "rfc2136" && d.Nameserver == "":
		return bad("ACME_DNS_NAMESERVER", "the rfc2136 provider needs the server that takes the updates")
	case d.Provider == "rfc2136" && d.TSIGSecretFile == "":
		return bad("ACME_DNS_TSIG_SECRET_FILE", "the rfc2136 provider signs its updates (TSIG): it needs the file with the key's secret")
	case d.Provider == "exec" && d.Exec == "":
		return bad("ACME_DNS_EXEC", "the exec provider needs the program to run")
	case d.PollingInterval > d.PropagationTimeout:
		return bad("ACME_DNS_POLLING_INTERVAL", "%v is longer than ACME_DNS_PROPAGATION_TIMEOUT (%v)", d.PollingInterval, d.PropagationTimeout)
	}
	return nil
}

func boolean(dst func(*Settings) *bool) func(*Settings, string) error {
	return func(s *Settings, v string) (err error) {
		*dst(s), err = parseBool(v)
		return err
	}
}

func atLeast(low int, dst func(*Settings) *int) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < low {
			return fmt.Errorf("%q is not a whole number of at least %d", v, low)
		}
		*dst(s) = n
		return nil
	}
}

func days(dst func(*Settings) *time.Duration) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 3650 {
			return fmt.Errorf("%q is not a number of days (0 to 3650)", v)
		}
		*dst(s) = time.Duration(n) * 24 * time.Hour
		return nil
	}
}

func duration(dst func(*Settings) *time.Duration) func(*Settings, string) error {
	return func(s *Settings, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return fmt.Errorf("%q is not a positive duration (e.g. 500ms, 2s, 1m)", v)
		}
		*dst(s) = d
		return nil
	}
}

func parseBool(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "1", "true", "yes", "on":
		return true, nil
	case "0", "false", "no", "off", "":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean (true/false)", v)
}

// Source tells where explicitly given values come from.
type Source struct {
	Flags  map[string]string // flag name -> value, only flags given on the command line
	Getenv func(string) (string, bool)
}

// Load resolves the settings.
func Load(src Source) (*Settings, error) {
	lookupEnv := src.Getenv
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	first := func(flag, env string) (string, bool) {
		if v, ok := src.Flags[flag]; ok {
			return v, true
		}
		return lookupEnv(EnvPrefix + env)
	}
	s := &Settings{}
	root, _ := first("root", "ROOT")
	if root == "" {
		root = "/"
	}
	s.Root = root
	defaultsFile, explicit := first("defaults-file", "DEFAULTS")
	if !explicit {
		defaultsFile = filepath.Join(root, "etc/default/haproxy-config")
	}
	s.DefaultsFile = defaultsFile
	fileValues, err := ReadDefaultsFile(defaultsFile)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		err = nil
	}
	if err != nil {
		return nil, err
	}
	origins := map[string]string{}
	s.Raw = map[string]string{}
	for _, k := range Keys {
		v, ok := first(k.Flag, k.Name)
		origin := "--" + k.Flag + " / $" + k.Env()
		if !ok {
			v, ok = fileValues[k.Env()]
			origin = k.Env() + " in " + defaultsFile
		}
		if !ok {
			v = k.Default(root)
			origin = "default of " + k.Env()
			if k.Name == "BASE" {
				s.BaseIsDefault = true
			}
		}
		if err := k.set(s, v); err != nil {
			return nil, fmt.Errorf("setting %s: %w", origin, err)
		}
		s.Raw[k.Name] = v
		origins[k.Name] = origin
	}
	if err := checkDNS(s.ACME.DNS, origins); err != nil {
		return nil, err
	}
	if err := checkFleet(s.Fleet, origins); err != nil {
		return nil, err
	}
	return s, nil
}

// ReadDefaultsFile reads KEY=VALUE lines in the format systemd's
// EnvironmentFile= and /etc/default files share: # comments, optional
// "export ", optional single or double quotes. Keys outside
// HAPROXY_CONFIG_* are ignored; an unknown HAPROXY_CONFIG_* key is an error,
// since a mistyped setting silently ignored would surprise the operator.
func ReadDefaultsFile(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("defaults file: %w", err)
	}
	known := map[string]bool{}
	for _, k := range Keys {
		known[k.Env()] = true
	}
	values := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for num := 1; sc.Scan(); num++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		key = strings.TrimSpace(key)
		if !ok || key == "" {
			return nil, fmt.Errorf("%s:%d: expected KEY=VALUE", path, num)
		}
		if !strings.HasPrefix(key, EnvPrefix) {
			continue
		}
		if key == EnvPrefix+"ACTOR" {
			return nil, fmt.Errorf("%s:%d: %s names who makes each change and is read from the environment only", path, num, key)
		}
		if !known[key] {
			return nil, fmt.Errorf("%s:%d: unknown setting %s", path, num, key)
		}
		value = strings.TrimSpace(value)
		if n := len(value); n >= 2 && (value[0] == '"' || value[0] == '\'') && value[n-1] == value[0] {
			value = value[1 : n-1]
		}
		values[key] = value
	}
	return values, sc.Err()
}

// CrtList is the crt-list the HTTPS frontend loads.
func (s *Settings) CrtList() string { return filepath.Join(s.CertsDir, "crt-list") }

// FallbackCert is the self-signed certificate served for unknown names.
func (s *Settings) FallbackCert() string { return filepath.Join(s.CertsDir, "fallback.pem") }

// Vars are the base template's values; mapRef is the host map path as the
// generated config names it.
func (s *Settings) Vars(mapRef string) assemble.Vars {
	httpsPort := ""
	if _, port, err := net.SplitHostPort(s.HTTPSAddr); err == nil && port != "443" {
		httpsPort = ":" + port
	}
	return assemble.Vars{
		HTTPAddr:      s.HTTPAddr,
		HTTPSAddr:     s.HTTPSAddr,
		HTTPSPort:     httpsPort,
		MapFile:       mapRef,
		CrtList:       s.CrtList(),
		FallbackCert:  s.FallbackCert(),
		RuntimeSocket: s.RuntimeSocket,
		ChallengeAddr: s.ChallengeAddr,
		StatusAddr:    s.StatusAddr,
		Marker:        assemble.MarkerPlaceholder,
	}
}
