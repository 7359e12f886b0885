package tests

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"haproxy-config/internal/testkit"
	"haproxy-config/reload"
)

// benchFragments is "a few hundred" tenants, each one backend and two
// domains, written into the store before the daemon starts.
const benchFragments = 300

// seedStore writes n fragments straight into the store.
func seedStore(tb testing.TB, in *install, n int) {
	tb.Helper()
	dir := in.fragmentsDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("tenant%04d", i)
		conf := backendConf("be_"+name, name) + fmt.Sprintf("    server s1 127.0.0.1:%d\n    server s2 127.0.0.1:%d\n", in.serverPort(20000+i), in.serverPort(30000+i))
		if err := os.WriteFile(filepath.Join(dir, name+".cfg"), []byte(conf), 0o644); err != nil {
			tb.Fatal(err)
		}
		hosts := fmt.Sprintf("%s.example.com be_%s\nwww.%s.example.com be_%s\n", name, name, name, name)
		if err := os.WriteFile(filepath.Join(dir, name+".map"), []byte(hosts), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
}

// percentile of sorted durations, nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(float64(len(sorted))*p+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// reportLatencies sorts lat and reports its median and p99 as NAME-p50-ms
// and NAME-p99-ms.
func reportLatencies(b *testing.B, name string, lat []time.Duration) {
	slices.Sort(lat)
	b.ReportMetric(ms(percentile(lat, 0.5)), name+"-p50-ms")
	b.ReportMetric(ms(percentile(lat, 0.99)), name+"-p99-ms")
}

// BenchmarkApplyToLive measures apply --wait on an idle daemon with a
// managed HAProxy and benchFragments tenants, and with 10,000, against
// the floor: haproxy -c of the same configuration plus one verified
// reload. Each iteration is 50 applies (6 at 10,000); the metrics are
// their median and p99, the floor's median, and the ratio of the medians.
// Run: make bench (or go test -run '^$' -bench ApplyToLive -benchtime 1x
// ./tests/).
func BenchmarkApplyToLive(b *testing.B) {
	for _, size := range []struct{ fragments, applies int }{{benchFragments, 50}, {10000, 6}} {
		b.Run(fmt.Sprintf("fragments=%d", size.fragments), func(b *testing.B) {
			in := newInstall(b)
			in.startWait = 5 * time.Minute // 10,000 fragments on a busy machine
			seedStore(b, in, size.fragments)
			// an idle daemon: the rate limit must not be what is measured
			in.env = in.with("HAPROXY_CONFIG_RELOAD_INTERVAL=10ms")
			in.startDaemon(b)
			dir := b.TempDir()
			hosts := writeFile(b, filepath.Join(dir, "bench.map"), "bench.example.com bench_web\n")
			for b.Loop() {
				var lat, floor []time.Duration
				for i := 0; i < size.applies; i++ {
					conf := writeFile(b, filepath.Join(dir, "bench.cfg"), backendConf("bench_web", fmt.Sprint("v", i)))
					start := time.Now()
					cmd := exec.Command(binary, "apply", "--wait", "bench", conf, hosts)
					cmd.Env = childEnv(in.env)
					out, err := cmd.CombinedOutput()
					if err != nil {
						b.Fatalf("apply --wait: %v\n%s", err, out)
					}
					lat = append(lat, time.Since(start))
					floor = append(floor, in.floor(b))
				}
				reportLatencies(b, "apply-live", lat)
				reportLatencies(b, "floor", floor)
				b.ReportMetric(float64(percentile(lat, 0.5))/float64(percentile(floor, 0.5)), "ratio-p50")
			}
		})
	}
}

// floor times haproxy -c of the live config plus a reload through the
// master CLI, seen done by show proc and the status endpoint.
func (in *install) floor(b *testing.B) time.Duration {
	b.Helper()
	haproxy, err := testkit.HaproxyBinary()
	if err != nil {
		b.Fatal(err)
	}
	cli := &reload.MasterCLI{Path: filepath.Join(in.root, "run/haproxy-config/master.sock")}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	if out, err := exec.Command(haproxy, "-c", "-q", "-f", in.liveConfig()).CombinedOutput(); err != nil {
		b.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	before, err := cli.ShowProc(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if err := cli.Reload(ctx); err != nil {
		b.Fatal(err)
	}
	if _, err := cli.WaitReloaded(ctx, before); err != nil {
		b.Fatal(err)
	}
	want := in.status(b).Live.Marker
	for {
		if got := in.marker(); got == want {
			return time.Since(start)
		}
		if ctx.Err() != nil {
			b.Fatalf("marker %q not served", want)
		}
		time.Sleep(time.Millisecond)
	}
}

// marker asks the status frontend which generation serves.
func (in *install) marker() string {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	resp, err := client.Get("http://127.0.0.1:" + in.statusPort + "/")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(body))
}
