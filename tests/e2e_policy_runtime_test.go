package tests

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"haproxy-config/internal/testkit"
)

// attack is a hostile fragment whose harm shows in what a client gets.
type attack struct {
	name, conf, domain, leak string
}

// runtimeAttacks are fragments that would serve a root-only file, the
// daemon's environment, and the balancer's own loopback status endpoint to
// anyone asking for their domain.
func runtimeAttacks(t *testing.T, in *install) []attack {
	t.Helper()
	secret := "file-secret-" + randomHex(t)
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	return []attack{
		{"file", "backend file_web\n    http-request return status 200 content-type text/plain file " + path + "\n", "file.example.test", secret},
		{"env", "backend env_web\n    http-request return status 200 content-type text/plain lf-string \"%[env(HC_SECRET)]\"\n", "env.example.test", envSecret},
		{"status", "backend status_web\n    server s 127.0.0.1:" + in.statusPort + "\n", "status.example.test", "haproxy-config-"},
	}
}

// envSecret is in the daemon's environment (and a plain HAProxy's).
var envSecret = "env-secret-" + strconv.Itoa(os.Getpid())

func randomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// TestHostileFragmentsHaveNoEffect copies each attack into a running
// daemon's store and asks for its domain: the unknown-host page, never the
// secret. The control first loads the same attacks into a plain HAProxy
// with the same base, which serves every secret: the attacks are real and
// the requests would show them.
func TestHostileFragmentsHaveNoEffect(t *testing.T) {
	testkit.RequireHaproxy(t)
	control := newInstall(t)
	attacks := runtimeAttacks(t, control)
	plainHAProxy(t, control, attacks)
	for _, a := range attacks {
		code, body, err := control.get(a.domain, "/")
		if err != nil || !strings.Contains(body, a.leak) {
			t.Fatalf("control: %s attack on a plain HAProxy: %d %q %v, want the secret %q: the test proves nothing", a.name, code, body, err, a.leak)
		}
	}

	in := newInstall(t)
	in.env = policyEnv(in, nil)
	d := in.startDaemon(t, "HC_SECRET="+envSecret)
	attacks = runtimeAttacks(t, in)
	for _, a := range attacks {
		writeFile(t, filepath.Join(in.fragmentsDir(), a.name+".map"), a.domain+" "+a.name+"_web\n")
		writeFile(t, filepath.Join(in.fragmentsDir(), a.name+".cfg"), a.conf)
	}
	eventually(t, 20*time.Second, "the attacks quarantined", func() error {
		st := in.status(t)
		for _, a := range attacks {
			if st.Quarantine(a.name) == nil {
				return errNotYet
			}
		}
		return nil
	})
	for _, a := range attacks {
		code, body, err := in.get(a.domain, "/")
		if err != nil || code != 404 || strings.Contains(body, a.leak) {
			t.Errorf("%s attack: %d %q %v, want the unknown-host page", a.name, code, body, err)
		}
	}
	// and even past the policy there is nothing in HAProxy's environment
	environ, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(d.haproxy), "environ"))
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range strings.Split(strings.TrimSuffix(string(environ), "\x00"), "\x00") {
		// HAProxy adds HAPROXY_* variables of its own (its sockets, its
		// processes); nothing else of the daemon's environment is there
		if !strings.HasPrefix(kv, "PATH=") && !strings.HasPrefix(kv, "HAPROXY_") || strings.Contains(kv, envSecret) {
			t.Errorf("the managed HAProxy's environment holds %q, want only PATH and HAProxy's own variables", kv)
		}
	}
}

// plainHAProxy serves the installation's base with the attacks appended,
// as HAProxy without haproxy-config's policy would, until the test ends.
func plainHAProxy(t *testing.T, in *install, attacks []attack) {
	t.Helper()
	mustRun(t, in.env, "", "assemble")
	cfg, err := os.OpenFile(in.liveConfig(), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	hosts, err := os.OpenFile(filepath.Join(in.stateDir(), "live/hosts.map"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range attacks {
		if _, err := cfg.WriteString("\n" + a.conf); err != nil {
			t.Fatal(err)
		}
		if _, err := hosts.WriteString(a.domain + " " + a.name + "_web\n"); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Close()
	hosts.Close()
	ctx, cancel := context.WithCancel(context.Background())
	if err := os.MkdirAll(filepath.Join(in.root, "run/haproxy-config"), 0o750); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, testkit.RequireHaproxy(t), "-db", "-f", in.liveConfig())
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HC_SECRET=" + envSecret}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, err := in.get(attacks[0].domain, "/")
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the plain HAProxy does not serve: %v\n%s", err, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
