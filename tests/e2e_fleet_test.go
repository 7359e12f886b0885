package tests

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"haproxy-config/certs"
	"haproxy-config/certs/etcdstorage"
	"haproxy-config/internal/testkit"
	"haproxy-config/reload"
)

// The fleet tests run a fleet of balancers the way the issue #13 wants
// them tested: a 3-member etcd cluster on loopback ports, daemons each with
// its own HAProxy, Pebble with its DNS server answering 127.0.0.1 for every
// name, and a TCP-mode HAProxy round-robining one loopback port across the
// nodes' HTTP ports, standing in for anycast: Pebble validates HTTP-01
// through it, so the CA reaches any node, not the one that ordered.

// fleetPrefix is the etcd key prefix of every test fleet (each test has
// its own etcd cluster).
const fleetPrefix = "/haproxy-config/e2e"

// fleetHeartbeat is the nodes' heartbeat period: short, so that the fleet
// command sees every node within seconds.
const fleetHeartbeat = "1s"

// frontHold is how long the anycast front keeps a new connection waiting
// while it is held: below Pebble's 15 s validation timeout, so a held
// validation is late, never failed.
const frontHold = 10 * time.Second

// testFleet is one test's fleet: its etcd cluster, Pebble, the anycast
// front, the seal key the nodes share, and the nodes.
type testFleet struct {
	etcd    *testkit.EtcdCluster
	pebble  *pebble
	front   *anycastFront
	keyFile string
	nodes   []*fleetNode // the nodes behind the front
	extra   []string     // settings every node gets
}

// fleetNode is one balancer: an installation and, once started, its
// daemon.
type fleetNode struct {
	name string
	in   *install
	d    *daemon
}

// newFleet makes n installations behind an anycast front, starts etcd and
// Pebble (validating through the front) and makes the seal key; it starts
// no daemon (see start). extra are settings for every node.
func newFleet(t testing.TB, n int, extra ...string) *testFleet {
	t.Helper()
	return newFleetWith(t, n, pebbleOptions{}, extra...)
}

// newFleetWith is newFleet with Pebble started with opt (its HTTP port
// is the front's).
func newFleetWith(t testing.TB, n int, opt pebbleOptions, extra ...string) *testFleet {
	t.Helper()
	testkit.RequireHaproxy(t)
	pebbleBinaries(t)
	f := &testFleet{etcd: testkit.StartEtcdCluster(t, 3), extra: extra}
	var ports []string
	for i := range n {
		nd := f.newNode(t, fmt.Sprintf("node%d", i))
		f.nodes = append(f.nodes, nd)
		ports = append(ports, nd.in.httpPort)
	}
	f.front = startFront(t, ports)
	opt.httpPort = f.front.port
	f.pebble = startPebble(t, opt)
	f.keyFile = filepath.Join(t.TempDir(), "fleet.key")
	mustRun(t, f.nodes[0].in.env, "", "fleet", "key", f.keyFile)
	if fi, err := os.Stat(f.keyFile); err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != 32 {
		t.Fatalf("fleet key %s: %v %v, want 32 bytes of mode 0600", f.keyFile, fi, err)
	}
	return f
}

// newNode makes an installation (not started, not behind the front).
func (f *testFleet) newNode(t testing.TB, name string) *fleetNode {
	t.Helper()
	return &fleetNode{name: name, in: newInstall(t)}
}

// fleetEnv is what puts a node in fleet mode.
func (f *testFleet) fleetEnv(name string) []string {
	return append([]string{
		"HAPROXY_CONFIG_ETCD_ENDPOINTS=" + strings.Join(f.etcd.Endpoints(), ","),
		"HAPROXY_CONFIG_ETCD_PREFIX=" + fleetPrefix,
		"HAPROXY_CONFIG_FLEET_KEY_FILE=" + f.keyFile,
		"HAPROXY_CONFIG_NODE_NAME=" + name,
		"HAPROXY_CONFIG_FLEET_HEARTBEAT=" + fleetHeartbeat,
	}, f.extra...)
}

