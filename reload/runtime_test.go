package reload

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"haproxy-config/internal/testkit"
)

// runtimeHAProxy is an HAProxy started for a test with a stats socket at
// level admin, a host map named relative to its config (as the generated
// config names it) and a TLS frontend with a crt-list.
type runtimeHAProxy struct {
	rt        *Runtime
	dir       string
	httpPort  int
	httpsPort int
	crtList   string
	fallback  string
}

func startRuntimeHAProxy(t *testing.T, mapText string) *runtimeHAProxy {
	t.Helper()
	dir := t.TempDir()
	h := &runtimeHAProxy{rt: &Runtime{Path: filepath.Join(dir, "admin.sock")}, dir: dir,
		httpPort: testkit.FreePort(t), httpsPort: testkit.FreePort(t),
		crtList: filepath.Join(dir, "certs.list"), fallback: filepath.Join(dir, "fallback.pem")}
	if err := os.WriteFile(filepath.Join(dir, "hosts.map"), []byte(mapText), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.fallback, selfSigned(t, "fallback.invalid"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.crtList, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	text := fmt.Sprintf(`global
    master-worker
    default-path config
    stats socket %s mode 600 level admin

defaults
    mode http
    timeout connect 5s
    timeout client 5s
    timeout server 5s

frontend fe
    bind 127.0.0.1:%d
    bind 127.0.0.1:%d ssl crt %s crt-list %s
    http-request set-var(txn.b) req.hdr(host),field(1,:),lower,map(hosts.map)
    http-request return status 200 content-type text/plain lf-string "%%[var(txn.b)]"
`, h.rt.Path, h.httpPort, h.httpsPort, h.fallback, h.crtList)
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	startManaged(t, newManaged(t, dir, cfg))
	return h
}

// route asks HAProxy which map value the host gets.
func (h *runtimeHAProxy) route(t *testing.T, host string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/", h.httpPort), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("GET for %s: %v", host, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read answer for %s: %v", host, err)
	}
	return string(body)
}

// servedCN is the common name of the certificate HAProxy serves for sni.
func (h *runtimeHAProxy) servedCN(t *testing.T, sni string) string {
	t.Helper()
	return h.servedCert(t, sni).Subject.CommonName
}

// servedCert is the certificate HAProxy serves for sni.
func (h *runtimeHAProxy) servedCert(t *testing.T, sni string) *x509.Certificate {
	t.Helper()
	d := &net.Dialer{Timeout: 2 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", fmt.Sprintf("127.0.0.1:%d", h.httpsPort),
		&tls.Config{ServerName: sni, InsecureSkipVerify: true}) // self-signed: the test reads the name, trusts nothing
	if err != nil {
		t.Fatalf("TLS handshake for %s: %v", sni, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// selfSigned returns the PEM of a certificate for name and its key.
func selfSigned(t *testing.T, name string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		DNSNames: []string{name}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})...)
}

func TestRuntimeFindMapAndShow(t *testing.T) {
	h := startRuntimeHAProxy(t, "# comment\na.example one\nb.example two\n")
	ctx := testContext(t, 10*time.Second)
	ref, err := h.rt.FindMap(ctx, filepath.Join(h.dir, "hosts.map"), "hosts.map")
	if err != nil {
		t.Fatalf("FindMap: %v", err)
	}
	if ref != "#0" {
		t.Errorf("FindMap = %q, want #0 (the only map)", ref)
	}
	if _, err := h.rt.FindMap(ctx, "other.map"); !errors.Is(err, ErrMapNotLoaded) {
		t.Errorf("FindMap(other.map) err = %v, want ErrMapNotLoaded", err)
	}
	got, dups, err := h.rt.ShowMap(ctx, ref)
	if err != nil {
		t.Fatalf("ShowMap: %v", err)
	}
	want := map[string]string{"a.example": "one", "b.example": "two"}
	if !maps.Equal(got, want) || len(dups) != 0 {
		t.Errorf("ShowMap = %v, duplicates %v; want %v and none", got, dups, want)
	}
	// add map next to an existing key makes a duplicate: it is reported
	if _, err := h.rt.expect(ctx, "add map "+ref+" a.example three", nil, ""); err != nil {
		t.Fatal(err)
	}
	got, dups, err = h.rt.ShowMap(ctx, ref)
	if err != nil {
		t.Fatalf("ShowMap: %v", err)
	}
	if got["a.example"] != "one" || !slices.Equal(dups, []string{"a.example"}) {
		t.Errorf("after a duplicate add: %v, duplicates %v; want a.example=one, duplicate a.example", got, dups)
	}
	if r := h.route(t, "A.example:80"); r != "one" {
		t.Errorf("a.example routes to %q, want one (the first entry wins)", r)
	}
}

