package certs

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestEnsureFiles(t *testing.T) {
	dir := t.TempDir()
	fallback := filepath.Join(dir, "certs", "fallback.pem")
	list := filepath.Join(dir, "certs", "crt-list")
	if err := EnsureFiles(fallback, list); err != nil {
		t.Fatal(err)
	}
	pemBytes, err := os.ReadFile(fallback)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(pemBytes, pemBytes)
	if err != nil {
		t.Fatalf("fallback is not a certificate with its key: %v", err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if now := time.Now(); now.Before(cert.NotBefore) || now.AddDate(5, 0, 0).After(cert.NotAfter) {
		t.Errorf("validity %s to %s does not cover the next five years", cert.NotBefore, cert.NotAfter)
	}
	for path, mode := range map[string]os.FileMode{fallback: 0o640, list: 0o640, filepath.Dir(fallback): 0o750} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode %o, want %o", path, fi.Mode().Perm(), mode)
		}
	}
	if data, _ := os.ReadFile(list); len(data) != 0 {
		t.Errorf("new crt-list is not empty: %q", data)
	}

	// existing files are kept: a second run must not replace the key
	if err := os.WriteFile(list, []byte("/x.pem a.example.com\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := EnsureFiles(fallback, list); err != nil {
		t.Fatal(err)
	}
	again, _ := os.ReadFile(fallback)
	listAgain, _ := os.ReadFile(list)
	if !bytes.Equal(again, pemBytes) || string(listAgain) != "/x.pem a.example.com\n" {
		t.Error("EnsureFiles replaced existing files")
	}
}
