package certs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/google/renameio/v2"

	"haproxy-config/fragments"
)

// FileStorage is the Storage of one balancer: every value a file under
// the state directory at its key, but the certificates, which are the
// files HAProxy loads in the certificate directory; tokens in memory;
// locks in memory too, among the users of this FileStorage value (the
// daemon runs one manager per state directory, and a lock dies with its
// process). Each write is a temp file in the same directory, fsync,
// rename.
type FileStorage struct {
	*memTokens
	stateDir, certsDir string

	mu    sync.Mutex
	locks map[string]chan struct{} // name -> holds a value while locked
}

// NewFileStorage keeps values under stateDir and certificates in
// certsDir (empty: no certificates are kept).
func NewFileStorage(stateDir, certsDir string) *FileStorage {
	return &FileStorage{memTokens: newMemTokens(), stateDir: stateDir, certsDir: certsDir, locks: map[string]chan struct{}{}}
}

// Path is the file that holds key.
func (s *FileStorage) Path(key string) (string, error) {
	if !fs.ValidPath(key) || key == "." || strings.Contains(key, `\`) {
		return "", fmt.Errorf("storage key %q is not a relative slash-separated path", key)
	}
	if rest, ok := strings.CutPrefix(key, certificatesPrefix); ok && (rest == "" || rest[0] == '/') {
		if s.certsDir == "" {
			return "", fmt.Errorf("storage key %q: no certificate directory", key)
		}
		return filepath.Join(s.certsDir, filepath.FromSlash(rest)), nil
	}
	return filepath.Join(s.stateDir, filepath.FromSlash(key)), nil
}

// fileModes are the modes of key's file and of the directories Store
// creates for it: the state and the renewal requests may be read by the
// group, the DNS-01 journal is its owner's alone, and so is the rest (the
// account), in a directory only the owner may enter.
func fileModes(key string) (file, dir fs.FileMode) {
	switch {
	case key == StateFile || path.Dir(key) == RenewDir:
		return 0o640, 0o750
	case key == DNSRecordsFile:
		return 0o600, 0o750
	}
	return 0o600, 0o700
}

// Load reads key.
func (s *FileStorage) Load(_ context.Context, key string) ([]byte, error) {
	p, err := s.Path(key)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(p)
}

// Store writes key atomically, with the modes fileModes names;
// certificates are 0640 and belong to group haproxy when there is one.
func (s *FileStorage) Store(_ context.Context, key string, value []byte) error {
	p, err := s.Path(key)
	if err != nil {
		return err
	}
	if strings.HasPrefix(key, certificatesPrefix+"/") {
		if err := writeSecret(p, value); err != nil {
			return err
		}
		return fragments.Sync(filepath.Dir(p))
	}
	mode, dirMode := fileModes(key)
	if err := os.MkdirAll(filepath.Dir(p), dirMode); err != nil {
		return err
	}
	if err := renameio.WriteFile(p, value, mode, renameio.WithTempDir(filepath.Dir(p))); err != nil {
		return err
	}
	// the rename is durable once the directory is: Store promises that
	return fragments.Sync(filepath.Dir(p))
}

// Delete removes key.
func (s *FileStorage) Delete(_ context.Context, key string) error {
	p, err := s.Path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// List returns the keys of the files in the directory prefix names,
// leaving out directories and the temp files of writes in progress.
func (s *FileStorage) List(_ context.Context, prefix string) ([]string, error) {
	p, err := s.Path(prefix)
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, e := range entries {
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		keys = append(keys, path.Join(prefix, e.Name()))
	}
	return keys, nil
}

// Lock takes a lock among the users of this FileStorage value.
func (s *FileStorage) Lock(ctx context.Context, name string) (Lease, error) {
	s.mu.Lock()
	held, ok := s.locks[name]
	if !ok {
		held = make(chan struct{}, 1)
		s.locks[name] = held
	}
	s.mu.Unlock()
	select { // a free lock is taken even when ctx has ended
	case held <- struct{}{}:
		return newFileLease(s, name, held), nil
	default:
	}
	select {
	case held <- struct{}{}:
		return newFileLease(s, name, held), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("lock %s: %w", name, ctx.Err())
	}
}

// fileLease holds one value of its lock's channel until Unlock. Its lock
// is lost only by Unlock: mu makes a fenced write and Unlock exclusive,
// so that a write is done whole before the lock goes, or not at all.
type fileLease struct {
	s    *FileStorage
	name string
	held chan struct{}
	mu   sync.Mutex
	once sync.Once
	lost chan struct{}
}

func newFileLease(s *FileStorage, name string, held chan struct{}) *fileLease {
	return &fileLease{s: s, name: name, held: held, lost: make(chan struct{})}
}

func (l *fileLease) Lost() <-chan struct{} { return l.lost }

func (l *fileLease) Unlock(context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.once.Do(func() {
		<-l.held
		close(l.lost)
	})
	return nil
}

// Store stores key unless the lease was unlocked.
func (l *fileLease) Store(ctx context.Context, key string, value []byte) error {
	return l.fenced(func() error { return l.s.Store(ctx, key, value) }, "store "+key)
}

// Delete deletes key unless the lease was unlocked.
func (l *fileLease) Delete(ctx context.Context, key string) error {
	return l.fenced(func() error { return l.s.Delete(ctx, key) }, "delete "+key)
}

func (l *fileLease) fenced(write func() error, what string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.lost:
		return fmt.Errorf("%s under lock %s: %w", what, l.name, ErrLockLost)
	default:
	}
	return write()
}

// memTokens are Tokens in memory: those of this process's orders.
type memTokens struct {
	mu     sync.Mutex
	tokens map[string]Token
}

func newMemTokens() *memTokens { return &memTokens{tokens: map[string]Token{}} }

// PutToken keeps a token in memory.
func (m *memTokens) PutToken(_ context.Context, token string, t Token) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.tokens[token] = t
	return nil
}

// GetToken returns a token put and not deleted.
func (m *memTokens) GetToken(_ context.Context, token string) (Token, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.tokens[token]
	if !ok {
		return Token{}, fmt.Errorf("token %q: %w", token, fs.ErrNotExist)
	}
	return t, nil
}

// DeleteToken forgets a token.
func (m *memTokens) DeleteToken(_ context.Context, token string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.tokens, token)
	return nil
}

// location names where key is kept, for messages.
func location(s Storage, key string) string {
	if fs, ok := s.(*FileStorage); ok {
		if p, err := fs.Path(key); err == nil {
			return p
		}
	}
	return "key " + key
}