func TestRuntimeReplaceMap(t *testing.T) {
	h := startRuntimeHAProxy(t, "a.example one\nstale.example two\n")
	ctx := testContext(t, 30*time.Second)
	ref, err := h.rt.FindMap(ctx, "hosts.map")
	if err != nil {
		t.Fatal(err)
	}
	// far more than one payload holds: several chunks, one version
	want := map[string]string{}
	for i := range 3000 {
		want[fmt.Sprintf("host-%04d.example", i)] = fmt.Sprintf("backend_%d", i%7)
	}
	want["a.example"] = "moved"
	if err := h.rt.ReplaceMap(ctx, ref, want); err != nil {
		t.Fatalf("ReplaceMap: %v", err)
	}
	got, dups, err := h.rt.ShowMap(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want) || len(dups) != 0 {
		t.Errorf("after ReplaceMap: %d entries (%d duplicates), want %d equal to the input", len(got), len(dups), len(want))
	}
	for host, backend := range map[string]string{"a.example": "moved", "host-2999.example": "backend_3", "stale.example": ""} {
		if r := h.route(t, host); r != backend {
			t.Errorf("%s routes to %q, want %q", host, r, backend)
		}
	}
	if err := h.rt.ReplaceMap(ctx, ref, map[string]string{}); err != nil {
		t.Fatalf("ReplaceMap to empty: %v", err)
	}
	if got, _, err := h.rt.ShowMap(ctx, ref); err != nil || len(got) != 0 {
		t.Errorf("after emptying: %d entries, %v", len(got), err)
	}
}

func TestRuntimeReplaceMapRefusedLeavesMap(t *testing.T) {
	h := startRuntimeHAProxy(t, "a.example one\n")
	ctx := testContext(t, 10*time.Second)
	ref, err := h.rt.FindMap(ctx, "hosts.map")
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []map[string]string{
		{"b.example": "two", "c.example": "two words"},
		{"b.example": "two", "": "x"},
	} {
		if err := h.rt.ReplaceMap(ctx, ref, bad); err == nil {
			t.Errorf("ReplaceMap(%q) succeeded, want an error", bad)
		}
	}
	if err := h.rt.ReplaceMap(ctx, "#7", map[string]string{"b.example": "two"}); err == nil {
		t.Error("ReplaceMap of an unknown map succeeded")
	} else if !errors.As(err, new(*RefusedError)) {
		t.Errorf("ReplaceMap of an unknown map: %v, want a RefusedError", err)
	}
	got, dups, err := h.rt.ShowMap(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, map[string]string{"a.example": "one"}) || len(dups) != 0 {
		t.Errorf("after refused replacements the map is %v (duplicates %v), want it unchanged", got, dups)
	}
	if _, err := h.rt.Command(ctx, "x", make([]byte, maxPayload+1)); err == nil {
		t.Error("a payload over the limit was sent")
	}
}

func TestRuntimeMissingSocket(t *testing.T) {
	rt := &Runtime{Path: filepath.Join(t.TempDir(), "none.sock"), Timeout: time.Second}
	if _, err := rt.Maps(context.Background()); err == nil {
		t.Fatal("Maps on a missing socket succeeded")
	}
}

