package reconcile

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"haproxy-config/assemble"
	"haproxy-config/internal/testkit"
)

// countingHaproxy is a counting haproxy wrapper, as the setting naming it.
func countingHaproxy(t *testing.T) (env map[string]string, runs func() int) {
	t.Helper()
	wrapper, runs := testkit.CountingHaproxy(t, testkit.OpenTempDir(t))
	return map[string]string{"HAPROXY_CONFIG_HAPROXY": wrapper}, runs
}

// TestMapOnlyApplySkipsHaproxyCheck: an apply whose config part is the
// stored one runs no haproxy -c, nor does the publish after it, while a
// map change that fails our own checks is still refused at its line and
// changes nothing.
func TestMapOnlyApplySkipsHaproxyCheck(t *testing.T) {
	env, runs := countingHaproxy(t)
	e := newEngine(t, env)
	mustApply(t, e, "wild", wildConf, wildMap)
	mustApply(t, e, "shop", shopV1, shopMap)
	publish(t, e)
	before := runs()
	if before == 0 {
		t.Fatal("the wrapper counted no haproxy -c at all")
	}

	res, err := apply(t, e, "shop", shopV1, shopMap+"www.shop.example.com shop_web\n")
	if err != nil {
		t.Fatal(err)
	}
	if n := runs() - before; n != 0 {
		t.Errorf("a map-only apply ran haproxy -c %d times, want none", n)
	}
	st, err := e.Store.Read("shop")
	if err != nil || !strings.Contains(string(st.Map), "www.shop.example.com shop_web") {
		t.Fatalf("the map-only change was not stored: %v %q", err, st.Map)
	}

	snap := snapshot(t, e)
	for _, c := range []struct {
		hostMap, msg string
		line         int
	}{
		{shopMap + "*.example.com shop_web\n", `already mapped by fragment "wild"`, 2},
		{"# moved\n\nshop.example.com wild_web\n", "this fragment does not define", 3},
		{shopMap + "bad_name.example.com shop_web\n", "not a valid host name", 2},
	} {
		_, err := apply(t, e, "shop", shopV1, c.hostMap)
		var ps assemble.Problems
		if !errors.As(err, &ps) || len(ps) == 0 {
			t.Fatalf("map %q: got %v, want problems", c.hostMap, err)
		}
		if p := ps[0]; p.File != "shop.map.in" || p.Line != c.line || !strings.Contains(p.Msg, c.msg) {
			t.Errorf("map %q: refused at %s:%d with %q, want shop.map.in:%d and %q", c.hostMap, p.File, p.Line, p.Msg, c.line, c.msg)
		}
	}
	if after := snapshot(t, e); !maps.Equal(snap, after) {
		t.Error("a refused map change wrote files")
	}
	if n := runs() - before; n != 0 {
		t.Errorf("refusing map changes ran haproxy -c %d times, want none", n)
	}

	pub := publish(t, e)
	if n := runs() - before; n != 0 {
		t.Errorf("publishing a map-only change ran haproxy -c %d times, want none", n)
	}
	if _, hostMap := liveFiles(t, e); !strings.Contains(hostMap, "www.shop.example.com shop_web") || pub.Generation.Fragments["shop"] != res.Fragment.Checksum {
		t.Errorf("generation %d does not hold the map-only change (shop %s):\n%s", pub.Generation.Number, pub.Generation.Fragments["shop"], hostMap)
	}

	mustApply(t, e, "shop", shopV2, shopMap)
	if runs() == before {
		t.Error("a config change ran no haproxy -c")
	}
}

