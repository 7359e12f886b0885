package certs_test

import (
	"path/filepath"
	"testing"

	"haproxy-config/certs"
	"haproxy-config/certs/storagetest"
)

func TestFileStorageConforms(t *testing.T) {
	storagetest.Suite{New: func(t *testing.T) certs.Storage {
		dir := t.TempDir()
		return certs.NewFileStorage(filepath.Join(dir, "state"), filepath.Join(dir, "certs"))
	}}.Run(t)
}
