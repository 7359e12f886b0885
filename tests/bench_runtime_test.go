package tests

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// BenchmarkMapOnlyChange measures a change of the host map alone (a domain
// moved between two backends and one added) going live through the
// runtime API, on an idle daemon with benchFragments other tenants. Each
// iteration is 50 changes; the metrics are the median and p99 of the CLI's
// apply --wait end to end and of the daemon's own time from seeing the
// change to the runtime map read back equal to the file (status
// last_runtime_update.duration_ms). Run: make bench (or go test -run '^$'
// -bench MapOnly -benchtime 1x ./tests/).
func BenchmarkMapOnlyChange(b *testing.B) {
	in := newInstall(b)
	seedStore(b, in, benchFragments)
	dir := b.TempDir()
	conf := writeFile(b, filepath.Join(dir, "shop.cfg"), rtConf)
	in.startDaemon(b)
	const changes = 50
	for b.Loop() {
		var cli, internal []time.Duration
		reloads := in.status(b).Counts.Reloads
		for i := range changes {
			hosts := writeFile(b, filepath.Join(dir, "shop.map"),
				fmt.Sprintf("moving.shop.example %s\nn%d.shop.example shop_a\n", []string{"shop_a", "shop_b"}[i%2], i))
			start := time.Now()
			cmd := exec.Command(binary, "apply", "--wait", "shop", conf, hosts)
			cmd.Env = childEnv(in.env)
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("apply --wait: %v\n%s", err, out)
			}
			cli = append(cli, time.Since(start))
			st := in.status(b)
			if i == 0 {
				continue // the first apply adds the fragment's backends: a reload
			}
			if st.LastRuntime == nil || st.Live == nil || st.LastRuntime.Generation != st.Live.Generation {
				b.Fatalf("change %d did not go live at runtime: %+v", i, st.LastRuntime)
			}
			internal = append(internal, time.Duration(st.LastRuntime.DurationMS*float64(time.Millisecond)))
		}
		cli = cli[1:]
		if n := in.status(b).Counts.Reloads - reloads; n != 1 {
			b.Fatalf("%d reloads for one config change and %d map-only changes, want 1", n, changes-1)
		}
		slices.Sort(cli)
		slices.Sort(internal)
		b.ReportMetric(ms(percentile(cli, 0.5)), "cli-p50-ms")
		b.ReportMetric(ms(percentile(cli, 0.99)), "cli-p99-ms")
		b.ReportMetric(ms(percentile(internal, 0.5)), "daemon-p50-ms")
		b.ReportMetric(ms(percentile(internal, 0.99)), "daemon-p99-ms")
		fmt.Printf("map-only change, %d changes, %d other tenants\n%-34s %8s %8s\n", len(cli), benchFragments, "", "p50 ms", "p99 ms")
		fmt.Printf("%-34s %8.2f %8.2f\n", "apply --wait (CLI, end to end)", ms(percentile(cli, 0.5)), ms(percentile(cli, 0.99)))
		fmt.Printf("%-34s %8.2f %8.2f\n", "daemon: change seen -> map verified", ms(percentile(internal, 0.5)), ms(percentile(internal, 0.99)))
	}
}