// TestPublishMapOnlyDefersConfigChanges: with the served generation
// marked, PublishMapOnly publishes the map changes with the served config
// (a changed config part at its served version, a new fragment left out)
// and refuses, writing nothing, when only config changes are left or a
// fragment was removed.
func TestPublishMapOnlyDefersConfigChanges(t *testing.T) {
	ctx := context.Background()
	e := newEngine(t, nil)
	mustApply(t, e, "wild", wildConf, wildMap)
	mustApply(t, e, "shop", shopV1, shopMap)
	served := publish(t, e).Generation
	if err := e.MarkServing(served.Number); err != nil {
		t.Fatal(err)
	}
	servedCfg, _ := liveFiles(t, e)

	mustApply(t, e, "shop", shopV2, shopMap)
	mustApply(t, e, "fresh", "backend fresh_web\n    server s1 127.0.0.1:9003\n", "fresh.example.com fresh_web\n")
	mustApply(t, e, "wild", wildConf, wildMap+"wild.example.net wild_web\n")
	pub, err := e.PublishMapOnly(ctx, nil)
	if err != nil {
		t.Fatalf("publish the map-only part: %v", err)
	}
	if want := []string{"fresh", "shop"}; !slices.Equal(pub.Deferred, want) {
		t.Errorf("deferred %v, want %v", pub.Deferred, want)
	}
	g := pub.Generation
	if g.Number == served.Number || g.Fragments["shop"] != served.Fragments["shop"] || g.Fragments["fresh"] != "" {
		t.Errorf("generation %d has shop %s and fresh %q; want a new one with shop at %s and no fresh", g.Number, g.Fragments["shop"], g.Fragments["fresh"], served.Fragments["shop"])
	}
	cfg, hostMap := liveFiles(t, e)
	if cfg != servedCfg || !strings.Contains(hostMap, "wild.example.net wild_web") || strings.Contains(hostMap, "fresh") {
		t.Errorf("live files: config same as served %v, map:\n%s", cfg == servedCfg, hostMap)
	}
	if len(pub.Selection.Rejected) != 0 {
		t.Errorf("deferred fragments reported as rejected: %v", pub.Selection.Rejected)
	}

	if err := e.MarkServing(g.Number); err != nil {
		t.Fatal(err)
	}
	snap := snapshot(t, e)
	if _, err := e.PublishMapOnly(ctx, nil); !errors.Is(err, ErrNeedsReload) {
		t.Errorf("with only config changes left: %v, want ErrNeedsReload", err)
	}
	if !maps.Equal(snap, snapshot(t, e)) {
		t.Error("a refused PublishMapOnly wrote files")
	}
	if err := e.Remove(ctx, "wild"); err != nil {
		t.Fatal(err)
	}
	snap = snapshot(t, e)
	if _, err := e.PublishMapOnly(ctx, nil); !errors.Is(err, ErrNeedsReload) {
		t.Errorf("with a served fragment removed: %v, want ErrNeedsReload", err)
	}
	if !maps.Equal(snap, snapshot(t, e)) {
		t.Error("a refused PublishMapOnly wrote files")
	}
	full := publish(t, e).Generation
	if full.Fragments["shop"] == served.Fragments["shop"] || full.Fragments["fresh"] == "" {
		t.Errorf("the full publish left the config changes out: %v", full.Fragments)
	}
}

// TestApplyBatchMapOnly: a group of map-only changes runs no haproxy -c;
// one config change in the group makes it run again, and each member is
// still judged by its own map lines.
func TestApplyBatchMapOnly(t *testing.T) {
	env, runs := countingHaproxy(t)
	e := newEngine(t, env)
	mustApply(t, e, "wild", wildConf, wildMap)
	mustApply(t, e, "shop", shopV1, shopMap)
	before := runs()
	results := e.ApplyBatch(t.Context(), []Op{
		{Change: Change{Name: "shop", ConfFile: "shop.cfg", Conf: []byte(shopV1), MapFile: "shop.map", Map: []byte(shopMap + "www.shop.example.com shop_web\n")}},
		{Change: Change{Name: "wild", ConfFile: "wild.cfg", Conf: []byte(wildConf), MapFile: "wild.map", Map: []byte(wildMap + "shop.example.com wild_web\n")}},
	})
	if results[0].Err != nil {
		t.Errorf("map-only change of shop: %v", results[0].Err)
	}
	if err := results[1].Err; err == nil || !strings.Contains(err.Error(), "wild.map:") {
		t.Errorf("wild mapping shop's domain: %v, want a refusal at a line of wild.map", err)
	}
	if n := runs() - before; n != 0 {
		t.Errorf("a group of map-only changes ran haproxy -c %d times, want none", n)
	}
	results = e.ApplyBatch(t.Context(), []Op{
		{Change: Change{Name: "shop", ConfFile: "shop.cfg", Conf: []byte(shopV2), MapFile: "shop.map", Map: []byte(shopMap)}},
	})
	if results[0].Err != nil {
		t.Fatal(results[0].Err)
	}
	if runs() == before {
		t.Error("a group with a config change ran no haproxy -c")
	}
}

