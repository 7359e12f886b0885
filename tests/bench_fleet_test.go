package tests

import (
	"bufio"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkFleet100 measures issue #13's fleet against one node: 100 new
// domains applied to every node of a fleet of three, and of a fleet of
// one, with Pebble's validation skipped (PEBBLE_VA_ALWAYS_VALID: our own
// overhead) and with real HTTP-01 validation through the anycast front.
// It reports the orders Pebble saw, the time from the first apply until
// every node serves a Pebble-verified certificate for every domain, the
// requests the etcd cluster received (every gRPC message of the KV,
// Lease and Watch services, summed over the three members: heartbeats,
// locks, values, tokens, watches), and each node's daemon CPU (the mean)
// and peak RSS (the largest). The floor is BenchmarkCerts100's
// in-flight-16 rows, one node without etcd, in the same run. Every node
// has ACME_IN_FLIGHT=16 and the default heartbeat (10 s).
//
//	go test -run '^$' -bench Fleet100 -benchtime 1x ./tests/
func BenchmarkFleet100(b *testing.B) {
	const n = 100
	for _, mode := range []struct {
		name        string
		alwaysValid bool
	}{{"always-valid", true}, {"http-01", false}} {
		for _, nodes := range []int{1, 3} {
			b.Run(fmt.Sprintf("%s/nodes=%d", mode.name, nodes), func(b *testing.B) {
				for range b.N {
					benchFleet(b, n, nodes, mode.alwaysValid)
				}
			})
		}
	}
}

func benchFleet(b *testing.B, n, nodes int, alwaysValid bool) {
	f := newFleetWith(b, nodes, pebbleOptions{alwaysValid: alwaysValid},
		"HAPROXY_CONFIG_ACME_PROFILE=default", "HAPROXY_CONFIG_ACME_IN_FLIGHT=16", "HAPROXY_CONFIG_FLEET_HEARTBEAT=10s")
	f.startAll(b)
	hosts := hosts("site", n)
	var m strings.Builder
	for _, h := range hosts {
		fmt.Fprintf(&m, "%s b_many\n", h)
	}
	dir := b.TempDir()
	conf := writeFile(b, filepath.Join(dir, "many.cfg"), backendConf("b_many", "many"))
	mapFile := writeFile(b, filepath.Join(dir, "many.map"), m.String())

	requests0 := f.etcdRequests(b)
	cpu0 := make([]time.Duration, nodes)
	for i, nd := range f.nodes {
		cpu0[i], _, _ = procTimes(b, nd.d.pid())
	}
	start := time.Now()
	for _, nd := range f.nodes {
		mustRun(b, nd.in.env, "", "apply", "--wait", "many", conf, mapFile)
	}
	roots := f.pebble.roots(b)
	deadline := time.Now().Add(10 * time.Minute)
	for _, nd := range f.nodes {
		for _, h := range hosts {
			for {
				if _, err := nd.in.servedCert(h, roots); err == nil {
					break
				} else if time.Now().After(deadline) {
					b.Fatalf("%s does not serve %s a verified certificate 10 minutes after the apply: %v", nd.name, h, err)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	elapsed := time.Since(start)
	requests := f.etcdRequests(b) - requests0
	var cpuSum time.Duration
	peakMax := 0
	var perNode []string
	for i, nd := range f.nodes {
		cpu, peak, rss := procTimes(b, nd.d.pid())
		cpuSum += cpu - cpu0[i]
		peakMax = max(peakMax, peak)
		perNode = append(perNode, fmt.Sprintf("%s: CPU %v, peak RSS %.1f MB, RSS %.1f MB", nd.name, cpu-cpu0[i], float64(peak)/1024, float64(rss)/1024))
	}
	orders := f.pebble.orders(b)
	if orders < n {
		b.Errorf("Pebble saw %d orders for %d domains", orders, n)
	}
	b.ReportMetric(elapsed.Seconds(), "s-all-served")
	b.ReportMetric(float64(orders), "orders")
	b.ReportMetric(float64(requests), "etcd-requests")
	b.ReportMetric((cpuSum / time.Duration(nodes)).Seconds(), "cpu-s-per-node")
	b.ReportMetric(float64(peakMax)/1024, "peak-rss-MB-max")
	b.Logf("%d nodes, %d domains: every node serves every certificate %v after the first apply; Pebble saw %d orders; etcd received %d requests; %s",
		nodes, n, elapsed.Round(time.Millisecond), orders, requests, strings.Join(perNode, "; "))
}

// etcdRequests sums, over the fleet's etcd members, the gRPC messages
// they received for the KV, Lease and Watch services (their
// /metrics' grpc_server_msg_received_total): the nodes' requests, not the
// members' health and maintenance traffic.
func (f *testFleet) etcdRequests(tb testing.TB) int {
	tb.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	total := 0
	for _, m := range f.etcd.Members {
		resp, err := client.Get(m.ClientURL + "/metrics")
		if err != nil {
			tb.Fatalf("etcd metrics of %s: %v", m.Name, err)
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "grpc_server_msg_received_total{") {
				continue
			}
			if !strings.Contains(line, `grpc_service="etcdserverpb.KV"`) && !strings.Contains(line, `grpc_service="etcdserverpb.Lease"`) &&
				!strings.Contains(line, `grpc_service="etcdserverpb.Watch"`) {
				continue
			}
			v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			if err != nil {
				tb.Fatalf("etcd metrics of %s: %q: %v", m.Name, line, err)
			}
			total += int(v)
		}
		resp.Body.Close()
		if err := sc.Err(); err != nil {
			tb.Fatalf("etcd metrics of %s: %v", m.Name, err)
		}
	}
	return total
}
