package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"haproxy-config/certs"
	"haproxy-config/internal/testkit"
)

// dnsCertRow is what the DNS-01 tests read from "certs --json".
type dnsCertRow struct {
	Name      string   `json:"name"`
	Names     []string `json:"names"`
	Challenge string   `json:"challenge"`
	State     string   `json:"state"`
	Blocked   string   `json:"blocked"`
	LastError string   `json:"last_error"`
}

func (in *install) certRows(t *testing.T) map[string]dnsCertRow {
	t.Helper()
	out := mustRun(t, in.env, "", "certs", "--json")
	var rows []dnsCertRow
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("certs --json: %v\n%s", err, out)
	}
	m := map[string]dnsCertRow{}
	for _, r := range rows {
		m[r.Name] = r
	}
	return m
}

// propagationWaits are the daemon's "dns-01 record propagated" figures:
// from the record's addition to the check seeing it.
func propagationWaits(t *testing.T, log string) []time.Duration {
	t.Helper()
	var out []time.Duration
	for _, m := range regexp.MustCompile(`msg="dns-01 record propagated".* waited=(\S+)`).FindAllStringSubmatch(log, -1) {
		d, err := time.ParseDuration(m[1])
		if err != nil {
			t.Fatalf("propagation figure %q: %v", m[1], err)
		}
		out = append(out, d)
	}
	return out
}

// logOnFailure prints the daemon's and the DNS server's logs if the test
// fails.
func logOnFailure(t *testing.T, dm *daemon, k *knot) {
	t.Cleanup(func() {
		if t.Failed() {
			klog, _ := os.ReadFile(k.log)
			t.Logf("daemon log:\n%s\nknot log:\n%s", dm.output(), klog)
		}
	})
}

// journal reads the daemon's list of TXT records added and not removed.
func (in *install) journal(t *testing.T) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(in.stateDir(), certs.DNSRecordsFile))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var recs []map[string]any
	if err := json.Unmarshal(data, &recs); err != nil {
		t.Fatalf("%s: %v", certs.DNSRecordsFile, err)
	}
	return recs
}