// TestPublishMapOnlyDomainFreedByDeferredChange: a fragment whose config
// change waits for a reload gives up a domain that another fragment takes
// with a map-only change (both accepted by apply, in that order). The
// served version of the first still maps the domain, so publishing the map
// changes meanwhile must not report the second quarantined (its apply
// --wait would exit 4 for a change the next reload makes live): the map
// changes wait for the reload instead, and nothing is written.
func TestPublishMapOnlyDomainFreedByDeferredChange(t *testing.T) {
	ctx := context.Background()
	e := newEngine(t, nil)
	const (
		alphaV1 = "backend alpha_web\n    http-request return status 200 content-type text/plain string a1\n"
		alphaV2 = "backend alpha_web\n    http-request return status 200 content-type text/plain string a2\n"
		betaC   = "backend beta_web\n    http-request return status 200 content-type text/plain string b\n"
		gammaC  = "backend gamma_web\n    http-request return status 200 content-type text/plain string g\n"
	)
	mustApply(t, e, "alpha", alphaV1, "moving.example.org alpha_web\nalpha.example.org alpha_web\n")
	mustApply(t, e, "beta", betaC, "beta.example.org beta_web\n")
	mustApply(t, e, "gamma", gammaC, "gamma.example.org gamma_web\n")
	served := publish(t, e).Generation
	if err := e.MarkServing(served.Number); err != nil {
		t.Fatal(err)
	}

	mustApply(t, e, "alpha", alphaV2, "alpha.example.org alpha_web\n")
	mustApply(t, e, "beta", betaC, "beta.example.org beta_web\nmoving.example.org beta_web\n")
	mustApply(t, e, "gamma", gammaC, "gamma.example.org gamma_web\nwww.gamma.example.org gamma_web\n")
	snap := snapshot(t, e)
	pub, err := e.PublishMapOnly(ctx, nil)
	switch {
	case errors.Is(err, ErrNeedsReload):
		if !maps.Equal(snap, snapshot(t, e)) {
			t.Error("a refused PublishMapOnly wrote files")
		}
	case err != nil:
		t.Fatal(err)
	default:
		if ps, ok := pub.Selection.Rejected["beta"]; ok {
			t.Errorf("beta's accepted map change is reported rejected while alpha's change waits: %v", ps)
		}
	}
	full := publish(t, e)
	if len(full.Selection.Rejected) != 0 {
		t.Errorf("the full publish rejects %v", full.Selection.Rejected)
	}
	if _, hostMap := liveFiles(t, e); !strings.Contains(hostMap, "moving.example.org beta_web") {
		t.Errorf("the full publish does not route moving.example.org to beta:\n%s", hostMap)
	}
}

// TestMapReadAsStrings: the fast path holds only while every use of the
// host map takes its lines as plain strings.
func TestMapReadAsStrings(t *testing.T) {
	e := newEngine(t, nil)
	base, err := e.Base()
	if err != nil {
		t.Fatal(err)
	}
	if !e.mapReadAsStrings(base.Text) {
		t.Error("the embedded base reads the host map as strings, but the fast path is off")
	}
	ref, err := e.MapRef()
	if err != nil {
		t.Fatal(err)
	}
	for use, want := range map[string]bool{
		"lower,map(" + ref + ")":                    true,
		"lower,map_dom(" + ref + ",default)":        true,
		"lower,map_str_str(" + ref + ")":            true,
		"lower,map_reg(" + ref + ")":                false,
		"lower,map_ip(" + ref + ")":                 false,
		"lower,map_str_int(" + ref + ")":            false,
		"hdr(host) -m str -f " + ref:                false,
		"lower,map(" + ref + ") map_beg(" + ref:     false,
		"lower,map(other/" + ref + ")":              false,
		"no host map here":                          false,
		"map(" + ref + ") and map_end(" + ref + ")": true,
	} {
		cfg := "frontend f\n    http-request set-var(txn.b) req.hdr(host)," + use + "\n"
		if got := e.mapReadAsStrings([]byte(cfg)); got != want {
			t.Errorf("%q: read as strings %v, want %v", use, got, want)
		}
	}
}
