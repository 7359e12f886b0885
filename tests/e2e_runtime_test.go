package tests

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"haproxy-config/reload"
)

// rtConf is the config part of the fragment whose map the runtime tests
// change: two backends, told apart by their answers.
const rtConf = "backend shop_a\n    http-request return status 200 content-type text/plain string \"a\"\n" +
	"backend shop_b\n    http-request return status 200 content-type text/plain string \"b\"\n"

// rtRuntime is the runtime API of the installation's HAProxy.
func (in *install) rtRuntime() *reload.Runtime {
	return &reload.Runtime{Path: filepath.Join(in.root, "run/haproxy-config/admin.sock"), Timeout: 5 * time.Second}
}

func (in *install) liveMapFile() string { return filepath.Join(in.stateDir(), "live/hosts.map") }

// readHostMap reads a host map file: domain -> backend.
func readHostMap(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	entries := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		w := strings.Fields(sc.Text())
		if len(w) == 2 && !strings.HasPrefix(w[0], "#") {
			entries[w[0]] = w[1]
		}
	}
	return entries
}

// runtimeMap reads HAProxy's host map through the stats socket.
func (in *install) runtimeMap(t *testing.T) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rt := in.rtRuntime()
	ref, err := rt.FindMap(ctx, "hosts.map")
	if err != nil {
		t.Fatalf("find the host map: %v", err)
	}
	entries, dups, err := rt.ShowMap(ctx, ref)
	if err != nil {
		t.Fatalf("show map: %v", err)
	}
	if len(dups) > 0 {
		t.Errorf("the runtime map has duplicated keys: %v", dups)
	}
	return entries
}

// expectMapsAgree fails unless the runtime map equals the live map file.
func (in *install) expectMapsAgree(t *testing.T) {
	t.Helper()
	file, live := readHostMap(t, in.liveMapFile()), in.runtimeMap(t)
	if !maps.Equal(file, live) {
		t.Errorf("runtime map (%d entries) differs from the live map file (%d entries)", len(live), len(file))
	}
}

// masterReloads is the master's reload counter (show proc).
func (in *install) masterReloads(t *testing.T) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cli := &reload.MasterCLI{Path: filepath.Join(in.root, "run/haproxy-config/master.sock")}
	p, err := cli.ShowProc(ctx)
	if err != nil {
		t.Fatalf("show proc: %v", err)
	}
	return p.Master.Reloads
}

// hostMapText renders domain -> backend as a fragment's map part.
func hostMapText(m map[string]string) string {
	var b strings.Builder
	for _, d := range slices.Sorted(maps.Keys(m)) {
		b.WriteString(d + " " + m[d] + "\n")
	}
	return b.String()
}

// applyWait applies fragment name with --wait and fails the test unless it
// went live.
func (in *install) applyWait(t *testing.T, dir, name, conf, hostMap string) {
	t.Helper()
	if err := in.apply(t, dir, name, conf, hostMap, "--wait"); err != nil {
		t.Fatal(err)
	}
}

// apply applies fragment name from files written in dir; safe to call
// from several goroutines with different dirs.
func (in *install) apply(t *testing.T, dir, name, conf, hostMap string, flags ...string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	c, m := filepath.Join(dir, name+".cfg"), filepath.Join(dir, name+".map")
	if err := os.WriteFile(c, []byte(conf), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(m, []byte(hostMap), 0o644); err != nil {
		return err
	}
	args := append(append([]string{"apply"}, flags...), name, c, m)
	if out, errOut, code := run(t, in.env, "", args...); code != 0 {
		return fmt.Errorf("apply %s %s: exit %d\n%s%s", strings.Join(flags, " "), name, code, out, errOut)
	}
	return nil
}

// wantRoute is what a host should get: "a", "b", or "" for the 404 page.
func (in *install) expectRoute(t *testing.T, host, backend string) {
	t.Helper()
	if backend == "" {
		in.expectUnknown(t, host)
		return
	}
	in.expectBody(t, host, strings.TrimPrefix(backend, "shop_"))
}

// background keeps requesting host until stop and counts failures.
func (in *install) background(t *testing.T, host, body string) (stop func() (ok, failed int)) {
	done := make(chan struct{})
	var okN, failN atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			if code, got, err := in.get(host, "/"); err != nil || code != 200 || got != body {
				failN.Add(1)
			} else {
				okN.Add(1)
			}
		}
	})
	return func() (int, int) {
		close(done)
		wg.Wait()
		return int(okN.Load()), int(failN.Load())
	}
}

