package watcher

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"

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

// seenMap is what the runtime host map was last seen holding: the entries
// of the live map file it was brought to, that file's text, and whether
// the text lists no key twice.
type seenMap struct {
	entries map[string]string
	data    []byte
	unique  bool
}

func newSeenMap(entries map[string]string, data []byte) *seenMap {
	return &seenMap{entries: entries, data: data, unique: assemble.HostMapEntries(data) == len(entries)}
}

// liveMap reads the live map file, and the name the config gives it.
func (d *Daemon) liveMap() (data []byte, name string, err error) {
	if data, err = os.ReadFile(d.s.OutputMap); err != nil {
		return nil, "", fmt.Errorf("host map: %w", err)
	}
	name, err = d.eng.MapRef()
	return data, name, err
}

// syncMap brings HAProxy's runtime host map to the live map file in one
// atomic swap, then reads it back. It reports whether the runtime map had
// to change, and the number of entries.
func (d *Daemon) syncMap(ctx context.Context) (changed bool, entries int, err error) {
	d.rtSeen = nil
	data, name, err := d.liveMap()
	if err != nil {
		return false, 0, err
	}
	want, err := assemble.ParseHostMap(d.s.OutputMap, data)
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
		d.rtSeen = newSeenMap(want, data)
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
	d.rtSeen = newSeenMap(want, data)
	return true, len(want), nil
}

// updateMap brings HAProxy's runtime host map to the live map file by
// changing only the keys that differ from what it was last seen holding,
// and reading those back. Whatever it cannot trust (nothing seen yet, an
// entry count that is not the expected one, a failed update) falls back to
// syncMap's whole swap.
func (d *Daemon) updateMap(ctx context.Context) (changed bool, entries int, err error) {
	old := d.rtSeen
	if old == nil {
		return d.syncMap(ctx)
	}
	d.rtSeen = nil
	data, name, err := d.liveMap()
	if err != nil {
		return false, 0, err
	}
	m, err := d.rt.LookupMap(ctx, name, d.s.OutputMap)
	if err != nil {
		return false, 0, err
	}
	if m.Entries != len(old.entries) {
		d.Log.Warn("runtime host map is not what it was last seen holding: swapping it whole",
			"entries", m.Entries, "expected", len(old.entries))
		return d.syncMap(ctx)
	}
	next, delta, err := mapChange(d.s.OutputMap, old, data)
	if err != nil {
		return false, 0, err
	}
	if delta.Len() > 0 {
		if err := d.rt.UpdateMap(ctx, m.Ref(), delta); err != nil {
			d.Log.Warn("runtime host map update failed: swapping it whole", "err", err)
			return d.syncMap(ctx)
		}
	}
	d.rtSeen = next
	return delta.Len() > 0, len(next.entries), nil
}

// mapChange finds what turns the map old saw into the one data (the map
// file at path) holds. When neither lists a key twice it reads only the
// fragments' parts that changed (assemble.ChangedHostMap) and makes the
// change in old's entries; otherwise it reads data whole and compares every
// key.
func mapChange(path string, old *seenMap, data []byte) (*seenMap, reload.MapDelta, error) {
	if old.unique {
		was, now, err := assemble.ChangedHostMap(path, old.data, data)
		if err == nil {
			delta := reload.MapDelta{Set: map[string]string{}, Add: map[string]string{}}
			size := len(old.entries)
			for k, v := range now {
				switch ov, had := old.entries[k]; {
				case !had:
					delta.Add[k] = v
					size++
				case ov != v:
					delta.Set[k] = v
				}
			}
			for k := range was {
				if _, stays := now[k]; !stays {
					delta.Del = append(delta.Del, k)
					size--
				}
			}
			// as many entries as lines: data lists no key twice, and a
			// key that moved between parts is in was and now (the
			// count is short by one for each key listed twice)
			if size == assemble.HostMapEntries(data) {
				slices.Sort(delta.Del)
				for _, k := range delta.Del {
					delete(old.entries, k)
				}
				maps.Copy(old.entries, delta.Set)
				maps.Copy(old.entries, delta.Add)
				return &seenMap{entries: old.entries, data: data, unique: true}, delta, nil
			}
		}
	}
	want, err := assemble.ParseHostMap(path, data)
	if err != nil {
		return nil, reload.MapDelta{}, err
	}
	return newSeenMap(want, data), reload.DiffMap(old.entries, want), nil
}
