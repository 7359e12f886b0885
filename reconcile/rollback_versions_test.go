package reconcile

import (
	"context"
	"testing"
)

// TestRolledBackGenerationKeepsItsVersions: after a rollback to an older
// kept generation (hold, restore, marked serving, resumed), a fragment
// whose stored version fails stays live in the version HAProxy serves,
// the held generation's: its copies must not have been pruned while that
// generation was neither the newest nor the served one.
func TestRolledBackGenerationKeepsItsVersions(t *testing.T) {
	e := newEngine(t, nil)
	writeRaw(t, e, "wild", wildConf, wildMap)
	writeRaw(t, e, "shop", shopV1, shopMap)
	g1 := publish(t, e).Generation
	v1 := g1.Fragments["shop"]
	for _, conf := range []string{shopV2, shopV3} {
		writeRaw(t, e, "shop", conf, shopMap)
		g := publish(t, e).Generation
		if err := e.MarkServing(g.Number); err != nil {
			t.Fatal(err)
		}
	}
	rollBackThenFail(t, e, g1.Number, v1)
}

// rollBackThenFail rolls back to generation n, as the daemon does for a hold
// (hold, restore, marked serving, resumed), while shop's files are
// replaced by a version that fails; shop must stay live as served, the
// version want.
func rollBackThenFail(t *testing.T, e *Engine, n int, want string) {
	t.Helper()
	ctx := context.Background()
	if _, err := e.SetHold(ctx, n, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Restore(ctx, n); err != nil {
		t.Fatal(err)
	}
	if err := e.MarkServing(n); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ReleaseHold(); err != nil {
		t.Fatal(err)
	}
	writeRaw(t, e, "shop", "backend shop_web\n    balance bogus\n", shopMap)
	pub := publish(t, e)
	if got := pub.Generation.Fragments["shop"]; got != want {
		t.Fatalf("shop live as %q, want the served (rolled-back) version %q; fell back %v", got, want, pub.Selection.FellBack)
	}
}

// TestRevertedVersionKeptWhileAGenerationWantsIt (from a review): shop
// goes v1, v2, v3, v1 again, v2, v3 with 3 generations kept. v1's copy
// left once, came back, and left again: it is removed only once the
// newest generation that had it, 4, is pruned. Rolled back to 4 with
// shop's files replaced by a failing version, shop stays live as v1. It
// failed while the record of v1's first leaving survived its return.
func TestRevertedVersionKeptWhileAGenerationWantsIt(t *testing.T) {
	e := newEngine(t, map[string]string{"HAPROXY_CONFIG_KEEP_GENERATIONS": "3"})
	writeRaw(t, e, "wild", wildConf, wildMap)
	var gs []*Generation
	for _, conf := range []string{shopV1, shopV2, shopV3, shopV1, shopV2, shopV3} {
		writeRaw(t, e, "shop", conf, shopMap)
		g := publish(t, e).Generation
		if err := e.MarkServing(g.Number); err != nil {
			t.Fatal(err)
		}
		gs = append(gs, g)
	}
	g4 := gs[3]
	rollBackThenFail(t, e, g4.Number, g4.Fragments["shop"])
}
