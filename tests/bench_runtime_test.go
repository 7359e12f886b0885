package tests

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkMapOnlyChange measures a change of the host map alone (a domain
// moved between two backends and one added) going live through the
// runtime API, on an idle daemon with benchFragments other tenants. Each
// iteration is 50 changes; the metrics are the median and p99 of the CLI's apply --wait end
// to end and of the daemon's own time from seeing the change to the
// changed keys read back from the runtime map (status
// last_runtime_update.duration_ms). Run: make bench (or go test -run '^$'
// -bench MapOnly -benchtime 1x ./tests/).
func BenchmarkMapOnlyChange(b *testing.B) {
	// #12: a row at 10,000 tenants waits for the daemon to start at that
	// size within startDaemon's 30 s, which it does not yet
	b.Run(fmt.Sprint(benchFragments), func(b *testing.B) { benchMapOnly(b, benchFragments, 50) })
}

func benchMapOnly(b *testing.B, tenants, changes int) {
	in := newInstall(b)
	seedStore(b, in, tenants)
	dir := b.TempDir()
	conf := writeFile(b, filepath.Join(dir, "shop.cfg"), rtConf)
	in.startDaemon(b)
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
		reportLatencies(b, "cli", cli)
		reportLatencies(b, "daemon", internal)
		fmt.Printf("map-only change, %d changes, %d other tenants\n%-34s %8s %8s\n", len(cli), tenants, "", "p50 ms", "p99 ms")
		fmt.Printf("%-34s %8.2f %8.2f\n", "apply --wait (CLI, end to end)", ms(percentile(cli, 0.5)), ms(percentile(cli, 0.99)))
		fmt.Printf("%-34s %8.2f %8.2f\n", "daemon: change seen -> map verified", ms(percentile(internal, 0.5)), ms(percentile(internal, 0.99)))
	}
}

// BenchmarkMapOnlyInterleaved alternates a config change of one tenant
// and a map-only change of another, each apply --wait in turn, among 100
// tenants with the default reload rate limit: the config changes wait for
// their reload tokens, the map-only ones must not. The metrics are the
// median and p99 of each kind's apply --wait end to end, and the reloads
// per config change. Run: make bench (or go test -run '^$' -bench
// Interleaved -benchtime 1x ./tests/).
func BenchmarkMapOnlyInterleaved(b *testing.B) {
	in := newInstall(b)
	seedStore(b, in, 100)
	dir := b.TempDir()
	shopConf := writeFile(b, filepath.Join(dir, "shop.cfg"), rtConf)
	siteMap := writeFile(b, filepath.Join(dir, "site.map"), "site.example site_web\n")
	in.startDaemon(b)
	applyWait := func(name, conf, hostMap string) time.Duration {
		start := time.Now()
		cmd := exec.Command(binary, "apply", "--wait", name, conf, hostMap)
		cmd.Env = childEnv(in.env)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("apply --wait %s: %v\n%s", name, err, out)
		}
		return time.Since(start)
	}
	const rounds = 20
	for b.Loop() {
		var cfg, mapOnly []time.Duration
		reloads := in.status(b).Counts.Reloads
		for i := range rounds {
			siteConf := writeFile(b, filepath.Join(dir, "site.cfg"), backendConf("site_web", fmt.Sprint("v", i)))
			cfg = append(cfg, applyWait("site", siteConf, siteMap))
			hosts := writeFile(b, filepath.Join(dir, "shop.map"),
				fmt.Sprintf("moving.shop.example %s\nn%d.shop.example shop_a\n", []string{"shop_a", "shop_b"}[i%2], i))
			d := applyWait("shop", shopConf, hosts)
			if i > 0 { // the first adds shop's backends: a reload
				mapOnly = append(mapOnly, d)
			}
		}
		n := in.status(b).Counts.Reloads - reloads
		reportLatencies(b, "config", cfg)
		reportLatencies(b, "maponly", mapOnly)
		b.ReportMetric(float64(n)/rounds, "reloads/config-change")
		fmt.Printf("interleaved: %d config changes and %d map-only changes in turn, 100 other tenants, %d reloads\n%-34s %8s %8s\n",
			len(cfg), len(mapOnly), n, "apply --wait (CLI, end to end)", "p50 ms", "p99 ms")
		fmt.Printf("%-34s %8.2f %8.2f\n", "config change", ms(percentile(cfg, 0.5)), ms(percentile(cfg, 0.99)))
		fmt.Printf("%-34s %8.2f %8.2f\n", "map-only change", ms(percentile(mapOnly, 0.5)), ms(percentile(mapOnly, 0.99)))
	}
}