func TestRuntimeCertificates(t *testing.T) {
	h := startRuntimeHAProxy(t, "")
	ctx := testContext(t, 30*time.Second)
	if cn := h.servedCN(t, "shop.example"); cn != "fallback.invalid" {
		t.Fatalf("before any change shop.example gets %q, want the fallback", cn)
	}
	cert := filepath.Join(h.dir, "shop.example.pem")
	if err := h.rt.SetCert(ctx, cert, selfSigned(t, "shop.example")); err != nil {
		t.Fatalf("SetCert (new): %v", err)
	}
	if err := h.rt.AddCrtList(ctx, h.crtList, cert, []string{"shop.example", "*.shop.example"}); err != nil {
		t.Fatalf("AddCrtList: %v", err)
	}
	if cn := h.servedCN(t, "shop.example"); cn != "shop.example" {
		t.Errorf("after adding shop.example gets %q", cn)
	}
	if cn := h.servedCN(t, "www.shop.example"); cn != "shop.example" {
		t.Errorf("after adding www.shop.example gets %q", cn)
	}
	list, err := h.rt.ShowCrtList(ctx, h.crtList)
	if err != nil {
		t.Fatalf("ShowCrtList: %v", err)
	}
	if len(list) != 1 || list[0].Cert != cert || !slices.Equal(list[0].SNIs, []string{"shop.example", "*.shop.example"}) {
		t.Errorf("ShowCrtList = %+v, want one line for %s with both names", list, cert)
	}

	// renewal: same path, new certificate (told apart by its CN)
	if err := h.rt.SetCert(ctx, cert, selfSigned(t, "shop.example.renewed")); err != nil {
		t.Fatalf("SetCert (replace): %v", err)
	}
	if cn := h.servedCN(t, "shop.example"); cn != "shop.example.renewed" {
		t.Errorf("after renewal shop.example gets %q", cn)
	}
	renewed := h.servedCert(t, "shop.example")
	if serial, err := h.rt.CertSerial(ctx, cert); err != nil || !strings.EqualFold(strings.TrimLeft(serial, "0"), renewed.SerialNumber.Text(16)) {
		t.Errorf("CertSerial = %q, %v; want the served certificate's %s", serial, err, renewed.SerialNumber.Text(16))
	}

	// a bad PEM changes nothing, for a known and for a new path
	if err := h.rt.SetCert(ctx, cert, []byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")); err == nil {
		t.Error("SetCert accepted a bad PEM")
	}
	if cn := h.servedCN(t, "shop.example"); cn != "shop.example.renewed" {
		t.Errorf("after a refused PEM shop.example gets %q, want the previous certificate", cn)
	}
	other := filepath.Join(h.dir, "other.example.pem")
	if err := h.rt.SetCert(ctx, other, []byte("garbage")); err == nil {
		t.Error("SetCert accepted garbage for a new path")
	}
	if known, err := h.rt.CertKnown(ctx, other); err != nil || known {
		t.Errorf("after a refused new certificate CertKnown = %v, %v; want false", known, err)
	}
	if known, err := h.rt.CertKnown(ctx, cert); err != nil || !known {
		t.Errorf("CertKnown(%s) = %v, %v; want true", cert, known, err)
	}
	// a new transaction works after the aborted one
	if err := h.rt.SetCert(ctx, cert, selfSigned(t, "shop.example.third")); err != nil {
		t.Fatalf("SetCert after an aborted one: %v", err)
	}
	if cn := h.servedCN(t, "shop.example"); cn != "shop.example.third" {
		t.Errorf("after the third certificate shop.example gets %q", cn)
	}
	if err := h.rt.AddCrtList(ctx, h.crtList, cert, []string{"bad name"}); err == nil {
		t.Error("AddCrtList accepted an SNI filter with a space")
	}

	// removal: the crt-list line, then the certificate
	if err := h.rt.DelCert(ctx, cert); err == nil {
		t.Error("DelCert of a certificate still in a crt-list succeeded")
	} else {
		t.Logf("DelCert in use: %v", err)
	}
	if err := h.rt.DelCrtList(ctx, h.crtList, cert); err != nil {
		t.Fatalf("DelCrtList: %v", err)
	}
	if err := h.rt.DelCert(ctx, cert); err != nil {
		t.Fatalf("DelCert: %v", err)
	}
	if cn := h.servedCN(t, "shop.example"); cn != "fallback.invalid" {
		t.Errorf("after removal shop.example gets %q, want the fallback", cn)
	}
	if list, err := h.rt.ShowCrtList(ctx, h.crtList); err != nil || len(list) != 0 {
		t.Errorf("after removal ShowCrtList = %+v, %v; want empty", list, err)
	}
}

func TestRuntimeShowCrtListUnknown(t *testing.T) {
	h := startRuntimeHAProxy(t, "")
	if _, err := h.rt.ShowCrtList(testContext(t, 10*time.Second), filepath.Join(h.dir, "none.list")); !errors.As(err, new(*RefusedError)) {
		t.Errorf("ShowCrtList of an unknown list: %v, want a RefusedError", err)
	}
}

