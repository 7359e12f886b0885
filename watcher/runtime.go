package watcher

import (
	"context"
	"fmt"
	"maps"
	"os"

	"haproxy-config/assemble"
	"haproxy-config/reload"
)

// readMapFile reads a host map file as HAProxy does: "key value" lines,
// blank lines and # comments skipped.
func readMapFile(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("host map: %w", err)
	}
	return assemble.ParseHostMap(path, data)
}

// liveMap reads the live map file, and the name the config gives it.
func (d *Daemon) liveMap() (entries map[string]string, name string, err error) {
	if entries, err = readMapFile(d.s.OutputMap); err != nil {
		return nil, "", err
	}
	name, err = d.eng.MapRef()
	return entries, name, err
}

// syncMap brings HAProxy's runtime host map to the live map file in one
// atomic swap, then reads it back. It reports whether the runtime map had
// to change, and the number of entries.
func (d *Daemon) syncMap(ctx context.Context) (changed bool, entries int, err error) {
	d.rtEntries = nil
	want, name, err := d.liveMap()
	if err != nil {
		return false, 0, err
	}
	ref, err := d.rt.FindMap(ctx, name, d.s.OutputMap)
	if err != nil {
		return false, 0, err
	}
	got, dups, err := d.rt.ShowMap(ctx, ref)
	if err != nil {
		return false, 0, err
	}
	if len(dups) == 0 && maps.Equal(got, want) {
		d.rtEntries = want
		return false, len(want), nil
	}
	if err := d.rt.ReplaceMap(ctx, ref, want); err != nil {
		return false, 0, err
	}
	got, dups, err = d.rt.ShowMap(ctx, ref)
	if err != nil {
		return false, 0, err
	}
	if len(dups) > 0 || !maps.Equal(got, want) {
		return false, 0, fmt.Errorf("runtime host map %s differs from %s after the update: %d entries (%d duplicated), want %d",
			ref, d.s.OutputMap, len(got), len(dups), len(want))
	}
	d.rtEntries = want
	return true, len(want), nil
}

// updateMap brings HAProxy's runtime host map to the live map file by
// changing only the keys that differ from what it was last seen holding,
// and reading those back (#12): a change's cost does not grow with the
// map. Without that knowledge, when HAProxy's entry count disagrees with
// it (a restart, a reload by someone else), or when the update fails, it
// swaps the whole map as syncMap does.
func (d *Daemon) updateMap(ctx context.Context) (changed bool, entries int, err error) {
	old := d.rtEntries
	if old == nil {
		return d.syncMap(ctx)
	}
	d.rtEntries = nil
	want, name, err := d.liveMap()
	if err != nil {
		return false, 0, err
	}
	m, err := d.rt.LookupMap(ctx, name, d.s.OutputMap)
	if err != nil {
		return false, 0, err
	}
	if m.Entries != len(old) {
		d.Log.Warn("runtime host map is not what it was last seen holding: swapping it whole",
			"entries", m.Entries, "expected", len(old))
		return d.syncMap(ctx)
	}
	delta := reload.DiffMap(old, want)
	if delta.Len() == 0 {
		d.rtEntries = want
		return false, len(want), nil
	}
	if err := d.rt.UpdateMap(ctx, m.Ref(), delta); err != nil {
		d.Log.Warn("runtime host map update failed: swapping it whole", "err", err)
		return d.syncMap(ctx)
	}
	d.rtEntries = want
	return true, len(want), nil
}
