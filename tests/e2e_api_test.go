package tests

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"haproxy-config/internal/testkit"
)

// apiSocket is where the daemon of an installation listens.
func (in *install) apiSocket() string { return in.state().APISocket() }

// apiBatches are the sizes of the batches the daemon's API writer ran.
func apiBatches(d *daemon) []int {
	var sizes []int
	for _, m := range regexp.MustCompile(`msg="API batch" requests=(\d+)`).FindAllStringSubmatch(d.output(), -1) {
		n, _ := strconv.Atoi(m[1])
		sizes = append(sizes, n)
	}
	return sizes
}

// slowCheck makes the installation's haproxy a wrapper that, while the
// returned switch is on, holds every haproxy -c for hold before running
// it: long enough for requests to queue behind a validation, or for the
// daemon to be killed in the middle of one. The wrapper sleeps with a
// shell builtin (no child of its own), and the test ends every wrapper
// still running, by PID.
func (in *install) slowCheck(t *testing.T, hold time.Duration) (on func(bool)) {
	t.Helper()
	real := testkit.RequireHaproxy(t)
	flag, fifo := filepath.Join(in.root, "slow"), filepath.Join(in.root, "slow.fifo")
	if err := syscall.Mkfifo(fifo, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(fifo, 0o666); err != nil { // past the umask: haproxy -c runs as the check user
		t.Fatal(err)
	}
	wrapper := writeFile(t, filepath.Join(in.root, "haproxy-slow"), fmt.Sprintf(
		"#!/bin/bash\nif [ \"$1\" = -c ] && [ -e %s ]; then read -t %g <> %s; fi\nexec %s \"$@\"\n",
		flag, hold.Seconds(), fifo, real))
	if err := os.Chmod(wrapper, 0o755); err != nil {
		t.Fatal(err)
	}
	in.env = append(in.env, "HAPROXY_CONFIG_HAPROXY="+wrapper)
	t.Cleanup(func() {
		for _, pid := range checksRunning(wrapper) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return func(slow bool) {
		if !slow {
			_ = os.Remove(flag)
			return
		}
		writeFile(t, flag, "")
	}
}

// checksRunning are the PIDs of the haproxy -c wrappers running now.
func checksRunning(wrapper string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if cmd := cmdlineOf(pid); strings.Contains(cmd, wrapper+" -c ") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// blockWriter turns the slow check on and starts an apply whose haproxy
// -c holds the daemon's writer, returning once that check runs: the
// requests sent next queue behind it, to be validated as one group.
func (in *install) blockWriter(t *testing.T, slow func(bool), src string) *proc {
	t.Helper()
	slow(true)
	blocker := start(t, in.env, "", "apply", "blocker",
		writeFile(t, filepath.Join(src, "blocker.cfg"), backendConf("blocker_web", "blocker")),
		writeFile(t, filepath.Join(src, "blocker.map"), "blocker.example.com blocker_web\n"))
	eventually(t, 10*time.Second, "the blocker's haproxy -c running", func() error {
		if len(checksRunning(filepath.Join(in.root, "haproxy-slow"))) == 0 {
			return errNotYet
		}
		return nil
	})
	return blocker
}

// TestAPIConcurrent50 sends 50 apply --wait at once to the daemon: each
// is answered, each is live when its client says so, and they were
// validated in groups rather than one haproxy -c each.
func TestAPIConcurrent50(t *testing.T) {
	in := newInstall(t)
	d := in.startDaemon(t)
	src := testkit.OpenTempDir(t)
	const n = 50
	procs := make([]*proc, n)
	for i := range n {
		name := stressName(i)
		conf := writeFile(t, filepath.Join(src, name+".cfg"), stressConf(i, name))
		hostMap := writeFile(t, filepath.Join(src, name+".map"), stressMap(i))
		procs[i] = start(t, in.env, "", "apply", "--wait", name, conf, hostMap)
	}
	for i, p := range procs {
		stdout, stderr, code := p.wait(t)
		if code != 0 || !strings.HasSuffix(stdout, "live\n") {
			t.Errorf("apply --wait %s: exit %d, want 0 and \"live\"\nstdout:\n%s\nstderr:\n%s", stressName(i), code, stdout, stderr)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	for i := range n {
		in.expectBody(t, stressHost(i), stressName(i))
	}
	sizes := apiBatches(d)
	total, grouped := 0, false
	for _, s := range sizes {
		total += s
		grouped = grouped || s > 1
	}
	if total != n || !grouped {
		t.Errorf("API batches %v: want %d requests in all, some validated together", sizes, n)
	}
	if st := in.status(t); st.Live == nil || st.Live.Fragments != n || len(st.Quarantined) != 0 {
		t.Errorf("status: live %+v, quarantined %+v; want %d fragments live, none quarantined", st.Live, st.Quarantined, n)
	}
}

// TestAPIGroupWithOneBad queues 20 applies behind a slow validation, one
// of them bad: they are validated as one group, the bad one is refused
// with its own file and line, and the 19 others go live.
func TestAPIGroupWithOneBad(t *testing.T) {
	in := newInstall(t)
	slow := in.slowCheck(t, 2*time.Second)
	d := in.startDaemon(t)
	src := testkit.OpenTempDir(t)
	blocker := in.blockWriter(t, slow, src)
	const n, bad = 20, 7
	procs := make([]*proc, n)
	for i := range n {
		name := stressName(i)
		conf := stressConf(i, name)
		if i == bad {
			conf = fmt.Sprintf("backend b_%d\n    server s1 127.0.0.1:abc\n", i)
		}
		procs[i] = start(t, in.env, "", "apply", "--wait", name,
			writeFile(t, filepath.Join(src, name+".cfg"), conf), writeFile(t, filepath.Join(src, name+".map"), stressMap(i)))
	}
	if _, stderr, code := blocker.wait(t); code != 0 {
		t.Fatalf("apply blocker: exit %d\n%s", code, stderr)
	}
	for i, p := range procs {
		stdout, stderr, code := p.wait(t)
		if i == bad {
			want := filepath.Join(src, stressName(i)+".cfg") + `:2: fragment "t7": 'server b_7/s1' : invalid character 'a' in port number`
			if code != 4 || !strings.Contains(stderr, want) {
				t.Errorf("apply of the bad fragment: exit %d, want 4 with %q\nstderr:\n%s", code, want, stderr)
			}
			continue
		}
		if code != 0 || !strings.HasSuffix(stdout, "live\n") {
			t.Errorf("apply --wait %s: exit %d, want 0 and live\nstdout:\n%s\nstderr:\n%s", stressName(i), code, stdout, stderr)
		}
	}
	slow(false)
	for i := range n {
		if i == bad {
			in.expectUnknown(t, stressHost(i))
			continue
		}
		in.expectBody(t, stressHost(i), stressName(i))
	}
	if _, err := os.Stat(filepath.Join(in.fragmentsDir(), stressName(bad)+".cfg")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused fragment is stored: %v", err)
	}
	found := false
	for _, s := range apiBatches(d) {
		found = found || s == n
	}
	if !found {
		t.Errorf("API batches %v: want the %d requests validated as one group", apiBatches(d), n)
	}
}

// TestAPIReplacedInTheSameGroup queues two versions of one fragment behind
// a slow validation, so that one group stores both: the daemon serves the
// later one, and the caller waiting for the other is told at once that a
// later change replaced it (exit 7), instead of waiting out its timeout.
func TestAPIReplacedInTheSameGroup(t *testing.T) {
	in := newInstall(t)
	slow := in.slowCheck(t, 2*time.Second)
	in.startDaemon(t)
	src := testkit.OpenTempDir(t)
	blocker := in.blockWriter(t, slow, src)
	hostMap := writeFile(t, filepath.Join(src, "shop.map"), "shop.example.com shop_web\n")
	versions := []string{"shop v1", "shop v2"}
	procs := make([]*proc, len(versions))
	for i, body := range versions {
		conf := writeFile(t, filepath.Join(src, fmt.Sprintf("shop%d.cfg", i)), backendConf("shop_web", body))
		procs[i] = start(t, in.env, "", "apply", "--wait", "--timeout", "90s", "shop", conf, hostMap)
	}
	if _, stderr, code := blocker.wait(t); code != 0 {
		t.Fatalf("apply blocker: exit %d\n%s", code, stderr)
	}
	slow(false)
	winner := -1
	for i, p := range procs {
		stdout, stderr, code := p.wait(t)
		switch {
		case code == 0 && strings.HasSuffix(stdout, "live\n"):
			if winner >= 0 {
				t.Errorf("both versions reported live")
			}
			winner = i
		case code == 7 && strings.Contains(stderr, `a later change of fragment "shop" stored sha256:`):
		default:
			t.Errorf("apply --wait of %q: exit %d; want 0 and live, or 7 saying a later change replaced it\nstdout:\n%s\nstderr:\n%s", versions[i], code, stdout, stderr)
		}
	}
	if winner < 0 {
		t.Fatal("neither version reported live")
	}
	in.expectBody(t, "shop.example.com", versions[winner])
}

// TestAPIDaemonKilledMidRequest kills the daemon with SIGKILL while it
// validates a request: the client says so and exits 5, nothing of the
// fragment is stored, without a daemon the CLI works alone (the socket
// left behind answers nobody), and once the daemon is back the same apply
// goes live.
func TestAPIDaemonKilledMidRequest(t *testing.T) {
	in := newInstall(t)
	slow := in.slowCheck(t, 3*time.Second)
	d := in.startDaemon(t)
	src := testkit.OpenTempDir(t)
	conf := writeFile(t, filepath.Join(src, "shop.cfg"), backendConf("shop_web", "shop"))
	hosts := writeFile(t, filepath.Join(src, "shop.map"), "shop.example.com shop_web\n")
	slow(true)
	client := start(t, in.env, "", "apply", "--wait", "shop", conf, hosts)
	eventually(t, 10*time.Second, "the request's haproxy -c running", func() error {
		if len(checksRunning(filepath.Join(in.root, "haproxy-slow"))) == 0 {
			return errNotYet
		}
		return nil
	})
	d.kill9()
	_, stderr, code := client.wait(t)
	if code != 5 || !strings.Contains(stderr, "the daemon did not answer") || !strings.Contains(stderr, "stored whole or not at all") {
		t.Errorf("client of a killed daemon: exit %d, want 5 and a clear message\nstderr:\n%s", code, stderr)
	}
	slow(false)
	entries, err := os.ReadDir(in.fragmentsDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("the fragment directory holds %s after the killed request", e.Name())
	}
	if _, err := os.Stat(in.apiSocket()); err != nil {
		t.Fatalf("the killed daemon's socket: %v, want it left behind", err)
	}

	// nobody listens: the CLI does the work itself
	other := writeFile(t, filepath.Join(src, "other.cfg"), backendConf("other_web", "other"))
	otherMap := writeFile(t, filepath.Join(src, "other.map"), "other.example.com other_web\n")
	mustRun(t, in.env, "", "apply", "other", other, otherMap)

	in.startDaemon(t)
	out := mustRun(t, in.env, "", "apply", "--wait", "shop", conf, hosts)
	if !strings.HasPrefix(out, `added fragment "shop"`) || !strings.HasSuffix(out, "live\n") {
		t.Errorf("apply after the restart printed %q", out)
	}
	in.expectBody(t, "shop.example.com", "shop")
	in.expectBody(t, "other.example.com", "other")
}

// TestAPIRefusesOthers runs the client as nobody: refused by the socket's
// mode (0660), and, with the mode opened by mistake, by the daemon's
// check of the caller's credentials; nothing is stored either way.
func TestAPIRefusesOthers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPING: needs root to run a client as nobody")
	}
	in := newInstall(t)
	in.startDaemon(t)
	fi, err := os.Stat(in.apiSocket())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Errorf("API socket mode %v, want a socket with 0660", fi.Mode())
	}
	pub := testkit.OpenTempDir(t)
	bin := filepath.Join(pub, "haproxy-config")
	copyFile(t, binary, bin, 0o755)
	conf := writeFile(t, filepath.Join(pub, "shop.cfg"), backendConf("shop_web", "shop"))
	hosts := writeFile(t, filepath.Join(pub, "shop.map"), "shop.example.com shop_web\n")
	asNobody := func() (string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "apply", "shop", conf, hosts)
		cmd.Env = childEnv(in.env)
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("run as nobody: %v", err)
		}
		return string(out), cmd.ProcessState.ExitCode()
	}
	if out, code := asNobody(); code != 5 || !strings.Contains(out, "permission denied") || !strings.Contains(out, "haproxy-config group") {
		t.Errorf("nobody through the socket's mode: exit %d, want 5 and permission denied\n%s", code, out)
	}
	// a mode mistake: the socket and the way to it open to everyone
	if err := os.Chmod(in.apiSocket(), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(in.stateDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, code := asNobody(); code != 5 || !strings.Contains(out, "is neither root nor in the haproxy-config group") {
		t.Errorf("nobody past a mode mistake: exit %d, want 5 and the daemon's refusal\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(in.fragmentsDir(), "shop.cfg")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused caller's fragment is stored: %v", err)
	}
	// root still may
	mustRun(t, in.env, "", "apply", "--wait", "shop", conf, hosts)
	in.expectBody(t, "shop.example.com", "shop")
}

func copyFile(t *testing.T, from, to string, perm os.FileMode) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestAPIRollbackResume: rollback and resume go to the daemon over its
// socket: --wait exits 0 once the held generation serves, and once the
// newest serves again; a generation that is not kept is refused with
// exit 6 and holds nothing.
func TestAPIRollbackResume(t *testing.T) {
	in := newInstall(t)
	d := in.startDaemon(t)
	src := t.TempDir()
	conf := writeFile(t, filepath.Join(src, "shop.cfg"), backendConf("shop_web", "v1"))
	hosts := writeFile(t, filepath.Join(src, "shop.map"), "shop.example.com shop_web\n")
	mustRun(t, in.env, "", "apply", "--wait", "shop", conf, hosts)
	v1 := in.status(t).Live.Generation
	writeFile(t, conf, backendConf("shop_web", "v2"))
	mustRun(t, in.env, "", "apply", "--wait", "shop", conf, hosts)
	v2 := in.status(t).Live.Generation

	env := append(slices.Clone(in.env), "HAPROXY_CONFIG_ACTOR=ops-ann")
	stdout, stderr, code := run(t, env, "", "rollback", "--wait", strconv.Itoa(v1))
	if code != 0 || !strings.Contains(stdout, fmt.Sprintf("holding generation %d", v1)) || !strings.HasSuffix(stdout, "live\n") {
		t.Fatalf("rollback --wait %d: exit %d, want 0, the hold and \"live\"\nstdout:\n%s\nstderr:\n%s", v1, code, stdout, stderr)
	}
	// --wait promised it: no waiting here
	if _, body, err := in.get("shop.example.com", "/"); err != nil || body != "v1" {
		t.Errorf("after rollback --wait: %q, %v; want v1 served", body, err)
	}
	st := in.status(t)
	if st.Held == nil || st.Held.Generation != v1 || st.Live == nil || st.Live.Generation != v1 || !strings.HasPrefix(st.Held.Actor, "ops-ann (via ") {
		t.Errorf("status held %+v, live %+v: want generation %d held by ops-ann via the socket", st.Held, st.Live, v1)
	}
	if !strings.Contains(d.output(), `msg="API: hold set"`) {
		t.Error("the daemon did not set the hold itself")
	}

	_, stderr, code = run(t, in.env, "", "rollback", "--wait", "999")
	if code != 6 || !strings.Contains(stderr, "generation 999") {
		t.Errorf("rollback to a generation never kept: exit %d, want 6 naming it\n%s", code, stderr)
	}
	if st := in.status(t); st.Held == nil || st.Held.Generation != v1 {
		t.Errorf("a refused rollback changed the hold: %+v", st.Held)
	}

	stdout, stderr, code = run(t, in.env, "", "resume", "--wait")
	if code != 0 || !strings.Contains(stdout, "hold released") || !strings.HasSuffix(stdout, "live\n") {
		t.Fatalf("resume --wait: exit %d, want 0, released and \"live\"\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if _, body, err := in.get("shop.example.com", "/"); err != nil || body != "v2" {
		t.Errorf("after resume --wait: %q, %v; want v2 served", body, err)
	}
	if st := in.status(t); st.Held != nil || st.Live == nil || st.Live.Generation < v2 {
		t.Errorf("after resume: held %+v, live %+v; want no hold and generation %d or newer", st.Held, st.Live, v2)
	}
	if !strings.Contains(d.output(), `msg="API: hold released"`) {
		t.Error("the daemon did not release the hold itself")
	}
	if out := mustRun(t, in.env, "", "resume", "--wait"); out != "no hold in force\n" {
		t.Errorf("resume without a hold printed %q", out)
	}
}

// TestAPIRollbackWithoutDaemon: with no daemon the CLI sets and releases
// the hold itself, as before the API.
func TestAPIRollbackWithoutDaemon(t *testing.T) {
	in := newInstall(t)
	src := t.TempDir()
	conf := writeFile(t, filepath.Join(src, "shop.cfg"), backendConf("shop_web", "v1"))
	hosts := writeFile(t, filepath.Join(src, "shop.map"), "shop.example.com shop_web\n")
	mustRun(t, in.env, "", "apply", "shop", conf, hosts)
	mustRun(t, in.env, "", "assemble")
	writeFile(t, conf, backendConf("shop_web", "v2"))
	mustRun(t, in.env, "", "apply", "shop", conf, hosts)
	mustRun(t, in.env, "", "assemble")

	env := append(slices.Clone(in.env), "HAPROXY_CONFIG_ACTOR=ops-ann")
	if out := mustRun(t, env, "", "rollback", "1"); !strings.Contains(out, "holding generation 1") {
		t.Errorf("rollback 1 printed %q", out)
	}
	data, err := os.ReadFile(in.state().Hold())
	if err != nil || !strings.Contains(string(data), `"generation": 1`) || !strings.Contains(string(data), `"actor": "ops-ann"`) {
		t.Errorf("hold.json: %s, %v; want generation 1 held by ops-ann", data, err)
	}
	if _, stderr, code := run(t, in.env, "", "rollback", "999"); code != 6 {
		t.Errorf("rollback 999 without a daemon: exit %d, want 6\n%s", code, stderr)
	}
	if _, stderr, code := run(t, in.env, "", "rollback", "--wait", "--timeout", "2s", "1"); code != 7 || !strings.Contains(stderr, "no haproxy-config watch daemon") {
		t.Errorf("rollback --wait without a daemon: exit %d, want 7 saying no daemon runs\n%s", code, stderr)
	}
	if out := mustRun(t, in.env, "", "resume"); !strings.Contains(out, "hold released") {
		t.Errorf("resume printed %q", out)
	}
	if _, err := os.Stat(in.state().Hold()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("hold.json after resume: %v", err)
	}
	if out := mustRun(t, in.env, "", "resume"); out != "no hold in force\n" {
		t.Errorf("resume without a hold printed %q", out)
	}
}

// TestAPICertsRenew: certs renew goes to the daemon over its socket, and
// --wait exits 0 once HAProxy serves the new certificate; an unknown
// domain is a usage error; without a daemon the request is left for it.
func TestAPICertsRenew(t *testing.T) {
	in := newInstall(t)
	p := startPebble(t, pebbleOptions{httpPort: in.httpPort})
	in.env = append(in.env, p.env()...)
	d := in.startDaemon(t)
	in.applyDomains(t, "r", "renewed", "r.example.com")
	roots := p.roots(t)
	first := in.waitServed(t, "r.example.com", roots, "", 60*time.Second)
	orders := p.orders(t)

	stdout, stderr, code := run(t, in.env, "", "certs", "renew", "--wait", "--timeout", "60s", "r.example.com")
	if code != 0 || !strings.Contains(stdout, "the daemon renews 1 domain") || !strings.HasSuffix(stdout, "live\n") {
		t.Fatalf("certs renew --wait: exit %d, want 0 and \"live\"\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	// --wait promised it: no waiting here
	served, err := in.servedCert("r.example.com", roots)
	if err != nil || served.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Errorf("after certs renew --wait HAProxy serves %v (%v); want a certificate other than %s", served.SerialNumber, err, first.SerialNumber.Text(16))
	}
	if got := p.orders(t); got != orders+1 {
		t.Errorf("Pebble saw %d orders, want %d: one for the renewal", got, orders+1)
	}
	if !strings.Contains(d.output(), `msg="API: certificate renewal requested"`) {
		t.Error("the daemon did not take the renewal over its socket")
	}
	if _, stderr, code := run(t, in.env, "", "certs", "renew", "--wait", "nope.example.com"); code != 2 || !strings.Contains(stderr, "nope.example.com") {
		t.Errorf("certs renew of an unknown domain: exit %d, want 2 naming it\n%s", code, stderr)
	}

	d.stop(t)
	if _, stderr, code := run(t, in.env, "", "certs", "renew", "r.example.com"); code != 7 || !strings.Contains(stderr, "no daemon runs") {
		t.Errorf("certs renew without a daemon: exit %d, want 7 saying no daemon runs\n%s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(in.stateDir(), "acme/renew/r.example.com")); err != nil {
		t.Errorf("the renewal request left for the daemon: %v", err)
	}
}
