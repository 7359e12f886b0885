package tests

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"haproxy-config/certs"
	"haproxy-config/internal/testkit"
)

// certState reads the certificate manager's persisted state.
func (in *install) certState(t testing.TB) *certs.State {
	t.Helper()
	st, err := certs.ReadState(in.stateDir())
	if err != nil {
		t.Fatalf("certificate state: %v", err)
	}
	return st
}

// applyDomains stores a fragment routing hosts to a backend answering body.
func (in *install) applyDomains(t testing.TB, name, body string, hosts ...string) {
	t.Helper()
	dir := t.TempDir()
	conf := writeFile(t, filepath.Join(dir, name+".cfg"), backendConf("b_"+name, body))
	var m strings.Builder
	for _, h := range hosts {
		fmt.Fprintf(&m, "%s b_%s\n", h, name)
	}
	mapFile := writeFile(t, filepath.Join(dir, name+".map"), m.String())
	mustRun(t, in.env, "", "apply", "--wait", name, conf, mapFile)
}

// waitServed waits until HAProxy serves host a certificate that verifies
// against roots, other than the one with serial skip, and returns it.
func (in *install) waitServed(t testing.TB, host string, roots *x509.CertPool, skip string, timeout time.Duration) *x509.Certificate {
	t.Helper()
	var leaf *x509.Certificate
	eventually(t, timeout, "a verified certificate served for "+host, func() error {
		c, err := in.servedCert(host, roots)
		if err != nil {
			return err
		}
		if c.SerialNumber.Text(16) == skip {
			return fmt.Errorf("still the certificate %s", skip)
		}
		leaf = c
		return nil
	})
	return leaf
}

