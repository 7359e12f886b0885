package watcher

import (
	"context"
)

// mapOnlyMeanwhile makes the map-only part of a due burst live while the
// burst waits for a reload token (see rollout.mapOnly). It reports whether
// nothing is left for that reload.
func (d *Daemon) mapOnlyMeanwhile(ctx context.Context) (done bool) {
	d.mapOnlyTried = true
	d.markRead()
	out, done := d.ro.mapOnly(ctx, d.lastDirty)
	d.fold(out)
	if out.published != nil {
		d.writeStatus()
	}
	return done
}
