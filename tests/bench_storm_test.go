package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// BenchmarkReloadStorm measures what a reload storm costs clients: for each
// load mode, a quiet run and a storm run of the same length (25 changes,
// each a verified reload, one every stormPace) against the same daemon,
// HAProxy and backend server. It prints a table and reports requests per
// second and p50/p99 latency of both runs. About 50 s. Run:
// go test -run '^$' -bench ReloadStorm -benchtime 1x ./tests/
func BenchmarkReloadStorm(b *testing.B) {
	const changes = 25
	quiet := changes*stormPace + stormTail // as long as a storm run
	in, target := stormInstall(b)
	in.startDaemon(b)
	short := map[loadMode]string{loadConnPerRequest: "close", loadKeepAlive: "ka"}
	for b.Loop() {
		var table strings.Builder
		fmt.Fprintf(&table, "\n%-17s %-6s %8s %9s %8s %8s %7s %8s\n", "mode", "run", "requests", "req/s", "p50 ms", "p99 ms", "failed", "reloads")
		version := 1
		for _, mode := range []loadMode{loadConnPerRequest, loadKeepAlive} {
			for _, storm := range []bool{false, true} {
				n, run := 0, "quiet"
				if storm {
					n, run = changes, "storm"
				}
				r, err := runStorm(b, in, target, mode, version, n, quiet)
				version += n
				if err != nil {
					b.Fatalf("%s %s run: %v", mode, run, err)
				}
				if r.load.failed() > 0 {
					b.Errorf("%s %s run: %d requests failed (%s): %s", mode, run, r.load.failed(), r.load.failureSummary(), strings.Join(r.load.examples, "\n"))
				}
				fmt.Fprintf(&table, "%-17s %-6s %8d %9.0f %8.2f %8.2f %7d %8d\n", mode, run, r.load.requests, r.load.rps(),
					ms(r.load.quantile(0.5)), ms(r.load.quantile(0.99)), r.load.failed(), r.after.reloads-r.before.reloads)
				prefix := short[mode] + "-" + run
				b.ReportMetric(r.load.rps(), prefix+"-req/s")
				b.ReportMetric(ms(r.load.quantile(0.5)), prefix+"-p50-ms")
				b.ReportMetric(ms(r.load.quantile(0.99)), prefix+"-p99-ms")
			}
		}
		fmt.Fprintf(&table, "(%d workers with a connection per request, %d keep-alive; each run %s; storm: a reload every %s)",
			stormWorkers[loadConnPerRequest], stormWorkers[loadKeepAlive], (stormLead + quiet).Round(100*time.Millisecond), stormPace)
		b.Log(table.String())
	}
}
