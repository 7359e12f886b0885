package tests

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"haproxy-config/watcher"
)

// BenchmarkAPIApply measures one apply (config change, no --wait) with
// benchFragments tenants stored: its round trip over the daemon's API
// socket from this process (connect, request, the accepted answer: stored
// and fsynced), the same for map-only changes, the
// CLI process that sends it there, and the CLI doing the work itself with
// no daemon (today's path). Each iteration is 50 applies of each; the
// metrics are medians and p99s. Run: go test -run '^$' -bench APIApply
// -benchtime 1x ./tests/
func BenchmarkAPIApply(b *testing.B) {
	in := newInstall(b)
	seedStore(b, in, benchFragments)
	dir := b.TempDir()
	hosts := writeFile(b, filepath.Join(dir, "bench.map"), "bench.example.com bench_web\n")
	const applies = 50
	cli := func(i int) time.Duration {
		conf := writeFile(b, filepath.Join(dir, "bench.cfg"), backendConf("bench_web", fmt.Sprint("v", i)))
		start := time.Now()
		cmd := exec.Command(binary, "apply", "bench", conf, hosts)
		cmd.Env = childEnv(in.env)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("apply: %v\n%s", err, out)
		}
		return time.Since(start)
	}
	for b.Loop() {
		var local, viaCLI, viaSocket []time.Duration
		for i := range applies {
			local = append(local, cli(i))
		}
		d := in.startDaemon(b)
		for i := range applies {
			viaCLI = append(viaCLI, cli(applies+i))
		}
		send := func(req *watcher.Request) time.Duration {
			start := time.Now()
			c, err := watcher.Dial(in.apiSocket())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Send(context.Background(), req); err != nil {
				b.Fatal(err)
			}
			return time.Since(start)
		}
		for i := range applies {
			viaSocket = append(viaSocket, send(&watcher.Request{Op: watcher.OpApply, Name: "bench", ConfFile: "bench.cfg",
				Conf: []byte(backendConf("bench_web", fmt.Sprint("w", i))), MapFile: "bench.map", Map: []byte("bench.example.com bench_web\n")}))
		}
		// the same config part each time, one more domain: map-only
		var mapOnly []time.Duration
		conf := []byte(backendConf("bench_web", "w-map"))
		send(&watcher.Request{Op: watcher.OpApply, Name: "bench", ConfFile: "bench.cfg", Conf: conf, MapFile: "bench.map", Map: []byte("bench.example.com bench_web\n")})
		for i := range applies {
			mapOnly = append(mapOnly, send(&watcher.Request{Op: watcher.OpApply, Name: "bench", ConfFile: "bench.cfg", Conf: conf,
				MapFile: "bench.map", Map: fmt.Appendf(nil, "bench.example.com bench_web\nm%d.example.com bench_web\n", i)}))
		}
		d.stop(b)
		reportLatencies(b, "cli-no-daemon", local)
		reportLatencies(b, "cli-via-daemon", viaCLI)
		reportLatencies(b, "socket-round-trip", viaSocket)
		reportLatencies(b, "socket-map-only", mapOnly)
	}
}
