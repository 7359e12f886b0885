package reconcile

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"haproxy-config/fragments"
	"haproxy-config/reload"
)

// refused checks that Publish refuses with an environment error naming
// why, and that the live files and the kept generations stay as they were.
func refused(t *testing.T, e *Engine, why string) {
	t.Helper()
	cfg, hostMap := liveFiles(t, e)
	gens, err := e.generationNumbers()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := e.Publish(context.Background(), nil)
	var env *reload.EnvError
	if !errors.As(err, &env) || !strings.Contains(err.Error(), why) {
		t.Fatalf("publish: %+v, %v; want an environment error saying %q", pub, err, why)
	}
	if c, m := liveFiles(t, e); c != cfg || m != hostMap {
		t.Errorf("the live files changed:\n%s\n%s", c, m)
	}
	if now, _ := e.generationNumbers(); !slices.Equal(now, gens) {
		t.Errorf("generations %v, want %v", now, gens)
	}
}

// TestPublishRefusesAMissingStore: a fragment directory moved away (an
// Ansible directory swap) or replaced by a file is not an empty store.
func TestPublishRefusesAMissingStore(t *testing.T) {
	e := newEngine(t, nil)
	// a fresh install: no fragment directory yet, nothing to take offline
	if pub := publish(t, e); len(pub.Selection.Live) != 0 || pub.Generation.Number != 1 {
		t.Fatalf("publish on a fresh install: %d fragments, generation %d", len(pub.Selection.Live), pub.Generation.Number)
	}
	if pub := publish(t, e); pub.Generation.Number != 1 {
		t.Errorf("a second empty publish wrote generation %d", pub.Generation.Number)
	}
	mustApply(t, e, "shop", shopV1, shopMap)
	publish(t, e)
	away := e.S.FragmentsDir + ".old"
	if err := os.Rename(e.S.FragmentsDir, away); err != nil {
		t.Fatal(err)
	}
	refused(t, e, "fragment directory "+e.S.FragmentsDir+" cannot be read")
	if err := os.WriteFile(e.S.FragmentsDir, []byte("a file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	refused(t, e, "not a directory")
	if err := os.Remove(e.S.FragmentsDir); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(away, e.S.FragmentsDir); err != nil {
		t.Fatal(err)
	}
	if pub := publish(t, e); len(pub.Selection.Live) != 1 {
		t.Errorf("publish with the store back: %d fragments live, want 1", len(pub.Selection.Live))
	}
}

// TestPublishHonoursAHold: while a hold is in force Publish refuses and the
// held generation's files stay live; after the release it publishes again.
func TestPublishHonoursAHold(t *testing.T) {
	e := newEngine(t, nil)
	ctx := context.Background()
	mustApply(t, e, "shop", shopV1, shopMap)
	publish(t, e)
	mustApply(t, e, "shop", shopV2, shopMap)
	publish(t, e)
	if _, err := e.SetHold(ctx, 1, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Restore(ctx, 1); err != nil {
		t.Fatal(err)
	}
	mustApply(t, e, "wild", wildConf, wildMap)
	refused(t, e, "generation 1 is held")
	if cfg, _ := liveFiles(t, e); !strings.Contains(cfg, "string v1") || strings.Contains(cfg, "wild_web") {
		t.Errorf("the live config is not generation 1's:\n%s", cfg)
	}
	if _, err := e.ReleaseHold(); err != nil {
		t.Fatal(err)
	}
	if pub := publish(t, e); pub.Generation.Number != 3 || len(pub.Selection.Live) != 2 {
		t.Errorf("publish after the release: generation %d with %d fragments, want 3 with 2", pub.Generation.Number, len(pub.Selection.Live))
	}
}

// TestRepublish writes a generation's live files again only when they no
// longer hold it.
func TestRepublish(t *testing.T) {
	e := newEngine(t, nil)
	ctx := context.Background()
	mustApply(t, e, "shop", shopV1, shopMap)
	publish(t, e)
	cfg, hostMap := liveFiles(t, e)
	if wrote, err := e.Republish(ctx, 1); err != nil || wrote {
		t.Fatalf("republish over intact live files: wrote %v, %v; want nothing written", wrote, err)
	}
	if err := os.RemoveAll(filepath.Dir(e.S.OutputConfig)); err != nil {
		t.Fatal(err)
	}
	if wrote, err := e.Republish(ctx, 1); err != nil || !wrote {
		t.Fatalf("republish after the live directory was deleted: wrote %v, %v", wrote, err)
	}
	if c, m := liveFiles(t, e); c != cfg || m != hostMap {
		t.Errorf("republished files differ from generation 1's:\n%s\n%s", c, m)
	}
	if err := os.WriteFile(e.S.OutputMap, []byte("edited.example.com shop_web\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if wrote, err := e.Republish(ctx, 1); err != nil || !wrote {
		t.Fatalf("republish after the live map was edited: wrote %v, %v", wrote, err)
	}
	if _, m := liveFiles(t, e); m != hostMap {
		t.Errorf("live map %q, want generation 1's %q", m, hostMap)
	}
	if _, err := e.Republish(ctx, 7); !errors.Is(err, fragments.ErrNotFound) {
		t.Errorf("republish of a generation never kept: %v", err)
	}
}