// TestDiffMap: only the keys that change are in the delta, each once,
// split by whether the map has them.
func TestDiffMap(t *testing.T) {
	old := map[string]string{"same.example": "a", "moved.example": "a", "gone.example": "b", "*.wild.example": "w"}
	want := map[string]string{"same.example": "a", "moved.example": "b", "new.example": "c", "*.wild.example": "w", "*.new.example": "w"}
	d := DiffMap(old, want)
	if !maps.Equal(d.Set, map[string]string{"moved.example": "b"}) {
		t.Errorf("set %v, want moved.example=b", d.Set)
	}
	if !maps.Equal(d.Add, map[string]string{"new.example": "c", "*.new.example": "w"}) {
		t.Errorf("add %v, want new.example and *.new.example", d.Add)
	}
	if !slices.Equal(d.Del, []string{"gone.example"}) {
		t.Errorf("del %v, want gone.example", d.Del)
	}
	if d.Len() != 4 {
		t.Errorf("len %d, want 4", d.Len())
	}
	if d := DiffMap(want, want); d.Len() != 0 {
		t.Errorf("no change gives %+v", d)
	}
	if d := DiffMap(nil, map[string]string{"a.example": "x"}); d.Len() != 1 || d.Add["a.example"] != "x" {
		t.Errorf("from nothing: %+v", d)
	}
}

// TestBatch: commands are joined with ";" into lines under maxPayload,
// none lost or split.
func TestBatch(t *testing.T) {
	var cmds []string
	for i := range 2000 {
		cmds = append(cmds, fmt.Sprintf("add map #0 host-%04d.example backend_%d", i, i%7))
	}
	lines := batch(cmds)
	if len(lines) < 2 {
		t.Fatalf("%d lines for %d commands, want several", len(lines), len(cmds))
	}
	var back []string
	for _, l := range lines {
		if len(l) > maxPayload {
			t.Errorf("a line of %d bytes, over %d", len(l), maxPayload)
		}
		back = append(back, strings.Split(l, ";")...)
	}
	if !slices.Equal(back, cmds) {
		t.Errorf("the lines hold %d commands, want the %d given in order", len(back), len(cmds))
	}
	if got := batch(nil); len(got) != 0 {
		t.Errorf("no commands give %q", got)
	}
}

// TestRuntimeUpdateMap changes a map in place by far more commands than
// one line holds, and reads them back; keys it does not name keep their
// value, and a delta that does not fit the map (setting a key it does not
// have) is an error.
func TestRuntimeUpdateMap(t *testing.T) {
	h := startRuntimeHAProxy(t, "a.example one\nb.example two\nkeep.example three\n")
	ctx := testContext(t, 30*time.Second)
	ref, err := h.rt.FindMap(ctx, "hosts.map")
	if err != nil {
		t.Fatal(err)
	}
	old, _, err := h.rt.ShowMap(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	want := maps.Clone(old)
	delete(want, "b.example")
	want["a.example"] = "moved"
	for i := range 1500 {
		want[fmt.Sprintf("host-%04d.example", i)] = fmt.Sprintf("backend_%d", i%7)
	}
	want["*.wild.example"] = "wild"
	if err := h.rt.UpdateMap(ctx, ref, DiffMap(old, want)); err != nil {
		t.Fatalf("UpdateMap: %v", err)
	}
	got, dups, err := h.rt.ShowMap(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want) || len(dups) != 0 {
		t.Errorf("after UpdateMap: %d entries (%d duplicates), want %d equal to the input", len(got), len(dups), len(want))
	}
	for host, backend := range map[string]string{"a.example": "moved", "b.example": "", "keep.example": "three", "host-1499.example": "backend_1"} {
		if r := h.route(t, host); r != backend {
			t.Errorf("%s routes to %q, want %q", host, r, backend)
		}
	}
	// the caller's idea of the map is wrong: the key is not there
	stale := MapDelta{Set: map[string]string{"b.example": "two"}, Add: map[string]string{}}
	if err := h.rt.UpdateMap(ctx, ref, stale); !errors.As(err, new(*RefusedError)) {
		t.Errorf("setting a key the map does not have: %v, want a RefusedError", err)
	}
	// adding a key it has leaves the old value first: the read-back sees it
	dup := MapDelta{Set: map[string]string{}, Add: map[string]string{"a.example": "again"}}
	if err := h.rt.UpdateMap(ctx, ref, dup); err == nil || !strings.Contains(err.Error(), `a.example is "moved", want "again"`) {
		t.Errorf("adding a key the map has: %v, want the read-back to catch it", err)
	}
	bad := MapDelta{Set: map[string]string{}, Add: map[string]string{"c.example": "x;show info"}}
	if err := h.rt.UpdateMap(ctx, ref, bad); err == nil {
		t.Error("a value with a ; was sent")
	}
}
