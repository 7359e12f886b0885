package etcdstorage

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeKeyFile writes a fresh seal key with mode perm.
func writeKeyFile(t *testing.T, perm os.FileMode) string {
	t.Helper()
	name := filepath.Join(t.TempDir(), "fleet.key")
	key := make([]byte, KeySize)
	_, _ = rand.Read(key)
	if err := os.WriteFile(name, key, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(name, perm); err != nil { // whatever the umask
		t.Fatal(err)
	}
	return name
}

func TestKeyFile(t *testing.T) {
	for _, perm := range []os.FileMode{0o600, 0o400} {
		if _, err := readKeyFile(writeKeyFile(t, perm)); err != nil {
			t.Errorf("mode %04o: %v", perm, err)
		}
	}
	for _, perm := range []os.FileMode{0o640, 0o604, 0o660, 0o644} {
		name := writeKeyFile(t, perm)
		if _, err := readKeyFile(name); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("mode %04o accepted, or the error does not name the file: %v", perm, err)
		}
	}
	dir := t.TempDir()
	for _, size := range []int{0, KeySize - 1, KeySize + 1, 64} {
		name := filepath.Join(dir, "key")
		if err := os.WriteFile(name, bytes.Repeat([]byte("k"), size), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := readKeyFile(name); err == nil {
			t.Errorf("a key file of %d bytes accepted", size)
		}
	}
	if _, err := readKeyFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing key file accepted")
	}
	if _, err := readKeyFile(dir); err == nil {
		t.Error("a directory accepted as key file")
	}
}

func TestSealOpensOnlyAtItsKeyWithItsSealKey(t *testing.T) {
	mine, err := newSealer(bytes.Repeat([]byte{1}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := newSealer(bytes.Repeat([]byte{2}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	plain := []byte("-----BEGIN EC PRIVATE KEY-----")
	sealed := mine.seal("/f/values/a", plain)
	if bytes.Contains(sealed, plain) || len(sealed) != len(plain)+41 {
		t.Fatalf("sealed value: %q", sealed)
	}
	if again := mine.seal("/f/values/a", plain); bytes.Equal(again, sealed) {
		t.Error("two seals of one value are equal: the nonce repeats")
	}
	if got, err := mine.open("/f/values/a", sealed); err != nil || !bytes.Equal(got, plain) {
		t.Errorf("open = %q, %v", got, err)
	}
	if _, err := mine.open("/f/values/b", sealed); !errors.Is(err, errUnsealed) {
		t.Errorf("a value moved to another key opens: %v", err)
	}
	if _, err := theirs.open("/f/values/a", sealed); !errors.Is(err, errUnsealed) {
		t.Errorf("a value opens with another seal key: %v", err)
	}
	tampered := bytes.Clone(sealed)
	tampered[len(tampered)-1] ^= 1
	if _, err := mine.open("/f/values/a", tampered); !errors.Is(err, errUnsealed) {
		t.Errorf("a tampered value opens: %v", err)
	}
	if _, err := mine.open("/f/values/a", sealed[:10]); !errors.Is(err, errUnsealed) {
		t.Errorf("a truncated value opens: %v", err)
	}
	if mine.tokenName("tok") == theirs.tokenName("tok") || strings.Contains(mine.tokenName("tok"), "tok") {
		t.Error("a token's name is the same under two seal keys, or shows the token")
	}
}
