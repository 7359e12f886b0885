// Package certs owns the TLS files HAProxy loads: certificates obtained
// and renewed through ACME (lego) for every mapped domain, the crt-list
// that lists them, and a self-signed fallback certificate so that HAProxy
// starts with none.
package certs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// EnsureFiles creates the fallback certificate and an empty crt-list when
// they do not exist yet, and leaves existing ones alone but for their
// group: like every certificate file, they belong to group haproxy when
// there is one, which the unprivileged haproxy -c reads them as.
func EnsureFiles(fallbackPath, crtListPath string) error {
	if err := os.MkdirAll(filepath.Dir(fallbackPath), 0o750); err != nil {
		return fmt.Errorf("create certificate directory: %w", err)
	}
	if _, err := os.Stat(fallbackPath); errors.Is(err, fs.ErrNotExist) {
		pemBytes, err := selfSigned(time.Now())
		if err != nil {
			return fmt.Errorf("generate fallback certificate: %w", err)
		}
		if err := writeSecret(fallbackPath, pemBytes); err != nil {
			return fmt.Errorf("write fallback certificate: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("fallback certificate: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(crtListPath), 0o750); err != nil {
		return fmt.Errorf("create crt-list directory: %w", err)
	}
	if _, err := os.Stat(crtListPath); errors.Is(err, fs.ErrNotExist) {
		if err := writeSecret(crtListPath, nil); err != nil {
			return fmt.Errorf("write crt-list: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("crt-list: %w", err)
	}
	for _, path := range []string{fallbackPath, crtListPath} {
		if err := giveToHaproxy(path); err != nil {
			return err
		}
	}
	return nil
}

// selfSigned returns a PEM bundle (certificate, then key) that HAProxy
// serves to clients asking for a host it has no certificate for.
func selfSigned(now time.Time) ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "haproxy-config fallback certificate"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: der}); err != nil {
		return nil, err
	}
	if err := pem.Encode(&buf, &pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// giveToHaproxy sets path's group to haproxy's when there is such a group
// and it is not set yet.
func giveToHaproxy(path string) error {
	gid := haproxyGID()
	if gid < 0 {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("certificate file: %w", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Gid) == gid {
		return nil
	}
	if err := os.Chown(path, -1, gid); err != nil {
		return fmt.Errorf("give %s to group haproxy: %w", path, err)
	}
	return nil
}