// start starts nd's daemon with ACME on Pebble, in fleet mode or not. A
// node started in fleet mode keeps its fleet settings for the commands
// run on it.
func (f *testFleet) start(t testing.TB, nd *fleetNode, fleet bool) {
	t.Helper()
	if !slices.Contains(nd.in.env, "HAPROXY_CONFIG_ACME=true") {
		nd.in.env = append(nd.in.env, f.pebble.env("HAPROXY_CONFIG_ACME_PROFILE=default")...)
	}
	if fleet && !slices.ContainsFunc(nd.in.env, func(kv string) bool { return strings.HasPrefix(kv, "HAPROXY_CONFIG_ETCD_ENDPOINTS=") }) {
		nd.in.env = append(nd.in.env, f.fleetEnv(nd.name)...)
	}
	d := nd.in.startDaemon(t)
	nd.d = d
	if i := slices.Index(f.nodes, nd); i >= 0 {
		// the front marked the node down while it did not listen: a
		// validation sent before its next check would find no server
		f.front.waitUp(t, i)
	}
	t.Cleanup(func() {
		if t.Failed() {
			lines := strings.Split(d.output(), "\n")
			t.Logf("%s's daemon log, the last lines:\n%s", nd.name, strings.Join(lines[max(0, len(lines)-60):], "\n"))
		}
	})
}

// startAll starts every node behind the front in fleet mode.
func (f *testFleet) startAll(t testing.TB) {
	t.Helper()
	for _, nd := range f.nodes {
		f.start(t, nd, true)
	}
}

// applyAll applies one fragment routing hosts to every node in nodes.
func applyAll(t testing.TB, nodes []*fleetNode, name string, hosts ...string) {
	t.Helper()
	for _, nd := range nodes {
		nd.in.applyDomains(t, name, name, hosts...)
	}
}

// waitServedEverywhere waits until every node serves every host a
// certificate that chains to Pebble's root, through the node's own HTTPS
// port with SNI, and the same certificate on every node (one order per
// domain); it returns each host's serial.
func (f *testFleet) waitServedEverywhere(t testing.TB, nodes []*fleetNode, hosts []string, timeout time.Duration) map[string]string {
	t.Helper()
	roots := f.pebble.roots(t)
	deadline := time.Now().Add(timeout)
	serials := map[string]string{}
	for _, host := range hosts {
		for _, nd := range nodes {
			leaf := nd.in.waitServed(t, host, roots, "", max(time.Until(deadline), time.Second))
			if err := leaf.VerifyHostname(host); err != nil {
				t.Errorf("%s serves for %s: %v", nd.name, host, err)
			}
			serial := leaf.SerialNumber.Text(16)
			if s, ok := serials[host]; ok && s != serial {
				t.Errorf("%s serves %s the certificate %s, another node %s: two orders for one domain", nd.name, host, serial, s)
			}
			serials[host] = serial
		}
	}
	return serials
}

// reloads is every node's reload count.
func reloads(t *testing.T, nodes []*fleetNode) []int {
	t.Helper()
	var counts []int
	for _, nd := range nodes {
		counts = append(counts, nd.in.status(t).Counts.Reloads)
	}
	return counts
}

// crash kills the node's daemon and its HAProxy with SIGKILL, as a machine
// that dies: nothing of it answers or lets its locks go.
func (nd *fleetNode) crash() {
	nd.d.kill9()
	testkit.KillGroup(nd.d.haproxy)
}

// obtaining lists the domains the node's daemon started an order of, per
// its log (lego's "[domain] acme: Obtaining ... certificate", logged once
// the order lock is held), once per order.
func (nd *fleetNode) obtaining() []string {
	var domains []string
	for _, m := range obtainingLine.FindAllStringSubmatch(nd.d.output(), -1) {
		domains = append(domains, m[1])
	}
	return domains
}

var obtainingLine = regexp.MustCompile(`\[([a-z0-9.-]+)\] acme: Obtaining`)

// fleetReport is what "haproxy-config fleet --json" prints.
type fleetReport struct {
	Prefix string            `json:"prefix"`
	Nodes  []fleetNodeReport `json:"nodes"`
}