func TestDNSWildcardPairOneCertificate(t *testing.T) {
	in := newInstall(t)
	k := startKnot(t)
	p := startPebble(t, pebbleOptions{httpPort: in.httpPort, dnsServer: k.addr})
	in.env = append(in.env, p.env("HAPROXY_CONFIG_ACME_PROFILE=default")...)
	in.env = append(in.env, k.env(t, k.secret)...)
	dm := in.startDaemon(t)
	logOnFailure(t, dm, k)
	roots := p.roots(t)

	start := time.Now()
	in.applyDomains(t, "shop", "shop", "shop.example.test", "*.shop.example.test")
	applied := time.Since(start)
	reloads := in.status(t).Counts.Reloads // the new backend's
	leaf := in.waitServed(t, "a.shop.example.test", roots, "", 60*time.Second)
	served := time.Since(start)
	for _, host := range []string{"a.shop.example.test", "shop.example.test", "other.shop.example.test"} {
		c, err := in.servedCert(host, roots)
		if err != nil {
			t.Fatalf("TLS with Pebble's root for %s: %v", host, err)
		}
		if err := c.VerifyHostname(host); err != nil || c.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
			t.Errorf("%s is served serial %s (%v), want the pair's %s", host, c.SerialNumber.Text(16), err, leaf.SerialNumber.Text(16))
		}
	}
	if got := leaf.DNSNames; !slices.Equal(slices.Sorted(slices.Values(got)), []string{"*.shop.example.test", "shop.example.test"}) {
		t.Errorf("certificate names %v, want the SAN pair", got)
	}
	if got := p.orders(t); got != 1 {
		t.Errorf("Pebble saw %d orders, want one for both names", got)
	}
	if got := in.status(t).Counts.Reloads; got != reloads {
		t.Errorf("reloads %d -> %d for the certificate step, want none (runtime API)", reloads, got)
	}
	// lego removes each record once its authorization is decided, before
	// the certificate is finalised
	if vals := k.txt(t, "_acme-challenge.shop.example.test"); len(vals) != 0 {
		t.Errorf("TXT records left in the zone: %v", vals)
	}
	if recs := in.journal(t); len(recs) != 0 {
		t.Errorf("journal still lists %v", recs)
	}
	if got := k.updates(t, "example.test"); got < 4 {
		t.Errorf("the server applied %d dynamic updates, want 4 (two added, two removed)", got)
	}
	list, err := os.ReadFile(filepath.Join(in.root, "var/lib/haproxy-config/certs/crt-list"))
	if err != nil {
		t.Fatal(err)
	}
	pem := filepath.Join(in.root, "var/lib/haproxy-config/certs/shop.example.test.pem")
	if want := pem + " shop.example.test\n" + pem + " *.shop.example.test\n"; string(list) != want {
		t.Errorf("crt-list:\n%s\nwant:\n%s", list, want)
	}
	rows := in.certRows(t)
	if r := rows["shop.example.test"]; len(rows) != 1 || r.Challenge != "dns-01" || r.State != "valid" ||
		!slices.Equal(r.Names, []string{"shop.example.test", "*.shop.example.test"}) {
		t.Errorf("certs --json: %+v", rows)
	}
	if text := mustRun(t, in.env, "", "certs"); !strings.Contains(text, "shop.example.test + *.shop.example.test  dns-01") {
		t.Errorf("certs:\n%s", text)
	}
	waits := propagationWaits(t, dm.output())
	if len(waits) != 2 {
		t.Fatalf("propagation figures %v in the daemon's log, want one per record", waits)
	}
	t.Logf("apply --wait took %v; wildcard certificate served %v after apply --wait started; propagation checks %v (%v in all, %.0f%%)",
		applied.Round(time.Millisecond), served.Round(time.Millisecond), waits, (waits[0] + waits[1]).Round(time.Millisecond),
		100*float64(waits[0]+waits[1])/float64(served))
}

func TestDNSSuffixPlainName(t *testing.T) {
	in := newInstall(t)
	k := startKnot(t)
	// Pebble's HTTP-01 requests go to a port nothing listens on: only
	// DNS-01 can prove the name
	p := startPebble(t, pebbleOptions{httpPort: strconv.Itoa(testkit.FreePort(t)), dnsServer: k.addr})
	in.env = append(in.env, p.env("HAPROXY_CONFIG_ACME_PROFILE=default")...)
	in.env = append(in.env, k.env(t, k.secret, "HAPROXY_CONFIG_ACME_DNS_SUFFIXES=internal.example.test")...)
	logOnFailure(t, in.startDaemon(t), k)
	in.applyDomains(t, "app", "app", "app.internal.example.test")
	leaf := in.waitServed(t, "app.internal.example.test", p.roots(t), "", 60*time.Second)
	if err := leaf.VerifyHostname("app.internal.example.test"); err != nil {
		t.Error(err)
	}
	log, _ := os.ReadFile(p.log)
	if strings.Contains(string(log), "validate w/ HTTP") {
		t.Errorf("Pebble tried HTTP-01:\n%s", log)
	}
	if !strings.Contains(string(log), "Using custom DNS resolver for ACME challenges: "+k.addr) ||
		!regexp.MustCompile(`authz \S+ set VALID by completed challenge`).Match(log) {
		t.Errorf("Pebble's log shows no challenge validated against the test server:\n%s", log)
	}
	if got := k.updates(t, "example.test"); got < 2 {
		t.Errorf("the server applied %d dynamic updates, want the record added and removed", got)
	}
	if r := in.certRows(t)["app.internal.example.test"]; r.Challenge != "dns-01" || r.State != "valid" {
		t.Errorf("certs --json: %+v", r)
	}
	if vals := k.txt(t, "_acme-challenge.app.internal.example.test"); len(vals) != 0 {
		t.Errorf("TXT records left: %v", vals)
	}
}

