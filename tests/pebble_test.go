package tests

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"debug/buildinfo"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"haproxy-config/internal/testkit"
)

// pebbleVersion is the Pebble the certificate tests need: ARI and
// certificate profiles came after Debian's 2.4.0.
const pebbleVersion = "v2.10.1"

// pebble is a running Pebble (Let's Encrypt's test CA) with its DNS server
// (pebble-challtestsrv, answering 127.0.0.1 for every name), both on
// loopback ports, stopped by the test.
type pebble struct {
	dir       string
	directory string // the ACME directory URL
	mgmt      string // the management interface's base URL
	dnsMgmt   string // pebble-challtestsrv's management URL
	caFile    string // Pebble's own TLS certificate, for LEGO_CA_CERTIFICATES
	log       string
	client    *http.Client
}

// pebbleOptions shape one Pebble.
type pebbleOptions struct {
	httpPort    string // where Pebble's validation authority sends HTTP-01 requests
	alwaysValid bool   // PEBBLE_VA_ALWAYS_VALID: no validation at all
	// extra certificate profiles: name -> validity in seconds
	profiles map[string]int
	// the DNS server Pebble validates against (HOST:PORT); empty: its own
	// pebble-challtestsrv, answering 127.0.0.1 for every name
	dnsServer string
}

// pebbleBinaries finds Pebble and pebble-challtestsrv of pebbleVersion.
func pebbleBinaries(t testing.TB) (string, string) {
	t.Helper()
	var found []string
	for _, name := range []string{"pebble", "pebble-challtestsrv"} {
		path := "/usr/local/bin/" + name
		info, err := buildinfo.ReadFile(path)
		if err != nil || info.Main.Version != pebbleVersion {
			t.Skipf("SKIPPING: %s %s not installed at %s (%v): run tests/install-deps.sh", name, pebbleVersion, path, err)
		}
		found = append(found, path)
	}
	return found[0], found[1]
}

// startPebble starts the DNS server and Pebble and waits until Pebble
// answers its directory.
func startPebble(t testing.TB, opt pebbleOptions) *pebble {
	t.Helper()
	pebbleBin, challBin := pebbleBinaries(t)
	p := &pebble{dir: t.TempDir()}
	p.log = filepath.Join(p.dir, "pebble.log")
	certFile, keyFile := filepath.Join(p.dir, "cert.pem"), filepath.Join(p.dir, "key.pem")
	writeSelfSigned(t, certFile, keyFile)
	p.caFile = certFile

	acmePort, mgmtPort := strconv.Itoa(testkit.FreePort(t)), strconv.Itoa(testkit.FreePort(t))
	dnsServer := opt.dnsServer
	if dnsServer == "" {
		dnsPort, dnsMgmtPort := strconv.Itoa(testkit.FreePort(t)), strconv.Itoa(testkit.FreePort(t))
		dnsServer = "127.0.0.1:" + dnsPort
		p.dnsMgmt = "http://127.0.0.1:" + dnsMgmtPort
		testkit.StartProc(t, filepath.Join(p.dir, "dns.log"), nil, challBin,
			"-dnsserver", dnsServer, "-management", "127.0.0.1:"+dnsMgmtPort,
			"-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "",
			"-defaultIPv4", "127.0.0.1", "-defaultIPv6", "")
	}

	profiles := map[string]any{"default": map[string]any{"description": "90 days", "validityPeriod": 90 * 24 * 3600}}
	for name, secs := range opt.profiles {
		profiles[name] = map[string]any{"description": name, "validityPeriod": secs}
	}
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  "127.0.0.1:" + acmePort,
		"managementListenAddress":        "127.0.0.1:" + mgmtPort,
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       mustAtoi(t, opt.httpPort),
		"tlsPort":                        testkit.FreePort(t),
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"retryAfter":                     map[string]int{"authz": 1, "order": 1},
		"profiles":                       profiles,
	}}
	data, _ := json.Marshal(cfg)
	cfgFile := writeFile(t, filepath.Join(p.dir, "pebble.json"), string(data))
	env := []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0"}
	if opt.alwaysValid {
		env = append(env, "PEBBLE_VA_ALWAYS_VALID=1")
	}
	testkit.StartProc(t, p.log, env, pebbleBin, "-config", cfgFile, "-dnsserver", dnsServer)

	pool := x509.NewCertPool()
	pemBytes, _ := os.ReadFile(certFile)
	pool.AppendCertsFromPEM(pemBytes)
	p.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: pool}}}
	p.directory = "https://127.0.0.1:" + acmePort + "/dir"
	p.mgmt = "https://127.0.0.1:" + mgmtPort
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := p.client.Get(p.directory)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return p
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(p.log)
			t.Fatalf("pebble not ready after 20s: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// env is what the daemon needs to use this Pebble.
func (p *pebble) env(extra ...string) []string {
	return append([]string{
		"HAPROXY_CONFIG_ACME=true",
		"HAPROXY_CONFIG_ACME_DIRECTORY=" + p.directory,
		"HAPROXY_CONFIG_ACME_EMAIL=ops@example.com",
		"HAPROXY_CONFIG_ACME_CHECK_DNS=false",
		"LEGO_CA_CERTIFICATES=" + p.caFile,
	}, extra...)
}

// servfail makes the DNS server answer SERVFAIL for host: Pebble's
// validation of it fails without any connection.
func (p *pebble) servfail(t testing.TB, host string) {
	t.Helper()
	body := fmt.Sprintf(`{"host":%q}`, host+".")
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Post(p.dnsMgmt+"/set-servfail", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("set-servfail: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("set-servfail: %s", resp.Status)
	}
}

// rootPEM returns Pebble's issuing root (new at every Pebble start).
func (p *pebble) rootPEM(t testing.TB) []byte {
	t.Helper()
	resp, err := p.client.Get(p.mgmt + "/roots/0")
	if err != nil {
		t.Fatalf("pebble root: %v", err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return data
}

// roots returns a pool holding only Pebble's issuing root.
func (p *pebble) roots(t testing.TB) *x509.CertPool {
	t.Helper()
	data := p.rootPEM(t)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		t.Fatalf("pebble root is not PEM: %q", data)
	}
	return pool
}

// orders counts the orders Pebble accepted, from its log.
func (p *pebble) orders(t testing.TB) int {
	t.Helper()
	data, err := os.ReadFile(p.log)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(data), "Added order")
}

// accounts counts the ACME accounts Pebble registered, from its log.
func (p *pebble) accounts(t testing.TB) int {
	t.Helper()
	data, err := os.ReadFile(p.log)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(data), "accounts in memory")
}

// replacements counts orders Pebble recorded as ARI replacements.
func (p *pebble) replacements(t testing.TB) int {
	t.Helper()
	data, _ := os.ReadFile(p.log)
	return strings.Count(string(data), "is a replacement of")
}

// writeSelfSigned writes a certificate for 127.0.0.1 and localhost.
func writeSelfSigned(t testing.TB, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "pebble test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	writeFile(t, certFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	writeFile(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})))
}

func mustAtoi(t testing.TB, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatalf("port %q: %v", s, err)
	}
	return n
}

// servedCert does a TLS handshake with HAProxy's HTTPS frontend for host
// and returns the leaf it serves, verified against roots for host.
func (in *install) servedCert(host string, roots *x509.CertPool) (*x509.Certificate, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", "127.0.0.1:"+in.httpsPort,
		&tls.Config{ServerName: host, RootCAs: roots})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}
