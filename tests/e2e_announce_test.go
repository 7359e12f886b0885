package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"haproxy-config/assemble"
	"haproxy-config/internal/testkit"
	"haproxy-config/watcher"
)

// bgpLab is bird2 standing in for the router, listening for BGP on a
// loopback port, with ExaBGP (started per test) peering with it and running
// "haproxy-config announce" as its process. bird ignores routes for
// 127.0.0.0/8 as bogus, so the lab is a network namespace of its own whose
// only interface is its loopback, carrying the service addresses
// 192.0.2.10-12 (TEST-NET-1): nothing in it can reach another machine.
// The daemon, HAProxy, bird, ExaBGP and announce all run in it.
type bgpLab struct {
	dir      string
	port     string
	birdSock string
	netns    string
}

func requireBGP(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"bird", "birdc", "exabgp", "ip", "python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("SKIPPING: %s not installed: run tests/install-deps.sh (%v)", tool, err)
		}
	}
}

// startBird starts bird2 in the foreground; the test's cleanup stops it by PID.
func startBird(t *testing.T) *bgpLab {
	t.Helper()
	requireBGP(t)
	lab := &bgpLab{dir: t.TempDir(), port: strconv.Itoa(testkit.FreePort(t)),
		netns: newNetns(t, []string{"addr", "add", "192.0.2.10/32", "dev", "lo"},
			[]string{"addr", "add", "192.0.2.11/32", "dev", "lo"},
			[]string{"addr", "add", "192.0.2.12/32", "dev", "lo"})}
	lab.birdSock = filepath.Join(lab.dir, "bird.ctl")
	conf := writeFile(t, filepath.Join(lab.dir, "bird.conf"), fmt.Sprintf(`router id 127.0.0.1;
log stderr all;
protocol device { }
protocol bgp exabgp {
  local 127.0.0.1 port %s as 65000;
  neighbor 127.0.0.2 as 65001;
  passive on;
  multihop;
  ipv4 { import all; export none; };
}
`, lab.port))
	lab.start(t, "bird.log", "bird", "-f", "-c", conf, "-s", lab.birdSock)
	eventually(t, 10*time.Second, "bird answers on its control socket", func() error {
		_, err := lab.routes()
		return err
	})
	return lab
}

// newNetns makes a network namespace with its loopback up, runs each "ip"
// command in it, and deletes it when the test ends.
func newNetns(t *testing.T, ipCommands ...[]string) string {
	t.Helper()
	name := fmt.Sprintf("haproxy-config-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del: %v: %s", err, out)
		}
	})
	for _, args := range append([][]string{{"link", "set", "lo", "up"}}, ipCommands...) {
		if out, err := exec.Command("ip", append([]string{"netns", "exec", name, "ip"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %q in the namespace: %v: %s", args, err, out)
		}
	}
	return name
}

// command runs name in the lab's namespace (ip netns exec executes it in
// its own place: the PID is the command's).
func (lab *bgpLab) command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", lab.netns, name}, args...)...)
}

// startMonitor serves a monitor URI on addr:port in the namespace: 200,
// or 503 while the file "fail" exists in ctl or, while "flap" exists
// there, in every odd second of the wall clock. It logs each answer to
// ctl/answers.
func (lab *bgpLab) startMonitor(t *testing.T, addr, port, ctl string) {
	t.Helper()
	script := writeFile(t, filepath.Join(lab.dir, "monitor.py"), `import http.server, os, sys, time
ctl = sys.argv[3]
class Monitor(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        down = os.path.exists(ctl + "/fail") or (os.path.exists(ctl + "/flap") and int(time.time()) % 2 == 1)
        with open(ctl + "/answers", "a") as log:
            log.write("503\n" if down else "200\n")
        self.send_response(503 if down else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), Monitor).serve_forever()
`)
	lab.start(t, "monitor.log", "python3", script, addr, port, ctl)
}

// start runs name in the lab's namespace in the background, stopped by
// the test's cleanup (testkit.StartProc).
func (lab *bgpLab) start(t *testing.T, logName, name string, args ...string) {
	t.Helper()
	testkit.StartProc(t, filepath.Join(lab.dir, logName), nil, "ip", append([]string{"netns", "exec", lab.netns, name}, args...)...)
}

// routes lists the prefixes in bird's table.
func (lab *bgpLab) routes() ([]string, error) {
	out, err := exec.Command("birdc", "-s", lab.birdSock, "show", "route").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("birdc: %v: %s", err, out)
	}
	var prefixes []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.Contains(f[0], "/") {
			prefixes = append(prefixes, f[0])
		}
	}
	slices.Sort(prefixes)
	return prefixes, nil
}