func TestDNSWildcardWithoutProvider(t *testing.T) {
	in := newInstall(t)
	p := startPebble(t, pebbleOptions{httpPort: in.httpPort})
	in.env = append(in.env, p.env("HAPROXY_CONFIG_ACME_PROFILE=default")...)
	in.startDaemon(t)
	in.applyDomains(t, "wild", "wild", "*.wild.example.com", "wild.example.com")
	in.waitServed(t, "wild.example.com", p.roots(t), "", 60*time.Second)
	if _, err := in.servedCert("a.wild.example.com", p.roots(t)); err == nil {
		t.Error("a Pebble certificate is served for the wildcard without a DNS-01 provider")
	}
	r := in.certRows(t)["*.wild.example.com"]
	if r.State != "fallback" || !strings.Contains(r.Blocked, "no DNS-01 provider") {
		t.Errorf("certs --json for the wildcard: %+v", r)
	}
	text := mustRun(t, in.env, "", "certs")
	if !strings.Contains(text, "*.wild.example.com") || !strings.Contains(text, "no DNS-01 provider is configured") {
		t.Errorf("certs does not say why:\n%s", text)
	}
	status := mustRun(t, in.env, "", "status")
	if !strings.Contains(status, "fallback: *.wild.example.com: a wildcard needs DNS-01") {
		t.Errorf("status does not say why:\n%s", status)
	}
	if got := p.orders(t); got != 1 {
		t.Errorf("Pebble saw %d orders, want 1 (none for the wildcard)", got)
	}
}

func TestDNSWrongTSIGSecretBacksOff(t *testing.T) {
	in := newInstall(t)
	k := startKnot(t)
	p := startPebble(t, pebbleOptions{httpPort: in.httpPort, dnsServer: k.addr})
	in.env = append(in.env, p.env("HAPROXY_CONFIG_ACME_PROFILE=default",
		"HAPROXY_CONFIG_ACME_BACKOFF_MIN=2s", "HAPROXY_CONFIG_ACME_BACKOFF_MAX=1m")...)
	in.env = append(in.env, k.env(t, randomSecret(t))...)
	logOnFailure(t, in.startDaemon(t), k)
	start := time.Now()
	in.applyDomains(t, "bad", "bad", "*.bad.example.test")
	eventually(t, 40*time.Second, "three failed orders for *.bad.example.test", func() error {
		if d := in.certState(t).Domains["*.bad.example.test"]; d == nil || d.Failures < 3 {
			return fmt.Errorf("state %+v", d)
		}
		return nil
	})
	d := in.certState(t).Domains["*.bad.example.test"]
	if !strings.Contains(d.LastError, "rfc2136: add TXT _acme-challenge.bad.example.test.") || !strings.Contains(d.LastError, "bad authentication") ||
		!strings.Contains(d.LastError, "the server refused the TSIG signature") {
		t.Errorf("last error %q: want the refused update named", d.LastError)
	}
	want := 2 * time.Second << (d.Failures - 1)
	if gap := d.NextAttempt.Sub(d.LastErrorAt); gap < want-time.Second || gap > want+want/10+time.Second {
		t.Errorf("after %d failures the next attempt is %v later, want about %v", d.Failures, gap, want)
	}
	text := mustRun(t, in.env, "", "certs")
	if !strings.Contains(text, "failing") || !strings.Contains(text, "check ACME_DNS_TSIG_KEY") {
		t.Errorf("certs:\n%s", text)
	}
	elapsed := time.Since(start)
	maxOrders := 1
	for gap := 2 * time.Second; gap*2-2*time.Second < elapsed; gap *= 2 {
		maxOrders++
	}
	if got := p.orders(t); got > maxOrders || got < d.Failures {
		t.Errorf("Pebble saw %d orders in %v: want between %d (the failures) and %d (the backoff)", got, elapsed, d.Failures, maxOrders)
	}
	if vals := k.txt(t, "_acme-challenge.bad.example.test"); len(vals) != 0 {
		t.Errorf("TXT records in the zone: %v", vals)
	}
	if recs := in.journal(t); len(recs) != 0 {
		t.Errorf("journal lists refused records: %v", recs)
	}
	t.Logf("%d orders, %d failures in %v; last error: %s", p.orders(t), d.Failures, elapsed.Round(time.Millisecond), d.LastError)
}

