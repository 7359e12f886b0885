package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"haproxy-config/assemble"
	"haproxy-config/fragments"
	"haproxy-config/internal/testkit"
)

const (
	shopV1  = "backend shop_web\n    http-request return status 200 content-type text/plain string v1\n"
	shopV2  = "backend shop_web\n    http-request return status 200 content-type text/plain string v2\n"
	shopV3  = "backend shop_web\n    http-request return status 200 content-type text/plain string v3\n"
	shopMap = "shop.example.com shop_web\n"
	// wild has the wildcard entry shop.example.com would fall through to
	wildConf = "backend wild_web\n    http-request return status 200 content-type text/plain string wild\n"
	wildMap  = "*.example.com wild_web\n"
)

func publish(t *testing.T, e *Engine) *Published {
	t.Helper()
	pub, err := e.Publish(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func liveFiles(t *testing.T, e *Engine) (cfg, hostMap string) {
	t.Helper()
	c, err1 := os.ReadFile(e.S.OutputConfig)
	m, err2 := os.ReadFile(e.S.OutputMap)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	return string(c), string(m)
}

// TestBadUpdateKeepsTheLastGoodVersion: a live fragment replaced on disk
// by a version that fails (its own checks, or haproxy -c) stays live in
// the version HAProxy served; the new one is quarantined; its domain never
// falls through to another tenant's wildcard.
func TestBadUpdateKeepsTheLastGoodVersion(t *testing.T) {
	for _, bad := range []struct{ name, conf string }{
		{"policy", "backend shop_web\n    http-request return status 200 lf-string %[env(HOME)]\n"},
		{"haproxy", "backend shop_web\n    hash-type bogus\n"},
		{"map", ""},
	} {
		t.Run(bad.name, func(t *testing.T) {
			e := newEngine(t, nil)
			writeRaw(t, e, "wild", wildConf, wildMap)
			writeRaw(t, e, "shop", shopV1, shopMap)
			v1 := publish(t, e).Generation.Fragments["shop"]

			conf, hostMap := bad.conf, shopMap
			if conf == "" {
				conf, hostMap = shopV2, "shop.example.com shop_web extra\n"
			}
			writeRaw(t, e, "shop", conf, hostMap)
			pub := publish(t, e)
			if got := pub.Generation.Fragments["shop"]; got != v1 {
				t.Fatalf("live version of shop %q, want the last good %q", got, v1)
			}
			if pub.Selection.FellBack["shop"] != v1 || len(pub.Selection.Rejected["shop"]) == 0 {
				t.Errorf("fell back %v, rejected %v: want shop's new version quarantined and v1 live", pub.Selection.FellBack, pub.Selection.Rejected)
			}
			cfg, m := liveFiles(t, e)
			if !strings.Contains(cfg, "string v1") || !strings.Contains(m, "shop.example.com shop_web") {
				t.Errorf("live files lost shop v1:\n%s\n%s", cfg, m)
			}
			// fixed on disk: the new version goes live
			writeRaw(t, e, "shop", shopV2, shopMap)
			pub = publish(t, e)
			if cfg, _ := liveFiles(t, e); !strings.Contains(cfg, "string v2") || len(pub.Selection.FellBack) != 0 || len(pub.Selection.Rejected) != 0 {
				t.Errorf("the fixed version is not live: fell back %v, rejected %v", pub.Selection.FellBack, pub.Selection.Rejected)
			}
		})
	}
}

// TestExcludedVersionFallsBack: the daemon excludes a version HAProxy
// failed to load; the version before it stays live.
func TestExcludedVersionFallsBack(t *testing.T) {
	e := newEngine(t, nil)
	writeRaw(t, e, "shop", shopV1, shopMap)
	v1 := publish(t, e).Generation.Fragments["shop"]
	if err := e.MarkServing(1); err != nil {
		t.Fatal(err)
	}
	writeRaw(t, e, "shop", shopV2, shopMap)
	v2 := publish(t, e).Generation.Fragments["shop"]
	if v2 == v1 {
		t.Fatal("the second version has the first one's checksum")
	}
	pub, err := e.Publish(context.Background(), map[string]Exclusion{"shop": {Checksum: v2, Problems: assemble.Problems{{Msg: "HAProxy failed to load it"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := pub.Generation.Fragments["shop"]; got != v1 || pub.Selection.FellBack["shop"] != v1 {
		t.Errorf("live version %q (fell back %v), want the serving generation's %q", got, pub.Selection.FellBack, v1)
	}
}

// TestPinnedWhenNoVersionPasses: when no version of a fragment HAProxy
// served passes any more, its domains answer from the base's unavailable
// backend instead of another tenant's wildcard; a fragment removed on
// purpose leaves no pin.
func TestPinnedWhenNoVersionPasses(t *testing.T) {
	e := newEngine(t, nil)
	writeRaw(t, e, "wild", wildConf, wildMap)
	writeRaw(t, e, "shop", shopV1, shopMap)
	publish(t, e)
	// the kept versions gone (an upgrade from a release without them)
	if err := os.RemoveAll(e.state().Versions()); err != nil {
		t.Fatal(err)
	}
	writeRaw(t, e, "shop", "backend shop_web\n    balance bogus\n", shopMap)
	pub := publish(t, e)
	if _, live := pub.Generation.Fragments["shop"]; live {
		t.Fatalf("shop is live without a version that passes")
	}
	_, m := liveFiles(t, e)
	if !strings.Contains(m, "shop.example.com "+UnavailableBackend) {
		t.Errorf("shop.example.com is not pinned to %s:\n%s", UnavailableBackend, m)
	}
	if pub.Selection.Verdict == nil || len(pub.Selection.Verdict.Errors) > 0 {
		t.Errorf("the pinned map was not validated: %+v", pub.Selection.Verdict)
	}
	// still out at the next publish: still pinned
	writeRaw(t, e, "shop", "backend shop_web\n    balance still-bogus\n", shopMap)
	publish(t, e)
	if _, m := liveFiles(t, e); !strings.Contains(m, "shop.example.com "+UnavailableBackend) {
		t.Errorf("the pin did not last:\n%s", m)
	}
	// removed on purpose: no pin
	c, mp := e.Store.Paths("shop")
	for _, p := range []string{c, mp} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	publish(t, e)
	if _, m := liveFiles(t, e); strings.Contains(m, "shop.example.com") {
		t.Errorf("a removed fragment's domain is still pinned:\n%s", m)
	}
}

// TestVersionsPruned: only the versions a fallback may need are kept.
func TestVersionsPruned(t *testing.T) {
	e := newEngine(t, nil)
	for _, conf := range []string{shopV1, shopV2, wildConf} {
		writeRaw(t, e, "shop", conf, shopMap)
		publish(t, e)
	}
	entries, err := os.ReadDir(e.state().Versions())
	if err != nil {
		t.Fatal(err)
	}
	// the newest generation's version, and the one before it as the
	// reference HAProxy was serving when it was published
	if len(entries) != 4 {
		var names []string
		for _, ent := range entries {
			names = append(names, ent.Name())
		}
		t.Errorf("kept versions %v, want 2 versions (config and map each)", names)
	}
}

// TestVersionsLeftoverTempRemoved: a copy's temp file that a killed
// publish left in the versions directory goes with the next prune that
// lists it (an engine's first, as after a restart), not in its turn as an
// unwanted copy would.
func TestVersionsLeftoverTempRemoved(t *testing.T) {
	e := newEngine(t, nil)
	writeRaw(t, e, "shop", shopV1, shopMap)
	publish(t, e)
	left := filepath.Join(e.state().Versions(), ".0123abcd.cfg.hc-staged-42")
	if err := os.WriteFile(left, []byte("half a copy"), 0o640); err != nil {
		t.Fatal(err)
	}
	restarted := New(e.S)
	writeRaw(t, restarted, "shop", shopV2, shopMap)
	publish(t, restarted)
	if _, err := os.Stat(left); !os.IsNotExist(err) {
		t.Errorf("the leftover temp file is still there after a listing prune: %v", err)
	}
}

// TestCheckTimeoutBlamesTheNewcomer: a fragment that makes haproxy -c run
// past its timeout is refused by apply and quarantined by publish, while
// the fragments HAProxy serves stay live.
func TestCheckTimeoutBlamesTheNewcomer(t *testing.T) {
	dir := testkit.OpenTempDir(t)
	real := testkit.RequireHaproxy(t)
	// stands in for a configuration haproxy -c cannot finish reading (a
	// FIFO, a name that never resolves): the policy refuses every way we
	// know to make the real one hang
	wrapper := filepath.Join(dir, "haproxy")
	script := "#!/bin/sh\nfor a; do cfg=$a; done\nif grep -q hang-marker \"$cfg\"; then exec sleep 30; fi\nexec " + real + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, map[string]string{"HAPROXY_CONFIG_HAPROXY": wrapper, "HAPROXY_CONFIG_CHECK_TIMEOUT": "2s"})
	mustApply(t, e, "shop", shopV1, shopMap)
	hang := "backend slow_web\n    description hang-marker\n"
	_, err := apply(t, e, "slow", hang, "")
	var ps assemble.Problems
	if !errors.As(err, &ps) || ps[0].Fragment != "slow" || !strings.Contains(ps[0].Msg, "it ran past 2s") {
		t.Fatalf("apply of a fragment haproxy -c cannot finish: %v, want a refusal of slow", err)
	}
	writeRaw(t, e, "slow", hang, "")
	pub := publish(t, e)
	if _, live := pub.Generation.Fragments["shop"]; !live {
		t.Error("shop is not live")
	}
	if p := pub.Selection.Rejected["slow"]; len(p) == 0 || !strings.Contains(p[0].Msg, "it ran past 2s") {
		t.Errorf("slow: %v, want it quarantined for the timeout", p)
	}
}

// TestSaveVersionsOnlyNew: a publish saves the versions the newest
// generation did not have live, and looks at no other (a copy removed
// behind its back stays removed), except when its prune lists the
// directory (an engine's first): then every live version is saved again,
// as it is when the whole directory of copies is gone.
func TestSaveVersionsOnlyNew(t *testing.T) {
	e := newEngine(t, nil)
	writeRaw(t, e, "wild", wildConf, wildMap)
	writeRaw(t, e, "shop", shopV1, shopMap)
	g1 := publish(t, e).Generation
	wildConfPath, _, _ := e.versionPaths(g1.Fragments["wild"])
	removeWild := func() {
		t.Helper()
		if err := os.Remove(wildConfPath); err != nil {
			t.Fatalf("wild's version was not saved: %v", err)
		}
	}
	removeWild()
	writeRaw(t, e, "shop", shopV2, shopMap)
	g2 := publish(t, e).Generation
	shopConfPath, _, _ := e.versionPaths(g2.Fragments["shop"])
	if _, err := os.Stat(shopConfPath); err != nil {
		t.Fatalf("shop's new version was not saved: %v", err)
	}
	if _, err := os.Stat(wildConfPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("wild's version, live in the newest generation, was looked at again: %v", err)
	}
	fresh := New(e.S)
	writeRaw(t, fresh, "shop", shopV1, shopMap)
	publish(t, fresh)
	if _, err := os.Stat(wildConfPath); err != nil {
		t.Fatalf("the first publish of a new engine did not save wild's copy again: %v", err)
	}
	removeWild()
	if err := os.RemoveAll(e.state().Versions()); err != nil {
		t.Fatal(err)
	}
	writeRaw(t, e, "shop", shopV2, shopMap)
	publish(t, e)
	if _, err := os.Stat(wildConfPath); err != nil {
		t.Fatalf("after the copies were removed, wild's version was not saved again: %v", err)
	}
}

// TestKeptVersionsParsedOnce: a kept version is parsed once while its copy
// is there, and not handed out once it was pruned; the generation a
// publish wrote is the one the next read of it returns.
func TestKeptVersionsParsedOnce(t *testing.T) {
	e := newEngine(t, nil)
	writeRaw(t, e, "shop", shopV1, shopMap)
	pub := publish(t, e)
	if g, err := e.readGeneration(pub.Generation.Number); err != nil || g != pub.Generation {
		t.Fatalf("the generation just written was read again from the disk: %p, %p, %v", g, pub.Generation, err)
	}
	sum := pub.Generation.Fragments["shop"]
	pol := pub.Selection.policy
	f1 := e.readVersion("shop", sum, pol)
	if f1 == nil || f1.Checksum != sum {
		t.Fatalf("readVersion: %v", f1)
	}
	if f2 := e.readVersion("shop", sum, pol); f2 != f1 {
		t.Fatal("a kept version was parsed again")
	}
	confPath, mapPath, _ := e.versionPaths(sum)
	for _, p := range []string{confPath, mapPath} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	if f := e.readVersion("shop", sum, pol); f != nil {
		t.Fatal("a pruned version was handed out from the cache")
	}
}

// TestServedDomainsParsedOnce: the host map of the generation HAProxy
// serves is parsed once while it is the same file, and again once it is
// replaced.
func TestServedDomainsParsedOnce(t *testing.T) {
	e := newEngine(t, nil)
	writeRaw(t, e, "shop", shopV1, shopMap)
	dir := publish(t, e).Generation.Dir
	first := e.servedDomains(dir)
	if !slices.Equal(first["shop"], []string{"shop.example.com"}) {
		t.Fatalf("served domains: %v", first)
	}
	if again := e.servedDomains(dir); reflect.ValueOf(again).Pointer() != reflect.ValueOf(first).Pointer() {
		t.Fatal("the served host map was parsed again")
	}
	_, mapPath, err := e.layout(dir)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(mapPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := fragments.WriteFile(mapPath, []byte(strings.ReplaceAll(string(data), "shop.example.com", "other.example.com")), 0o640); err != nil {
		t.Fatal(err)
	}
	if got := e.servedDomains(dir); !slices.Equal(got["shop"], []string{"other.example.com"}) {
		t.Fatalf("after the map was replaced: %v", got)
	}
}

// TestVersionsPrunedWithoutListing: once a prune knows the copies on disk,
// the next ones work from that without listing the directory (a file some
// other process put there is not seen); an engine that knows nothing yet
// lists it, and the file seen then is removed once the generation that
// was the newest at that time has been pruned.
func TestVersionsPrunedWithoutListing(t *testing.T) {
	e := newEngine(t, map[string]string{"HAPROXY_CONFIG_KEEP_GENERATIONS": "2"})
	writeRaw(t, e, "shop", shopV1, shopMap)
	publish(t, e)
	foreign := filepath.Join(e.state().Versions(), "feedface.cfg")
	if err := os.WriteFile(foreign, []byte("backend x\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	for _, conf := range []string{shopV2, shopV3} {
		writeRaw(t, e, "shop", conf, shopMap)
		publish(t, e)
	}
	if _, err := os.Stat(foreign); err != nil {
		t.Fatalf("a prune that knew the copies listed the directory: %v", err)
	}
	fresh := New(e.S)
	writeRaw(t, fresh, "shop", shopV1, shopMap)
	publish(t, fresh) // lists; the foreign file waits for generation 3
	if _, err := os.Stat(foreign); err != nil {
		t.Fatalf("removed while the generation newest when it was seen is kept: %v", err)
	}
	writeRaw(t, fresh, "shop", shopV2, shopMap)
	publish(t, fresh)
	if _, err := os.Stat(foreign); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("kept after generation 3 was pruned: %v", err)
	}
}

// TestServedMapReadOnlyForPins: a generation records the fragments it
// pins, so that a publish reads the served host map only when a fragment
// it had live or pinned is stored but out now; one written before pins
// were recorded (no "pinned") is read.
func TestServedMapReadOnlyForPins(t *testing.T) {
	e := newEngine(t, nil)
	writeRaw(t, e, "wild", wildConf, wildMap)
	writeRaw(t, e, "shop", shopV1, shopMap)
	publish(t, e)
	writeRaw(t, e, "shop", shopV2, shopMap)
	g := publish(t, e).Generation
	if g.Pinned == nil || len(g.Pinned) != 0 {
		t.Fatalf("pinned %#v, want none, recorded", g.Pinned)
	}
	if e.Parses.servedMap.path != "" {
		t.Fatalf("the served map %s was read with nothing to pin", e.Parses.servedMap.path)
	}
	// the newest generation as an older release wrote it
	meta := e.state().GenerationMeta(g.Number)
	data, err := os.ReadFile(meta)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	delete(raw, "pinned")
	if data, err = json.Marshal(raw); err != nil {
		t.Fatal(err)
	}
	if err := fragments.WriteFile(meta, data, 0o640); err != nil {
		t.Fatal(err)
	}
	writeRaw(t, e, "wild", wildConf+"    # changed\n", wildMap)
	publish(t, e)
	if e.Parses.servedMap.path == "" {
		t.Fatal("the served map of a generation that did not record its pins was not read")
	}
}
