package tests

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMapOnlyUnderLoad makes 500 map-only changes, one apply --wait each,
// among 300 other tenants, while clients keep requesting over TLS (new
// connections and kept-alive ones): no reload, not a request lost, every
// change live when its apply returns, one reconcile each, and the runtime
// map equal to the file at the end.
func TestMapOnlyUnderLoad(t *testing.T) {
	in := newInstall(t)
	seedStore(t, in, benchFragments)
	dir := t.TempDir()
	hosts := map[string]string{"steady.shop.example": "shop_a"}
	if err := in.apply(t, dir, "shop", rtConf, hostMapText(hosts)); err != nil {
		t.Fatal(err)
	}
	// no rescan within the test, which counts the reconciles
	in.startDaemon(t, "HAPROXY_CONFIG_WAIT_MIN=50ms", "HAPROXY_CONFIG_RESCAN=1h")
	in.expectBody(t, "steady.shop.example", "a")
	before := in.status(t).Counts
	reloadsBefore := in.masterReloads(t)

	ctx, cancel := context.WithCancel(context.Background())
	target := loadTarget{addr: "127.0.0.1:" + in.httpsPort, host: "steady.shop.example", body: "a"}
	results := make([]*loadResult, 2)
	var wg sync.WaitGroup
	for i, mode := range []loadMode{loadConnPerRequest, loadKeepAlive} {
		wg.Go(func() { results[i] = runLoad(ctx, target, mode, 1, nil) })
	}
	const changes = 500
	for i := range changes {
		d := fmt.Sprintf("h%d.shop.example", i/3)
		switch i % 3 {
		case 0:
			hosts[d] = "shop_a"
		case 1:
			hosts[d] = "shop_b"
		case 2:
			delete(hosts, d)
		}
		in.applyWait(t, dir, "shop", rtConf, hostMapText(hosts))
		if i%25 == 0 {
			in.expectRoute(t, d, hosts[d])
		}
	}
	cancel()
	wg.Wait()
	for _, r := range results {
		if r.failed() > 0 || r.requests == 0 {
			t.Errorf("load during the changes: %s; examples: %s", r, strings.Join(r.examples, "; "))
		}
		t.Log(r)
	}
	after := in.status(t).Counts
	if after.Reloads != before.Reloads || after.ReloadsFailed != before.ReloadsFailed {
		t.Errorf("reloads went from %d to %d (failed %d to %d); want none", before.Reloads, after.Reloads, before.ReloadsFailed, after.ReloadsFailed)
	}
	if got := in.masterReloads(t); got != reloadsBefore {
		t.Errorf("show proc counts %d reloads, %d before the changes; want none", got, reloadsBefore)
	}
	if n := after.RuntimeUpdates - before.RuntimeUpdates; n != changes {
		t.Errorf("%d runtime updates, want %d (one per apply)", n, changes)
	}
	// the history line and the file events of an API change come after
	// the publish its commit asked for, and change nothing (#12)
	if n := after.Reconciles - before.Reconciles; n != changes {
		t.Errorf("%d reconciles, want %d (one per apply)", n, changes)
	}
	if after.RuntimeFallbacks != before.RuntimeFallbacks || after.DriftRepairs != before.DriftRepairs {
		t.Errorf("runtime fallbacks %d -> %d, drift repairs %d -> %d; want none", before.RuntimeFallbacks, after.RuntimeFallbacks, before.DriftRepairs, after.DriftRepairs)
	}
	file := readHostMap(t, in.liveMapFile())
	for d, b := range hosts {
		if file[d] != b {
			t.Errorf("the live map file routes %s to %q, want %q", d, file[d], b)
		}
	}
	if n := len(file) - 2*benchFragments; n != len(hosts) {
		t.Errorf("the live map file has %d entries of shop, want %d", n, len(hosts))
	}
	if rt := in.runtimeMap(t); !maps.Equal(rt, file) {
		t.Errorf("runtime map (%d entries) differs from the live map file (%d entries)", len(rt), len(file))
	}
}

// TestMapOnlyWhileConfigWaits: with the one reload token of the hour
// spent, a config change waits for the next one, and a map-only change of
// another fragment goes live at runtime meanwhile, without a reload and
// without the waiting change; the waiting one is pending, not
// quarantined.
func TestMapOnlyWhileConfigWaits(t *testing.T) {
	in := newInstall(t)
	dir := t.TempDir()
	if err := in.apply(t, dir, "shop", rtConf, "one.shop.example shop_a\n"); err != nil {
		t.Fatal(err)
	}
	if err := in.apply(t, filepath.Join(dir, "site"), "site", backendConf("site_web", "v0"), "site.example site_web\n"); err != nil {
		t.Fatal(err)
	}
	in.startDaemon(t, "HAPROXY_CONFIG_WAIT_MIN=50ms", "HAPROXY_CONFIG_RELOAD_INTERVAL=1h", "HAPROXY_CONFIG_RELOAD_BURST=1")
	// the only token: spent on this reload
	if err := in.apply(t, filepath.Join(dir, "site"), "site", backendConf("site_web", "v1"), "site.example site_web\n", "--wait"); err != nil {
		t.Fatal(err)
	}
	in.expectBody(t, "site.example", "v1")
	before := in.status(t).Counts
	reloadsBefore := in.masterReloads(t)

	// a config change to site waits for the token, and a map change to
	// site's own domains waits with it
	if err := in.apply(t, filepath.Join(dir, "site"), "site", backendConf("site_web", "v2"), "site.example site_web\nwww.site.example site_web\n"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := in.apply(t, dir, "shop", rtConf, "one.shop.example shop_b\ntwo.shop.example shop_a\n", "--wait", "--timeout", "20s"); err != nil {
		t.Fatalf("the map-only change did not go live while a config change waits: %v", err)
	}
	took := time.Since(start)
	in.expectRoute(t, "one.shop.example", "shop_b")
	in.expectRoute(t, "two.shop.example", "shop_a")
	in.expectBody(t, "site.example", "v1")
	in.expectUnknown(t, "www.site.example")

	st := in.status(t)
	if st.Counts.Reloads != before.Reloads || in.masterReloads(t) != reloadsBefore {
		t.Errorf("reloads %d -> %d: the map-only change reloaded", before.Reloads, st.Counts.Reloads)
	}
	if st.Counts.RuntimeUpdates != before.RuntimeUpdates+1 {
		t.Errorf("runtime updates %d -> %d, want one more", before.RuntimeUpdates, st.Counts.RuntimeUpdates)
	}
	if st.Pending == nil {
		t.Error("status shows nothing pending while site's config change waits for its token")
	}
	if len(st.Quarantined) != 0 {
		t.Errorf("the waiting change is reported quarantined: %+v", st.Quarantined)
	}
	in.expectMapsAgree(t)

	// waiting for the config change times out (7), it is not refused (4)
	_, errOut, code := run(t, in.env, "", "apply", "--wait", "--timeout", "1s", "site",
		filepath.Join(dir, "site", "site.cfg"), filepath.Join(dir, "site", "site.map"))
	if code != 7 || !strings.Contains(errOut, "pending") {
		t.Errorf("apply --wait of the waiting config change: exit %d, want 7 (pending)\n%s", code, errOut)
	}
	t.Logf("map-only change live in %s while a config change waits for its reload token", took.Round(time.Millisecond))
}
