package tests

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"haproxy-config/internal/testkit"
)

// knot is a running Knot DNS (Debian's knotd), authoritative for
// example.test on a loopback port, taking dynamic updates signed with one
// TSIG key. The test stops it.
type knot struct {
	dir    string
	addr   string // 127.0.0.1:PORT
	port   string
	key    string // TSIG key name
	secret string // its base64 secret
	log    string
}

// knotZone is the test zone: every name the DNS-01 tests use points at
// the loopback address.
const knotZone = `$ORIGIN example.test.
$TTL 1
@      SOA ns hostmaster 1 60 60 3600 1
@      NS  ns
ns     A   127.0.0.1
*      A   127.0.0.1
shop   A   127.0.0.1
*.shop A   127.0.0.1
`

// knotBinaries finds knotd, kdig and knsupdate, or skips the test.
func knotBinaries(t testing.TB) (knotd, kdig, knsupdate string) {
	t.Helper()
	var found []string
	for _, name := range []string{"knotd", "kdig", "knsupdate"} {
		p, err := exec.LookPath(name)
		if err != nil {
			if p, err = exec.LookPath("/usr/sbin/" + name); err != nil {
				t.Skipf("SKIPPING: %s not installed (Debian packages knot and knot-dnsutils): run tests/install-deps.sh (%v)", name, err)
			}
		}
		found = append(found, p)
	}
	return found[0], found[1], found[2]
}

// startKnot starts knotd on a free loopback port and waits until it
// answers for the zone.
func startKnot(t testing.TB) *knot {
	t.Helper()
	knotd, _, _ := knotBinaries(t)
	k := &knot{dir: t.TempDir(), port: strconv.Itoa(testkit.FreePort(t)), key: "hc-test-key."}
	k.addr = "127.0.0.1:" + k.port
	k.log = filepath.Join(k.dir, "knot.log")
	k.secret = randomSecret(t)
	writeFile(t, filepath.Join(k.dir, "example.test.zone"), knotZone)
	if err := os.Mkdir(filepath.Join(k.dir, "db"), 0o700); err != nil { // the journal: updates fail without it
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`server:
    rundir: "%[1]s"
    listen: 127.0.0.1@%[2]s
log:
  - target: stderr
    any: info
database:
    storage: "%[1]s/db"
key:
  - id: %[3]s
    algorithm: hmac-sha256
    secret: %[4]s
acl:
  - id: update
    key: %[3]s
    action: update
zone:
  - domain: example.test
    storage: "%[1]s"
    file: example.test.zone
    zonefile-sync: -1
    acl: update
`, k.dir, k.port, k.key, k.secret)
	confFile := writeFile(t, filepath.Join(k.dir, "knot.conf"), conf)
	testkit.StartProc(t, k.log, nil, knotd, "-c", confFile)
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := k.query(t, "SOA", "example.test")
		if err == nil && strings.Contains(out, "hostmaster") {
			return k
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(k.log)
			t.Fatalf("knotd not answering after 20s: %v %s\n%s", err, out, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// randomSecret is a fresh base64 HMAC-SHA256 key.
func randomSecret(t testing.TB) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

// query asks the server for name's records of type typ, short form.
func (k *knot) query(t testing.TB, typ, name string) (string, error) {
	t.Helper()
	_, kdig, _ := knotBinaries(t)
	out, err := exec.Command(kdig, "@127.0.0.1", "-p", k.port, "+short", "+time=2", "+retry=0", typ, name).CombinedOutput()
	return string(out), err
}

// txt returns the TXT values the server holds for name.
func (k *knot) txt(t testing.TB, name string) []string {
	t.Helper()
	out, err := k.query(t, "TXT", name)
	if err != nil {
		t.Fatalf("kdig TXT %s: %v\n%s", name, err, out)
	}
	var vals []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line = strings.Trim(strings.TrimSpace(line), `"`); line != "" {
			vals = append(vals, line)
		}
	}
	return vals
}

// secretFile writes secret to a root-only file for ACME_DNS_TSIG_SECRET_FILE.
func secretFile(t testing.TB, secret string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tsig.secret")
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// env is what the daemon needs to update this server over RFC 2136, with
// secret as the TSIG secret, and to check propagation against it.
func (k *knot) env(t testing.TB, secret string, extra ...string) []string {
	t.Helper()
	return append([]string{
		"HAPROXY_CONFIG_ACME_DNS_PROVIDER=rfc2136",
		"HAPROXY_CONFIG_ACME_DNS_NAMESERVER=" + k.addr,
		"HAPROXY_CONFIG_ACME_DNS_TSIG_KEY=" + k.key,
		"HAPROXY_CONFIG_ACME_DNS_TSIG_SECRET_FILE=" + secretFile(t, secret),
		"HAPROXY_CONFIG_ACME_DNS_RESOLVERS=" + k.addr,
		"HAPROXY_CONFIG_ACME_DNS_POLLING_INTERVAL=100ms",
		"HAPROXY_CONFIG_ACME_DNS_PROPAGATION_TIMEOUT=10s",
		"HAPROXY_CONFIG_ACME_DNS_TTL=1s",
	}, extra...)
}

// updates counts the dynamic updates the server applied, from its log.
func (k *knot) updates(t testing.TB, name string) int {
	t.Helper()
	data, err := os.ReadFile(k.log)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, "DDNS") && strings.Contains(line, "finished") && strings.Contains(line, name) {
			n++
		}
	}
	return n
}
