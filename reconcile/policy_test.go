package reconcile

import (
	"context"
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"haproxy-config/assemble"
	"haproxy-config/internal/testkit"
	"haproxy-config/reload"
)

// TestCheckRunsUnprivileged: haproxy -c runs as CHECK_USER, so a file only
// root may read is not read, while the same check as root reads it.
func TestCheckRunsUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPING: needs root to change to the check user")
	}
	if _, err := user.Lookup("haproxy"); err != nil {
		t.Skip("SKIPPING: no haproxy user: install haproxy (tests/install-deps.sh)")
	}
	dir := testkit.OpenTempDir(t)
	secret := filepath.Join(dir, "secret.http")
	if err := os.WriteFile(secret, []byte("HTTP/1.0 503 Service Unavailable\r\n\r\nroot only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "base.cfg")
	tmpl := string(assemble.DefaultBase) + "\nbackend parking\n    errorfile 503 " + secret + "\n"
	if err := os.WriteFile(base, []byte(tmpl), 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, map[string]string{"HAPROXY_CONFIG_BASE": base})
	_, err := e.Check(context.Background())
	var env *reload.EnvError
	if !errors.As(err, &env) || !strings.Contains(err.Error(), "error opening file '"+secret+"'") {
		t.Fatalf("check with a root-only file in the base: %v, want haproxy -c unable to open it", err)
	}
	asRoot := newEngine(t, map[string]string{"HAPROXY_CONFIG_BASE": base, "HAPROXY_CONFIG_CHECK_USER": "root"})
	if _, err := asRoot.Check(context.Background()); err != nil {
		t.Fatalf("the same check as root: %v", err)
	}
}