// TestRuntimeMapOnlyChanges makes 500 map-only changes (domains added,
// removed and moved between the two backends of a stored fragment) while a
// client keeps sending requests. The changes go in 125 applies of 4 each,
// to keep the test well under a minute: every one goes live without a
// reload, and each change is visible to the next request.
func TestRuntimeMapOnlyChanges(t *testing.T) {
	in := newInstall(t)
	dir := t.TempDir()
	hosts := map[string]string{"steady.shop.example": "shop_a"}
	for i := range 20 {
		hosts[fmt.Sprintf("h%d.shop.example", i)] = []string{"shop_a", "shop_b"}[i%2]
	}
	if err := in.apply(t, dir, "shop", rtConf, hostMapText(hosts)); err != nil {
		t.Fatal(err)
	}
	in.startDaemon(t, "HAPROXY_CONFIG_WAIT_MIN=50ms")
	in.expectBody(t, "steady.shop.example", "a")
	before := in.status(t).Counts
	reloadsBefore := in.masterReloads(t)
	stop := in.background(t, "steady.shop.example", "a")

	const changes, perApply = 500, 4
	next := 20
	for round := 0; round < changes/perApply; round++ {
		changed := map[string]string{}
		for k := range perApply {
			switch (round*perApply + k) % 3 {
			case 0: // add
				d := fmt.Sprintf("h%d.shop.example", next)
				next++
				changed[d] = []string{"shop_a", "shop_b"}[next%2]
			case 1: // move the oldest domain not yet touched in this round
				for _, d := range slices.Sorted(maps.Keys(hosts)) {
					if _, seen := changed[d]; !seen && d != "steady.shop.example" {
						changed[d] = map[string]string{"shop_a": "shop_b", "shop_b": "shop_a"}[hosts[d]]
						break
					}
				}
			case 2: // remove the newest domain not yet touched in this round
				for _, d := range slices.Backward(slices.Sorted(maps.Keys(hosts))) {
					if _, seen := changed[d]; !seen && d != "steady.shop.example" {
						changed[d] = ""
						break
					}
				}
			}
		}
		for d, b := range changed {
			if b == "" {
				delete(hosts, d)
			} else {
				hosts[d] = b
			}
		}
		in.applyWait(t, dir, "shop", rtConf, hostMapText(hosts))
		for d, b := range changed {
			in.expectRoute(t, d, b)
		}
	}
	ok, failed := stop()
	if failed > 0 || ok == 0 {
		t.Errorf("background requests during the changes: %d ok, %d failed; want all ok", ok, failed)
	}
	after := in.status(t).Counts
	if after.Reloads != before.Reloads || after.ReloadsFailed != before.ReloadsFailed {
		t.Errorf("reloads went from %d to %d (failed %d to %d); want none", before.Reloads, after.Reloads, before.ReloadsFailed, after.ReloadsFailed)
	}
	if got := in.masterReloads(t); got != reloadsBefore {
		t.Errorf("show proc counts %d reloads, %d before the changes; want no reload", got, reloadsBefore)
	}
	if n := after.RuntimeUpdates - before.RuntimeUpdates; n != changes/perApply {
		t.Errorf("%d runtime updates counted, want %d (one per apply)", n, changes/perApply)
	}
	if after.RuntimeFallbacks != 0 || after.DriftRepairs != 0 {
		t.Errorf("runtime fallbacks %d, drift repairs %d; want none", after.RuntimeFallbacks, after.DriftRepairs)
	}
	if file := readHostMap(t, in.liveMapFile()); !maps.Equal(file, hosts) {
		t.Errorf("the live map file has %d entries, want the %d applied", len(file), len(hosts))
	}
	in.expectMapsAgree(t)
	t.Logf("%d changes in %d applies, %d background requests, runtime updates %d", changes, changes/perApply, ok, after.RuntimeUpdates)
}

