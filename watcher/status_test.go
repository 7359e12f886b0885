package watcher

import (
	"slices"
	"testing"

	"haproxy-config/reconcile"
)

func TestMarkQuarantined(t *testing.T) {
	st := &Status{Quarantined: []Quarantined{
		{Name: "bad", Checksum: "sum-bad", Errors: []string{"bad.cfg:2: haproxy says no"}},
		{Name: "old", Checksum: "sum-old-v1", Errors: []string{"bad.cfg:1: haproxy says no"}},
		{Name: "quiet", Checksum: "sum-quiet"},
		{Name: "unknown"},
	}}
	infos := []reconcile.Info{
		{Name: "bad", Checksum: "sum-bad", Valid: true},
		{Name: "old", Checksum: "sum-old-v2", Valid: true}, // changed since: no longer the quarantined version
		{Name: "quiet", Checksum: "sum-quiet", Valid: true},
		{Name: "unknown", Checksum: "sum-unknown", Valid: true},
		{Name: "good", Checksum: "sum-good", Valid: true},
	}
	st.MarkQuarantined(infos)
	want := map[string][]string{
		"bad":   {"bad.cfg:2: haproxy says no"},
		"quiet": {"quarantined by the daemon"},
	}
	for _, in := range infos {
		if !slices.Equal(in.Quarantined, want[in.Name]) {
			t.Errorf("%s: quarantined %q, want %q", in.Name, in.Quarantined, want[in.Name])
		}
	}
}
