package certs

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeZone is a DNS provider holding TXT records in memory.
type fakeZone struct {
	records    map[string]bool // domain + " " + keyAuth
	failAdd    error
	failRemove error
	calls      []string
}

func (z *fakeZone) Present(domain, _, keyAuth string) error {
	z.calls = append(z.calls, "present "+domain)
	if z.failAdd != nil {
		return z.failAdd
	}
	z.records[domain+" "+keyAuth] = true
	return nil
}

func (z *fakeZone) CleanUp(domain, _, keyAuth string) error {
	z.calls = append(z.calls, "cleanup "+domain)
	if z.failRemove != nil {
		return z.failRemove
	}
	delete(z.records, domain+" "+keyAuth)
	return nil
}

func newTestDNS(t *testing.T, dir string, z *fakeZone) *DNS {
	t.Helper()
	return newDNS(DNSConfig{Provider: "fake", TTL: time.Second}, z, NewFileStorage(dir, ""), slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func journalLen(t *testing.T, d *DNS) int {
	t.Helper()
	recs, err := d.read()
	if err != nil {
		t.Fatal(err)
	}
	return len(recs)
}

func TestDNSJournalOutlivesACrash(t *testing.T) {
	dir := t.TempDir()
	z := &fakeZone{records: map[string]bool{}}
	d := newTestDNS(t, dir, z)
	if err := d.Present("a.example.test", "tok1", "tok1.key"); err != nil {
		t.Fatal(err)
	}
	if err := d.Present("a.example.test", "tok2", "tok2.key"); err != nil {
		t.Fatal(err)
	}
	if n := journalLen(t, d); n != 2 {
		t.Fatalf("journal holds %d records, want the 2 added", n)
	}
	if err := d.CleanUp("a.example.test", "tok1", "tok1.key"); err != nil {
		t.Fatal(err)
	}
	if n := journalLen(t, d); n != 1 {
		t.Fatalf("journal holds %d records after one removal, want 1", n)
	}
	fi, err := os.Stat(filepath.Join(dir, DNSRecordsFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("journal: %v, mode %v; want 0600", err, fi.Mode())
	}
	// the daemon dies with tok2's record in the zone; the next one removes it
	again := newTestDNS(t, dir, z)
	if n, err := again.RemoveLeftovers(); n != 1 || err != nil {
		t.Fatalf("RemoveLeftovers = %d, %v; want 1 removed", n, err)
	}
	if len(z.records) != 0 || journalLen(t, again) != 0 {
		t.Errorf("after the restart: zone %v, journal %d", z.records, journalLen(t, again))
	}
}

func TestDNSFailedRemovalIsRetriedAtStart(t *testing.T) {
	dir := t.TempDir()
	z := &fakeZone{records: map[string]bool{}}
	d := newTestDNS(t, dir, z)
	if err := d.Present("b.example.test", "tok", "tok.key"); err != nil {
		t.Fatal(err)
	}
	z.failRemove = errors.New("SERVFAIL")
	if err := d.CleanUp("b.example.test", "tok", "tok.key"); err == nil || !strings.Contains(err.Error(), "remove TXT _acme-challenge.b.example.test.") {
		t.Errorf("CleanUp error %v, want one naming the record", err)
	}
	if n, err := newTestDNS(t, dir, z).RemoveLeftovers(); n != 0 || err == nil {
		t.Errorf("RemoveLeftovers with the server failing = %d, %v; want 0 and the error", n, err)
	}
	z.failRemove = nil
	if n, err := newTestDNS(t, dir, z).RemoveLeftovers(); n != 1 || err != nil || len(z.records) != 0 {
		t.Errorf("RemoveLeftovers = %d, %v, zone %v; want the record removed", n, err, z.records)
	}
}

// timeout is the error of an exchange that got no answer in time.
type timeout struct{}

func (timeout) Error() string   { return "i/o timeout" }
func (timeout) Timeout() bool   { return true }
func (timeout) Temporary() bool { return true }

// TestDNSTimedOutAddIsTakenBack: an add that got no answer may have been
// applied; it is removed at once, and stays in the journal while that fails.
func TestDNSTimedOutAddIsTakenBack(t *testing.T) {
	z := &fakeZone{records: map[string]bool{}, failAdd: fmt.Errorf("rfc2136: failed to insert: %w", timeout{})}
	d := newTestDNS(t, t.TempDir(), z)
	z.failRemove = errors.New("server unreachable")
	if err := d.Present("c.example.test", "tok", "tok.key"); err == nil {
		t.Fatal("a timed-out add succeeded")
	}
	if n := journalLen(t, d); n != 1 {
		t.Fatalf("journal holds %d records after a timed-out add whose removal failed, want 1 (for the next start)", n)
	}
	z.failRemove = nil
	if err := d.Present("c.example.test", "tok2", "tok2.key"); err == nil {
		t.Fatal("a timed-out add succeeded")
	}
	if got := z.calls[len(z.calls)-1]; got != "cleanup c.example.test" {
		t.Errorf("last call %q, want the timed-out add taken back", got)
	}
	if n := journalLen(t, d); n != 1 {
		t.Errorf("journal holds %d records, want only the one whose removal failed", n)
	}
}

func TestDNSRefusedAddLeavesNoJournalEntry(t *testing.T) {
	z := &fakeZone{records: map[string]bool{}, failAdd: errors.New("server replied NOTAUTH")}
	d := newTestDNS(t, t.TempDir(), z)
	err := d.Present("c.example.test", "tok", "tok.key")
	if err == nil || !strings.Contains(err.Error(), "fake: add TXT _acme-challenge.c.example.test.: server replied NOTAUTH") {
		t.Errorf("Present error %v", err)
	}
	if n := journalLen(t, d); n != 0 {
		t.Errorf("journal holds %d records for a refused add", n)
	}
	z.failRemove = errors.New("server replied NOTAUTH")
	if err := d.CleanUp("c.example.test", "tok", "tok.key"); err != nil || z.calls[len(z.calls)-1] != "cleanup c.example.test" {
		t.Errorf("CleanUp of a refused record: %v, calls %v; want it asked, and no failure", err, z.calls)
	}
}

func TestReadTSIGSecret(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, perm os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), perm); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, perm); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bare := write("bare", "c2VjcmV0\n", 0o600)
	cfg := DNSConfig{TSIGKey: "hc-key"}
	if err := ReadTSIGSecret(bare, &cfg); err != nil || cfg.TSIGSecret != "c2VjcmV0" {
		t.Errorf("bare secret: %v, %+v", err, cfg)
	}
	for _, text := range []string{
		"key \"hc-key\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0\";\n};\n",
		`key "hc-key" { algorithm hmac-sha256; secret "c2VjcmV0"; };`,
	} {
		cfg = DNSConfig{TSIGAlgorithm: "hmac-sha256"}
		if err := ReadTSIGSecret(write("keygen", text, 0o400), &cfg); err != nil ||
			cfg.TSIGSecret != "c2VjcmV0" || cfg.TSIGKey != "hc-key" || cfg.TSIGAlgorithm != "hmac-sha256" {
			t.Errorf("tsig-keygen file %q: %v, %+v", text, err, cfg)
		}
	}
	for _, tc := range []struct {
		path, msg string
		cfg       DNSConfig
	}{
		{bare, "the key's name must be set", DNSConfig{}},
		{write("open", "c2VjcmV0\n", 0o644), "open to its group or others (mode 0644)", DNSConfig{TSIGKey: "k"}},
		{write("empty", "\n", 0o600), "holds no base64 TSIG secret", DNSConfig{TSIGKey: "k"}},
		{write("notbase64", "not*base64!!\n", 0o600), "holds no base64 TSIG secret", DNSConfig{TSIGKey: "k"}},
		// without a secret lego would send the updates unsigned
		{write("nosecret", `key "k" { algorithm hmac-sha256; };`, 0o600), "holds no base64 TSIG secret", DNSConfig{}},
		{write("noalg", `key "k" { secret "c2VjcmV0"; };`, 0o600), "names no algorithm", DNSConfig{}},
		{write("otherkey", `key "k" { algorithm hmac-sha256; secret "c2VjcmV0"; };`, 0o600), `ACME_DNS_TSIG_KEY names "other"`, DNSConfig{TSIGKey: "other"}},
		{write("otheralg", `key "k" { algorithm hmac-sha512; secret "c2VjcmV0"; };`, 0o600), "ACME_DNS_TSIG_ALGORITHM is hmac-sha256", DNSConfig{TSIGAlgorithm: "hmac-sha256"}},
		{write("unknown", `key "k" { algorithm hmac-sha256; secret "c2VjcmV0"; owner "c2VjcmV0"; };`, 0o600), "neither algorithm nor secret", DNSConfig{}},
		{write("unended", `key "k" { algorithm hmac-sha256; secret "c2VjcmV0";`, 0o600), "does not end", DNSConfig{}},
		{filepath.Join(dir, "missing"), "no such file", DNSConfig{TSIGKey: "k"}},
		{dir, "not a regular file", DNSConfig{TSIGKey: "k"}},
	} {
		err := ReadTSIGSecret(tc.path, &tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want an error containing %q", tc.path, err, tc.msg)
		}
		if err != nil && strings.Contains(err.Error(), "c2VjcmV0") {
			t.Errorf("%s: the error repeats the secret: %v", tc.path, err)
		}
	}
	if !slices.Equal(DNSProviders(), []string{"exec", "rfc2136"}) {
		t.Errorf("providers %v", DNSProviders())
	}
}