// TestRuntimeRacingReload submits a change that needs a reload and a
// map-only change at the same time, many rounds: no entry applied at
// runtime is lost by the reload, and the runtime map ends equal to the file.
func TestRuntimeRacingReload(t *testing.T) {
	in := newInstall(t)
	in.env = in.with("HAPROXY_CONFIG_WAIT_MIN=50ms", "HAPROXY_CONFIG_RELOAD_INTERVAL=100ms")
	dir := t.TempDir()
	hosts := map[string]string{"steady.shop.example": "shop_a"}
	if err := in.apply(t, dir, "shop", rtConf, hostMapText(hosts)); err != nil {
		t.Fatal(err)
	}
	in.startDaemon(t)
	before := in.status(t).Counts
	const rounds = 12
	for round := range rounds {
		hosts[fmt.Sprintf("r%d.shop.example", round)] = []string{"shop_a", "shop_b"}[round%2]
		mapText := hostMapText(hosts)
		var wg sync.WaitGroup
		var cfgErr, mapErr error
		// each goroutine has its own input directory: the files differ
		wg.Go(func() {
			cfgErr = in.apply(t, filepath.Join(dir, "cfg"), "site", backendConf("site_web", fmt.Sprint("v", round)), "site.example site_web\n", "--wait")
		})
		wg.Go(func() { mapErr = in.apply(t, filepath.Join(dir, "map"), "shop", rtConf, mapText, "--wait") })
		wg.Wait()
		if cfgErr != nil || mapErr != nil {
			t.Fatalf("round %d: config change: %v; map change: %v", round, cfgErr, mapErr)
		}
		in.expectBody(t, "site.example", fmt.Sprint("v", round))
		for d, b := range hosts {
			in.expectRoute(t, d, b)
		}
		in.expectMapsAgree(t)
	}
	after := in.status(t).Counts
	if after.Reloads-before.Reloads < rounds/2 {
		t.Errorf("%d reloads for %d config changes: the race was not exercised", after.Reloads-before.Reloads, rounds)
	}
	t.Logf("%d rounds: %d reloads, %d runtime updates, %d drift repairs, %d fallbacks", rounds,
		after.Reloads-before.Reloads, after.RuntimeUpdates-before.RuntimeUpdates, after.DriftRepairs, after.RuntimeFallbacks)
}

// TestRuntimeSocketGone removes the stats socket's file: a map-only change
// still goes live, through a reload counted as a runtime fallback.
func TestRuntimeSocketGone(t *testing.T) {
	in := newInstall(t)
	dir := t.TempDir()
	if err := in.apply(t, dir, "shop", rtConf, "one.shop.example shop_a\n"); err != nil {
		t.Fatal(err)
	}
	in.startDaemon(t, "HAPROXY_CONFIG_WAIT_MIN=50ms")
	before := in.status(t).Counts
	if err := os.Remove(in.rtRuntime().Path); err != nil {
		t.Fatalf("remove the stats socket: %v", err)
	}
	in.applyWait(t, dir, "shop", rtConf, "one.shop.example shop_b\ntwo.shop.example shop_a\n")
	in.expectBody(t, "one.shop.example", "b")
	in.expectBody(t, "two.shop.example", "a")
	after := in.status(t).Counts
	if after.RuntimeFallbacks != before.RuntimeFallbacks+1 || after.Reloads != before.Reloads+1 {
		t.Errorf("runtime fallbacks %d -> %d, reloads %d -> %d; want one more of each",
			before.RuntimeFallbacks, after.RuntimeFallbacks, before.Reloads, after.Reloads)
	}
	if after.RuntimeUpdates != before.RuntimeUpdates {
		t.Errorf("runtime updates %d -> %d without a socket", before.RuntimeUpdates, after.RuntimeUpdates)
	}
	out, _, code := run(t, in.env, "", "status")
	if code != 0 || !strings.Contains(out, "0 live at runtime, ") || !strings.Contains(out, "1 runtime fallbacks to a reload") {
		t.Errorf("status (exit %d) does not report the fallback:\n%s", code, out)
	}
}
