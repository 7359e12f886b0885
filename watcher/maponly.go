package watcher

import (
	"context"
	"errors"
	"os"
	"time"

	"haproxy-config/reconcile"
)

// mapOnlyMeanwhile makes the map-only part of a due burst live while the
// burst waits for a reload token (#12): the engine publishes a generation
// with the config HAProxy serves (the fragments whose config part changed
// kept at their served version, new ones left out), and the runtime host
// map gets its changed keys. The rest goes out with the reload once the
// token comes. It reports whether nothing is left for that reload.
func (d *Daemon) mapOnlyMeanwhile(ctx context.Context) (done bool) {
	d.mapOnlyTried = true
	if d.lastGood == nil || d.lastGood.Marker == "" {
		return false // without a marker, what HAProxy serves is not known
	}
	if hold, err := d.eng.CurrentHold(); err != nil || hold != nil {
		return false // reconcile reports the error, or honours the hold
	}
	if fi, err := os.Stat(d.s.FragmentsDir); err != nil || !fi.IsDir() {
		return false // reconcile refuses to publish a missing store
	}
	marker := d.servedMarker(ctx)
	if marker != d.lastGood.Marker {
		return false
	}
	reconciled := time.Now().UTC()
	pub, err := d.eng.PublishMapOnly(ctx, d.exclude)
	if errors.Is(err, reconcile.ErrNeedsReload) {
		return false
	}
	if err != nil {
		d.Log.Warn("map-only changes: cannot publish them before the reload", "err", err)
		return false
	}
	d.status.Counts.Reconciles++
	d.status.ReconciledAt = reconciled
	d.quarantine(pub.Selection, pub.Excluded)
	d.noteStored(pub.Selection)
	defer d.writeStatus()
	g := pub.Generation
	if g.Marker != marker || !d.applyMapAtRuntime(ctx, g, d.lastDirty) {
		return false // the live files hold g: the reload takes it from here
	}
	if len(pub.Deferred) > 0 {
		d.Log.Info("map changes live while config changes wait for a reload", "generation", g.Number, "waiting", pub.Deferred)
	}
	return len(pub.Deferred) == 0 && d.forceReload == ""
}
