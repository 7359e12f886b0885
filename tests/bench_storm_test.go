package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// BenchmarkReloadStorm measures what a reload storm costs clients: for each
// load mode, quiet runs and storm runs of the same length (8 changes each,
// every one a verified reload, one every stormPace) against the same
// daemon, HAProxy and backend server. Quiet and storm alternate three
// times, so that other load on a shared machine weighs on both alike. It
// prints a table and reports requests per second and p50/p99 latency of
// both. About 60 s. Run:
// go test -run '^$' -bench ReloadStorm -benchtime 1x ./tests/
func BenchmarkReloadStorm(b *testing.B) {
	const (
		rounds  = 3
		changes = 8 // per storm run
	)
	quiet := changes*stormPace + stormTail // as long as a storm run
	in, target := stormInstall(b)
	in.startDaemon(b)
	short := map[loadMode]string{loadConnPerRequest: "close", loadKeepAlive: "ka"}
	for b.Loop() {
		var table strings.Builder
		fmt.Fprintf(&table, "\n%-17s %-6s %8s %9s %8s %8s %7s %8s\n", "mode", "run", "requests", "req/s", "p50 ms", "p99 ms", "failed", "reloads")
		version := 1
		for _, mode := range []loadMode{loadConnPerRequest, loadKeepAlive} {
			var quietRuns, stormRuns *loadResult
			reloads := 0
			for range rounds {
				for _, n := range []int{0, changes} {
					r, err := runStorm(b, in, target, mode, version, n, quiet)
					version += n
					if err != nil {
						b.Fatalf("%s run with %d changes: %v", mode, n, err)
					}
					sum := &quietRuns
					if n > 0 {
						sum = &stormRuns
						reloads += r.after.reloads - r.before.reloads
					}
					if *sum == nil {
						*sum = &loadResult{mode: mode, workers: r.load.workers, failures: map[string]int{}}
					}
					(*sum).add(r.load)
				}
			}
			for _, run := range []struct {
				name    string
				res     *loadResult
				reloads int
			}{{"quiet", quietRuns, 0}, {"storm", stormRuns, reloads}} {
				res := run.res
				if res.failed() > 0 {
					b.Errorf("%s %s runs: %d requests failed (%s): %s", mode, run.name, res.failed(), res.failureSummary(), strings.Join(res.examples, "\n"))
				}
				fmt.Fprintf(&table, "%-17s %-6s %8d %9.0f %8.2f %8.2f %7d %8d\n", mode, run.name, res.requests, res.rps(),
					ms(res.quantile(0.5)), ms(res.quantile(0.99)), res.failed(), run.reloads)
				prefix := short[mode] + "-" + run.name
				b.ReportMetric(res.rps(), prefix+"-req/s")
				b.ReportMetric(ms(res.quantile(0.5)), prefix+"-p50-ms")
				b.ReportMetric(ms(res.quantile(0.99)), prefix+"-p99-ms")
			}
		}
		fmt.Fprintf(&table, "(%d workers with a connection per request, %d keep-alive; %d quiet and %d storm runs of %s per mode, alternating; storm: a reload every %s)",
			stormWorkers[loadConnPerRequest], stormWorkers[loadKeepAlive], rounds, rounds, (stormLead + quiet).Round(100*time.Millisecond), stormPace)
		b.Log(table.String())
	}
}