// hookScript is an exec provider: it records each call and makes the
// change with knsupdate.
const hookScript = `#!/bin/sh
set -eu
echo "$1 $2 $3" >> %[1]s
case "$1" in
present) op=add ;;
cleanup) op=delete ;;
*) exit 2 ;;
esac
%[2]s <<EOF
server 127.0.0.1 %[3]s
key hmac-sha256:%[4]s %[5]s
zone example.test.
update $op $2 1 TXT "$3"
send
EOF
`

func TestDNSExecProviderAndCrash(t *testing.T) {
	in := newInstall(t)
	k := startKnot(t)
	_, _, knsupdate := knotBinaries(t)
	p := startPebble(t, pebbleOptions{httpPort: in.httpPort, dnsServer: k.addr})
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	hook := filepath.Join(dir, "dns-hook")
	if err := os.WriteFile(hook, fmt.Appendf(nil, hookScript, calls, knsupdate, k.port, k.key, k.secret), 0o700); err != nil {
		t.Fatal(err)
	}
	// the order the crash interrupts counts as a failure: retried 1s later
	in.env = append(in.env, p.env("HAPROXY_CONFIG_ACME_PROFILE=default", "HAPROXY_CONFIG_ACME_BACKOFF_MIN=1s")...)
	in.env = append(in.env, "HAPROXY_CONFIG_ACME_DNS_PROVIDER=exec", "HAPROXY_CONFIG_ACME_DNS_EXEC="+hook,
		"HAPROXY_CONFIG_ACME_DNS_POLLING_INTERVAL=100ms", "HAPROXY_CONFIG_ACME_DNS_PROPAGATION_TIMEOUT=30s", "HAPROXY_CONFIG_ACME_DNS_TTL=1s")
	readCalls := func() []string {
		data, _ := os.ReadFile(calls)
		return strings.Split(strings.TrimSpace(string(data)), "\n")
	}

	// first run: the propagation check asks a server that does not answer,
	// and the daemon dies during the order, its record in the zone
	dm := in.startDaemon(t, "HAPROXY_CONFIG_ACME_DNS_RESOLVERS=127.0.0.1:"+strconv.Itoa(testkit.FreePort(t)))
	logOnFailure(t, dm, k)
	in.applyDomains(t, "hook", "hook", "*.hook.example.test")
	// the hook logs its call before its update reaches the zone: wait for both
	eventually(t, 20*time.Second, "the hook's first present, in the zone", func() error {
		if c, z := readCalls(), k.txt(t, "_acme-challenge.hook.example.test"); c[0] == "" || len(z) == 0 {
			return fmt.Errorf("calls %v, zone %v", c, z)
		}
		return nil
	})
	dm.kill9()
	first := readCalls()
	left := k.txt(t, "_acme-challenge.hook.example.test")
	if len(first) != 1 || !strings.HasPrefix(first[0], "present _acme-challenge.hook.example.test. ") || len(left) != 1 ||
		!strings.HasSuffix(first[0], " "+left[0]) || len(in.journal(t)) != 1 {
		t.Fatalf("before the crash: calls %v, zone %v, journal %v", first, left, in.journal(t))
	}

	// the next start removes the record first, then orders again
	logOnFailure(t, in.startDaemon(t, "HAPROXY_CONFIG_ACME_DNS_RESOLVERS="+k.addr), k)
	leaf := in.waitServed(t, "x.hook.example.test", p.roots(t), "", 60*time.Second)
	if err := leaf.VerifyHostname("x.hook.example.test"); err != nil {
		t.Error(err)
	}
	got := readCalls()
	value := func(call string) string { return call[strings.LastIndexByte(call, ' ')+1:] }
	if len(got) != 4 || got[1] != "cleanup _acme-challenge.hook.example.test. "+left[0] ||
		!strings.HasPrefix(got[2], "present _acme-challenge.hook.example.test. ") || value(got[2]) == left[0] ||
		got[3] != "cleanup _acme-challenge.hook.example.test. "+value(got[2]) {
		t.Errorf("hook calls:\n%s\nwant: present V1, (crash), cleanup V1, present V2, cleanup V2", strings.Join(got, "\n"))
	}
	if vals := k.txt(t, "_acme-challenge.hook.example.test"); len(vals) != 0 {
		t.Errorf("TXT records left: %v", vals)
	}
	if recs := in.journal(t); len(recs) != 0 {
		t.Errorf("journal still lists %v", recs)
	}
	if r := in.certRows(t)["*.hook.example.test"]; r.Challenge != "dns-01" || r.State != "valid" {
		t.Errorf("certs --json: %+v", r)
	}
}

