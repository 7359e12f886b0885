package reconcile

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"haproxy-config/assemble"
	"haproxy-config/fragments"
)

// TestCandidatesFarFutureModTime: the newcomers are ordered by age on
// disk even past 2262, where UnixNano wraps (a file system keeps mtimes
// to 2446: touch -d, an archive, a clock set wrong): a newcomer with such
// an mtime does not sort as the oldest and win a domain collision against
// the one stored first. Found by a review.
func TestCandidatesFarFutureModTime(t *testing.T) {
	older := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	future := time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)
	sel := &Selection{
		Parsed: map[string]*assemble.Fragment{"first": {Name: "first"}, "later": {Name: "later"}},
		Stored: map[string]*fragments.Stored{
			"first": {Name: "first", ModTime: older},
			"later": {Name: "later", ModTime: future},
		},
		wasLive: map[string]string{},
	}
	got := sel.candidates()
	if got[0].Name != "first" {
		t.Errorf("candidates: %s before %s; %s was stored at %v, %s at %v (UnixNano %d)",
			got[0].Name, got[1].Name, "first", older, "later", future, future.UnixNano())
	}
}

// TestVersionsAfterAKillBetweenTheRenames: a publish killed inside
// WriteFiles after the map copy of shop v2 was renamed into place and
// before its config copy was (its temp file left): the restarted
// engine's publish finds one copy of two, saves both again, and its
// listing prune removes the temp file, before the generation naming them.
func TestVersionsAfterAKillBetweenTheRenames(t *testing.T) {
	e := newEngine(t, nil)
	writeRaw(t, e, "shop", shopV1, shopMap)
	publish(t, e)
	writeRaw(t, e, "shop", shopV2, shopMap)
	sel, err := e.load()
	if err != nil {
		t.Fatal(err)
	}
	sum := sel.Parsed["shop"].Checksum
	confPath, mapPath, ok := e.versionPaths(sum)
	if !ok {
		t.Fatal(sum)
	}
	if err := os.WriteFile(mapPath, []byte(shopMap), 0o640); err != nil {
		t.Fatal(err)
	}
	temp := filepath.Join(filepath.Dir(confPath), "."+filepath.Base(confPath)+".hc-staged-1234")
	if err := os.WriteFile(temp, []byte(shopV2[:10]), 0o640); err != nil {
		t.Fatal(err)
	}
	restarted := New(e.S)
	pub := publish(t, restarted)
	if pub.Generation.Fragments["shop"] != sum {
		t.Fatalf("generation %d has shop %s, want %s", pub.Generation.Number, pub.Generation.Fragments["shop"], sum)
	}
	if got, err := os.ReadFile(confPath); err != nil || string(got) != shopV2 {
		t.Errorf("config copy of the live version: %q %v", got, err)
	}
	if _, err := os.Stat(temp); !os.IsNotExist(err) {
		t.Errorf("temp file left: %v", err)
	}
}
