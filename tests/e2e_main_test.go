// Package tests holds end-to-end tests: they build the haproxy-config
// binary once and run it as a child process against a private root
// (HAPROXY_CONFIG_ROOT) per test, with the real haproxy validating.
package tests

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"haproxy-config/internal/testkit"
	"haproxy-config/statedir"
)

// binary is the haproxy-config executable TestMain builds.
var binary string

// cmdTimeout bounds every haproxy-config run. It is far above what a run
// needs; it only keeps a hung child from hanging the suite.
const cmdTimeout = 3 * time.Minute

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		fmt.Fprintln(os.Stderr, "e2e: SKIPPING every end-to-end test under -short (they need haproxy, Pebble, a chroot, ...; make test runs them)")
		return 0
	}
	dir, err := os.MkdirTemp("", "haproxy-config-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "haproxy-config")
	goBin, err := exec.LookPath("go")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: the go command is not in PATH:", err)
		return 1
	}
	build := exec.Command(goBin, "build", "-o", binary, "haproxy-config/cmd/haproxy-config")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build failed: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// install is one private haproxy-config installation.
type install struct {
	root       string
	httpPort   string
	httpsPort  string
	statusPort string
	env        []string      // HAPROXY_CONFIG_* for the child
	nofile     int           // when set, the daemon (and so its HAProxy) runs with this file limit
	netns      string        // when set, the daemon (and so its HAProxy) runs in this network namespace
	startWait  time.Duration // how long the daemon may take to be ready; 30s when unset
}

// serverPort is port, or the next one that none of the installation's
// listeners uses: the test ports are picked at random, and a fragment
// whose server is one of them is refused (it would loop back into the
// balancer), which made the tests that seed hundreds of fragments fail
// now and then.
func (in *install) serverPort(port int) int {
	for slices.Contains([]string{in.httpPort, in.httpsPort, in.statusPort}, strconv.Itoa(port)) {
		port++
	}
	return port
}

func newInstall(t testing.TB) *install {
	t.Helper()
	in := &install{root: testkit.OpenTempDir(t), httpPort: strconv.Itoa(testkit.FreePort(t)), httpsPort: strconv.Itoa(testkit.FreePort(t)), statusPort: strconv.Itoa(testkit.FreePort(t))}
	in.env = []string{
		"HAPROXY_CONFIG_ROOT=" + in.root,
		// the tests' tenant servers are on loopback ports
		"HAPROXY_CONFIG_ALLOW_NETWORKS=127.0.0.0/8",
		"HAPROXY_CONFIG_HTTP_ADDR=127.0.0.1:" + in.httpPort,
		"HAPROXY_CONFIG_HTTPS_ADDR=127.0.0.1:" + in.httpsPort,
		"HAPROXY_CONFIG_STATUS_ADDR=127.0.0.1:" + in.statusPort,
		"HAPROXY_CONFIG_CHALLENGE_ADDR=127.0.0.1:" + strconv.Itoa(testkit.FreePort(t)),
	}
	return in
}

// with returns the installation's environment plus extra variables.
func (in *install) with(extra ...string) []string {
	return append(append([]string{}, in.env...), extra...)
}

func (in *install) fragmentsDir() string {
	return filepath.Join(in.root, "etc/haproxy-config/fragments")
}

func (in *install) stateDir() string { return filepath.Join(in.root, "var/lib/haproxy-config") }

// state is the state directory's layout.
func (in *install) state() statedir.Layout { return statedir.Layout(in.stateDir()) }

func (in *install) historyFile() string { return in.state().History() }

func (in *install) liveConfig() string { return filepath.Join(in.stateDir(), "live/haproxy.cfg") }

// childEnv is the test process's environment without any HAPROXY_CONFIG_*
// a developer may have exported, plus env.
func childEnv(env []string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HAPROXY_CONFIG_") {
			out = append(out, kv)
		}
	}
	return append(out, env...)
}

// proc is a started haproxy-config child.
type proc struct {
	cmd            *exec.Cmd
	cancel         context.CancelFunc
	stdout, stderr bytes.Buffer
	args           []string
}

// start starts haproxy-config with args; stdin "" means no input.
func start(t testing.TB, env []string, stdin string, args ...string) *proc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	p := &proc{cancel: cancel, args: args}
	p.cmd = exec.CommandContext(ctx, binary, args...)
	p.cmd.Env = childEnv(env)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	p.cmd.WaitDelay = 5 * time.Second
	if stdin != "" {
		p.cmd.Stdin = strings.NewReader(stdin)
	}
	if err := p.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start haproxy-config %q: %v", args, err)
	}
	return p
}

// wait waits for the child and returns its output and exit code.
func (p *proc) wait(t testing.TB) (stdout, stderr string, code int) {
	t.Helper()
	defer p.cancel()
	err := p.cmd.Wait()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
	default:
		t.Errorf("haproxy-config %q did not exit normally: %v\nstderr:\n%s", p.args, err, p.stderr.String())
		return p.stdout.String(), p.stderr.String(), -1
	}
	return p.stdout.String(), p.stderr.String(), p.cmd.ProcessState.ExitCode()
}

// run runs haproxy-config to completion. env holds HAPROXY_CONFIG_*
// settings; stdin "" means no input.
func run(t testing.TB, env []string, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return start(t, env, stdin, args...).wait(t)
}

// mustRun runs haproxy-config and fails the test unless it exits 0.
func mustRun(t testing.TB, env []string, stdin string, args ...string) string {
	t.Helper()
	stdout, stderr, code := run(t, env, stdin, args...)
	if code != 0 {
		t.Fatalf("haproxy-config %q: exit %d, want 0\nstdout:\n%s\nstderr:\n%s", args, code, stdout, stderr)
	}
	return stdout
}

// writeFile writes a test input file and returns its path.
func writeFile(t testing.TB, path, content string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// backendConf is a fragment config part whose backend answers with body.
func backendConf(backend, body string) string {
	return fmt.Sprintf("backend %s\n    http-request return status 200 content-type text/plain string \"%s\"\n", backend, body)
}

// snapshot reads every regular file under dir, keyed by relative path.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		files[rel] = string(data)
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot %s: %v", dir, err)
	}
	return files
}