type fleetNodeReport struct {
	Name            string          `json:"name"`
	Seen            time.Time       `json:"seen"`
	Stale           bool            `json:"stale"`
	Generation      int             `json:"generation"`
	FragmentsDigest string          `json:"fragments_digest"`
	BaseDigest      string          `json:"base_digest"`
	Certificates    int             `json:"certificates"`
	Health          json.RawMessage `json:"health"`
	Flagged         bool            `json:"flagged"`
	Why             string          `json:"why"`
}

// fleetCommand runs "fleet --json" with nd's settings and returns the
// report and the exit code.
func fleetCommand(t *testing.T, nd *fleetNode) (*fleetReport, int, string) {
	t.Helper()
	stdout, stderr, code := run(t, nd.in.env, "", "fleet", "--json")
	var r fleetReport
	if err := json.Unmarshal([]byte(stdout), &r); err != nil && code != 5 {
		t.Fatalf("fleet --json: exit %d, %v\nstdout:\n%s\nstderr:\n%s", code, err, stdout, stderr)
	}
	return &r, code, stdout + stderr
}

// fleetStatus is the fleet part of "status --json".
type fleetStatus struct {
	Reachable        bool       `json:"reachable"`
	UnreachableSince *time.Time `json:"unreachable_since"`
}

func (nd *fleetNode) fleetStatus(t *testing.T) *fleetStatus {
	t.Helper()
	out := mustRun(t, nd.in.env, "", "status", "--json")
	var st struct {
		Fleet *fleetStatus `json:"fleet"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if st.Fleet == nil {
		t.Fatalf("status --json has no fleet part:\n%s", out)
	}
	return st.Fleet
}

// hosts names n test domains.
func hosts(prefix string, n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprintf("%s%d.example.com", prefix, i))
	}
	return out
}

// anycastFront is an HAProxy in TCP mode round-robining one loopback port
// across the nodes' HTTP ports, with health checks and redispatch so that
// a dead node is skipped. While held, each new connection waits frontHold
// before it is passed on.
type anycastFront struct {
	port    string
	heldACL string // the pattern file: 127.0.0.1 in it holds
	runtime *reload.Runtime
}

func startFront(t testing.TB, httpPorts []string) *anycastFront {
	t.Helper()
	dir := t.TempDir()
	a := &anycastFront{port: fmt.Sprint(testkit.FreePort(t)), heldACL: filepath.Join(dir, "held.acl")}
	sock := filepath.Join(dir, "front.sock")
	a.runtime = &reload.Runtime{Path: sock, Timeout: 5 * time.Second}
	writeFile(t, a.heldACL, "")
	var cfg strings.Builder
	fmt.Fprintf(&cfg, `global
    stats socket %s level admin
defaults
    mode tcp
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
frontend anycast
    bind 127.0.0.1:%s
    tcp-request inspect-delay %ds
    tcp-request content accept if !{ src -f %s }
    tcp-request content accept if WAIT_END
    default_backend nodes
backend nodes
    balance roundrobin
    default-server check inter 300ms fall 2 rise 1
`, sock, a.port, int(frontHold/time.Second), a.heldACL)
	for i, p := range httpPorts {
		fmt.Fprintf(&cfg, "    server n%d 127.0.0.1:%s\n", i, p)
	}
	cfgFile := writeFile(t, filepath.Join(dir, "front.cfg"), cfg.String())
	testkit.StartProc(t, filepath.Join(dir, "front.log"), nil, testkit.RequireHaproxy(t), "-db", "-f", cfgFile)
	eventually(t, 10*time.Second, "the anycast front listening", func() error {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+a.port, time.Second)
		if err != nil {
			return err
		}
		c.Close()
		_, err = a.runtime.Command(context.Background(), "show info", nil)
		return err
	})
	return a
}

// waitUp waits until the front's health check finds node i up.
func (a *anycastFront) waitUp(t testing.TB, i int) {
	t.Helper()
	name := fmt.Sprintf("n%d", i)
	eventually(t, 10*time.Second, "the front's check finding "+name+" up", func() error {
		out, err := a.runtime.Command(context.Background(), "show stat", nil)
		if err != nil {
			return err
		}
		for line := range strings.Lines(out) {
			// CSV: proxy name, server name, ..., the status 18th
			if f := strings.Split(line, ","); len(f) > 17 && f[0] == "nodes" && f[1] == name {
				if f[17] != "UP" {
					return fmt.Errorf("%s is %s", name, f[17])
				}
				return nil
			}
		}
		return fmt.Errorf("no server %s in the front's stats", name)
	})
}

// hold makes new connections wait frontHold.
func (a *anycastFront) hold(t *testing.T) {
	t.Helper()
	if _, err := a.runtime.Command(context.Background(), "add acl "+a.heldACL+" 127.0.0.1", nil); err != nil {
		t.Fatalf("hold the front: %v", err)
	}
}

// release passes new connections on at once again (held ones wait out
// their frontHold).
func (a *anycastFront) release(t *testing.T) {
	t.Helper()
	if _, err := a.runtime.Command(context.Background(), "clear acl "+a.heldACL, nil); err != nil {
		t.Fatalf("release the front: %v", err)
	}
}

// sharedStorage opens the fleet's etcd storage as a reader of the test.
func (f *testFleet) sharedStorage(t testing.TB) *etcdstorage.Storage {
	t.Helper()
	st, err := etcdstorage.Open(etcdstorage.Config{Endpoints: f.etcd.Endpoints(), Prefix: fleetPrefix, KeyFile: f.keyFile, Owner: "e2e-test"})
	if err != nil {
		t.Fatalf("open the fleet's storage: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// leafSerial is the serial of the first certificate in a PEM bundle.
func leafSerial(t *testing.T, bundle []byte) string {
	t.Helper()
	block, _ := pem.Decode(bundle)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("bundle does not start with a certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return leaf.SerialNumber.Text(16)
}

// TestFleetOneOrderPerDomain: a fragment with 5 new domains applied to
// three nodes: Pebble sees exactly 5 orders, every node serves the same
// Pebble-verified certificate for each, and no reload is counted for them.
func TestFleetOneOrderPerDomain(t *testing.T) {
	start := time.Now()
	f := newFleet(t, 3)
	f.startAll(t)
	domains := hosts("one", 5)
	applyAll(t, f.nodes, "five", domains...)
	before := reloads(t, f.nodes)
	serials := f.waitServedEverywhere(t, f.nodes, domains, 90*time.Second)
	if got := f.pebble.orders(t); got != 5 {
		t.Errorf("Pebble saw %d orders for 5 domains on 3 nodes, want 5", got)
	}
	if got := f.pebble.accounts(t); got != 1 {
		t.Errorf("Pebble registered %d accounts, want 1: the fleet shares its account", got)
	}
	if after := reloads(t, f.nodes); !slices.Equal(before, after) {
		t.Errorf("reloads per node went from %v to %v while certificates came: want the runtime API, no reload", before, after)
	}
	t.Logf("5 domains served by 3 nodes %v after the start; %d orders; serials %v", time.Since(start).Round(time.Millisecond), f.pebble.orders(t), serials)
}

// TestFleetLockHolderKilled: the node holding the order locks is killed
// with -9 while its orders wait at the front; another node orders each
// domain once the lease expired, and every survivor serves every domain.
func TestFleetLockHolderKilled(t *testing.T) {
	const lockTTL = 3 * time.Second
	f := newFleet(t, 3, "HAPROXY_CONFIG_ETCD_LOCK_TTL="+lockTTL.String())
	// every validation waits at the front: orders stay in flight, each under its lock
	f.front.hold(t)
	f.startAll(t)
	domains := hosts("kill", 3)
	applyAll(t, f.nodes, "killed", domains...)
	var victim *fleetNode
	eventually(t, 30*time.Second, "an order in flight that reached Pebble", func() error {
		started := 0
		victim = nil
		for _, nd := range f.nodes {
			n := len(nd.obtaining())
			started += n
			if n > 0 && victim == nil {
				victim = nd
			}
		}
		if victim == nil {
			return fmt.Errorf("no node is ordering")
		}
		// every order started is in Pebble, waiting for its validation
		if got := f.pebble.orders(t); got < started {
			return fmt.Errorf("Pebble saw %d of the %d orders started", got, started)
		}
		return nil
	})
	victim.crash()
	killed := time.Now()
	inFlight := victim.obtaining()
	t.Logf("killed %s with -9 while it ordered %v (Pebble: %d orders)", victim.name, inFlight, f.pebble.orders(t))
	f.front.release(t)
	var survivors []*fleetNode
	for _, nd := range f.nodes {
		if nd != victim {
			survivors = append(survivors, nd)
		}
	}

	// another node orders the victim's domain once its lease expired
	taken := inFlight[0]
	eventually(t, lockTTL+20*time.Second, "a surviving node ordering "+taken, func() error {
		for _, nd := range survivors {
			if slices.Contains(nd.obtaining(), taken) {
				return nil
			}
		}
		return errNotYet
	})
	// the lease is kept alive every TTL/3: it outlives the holder by 2/3 TTL at least
	if after := time.Since(killed); after < lockTTL*2/3-200*time.Millisecond {
		t.Errorf("a surviving node ordered %s %v after the holder died: before its lease (TTL %v) can have expired", taken, after, lockTTL)
	}
	took := time.Since(killed)
	f.waitServedEverywhere(t, survivors, domains, 90*time.Second)
	orders := f.pebble.orders(t)
	// one order that completed per domain, and at most one abandoned per
	// order the victim had in flight; at least one was abandoned
	if n := len(domains); orders < n+1 || orders > n+len(inFlight) {
		t.Errorf("Pebble saw %d orders for %d domains with %d orders killed in flight, want %d to %d", orders, n, len(inFlight), n+1, n+len(inFlight))
	}
	t.Logf("%s ordered again %v after the kill; every domain served by %d nodes %v after it; %d orders for %d domains", taken,
		took.Round(time.Millisecond), len(survivors), time.Since(killed).Round(time.Millisecond), orders, len(domains))
}

// TestFleetEtcdMembersDown: with one etcd member of three down, issuance
// and renewal go on; with two, no order starts, serving goes on and every
// node reports etcd unreachable; once they return, the domain put off is
// ordered once.
func TestFleetEtcdMembersDown(t *testing.T) {
	f := newFleet(t, 3)
	f.startAll(t)
	applyAll(t, f.nodes, "first", "first.example.com")
	first := f.waitServedEverywhere(t, f.nodes, []string{"first.example.com"}, 60*time.Second)["first.example.com"]
	roots := f.pebble.roots(t)

	// one member of three down: the quorum stands, for a new domain and
	// for a renewal asked on one node and served by all
	f.etcd.Stop(2)
	applyAll(t, f.nodes, "second", "second.example.com")
	f.waitServedEverywhere(t, f.nodes, []string{"second.example.com"}, 60*time.Second)
	mustRun(t, f.nodes[0].in.env, "", "certs", "renew", "--wait", "--timeout", "60s", "first.example.com")
	for _, nd := range f.nodes {
		nd.in.waitServed(t, "first.example.com", roots, first, 30*time.Second)
	}
	if got := f.pebble.orders(t); got != 3 {
		t.Errorf("Pebble saw %d orders for 2 domains and a renewal, want 3", got)
	}

	// two down: no quorum, no lock, no order; serving goes on
	f.etcd.Stop(1)
	before := f.pebble.orders(t)
	applyAll(t, f.nodes, "third", "third.example.com")
	mapped := time.Now()
	for _, nd := range f.nodes {
		eventually(t, 30*time.Second, nd.name+" reporting etcd unreachable", func() error {
			if st := nd.fleetStatus(t); st.Reachable || st.UnreachableSince == nil {
				return fmt.Errorf("status fleet part %+v", st)
			}
			return nil
		})
	}
	if _, code, out := fleetCommand(t, f.nodes[0]); code != 5 {
		t.Errorf("fleet --json without an etcd quorum: exit %d, want 5\n%s", code, out)
	}
	const window = 10 * time.Second
	time.Sleep(time.Until(mapped.Add(window))) // a span of time is what is under test: no order within it
	if got := f.pebble.orders(t); got != before {
		t.Errorf("Pebble saw %d orders within %v of the domain's mapping without an etcd quorum, want none", got-before, time.Since(mapped).Round(time.Second))
	}
	for _, nd := range f.nodes {
		for _, host := range []string{"first.example.com", "second.example.com"} {
			if _, err := nd.in.servedCert(host, roots); err != nil {
				t.Errorf("%s without etcd does not serve %s: %v", nd.name, host, err)
			}
		}
	}

	// the members return: the put-off order runs at its next attempt
	f.etcd.Start(1)
	f.etcd.Start(2)
	back := time.Now()
	f.etcd.WaitHealthy(1)
	f.etcd.WaitHealthy(2)
	f.waitServedEverywhere(t, f.nodes, []string{"third.example.com"}, 75*time.Second)
	if got := f.pebble.orders(t); got != before+1 {
		t.Errorf("Pebble saw %d orders for the domain put off, want 1", got-before)
	}
	for _, nd := range f.nodes {
		eventually(t, 15*time.Second, nd.name+" reporting etcd reachable", func() error {
			if st := nd.fleetStatus(t); !st.Reachable {
				return fmt.Errorf("status fleet part %+v", st)
			}
			return nil
		})
	}
	t.Logf("the domain put off was served everywhere %v after the members returned", time.Since(back).Round(time.Millisecond))
}

// TestFleetLateJoiner: a fourth node joining late serves every
// certificate the fleet holds without an order or an account of its own.
func TestFleetLateJoiner(t *testing.T) {
	f := newFleet(t, 3)
	f.startAll(t)
	domains := hosts("late", 3)
	applyAll(t, f.nodes, "early", domains...)
	serials := f.waitServedEverywhere(t, f.nodes, domains, 90*time.Second)
	orders, accounts := f.pebble.orders(t), f.pebble.accounts(t)

	late := f.newNode(t, "node3")
	joined := time.Now()
	f.start(t, late, true)
	applyAll(t, []*fleetNode{late}, "early", domains...)
	got := f.waitServedEverywhere(t, []*fleetNode{late}, domains, 30*time.Second)
	for _, h := range domains {
		if got[h] != serials[h] {
			t.Errorf("the late node serves %s the certificate %s, the fleet %s", h, got[h], serials[h])
		}
	}
	if n := f.pebble.orders(t); n != orders {
		t.Errorf("Pebble saw %d new orders for the late node, want none", n-orders)
	}
	if n := f.pebble.accounts(t); n != accounts {
		t.Errorf("Pebble registered %d new accounts for the late node, want none", n-accounts)
	}
	t.Logf("the late node served %d certificates %v after its start; %d orders in all", len(domains), time.Since(joined).Round(time.Millisecond), orders)
}

// TestFleetMigrateSingleNode: a node with its own account and certificates
// switched to fleet mode orders nothing and registers nothing: its account
// and certificates go to etcd, where a new node finds them.
func TestFleetMigrateSingleNode(t *testing.T) {
	f := newFleet(t, 1)
	single := f.nodes[0]
	f.start(t, single, false)
	domains := hosts("mig", 2)
	applyAll(t, f.nodes, "own", domains...)
	serials := f.waitServedEverywhere(t, f.nodes, domains, 60*time.Second)
	if got := f.pebble.orders(t); got != 2 {
		t.Fatalf("Pebble saw %d orders before the switch, want 2", got)
	}
	accounts := f.pebble.accounts(t)

	single.d.stop(t)
	f.start(t, single, true)
	if got := f.waitServedEverywhere(t, f.nodes, domains, 10*time.Second); !maps.Equal(got, serials) {
		t.Errorf("after the switch it serves %v, before %v", got, serials)
	}
	shared := f.sharedStorage(t)
	for _, h := range domains {
		eventually(t, 30*time.Second, h+"'s certificate uploaded to etcd", func() error {
			data, err := shared.Load(context.Background(), certs.Keys.Certificate(h))
			if err != nil {
				return err
			}
			if s := leafSerial(t, data); s != serials[h] {
				return fmt.Errorf("etcd holds the certificate %s, the node serves %s", s, serials[h])
			}
			return nil
		})
	}
	eventually(t, 30*time.Second, "the ACME account uploaded to etcd", func() error {
		_, err := shared.Load(context.Background(), certs.Keys.AccountKey(f.pebble.directory))
		return err
	})

	other := f.newNode(t, "other")
	f.start(t, other, true)
	applyAll(t, []*fleetNode{other}, "own", domains...)
	if got := f.waitServedEverywhere(t, []*fleetNode{other}, domains, 30*time.Second); !maps.Equal(got, serials) {
		t.Errorf("the other node serves %v, the migrated one %v", got, serials)
	}
	if got := f.pebble.orders(t); got != 2 {
		t.Errorf("Pebble saw %d orders after the switch to fleet mode, want none", got-2)
	}
	if got := f.pebble.accounts(t); got != accounts {
		t.Errorf("Pebble registered %d new accounts after the switch, want none", got-accounts)
	}
}

// TestFleetCommandFlagsDrift: fleet --json lists every node; a fragment
// applied to one node only gets that node flagged, exit 8.
func TestFleetCommandFlagsDrift(t *testing.T) {
	f := newFleet(t, 3)
	f.startAll(t)
	applyAll(t, f.nodes, "common", "common.example.com")
	f.waitServedEverywhere(t, f.nodes, []string{"common.example.com"}, 60*time.Second)
	names := []string{"node0", "node1", "node2"}
	eventually(t, 20*time.Second, "fleet --json listing every node in agreement", func() error {
		r, code, out := fleetCommand(t, f.nodes[0])
		if code != 0 {
			return fmt.Errorf("exit %d:\n%s", code, out)
		}
		if r.Prefix != fleetPrefix {
			return fmt.Errorf("prefix %q, want %q", r.Prefix, fleetPrefix)
		}
		var seen []string
		for _, n := range r.Nodes {
			seen = append(seen, n.Name)
			switch {
			case n.Stale, n.Flagged:
				return fmt.Errorf("%s stale %v flagged %v (%s)", n.Name, n.Stale, n.Flagged, n.Why)
			case time.Since(n.Seen) > time.Minute || n.Generation == 0 || n.FragmentsDigest == "" || n.BaseDigest == "" || len(n.Health) == 0:
				return fmt.Errorf("%s reported as %+v", n.Name, n)
			case n.Certificates != 1:
				return fmt.Errorf("%s counts %d certificates, want 1", n.Name, n.Certificates)
			}
		}
		slices.Sort(seen)
		if !slices.Equal(seen, names) {
			return fmt.Errorf("nodes %v, want %v", seen, names)
		}
		return nil
	})

	// a change deployed to one node and forgotten on the others
	f.nodes[1].in.applyDomains(t, "forgotten", "forgotten")
	var why string
	eventually(t, 20*time.Second, "fleet flagging node1 and exiting 8", func() error {
		r, code, out := fleetCommand(t, f.nodes[0])
		if code != 8 {
			return fmt.Errorf("exit %d:\n%s", code, out)
		}
		for _, n := range r.Nodes {
			if n.Flagged != (n.Name == "node1") {
				return fmt.Errorf("%s flagged %v (%s)", n.Name, n.Flagged, n.Why)
			}
			if n.Flagged && n.Why == "" {
				return fmt.Errorf("%s flagged without a reason", n.Name)
			}
			if n.Flagged {
				why = n.Why
			}
		}
		return nil
	})
	stdout, _, code := run(t, f.nodes[2].in.env, "", "fleet")
	if code != 8 || !strings.Contains(stdout, "node1") {
		t.Errorf("fleet: exit %d, want 8 and node1 named:\n%s", code, stdout)
	}
	t.Logf("node1 flagged: %s", why)
}