// expectRoutes waits until bird's table is exactly want.
func (lab *bgpLab) expectRoutes(t *testing.T, timeout time.Duration, what string, want ...string) {
	t.Helper()
	slices.Sort(want)
	eventually(t, timeout, what, func() error {
		got, err := lab.routes()
		if err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("bird has %q, want %q", got, want)
		}
		return nil
	})
}

// exabgp is a running ExaBGP with "haproxy-config announce" as its process.
type exabgp struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// startExaBGP starts ExaBGP peering with the lab's bird; announce gets the
// installation's settings plus env. The test's cleanup stops ExaBGP and any
// announce process it left, by PID.
func (lab *bgpLab) startExaBGP(t *testing.T, in *install, env ...string) *exabgp {
	t.Helper()
	dir := t.TempDir()
	var exports strings.Builder
	for _, kv := range in.with(env...) {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&exports, "export %s='%s'\n", k, v)
	}
	script := writeFile(t, filepath.Join(dir, "announce.sh"), fmt.Sprintf("#!/bin/sh\n%sexec %s announce 2>>%s\n",
		exports.String(), binary, filepath.Join(dir, "announce.log")))
	if err := os.Chmod(script, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := writeFile(t, filepath.Join(dir, "exabgp.conf"), fmt.Sprintf(`process announce {
  run %s;
  encoder text;
}
neighbor 127.0.0.1 {
  router-id 127.0.0.2;
  local-address 127.0.0.2;
  local-as 65001;
  peer-as 65000;
  connect %s;
  api { processes [ announce ]; }
}
`, script, lab.port))
	e := &exabgp{done: make(chan struct{}), log: filepath.Join(dir, "exabgp.log")}
	log, err := os.Create(e.log)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	e.cmd = lab.command("exabgp", conf)
	// root keeps its rights (ExaBGP would drop to nobody), no listening
	// socket, logs to the file
	e.cmd.Env = append(childEnv(nil), "exabgp.daemon.user=root", "exabgp.tcp.bind=", "exabgp.log.destination=stdout")
	e.cmd.Stdout, e.cmd.Stderr = log, log
	if err := e.cmd.Start(); err != nil {
		t.Fatalf("start exabgp: %v", err)
	}
	go func() { _ = e.cmd.Wait(); close(e.done) }()
	t.Cleanup(func() {
		e.stop(t)
		if t.Failed() {
			exaLog, _ := os.ReadFile(e.log)
			announceLog, _ := os.ReadFile(filepath.Join(dir, "announce.log"))
			t.Logf("exabgp log:\n%s\nannounce log:\n%s", exaLog, announceLog)
		}
		if a, err := watcher.ReadAnnounced(in.stateDir()); err == nil && a != nil && runsBinary(a.PID) {
			_ = syscall.Kill(a.PID, syscall.SIGKILL)
		}
	})
	return e
}

func (e *exabgp) stop(t *testing.T) {
	select {
	case <-e.done:
		return
	default:
	}
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.done:
	case <-time.After(10 * time.Second):
		t.Errorf("exabgp did not stop on SIGTERM within 10s")
		_ = e.cmd.Process.Kill()
		<-e.done
	}
}

// runsBinary reports whether pid is a haproxy-config of this test run.
func runsBinary(pid int) bool {
	return pid > 0 && strings.HasPrefix(cmdlineOf(pid), binary)
}

// announceBase is the default base config with a frontend on two service
// addresses whose monitor URI answers 200 on the first and 503 on the
// second (HAProxy's "monitor fail").
func announceBase(port string) string {
	return string(assemble.DefaultBase) + fmt.Sprintf(`
frontend service_monitor
    bind 192.0.2.10:%[1]s
    bind 192.0.2.11:%[1]s
    monitor-uri /haproxy-monitor
    monitor fail if { dst 192.0.2.11 }
`, port)
}

// checkExit runs "status --check" and returns its output and exit code.
func checkExit(t *testing.T, in *install, extra ...string) (string, int) {
	t.Helper()
	stdout, _, code := run(t, in.with(extra...), "", "status", "--check")
	return stdout, code
}