func TestCertsIssuedThroughHAProxy(t *testing.T) {
	in := newInstall(t)
	p := startPebble(t, pebbleOptions{httpPort: in.httpPort})
	metricsAddr := testkit.FreeAddr(t)
	in.env = append(in.env, p.env("HAPROXY_CONFIG_ACME_PROFILE=default", "HAPROXY_CONFIG_METRICS_ADDR="+metricsAddr)...)
	in.startDaemon(t)
	in.applyDomains(t, "shop", "shop", "a.example.com", "b.example.com")
	liveReloads := in.status(t).Counts.Reloads
	roots := p.roots(t)
	for _, host := range []string{"a.example.com", "b.example.com"} {
		leaf := in.waitServed(t, host, roots, "", 60*time.Second)
		if err := leaf.VerifyHostname(host); err != nil {
			t.Errorf("served certificate for %s: %v", host, err)
		}
	}

	// curl, trusting only Pebble's root, reaches both sites
	rootFile := filepath.Join(t.TempDir(), "root.pem")
	writeFile(t, rootFile, string(p.rootPEM(t)))
	for _, host := range []string{"a.example.com", "b.example.com"} {
		out, err := exec.Command("curl", "-sS", "--max-time", "5", "--noproxy", "*", "--cacert", rootFile,
			"--resolve", host+":"+in.httpsPort+":127.0.0.1", "https://"+host+":"+in.httpsPort+"/").CombinedOutput()
		if err != nil || string(out) != "shop" {
			t.Errorf("curl https://%s/ with Pebble's root: %v: %s", host, err, out)
		}
	}

	st := in.status(t)
	if st.Counts.Reloads != liveReloads {
		t.Errorf("reloads went from %d to %d during the certificate step: want the runtime API, no reload", liveReloads, st.Counts.Reloads)
	}
	if got := p.orders(t); got != 2 {
		t.Errorf("Pebble saw %d orders, want 2", got)
	}
	if st.Certs == nil || st.Certs.Conditions["valid"] != 2 {
		t.Errorf("status certificates: %+v, want 2 valid", st.Certs)
	}
	out := mustRun(t, in.env, "", "certs", "--json")
	var rows []struct {
		Name   string `json:"name"`
		Issuer string `json:"issuer"`
		State  string `json:"state"`
		File   string `json:"file"`
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("certs --json: %v\n%s", err, out)
	}
	if len(rows) != 2 || rows[0].Name != "a.example.com" || rows[0].State != "valid" || !strings.Contains(rows[0].Issuer, "Pebble") {
		t.Errorf("certs --json: %+v", rows)
	}
	for _, r := range rows {
		fi, err := os.Stat(filepath.Join(in.root, "var/lib/haproxy-config/certs", r.File))
		if err != nil || fi.Mode().Perm() != 0o640 {
			t.Errorf("%s: %v, want mode 0640", r.File, err)
		}
	}
	metrics := scrape(t, metricsAddr)
	for _, want := range []string{`haproxy_config_certificates{state="valid"} 2`, `haproxy_config_acme_orders_in_window 2`,
		`haproxy_config_certificate_expiry_timestamp_seconds{domain="`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	text := mustRun(t, in.env, "", "certs")
	if !strings.Contains(text, "a.example.com") || !strings.Contains(text, "valid") {
		t.Errorf("certs:\n%s", text)
	}
}

func TestCertsRenewal(t *testing.T) {
	for _, ari := range []bool{true, false} {
		name := map[bool]string{true: "ari", false: "lifetime"}[ari]
		t.Run(name, func(t *testing.T) {
			const life = 15 * time.Second
			in := newInstall(t)
			p := startPebble(t, pebbleOptions{httpPort: in.httpPort, profiles: map[string]int{"tiny": int(life / time.Second)}})
			in.env = append(in.env, p.env("HAPROXY_CONFIG_ACME_PROFILE=tiny", "HAPROXY_CONFIG_ACME_ARI="+strconv.FormatBool(ari))...)
			dm := in.startDaemon(t)
			in.applyDomains(t, "r", "renewed", "r.example.com")
			roots := p.roots(t)
			first := in.waitServed(t, "r.example.com", roots, "", 60*time.Second)
			var scheduled *certs.Domain // the first certificate's renewal
			eventually(t, 10*time.Second, "the first certificate's renewal scheduled", func() error {
				scheduled = in.certState(t).Domains["r.example.com"]
				if scheduled == nil || scheduled.Serial != first.SerialNumber.Text(16) || scheduled.RenewAt.IsZero() {
					return fmt.Errorf("state %+v", scheduled)
				}
				if ari && scheduled.RenewBy != "ari" {
					return fmt.Errorf("renewal scheduled by %q", scheduled.RenewBy)
				}
				return nil
			})
			reloads := in.status(t).Counts.Reloads
			second := in.waitServed(t, "r.example.com", roots, first.SerialNumber.Text(16), 2*life)
			gap := second.NotBefore.Sub(first.NotBefore)
			var d *certs.Domain
			eventually(t, 10*time.Second, "the new certificate's renewal scheduled", func() error {
				d = in.certState(t).Domains["r.example.com"]
				if d == nil || d.Serial == first.SerialNumber.Text(16) {
					return fmt.Errorf("state %+v", d)
				}
				if ari && d.RenewBy != "ari" {
					return fmt.Errorf("renewal scheduled by %q, want ari", d.RenewBy)
				}
				return nil
			})
			if ari {
				if p.replacements(t) < 1 {
					t.Error("Pebble recorded no order replacing the old certificate (ARI replaces)")
				}
				if at := scheduled.RenewAt; at.Before(first.NotBefore) || at.After(first.NotAfter) {
					t.Errorf("ARI renewal scheduled at %v, outside the certificate's lifetime %v - %v", at, first.NotBefore, first.NotAfter)
				}
			} else {
				if d.RenewBy != "lifetime" {
					t.Errorf("renewal scheduled by %q, want lifetime", d.RenewBy)
				}
				// a third of the lifetime left, minus at most a twentieth of jitter
				valid := first.NotAfter.Sub(first.NotBefore)
				at := scheduled.RenewAt.Sub(first.NotBefore)
				if low, high := valid*2/3-valid/20, valid*2/3; at < low-time.Second || at > high+time.Second {
					t.Errorf("renewal scheduled %v after issuance, want between %v and %v", at, low, high)
				}
			}
			if got := in.status(t).Counts.Reloads; got != reloads {
				t.Errorf("reloads %d -> %d for the renewal, want none", reloads, got)
			}
			t.Logf("renewed %v after issuance (lifetime %v), by %s", gap, life, d.RenewBy)
			if t.Failed() {
				t.Log(dm.output())
			}
		})
	}
}

func TestCertsFailureBacksOff(t *testing.T) {
	in := newInstall(t)
	p := startPebble(t, pebbleOptions{httpPort: in.httpPort})
	p.servfail(t, "bad.example.com")
	in.env = append(in.env, p.env("HAPROXY_CONFIG_ACME_PROFILE=default",
		"HAPROXY_CONFIG_ACME_BACKOFF_MIN=2s", "HAPROXY_CONFIG_ACME_BACKOFF_MAX=1m")...)
	d := in.startDaemon(t)
	start := time.Now()
	in.applyDomains(t, "mixed", "mixed", "good.example.com", "bad.example.com")
	in.waitServed(t, "good.example.com", p.roots(t), "", 60*time.Second)
	eventually(t, 60*time.Second, "three failed orders for bad.example.com", func() error {
		if b := in.certState(t).Domains["bad.example.com"]; b == nil || b.Failures < 3 {
			return fmt.Errorf("state %+v", b)
		}
		return nil
	})
	bad := in.certState(t).Domains["bad.example.com"]
	if !strings.Contains(bad.LastError, "bad.example.com") {
		t.Errorf("last error %q does not name the domain", bad.LastError)
	}
	// backoff after the n-th failure: 2s doubled n-1 times, plus at most a tenth
	want := 2 * time.Second << (bad.Failures - 1)
	if gap := bad.NextAttempt.Sub(bad.LastErrorAt); gap < want-time.Second || gap > want+want/10+time.Second {
		t.Errorf("after %d failures the next attempt is %v later, want about %v", bad.Failures, gap, want)
	}
	status := mustRun(t, in.env, "", "status")
	if !strings.Contains(status, "failing: bad.example.com") {
		t.Errorf("status does not report the failing domain:\n%s", status)
	}

	// a restart keeps the failures and the schedule: no order at start
	d.stop(t)
	before := p.orders(t)
	kept := in.certState(t).Domains["bad.example.com"]
	restart := time.Now()
	in.startDaemon(t)
	if kept.Failures != bad.Failures && kept.Failures != bad.Failures+1 {
		t.Errorf("failures %d -> %d across the stop", bad.Failures, kept.Failures)
	}
	if quiet := time.Until(kept.NextAttempt); quiet > 3*time.Second {
		time.Sleep(2 * time.Second)
		if got := p.orders(t); got != before {
			t.Errorf("Pebble saw %d new orders within 2s of the restart; the next attempt was due in %v", got-before, quiet)
		}
	}
	if after := in.certState(t).Domains["bad.example.com"]; after.Failures < kept.Failures {
		t.Errorf("failures reset by the restart: %d -> %d", kept.Failures, after.Failures)
	}
	// no retry storm: over the whole test, attempts at 0, 2, 6, 14, 30 s...
	elapsed := time.Since(start)
	maxBad := 2
	for gap := 2 * time.Second; gap*2-2*time.Second < elapsed; gap *= 2 {
		maxBad++
	}
	if bad := p.orders(t) - 1; bad > maxBad {
		t.Errorf("Pebble saw %d orders for bad.example.com in %v, at most %d expected with the backoff", bad, elapsed, maxBad)
	}
	t.Logf("bad.example.com: %d orders in %v (restart at +%v)", p.orders(t)-1, elapsed.Round(time.Millisecond), restart.Sub(start).Round(time.Millisecond))
}

func TestCertsOrderBudget(t *testing.T) {
	const window = 4 * time.Second
	in := newInstall(t)
	p := startPebble(t, pebbleOptions{httpPort: in.httpPort, alwaysValid: true})
	in.env = append(in.env, p.env("HAPROXY_CONFIG_ACME_PROFILE=default", "HAPROXY_CONFIG_ACME_ORDERS=2",
		"HAPROXY_CONFIG_ACME_ORDER_WINDOW="+window.String())...)
	in.startDaemon(t)
	var hosts []string
	for i := range 5 {
		hosts = append(hosts, fmt.Sprintf("n%d.example.com", i))
	}
	in.applyDomains(t, "many", "many", hosts...)
	var first time.Time
	seen := map[int]time.Time{} // order count -> when first seen
	deadline := time.Now().Add(40 * time.Second)
	for {
		n := p.orders(t)
		if n > 0 && first.IsZero() {
			first = time.Now()
		}
		if _, ok := seen[n]; !ok && n > 0 {
			seen[n] = time.Now()
		}
		if n >= 5 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(seen) == 0 || p.orders(t) != 5 {
		t.Fatalf("Pebble saw %d orders, want 5", p.orders(t))
	}
	// two per window: the third and fourth wait a window, the fifth two
	for n, at := range seen {
		if min := time.Duration((n-1)/2) * window; at.Sub(first) < min-500*time.Millisecond {
			t.Errorf("Pebble had seen %d orders %v after the first, want at least %v", n, at.Sub(first), min)
		}
	}
	if total := in.certState(t).OrdersTotal; total != 5 {
		t.Errorf("the state counts %d orders, want 5", total)
	}
	eventually(t, 20*time.Second, "five valid certificates", func() error {
		st := in.certState(t)
		for _, h := range hosts {
			d := st.Domains[h]
			if d == nil || d.File == "" {
				return fmt.Errorf("%s has no certificate", h)
			}
			if d.LastError != "" {
				return fmt.Errorf("%s failed: %s", h, d.LastError)
			}
		}
		return nil
	})
	t.Logf("orders seen at: %v after the first", func() []time.Duration {
		var out []time.Duration
		for n := 1; n <= 5; n++ {
			if at, ok := seen[n]; ok {
				out = append(out, at.Sub(first).Round(10*time.Millisecond))
			}
		}
		return out
	}())
}

func TestCertsRemovedAfterGrace(t *testing.T) {
	const life = 15 * time.Second
	in := newInstall(t)
	p := startPebble(t, pebbleOptions{httpPort: in.httpPort, profiles: map[string]int{"tiny": int(life / time.Second)}})
	in.env = append(in.env, p.env("HAPROXY_CONFIG_ACME_PROFILE=tiny", "HAPROXY_CONFIG_ACME_ARI=false",
		"HAPROXY_CONFIG_ACME_REMOVE_GRACE=3s")...)
	in.startDaemon(t)
	in.applyDomains(t, "gone", "gone", "gone.example.com")
	roots := p.roots(t)
	leaf := in.waitServed(t, "gone.example.com", roots, "", 60*time.Second)
	pemFile := filepath.Join(in.root, "var/lib/haproxy-config/certs/gone.example.com.pem")
	mustRun(t, in.env, "", "remove", "--wait", "gone")
	if c := in.certState(t).Domains["gone.example.com"]; c == nil || c.Condition(time.Now()) != "removing" {
		t.Errorf("right after the removal: %+v, want the certificate kept during the grace", c)
	}
	eventually(t, 15*time.Second, "the certificate removed after the grace", func() error {
		if _, err := os.Stat(pemFile); err == nil {
			return fmt.Errorf("%s still exists", pemFile)
		}
		list, _ := os.ReadFile(filepath.Join(in.root, "var/lib/haproxy-config/certs/crt-list"))
		if strings.Contains(string(list), "gone.example.com") {
			return fmt.Errorf("crt-list still lists it:\n%s", list)
		}
		if _, err := in.servedCert("gone.example.com", roots); err == nil {
			return fmt.Errorf("HAProxy still serves a Pebble certificate for it")
		}
		return nil
	})
	// it would have been renewed two thirds into its lifetime: it is not
	time.Sleep(time.Until(leaf.NotAfter))
	if got := p.orders(t); got != 1 {
		t.Errorf("Pebble saw %d orders, want 1: a removed domain is not renewed", got)
	}
	if st := in.certState(t); len(st.Domains) != 0 {
		t.Errorf("state still holds %v", st.Domains)
	}
}

func TestCertsMissingFileAtRestart(t *testing.T) {
	in := newInstall(t)
	p := startPebble(t, pebbleOptions{httpPort: in.httpPort, alwaysValid: true})
	in.env = append(in.env, p.env("HAPROXY_CONFIG_ACME_PROFILE=default")...)
	d := in.startDaemon(t)
	in.applyDomains(t, "lost", "lost", "lost.example.com", "kept.example.com")
	roots := p.roots(t)
	in.waitServed(t, "lost.example.com", roots, "", 60*time.Second)
	kept := in.waitServed(t, "kept.example.com", roots, "", 60*time.Second)
	d.stop(t)
	// someone deletes a certificate while the daemon is down: HAProxy
	// must not be handed a crt-list naming it
	if err := os.Remove(filepath.Join(in.root, "var/lib/haproxy-config/certs/lost.example.com.pem")); err != nil {
		t.Fatal(err)
	}
	in.startDaemon(t)
	in.waitServed(t, "lost.example.com", roots, "", 60*time.Second)
	if again := in.waitServed(t, "kept.example.com", roots, "", 10*time.Second); again.SerialNumber.Cmp(kept.SerialNumber) != 0 {
		t.Error("the certificate whose file was kept was ordered again")
	}
	if got := p.orders(t); got != 3 {
		t.Errorf("Pebble saw %d orders, want 3 (the lost one ordered again)", got)
	}
}

// TestCertsRenewedByAnotherAccount: a certificate another ACME account
// ordered (a node's own before its fleet shared one, say) is renewed: the
// CA refuses the order naming it in "replaces" (Pebble, like Let's
// Encrypt: 403, "requester account did not request the certificate being
// replaced"), and the daemon orders again without, instead of failing
// every renewal.
func TestCertsRenewedByAnotherAccount(t *testing.T) {
	in := newInstall(t)
	p := startPebble(t, pebbleOptions{httpPort: in.httpPort})
	in.env = append(in.env, p.env("HAPROXY_CONFIG_ACME_PROFILE=default", "HAPROXY_CONFIG_ACME_ARI=true")...)
	dm := in.startDaemon(t)
	in.applyDomains(t, "r", "renewed", "r.example.com")
	roots := p.roots(t)
	first := in.waitServed(t, "r.example.com", roots, "", 60*time.Second)
	dm.stop(t)

	account, err := filepath.Glob(filepath.Join(in.stateDir(), "acme/*/account.*"))
	if err != nil || len(account) != 2 {
		t.Fatalf("the ACME account's files: %v %v, want its key and its registration", account, err)
	}
	for _, f := range account {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	dm = in.startDaemon(t)
	stdout, stderr, code := run(t, in.env, "", "certs", "renew", "--wait", "--timeout", "60s", "r.example.com")
	if code != 0 {
		t.Fatalf("certs renew --wait with another account: exit %d\nstdout:\n%s\nstderr:\n%s\ndaemon:\n%s", code, stdout, stderr, dm.output())
	}
	in.waitServed(t, "r.example.com", roots, first.SerialNumber.Text(16), 10*time.Second)
	if got := p.accounts(t); got != 2 {
		t.Errorf("Pebble registered %d accounts, want 2 (the first one's files were deleted)", got)
	}
	if !strings.Contains(dm.output(), "the CA refused the order naming the certificate it replaces") {
		t.Errorf("the renewal did not go through the CA's refusal of replaces (not sent?):\n%s", dm.output())
	}
	if got := p.orders(t); got != 2 {
		t.Errorf("Pebble saw %d orders, want 2: the first and the renewal (the refused one is no order)", got)
	}
}