func TestDNSWildcardRenewalARI(t *testing.T) {
	const life = 15 * time.Second
	in := newInstall(t)
	k := startKnot(t)
	p := startPebble(t, pebbleOptions{httpPort: in.httpPort, dnsServer: k.addr, profiles: map[string]int{"tiny": int(life / time.Second)}})
	in.env = append(in.env, p.env("HAPROXY_CONFIG_ACME_PROFILE=tiny", "HAPROXY_CONFIG_ACME_ARI=true")...)
	in.env = append(in.env, k.env(t, k.secret)...)
	logOnFailure(t, in.startDaemon(t), k)
	in.applyDomains(t, "w", "w", "*.w.example.test")
	roots := p.roots(t)
	first := in.waitServed(t, "a.w.example.test", roots, "", 60*time.Second)
	var scheduled *certs.Domain
	eventually(t, 10*time.Second, "the renewal scheduled by ARI", func() error {
		if scheduled = in.certState(t).Domains["*.w.example.test"]; scheduled == nil || scheduled.RenewBy != "ari" {
			return fmt.Errorf("state %+v", scheduled)
		}
		return nil
	})
	if at := scheduled.RenewAt; at.Before(first.NotBefore) || at.After(first.NotAfter) {
		t.Errorf("ARI renewal scheduled at %v, outside the certificate's lifetime %v - %v", at, first.NotBefore, first.NotAfter)
	}
	reloads := in.status(t).Counts.Reloads
	// the renewal's own time, and Pebble's: once, in CI, it took over 15 s
	// to issue after the finalize, against 1 s for the first certificate
	second := in.waitServed(t, "a.w.example.test", roots, first.SerialNumber.Text(16), 2*life+45*time.Second)
	if !slices.Contains(second.DNSNames, "*.w.example.test") {
		t.Errorf("renewed certificate names %v", second.DNSNames)
	}
	if p.replacements(t) < 1 {
		t.Error("Pebble recorded no order replacing the old certificate (ARI replaces)")
	}
	if got := in.status(t).Counts.Reloads; got != reloads {
		t.Errorf("reloads %d -> %d for the renewal, want none", reloads, got)
	}
	if vals := k.txt(t, "_acme-challenge.w.example.test"); len(vals) != 0 {
		t.Errorf("TXT records left: %v", vals)
	}
	t.Logf("wildcard renewed %v after issuance (lifetime %v), ARI had scheduled it %v after issuance",
		second.NotBefore.Sub(first.NotBefore), life, scheduled.RenewAt.Sub(first.NotBefore).Round(time.Second))
}