// TestAnnounceMonitorFlapAndDrain: routes for addresses whose monitor URI
// answers, none for the one whose URI fails; a check flapping every second
// does not flap its route; drain withdraws everything, undrain brings it back.
func TestAnnounceMonitorFlapAndDrain(t *testing.T) {
	lab := startBird(t)
	in := newInstall(t)
	in.netns = lab.netns
	checkPort := strconv.Itoa(testkit.FreePort(t))
	writeFile(t, filepath.Join(in.root, "etc/haproxy-config/base.cfg"), announceBase(checkPort))
	in.startDaemon(t)
	// the third address is a server standing in for a frontend whose
	// health the test decides
	ctl := t.TempDir()
	lab.startMonitor(t, "192.0.2.12", checkPort, ctl)

	// 250 ms checks, 6 in a row to change: a 1 s flap holds 4
	ex := lab.startExaBGP(t, in,
		"HAPROXY_CONFIG_ANNOUNCE_ADDRESSES=192.0.2.10,192.0.2.11,192.0.2.12",
		"HAPROXY_CONFIG_ANNOUNCE_CHECK_PATH=/haproxy-monitor",
		"HAPROXY_CONFIG_ANNOUNCE_CHECK_PORT="+checkPort,
		"HAPROXY_CONFIG_ANNOUNCE_INTERVAL=250ms",
		"HAPROXY_CONFIG_ANNOUNCE_RISE=6",
		"HAPROXY_CONFIG_ANNOUNCE_FALL=6")
	lab.expectRoutes(t, 20*time.Second, "healthy: a route for each address whose monitor URI answers 200",
		"192.0.2.10/32", "192.0.2.12/32")
	if out, code := checkExit(t, in); code != 0 || !strings.HasPrefix(out, "HAPROXY-CONFIG OK - generation ") {
		t.Errorf("status --check on a healthy node: exit %d\n%s", code, out)
	}
	st := in.status(t)
	if st.Announce == nil || len(st.Announce.Routes) != 3 || st.Announce.Routes[1].Announced ||
		!strings.Contains(st.Announce.Routes[1].Reason, "HTTP 503") {
		t.Errorf("status --json announce %+v, want three routes and the second withdrawn for its 503", st.Announce)
	}

	writeFile(t, filepath.Join(ctl, "answers"), "")
	writeFile(t, filepath.Join(ctl, "flap"), "")
	deadline := time.Now().Add(6 * time.Second)
	for time.Now().Before(deadline) {
		got, err := lab.routes()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(got, "192.0.2.12/32") {
			t.Fatalf("the route of a check flapping every second was withdrawn: bird has %q", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
	answers, err := os.ReadFile(filepath.Join(ctl, "answers"))
	if err != nil {
		t.Fatal(err)
	}
	if down, up := strings.Count(string(answers), "503"), strings.Count(string(answers), "200"); down < 6 || up < 6 {
		t.Fatalf("during the flap the monitor answered 503 %d times and 200 %d times: announce did not see it flap", down, up)
	}
	writeFile(t, filepath.Join(ctl, "fail"), "")
	lab.expectRoutes(t, 5*time.Second, "a check that stays down: its route withdrawn, the others stay", "192.0.2.10/32")

	drainOut := mustRun(t, in.env, "", "drain", "--reason", "kernel update")
	if !strings.Contains(drainOut, "drained since") {
		t.Errorf("drain said %q", drainOut)
	}
	lab.expectRoutes(t, 2*time.Second, "drain: every route withdrawn at the next check")
	out, code := checkExit(t, in)
	if code != 1 || !strings.HasPrefix(out, "HAPROXY-CONFIG WARNING - drained since") || !strings.Contains(out, "kernel update") {
		t.Errorf("status --check while drained: exit %d, want 1\n%s", code, out)
	}
	if _, _, code := run(t, in.env, "", "status", "--check", "--vrrp"); code != 1 {
		t.Errorf("status --check --vrrp while drained: exit %d, want 1 (keepalived moves the virtual IP)", code)
	}
	if st := in.status(t); st.Drained == nil || st.Drained.Reason != "kernel update" {
		t.Errorf("status --json drained = %+v", st.Drained)
	}
	mustRun(t, in.env, "", "undrain")
	lab.expectRoutes(t, 5*time.Second, "undrain: the healthy address announced again", "192.0.2.10/32")
	if _, _, code := run(t, in.env, "", "status", "--check", "--vrrp"); code != 0 {
		t.Errorf("status --check --vrrp after undrain: exit %d, want 0", code)
	}

	ex.stop(t)
	eventually(t, 5*time.Second, "announce records every route withdrawn when ExaBGP stops", func() error {
		a, err := watcher.ReadAnnounced(in.stateDir())
		if err != nil || a == nil {
			return fmt.Errorf("announce report: %v", err)
		}
		for _, r := range a.Routes {
			if r.Announced {
				return fmt.Errorf("%s still announced", r.Address)
			}
		}
		return nil
	})
}

// TestAnnounceWithdrawsWhenNotServing: HAProxy killed, a base config edit
// that cannot go live and the daemon stopped each withdraw the route, and
// it comes back after recovery; status --check gives each exit code.
func TestAnnounceWithdrawsWhenNotServing(t *testing.T) {
	lab := startBird(t)
	in := newInstall(t)
	in.netns = lab.netns
	base := writeFile(t, filepath.Join(in.root, "etc/haproxy-config/base.cfg"), string(assemble.DefaultBase))
	d := in.startDaemon(t)
	lab.startExaBGP(t, in,
		"HAPROXY_CONFIG_ANNOUNCE_ADDRESSES=192.0.2.10",
		"HAPROXY_CONFIG_ANNOUNCE_INTERVAL=200ms",
		"HAPROXY_CONFIG_ANNOUNCE_RISE=2",
		"HAPROXY_CONFIG_ANNOUNCE_FALL=2")
	lab.expectRoutes(t, 20*time.Second, "healthy", "192.0.2.10/32")

	if err := syscall.Kill(d.haproxy, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	lab.expectRoutes(t, 3*time.Second, "HAProxy killed: route withdrawn")
	lab.expectRoutes(t, 20*time.Second, "HAProxy restarted by the daemon: route back", "192.0.2.10/32")

	writeFile(t, base, string(assemble.DefaultBase)+"\nfrontend broken\n    no-such-keyword here\n")
	lab.expectRoutes(t, 10*time.Second, "a base config that cannot go live: route withdrawn")
	out, code := checkExit(t, in)
	if code != 2 || !strings.Contains(out, "HAPROXY-CONFIG CRITICAL - the stored configuration cannot go live") {
		t.Errorf("status --check with a broken base: exit %d, want 2\n%s", code, out)
	}
	writeFile(t, base, string(assemble.DefaultBase))
	lab.expectRoutes(t, 10*time.Second, "base config fixed: route back", "192.0.2.10/32")

	d.stop(t)
	lab.expectRoutes(t, 5*time.Second, "daemon stopped: route withdrawn")
	out, code = checkExit(t, in)
	if code != 2 || !strings.Contains(out, "HAPROXY-CONFIG CRITICAL - the haproxy-config daemon is not running") {
		t.Errorf("status --check with the daemon stopped: exit %d, want 2\n%s", code, out)
	}
	if _, _, code := run(t, in.env, "", "status", "--check", "--vrrp"); code != 1 {
		t.Errorf("status --check --vrrp with the daemon stopped: exit %d, want 1", code)
	}
	out, code = checkExit(t, in, "HAPROXY_CONFIG_HEALTH_CERT_WARNING_DAYS=soon")
	if code != 3 || !strings.HasPrefix(out, "HAPROXY-CONFIG UNKNOWN - settings: ") {
		t.Errorf("status --check with a bad setting: exit %d, want 3\n%s", code, out)
	}
	if out, _, code := run(t, in.env, "", "status", "--check", "--no-such-flag"); code != 3 || !strings.HasPrefix(out, "HAPROXY-CONFIG UNKNOWN - ") {
		t.Errorf("status --check with an unknown flag: exit %d, want 3 (UNKNOWN)\n%s", code, out)
	}
	in.startDaemon(t)
	lab.expectRoutes(t, 20*time.Second, "daemon restarted: route back", "192.0.2.10/32")
}

// TestREADMEKeepalivedConfig: the README's keepalived configuration, with
// the binary under test as its script, passes keepalived's own check, in a
// network namespace whose eth0 is one end of a veth pair (both ends in it).
func TestREADMEKeepalivedConfig(t *testing.T) {
	keepalived, err := exec.LookPath("keepalived")
	if err != nil {
		t.Skipf("SKIPPING: keepalived not installed: run tests/install-deps.sh (%v)", err)
	}
	readme, err := os.ReadFile(filepath.Join(repoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(readme), "A keepalived pair:\n\n")
	if !ok {
		t.Fatal(`README has no "A keepalived pair:" followed by a configuration block`)
	}
	var conf strings.Builder
	for _, line := range strings.Split(after, "\n") {
		if line != "" && !strings.HasPrefix(line, "    ") {
			break
		}
		conf.WriteString(strings.TrimPrefix(line, "    ") + "\n")
	}
	text := conf.String()
	if !strings.Contains(text, `script "/usr/sbin/haproxy-config status --check --vrrp"`) {
		t.Fatalf("the README's keepalived block does not run status --check --vrrp:\n%s", text)
	}
	text = strings.ReplaceAll(text, "/usr/sbin/haproxy-config", binary)
	netns := newNetns(t, []string{"link", "add", "eth0", "type", "veth", "peer", "name", "eth1"})
	configTest := func(file string) *exec.Cmd {
		return exec.Command("ip", "netns", "exec", netns, keepalived, "--config-test", "--use-file", file)
	}
	file := writeFile(t, filepath.Join(t.TempDir(), "keepalived.conf"), text)
	out, err := configTest(file).CombinedOutput()
	if err != nil {
		t.Errorf("keepalived --config-test on the README's configuration: %v\n%s\n%s", err, out, text)
	}
	broken := writeFile(t, filepath.Join(t.TempDir(), "keepalived.conf"), strings.Replace(text, "track_script", "trak_script", 1))
	if err := configTest(broken).Run(); err == nil {
		t.Error("keepalived --config-test accepts a misspelt keyword: the check above proves nothing")
	}
}
