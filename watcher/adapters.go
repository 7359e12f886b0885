package watcher

import (
	"context"
	"time"

	"haproxy-config/reconcile"
	"haproxy-config/reload"
)

// newRollout wires the rollout to the daemon's engine, reloader, status
// endpoint and runtime API.
func (d *Daemon) newRollout() *rollout {
	r := &rollout{
		pub:     enginePublisher{d},
		reload:  masterReloader{reloader: d.reloader, cli: d.cli},
		served:  statusEndpoint{d},
		maps:    runtimeMaps{d},
		turn:    d.limiter,
		runtime: &d.runtimeMu,
		now:     time.Now,
		log:     d.Log,
		s:       d.s,
		exclude: map[string]reconcile.Exclusion{},
	}
	if d.managed != nil {
		r.haproxy = d.managed
	}
	return r
}

// enginePublisher is the daemon's current engine: SIGHUP replaces it.
type enginePublisher struct{ d *Daemon }

func (p enginePublisher) CurrentHold() (*reconcile.Hold, error) { return p.d.eng.CurrentHold() }

func (p enginePublisher) Publish(ctx context.Context, exclude map[string]reconcile.Exclusion) (*reconcile.Published, error) {
	return p.d.eng.Publish(ctx, exclude)
}

func (p enginePublisher) PublishMapOnly(ctx context.Context, exclude map[string]reconcile.Exclusion) (*reconcile.Published, error) {
	return p.d.eng.PublishMapOnly(ctx, exclude)
}

func (p enginePublisher) Restore(ctx context.Context, n int) (*reconcile.Generation, error) {
	return p.d.eng.Restore(ctx, n)
}

func (p enginePublisher) Republish(ctx context.Context, n int) (bool, error) {
	return p.d.eng.Republish(ctx, n)
}

func (p enginePublisher) MarkServing(n int) error { return p.d.eng.MarkServing(n) }

// masterReloader is the reload strategy, with the master CLI (nil when no
// master socket is known) telling the workers apart.
type masterReloader struct {
	reloader reload.Reloader
	cli      *reload.MasterCLI
}

func (m masterReloader) Reload(ctx context.Context) error { return m.reloader.Reload(ctx) }

func (m masterReloader) ShowProc(ctx context.Context) (*reload.Procs, error) {
	if m.cli == nil {
		return nil, nil
	}
	return m.cli.ShowProc(ctx)
}

func (m masterReloader) WaitReloaded(ctx context.Context, before *reload.Procs) (*reload.Procs, error) {
	return m.cli.WaitReloaded(ctx, before)
}

// statusEndpoint is HAProxy's status address, serving the marker.
type statusEndpoint struct{ d *Daemon }

func (e statusEndpoint) Served(ctx context.Context) string { return e.d.servedMarker(ctx) }

// runtimeMaps is the host map through HAProxy's runtime API.
type runtimeMaps struct{ d *Daemon }

func (m runtimeMaps) Update(ctx context.Context) (bool, int, error) { return m.d.updateMap(ctx) }

func (m runtimeMaps) Sync(ctx context.Context) (bool, int, error) { return m.d.syncMap(ctx) }

func (m runtimeMaps) Forget() { m.d.rtSeen = nil }
