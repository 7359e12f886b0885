package etcdstorage

import (
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/crypto/chacha20poly1305"
)

// KeySize is the size of the key file: 32 random bytes, for example
// "head -c 32 /dev/urandom > fleet.key".
const KeySize = 32

// sealVersion opens every sealed value, so that another cipher may follow.
const sealVersion = 1

// sealer encrypts the values the nodes keep in etcd with
// XChaCha20-Poly1305 under a key derived from the key file they share,
// bound to the etcd key a value is stored at (a value moved to another
// key does not open), and names the tokens by an HMAC under another
// derived key, so that the name of a token does not show the token.
type sealer struct {
	aead     cipher.AEAD
	tokenKey []byte
}

// readKeyFile reads a key file: exactly KeySize bytes, in a file that
// neither its group nor others may read or write.
func readKeyFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("etcd seal key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("etcd seal key: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("etcd seal key %s: not a regular file", name)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("etcd seal key %s: mode %04o lets the group or others at it, want 0600 or 0400", name, perm)
	}
	key, err := io.ReadAll(io.LimitReader(f, KeySize+1))
	if err != nil {
		return nil, fmt.Errorf("etcd seal key %s: %w", name, err)
	}
	if len(key) > KeySize {
		return nil, fmt.Errorf("etcd seal key %s: longer than %d bytes, want exactly %d random bytes", name, KeySize, KeySize)
	}
	if len(key) < KeySize {
		return nil, fmt.Errorf("etcd seal key %s: %d bytes, want exactly %d random bytes", name, len(key), KeySize)
	}
	return key, nil
}

func newSealer(key []byte) (*sealer, error) {
	sealKey, err := hkdf.Key(sha256.New, key, nil, "haproxy-config etcd values", chacha20poly1305.KeySize)
	if err != nil {
		return nil, fmt.Errorf("derive the seal key: %w", err)
	}
	tokenKey, err := hkdf.Key(sha256.New, key, nil, "haproxy-config etcd token names", 32)
	if err != nil {
		return nil, fmt.Errorf("derive the token name key: %w", err)
	}
	aead, err := chacha20poly1305.NewX(sealKey)
	if err != nil {
		return nil, fmt.Errorf("seal key: %w", err)
	}
	return &sealer{aead: aead, tokenKey: tokenKey}, nil
}

// seal encrypts value for the etcd key at: version, nonce, ciphertext.
func (s *sealer) seal(at string, value []byte) []byte {
	out := make([]byte, 1+s.aead.NonceSize(), 1+s.aead.NonceSize()+len(value)+s.aead.Overhead())
	out[0] = sealVersion
	nonce := out[1:]
	_, _ = rand.Read(nonce) // crypto/rand.Read never fails
	return s.aead.Seal(out, nonce, value, []byte(at))
}

// errUnsealed is a value that does not open with this key at this key.
var errUnsealed = errors.New("the value does not open with this seal key (another fleet's key, or tampered with)")

// open decrypts what seal returned for at.
func (s *sealer) open(at string, sealed []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < 1+n+s.aead.Overhead() || sealed[0] != sealVersion {
		return nil, errUnsealed
	}
	value, err := s.aead.Open(nil, sealed[1:1+n], sealed[1+n:], []byte(at))
	if err != nil {
		return nil, errUnsealed
	}
	return value, nil
}

// tokenName is the name a token is kept under.
func (s *sealer) tokenName(token string) string {
	m := hmac.New(sha256.New, s.tokenKey)
	m.Write([]byte(token))
	return hex.EncodeToString(m.Sum(nil))
}
