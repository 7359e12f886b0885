package watcher

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"haproxy-config/reconcile"
)

// QuarantinedError means the daemon left the awaited fragment version out
// of the live configuration.
type QuarantinedError struct {
	Name   string
	Errors []string
}

func (e *QuarantinedError) Error() string {
	return fmt.Sprintf("fragment %q is quarantined by the daemon:\n  %s", e.Name, strings.Join(e.Errors, "\n  "))
}

// NotLiveError means the awaited change did not go live in time.
type NotLiveError struct{ Why string }

func (e *NotLiveError) Error() string { return "the change is stored but not live: " + e.Why }

// waitPoll paces the status reads; a reload takes tens of milliseconds.
const waitPoll = 2 * time.Millisecond

// Wait blocks until the daemon serves a generation where fragment name has
// the given checksum ("" waits for the fragment to be gone), the daemon
// quarantines that version (QuarantinedError) in a reconcile that read the
// store after committed, or ctx ends (NotLiveError).
func Wait(ctx context.Context, eng *reconcile.Engine, name, checksum string, committed time.Time) error {
	return waitFor(ctx, eng, false, func(st *Status, g *reconcile.Generation) (bool, error) {
		return liveOrQuarantined(st, g, name, checksum, committed)
	})
}

// liveOrQuarantined is Wait's test of one status: true once g has fragment
// name at checksum, a QuarantinedError once a reconcile that read the
// store after committed left that version out.
func liveOrQuarantined(st *Status, g *reconcile.Generation, name, checksum string, committed time.Time) (bool, error) {
	if q := st.Quarantine(name); q != nil && checksum != "" && q.Checksum == checksum && !q.Retrying &&
		st.ReconciledAt.After(committed) {
		return false, &QuarantinedError{Name: name, Errors: q.Errors}
	}
	return g != nil && g.Fragments[name] == checksum, nil
}

// WaitGeneration blocks until the daemon holds and serves generation n.
func WaitGeneration(ctx context.Context, eng *reconcile.Engine, n int) error {
	return waitFor(ctx, eng, true, servesHeld(n))
}

// servesHeld is WaitGeneration's test of one status.
func servesHeld(n int) func(st *Status, g *reconcile.Generation) (bool, error) {
	return func(st *Status, g *reconcile.Generation) (bool, error) {
		return st.Held != nil && st.Held.Generation == n && g != nil && g.Number == n, nil
	}
}

// WaitResumed blocks until no hold is in force and the daemon serves the
// newest generation.
func WaitResumed(ctx context.Context, eng *reconcile.Engine) error {
	return waitFor(ctx, eng, true, servesNewest(eng))
}

// servesNewest is WaitResumed's test of one status.
func servesNewest(eng *reconcile.Engine) func(st *Status, g *reconcile.Generation) (bool, error) {
	return func(st *Status, g *reconcile.Generation) (bool, error) {
		if st.Held != nil || g == nil {
			return false, nil
		}
		newest, err := eng.NewestGeneration()
		return err == nil && g.Number == newest, err
	}
}

// view is what a wait reads of the daemon: its status and the generations
// it serves. The command line reads the files (diskView); a wait inside
// the daemon reads what the daemon holds (apiServer's).
type view interface {
	// status is the daemon's last report; a NotLiveError when no daemon
	// runs. The caller must not change it.
	status() (*Status, error)
	// generation is kept generation n. The caller must not change it.
	generation(n int) (*reconcile.Generation, error)
}

// diskView reads the daemon's status file and the generations' files.
type diskView struct{ eng *reconcile.Engine }

func (v diskView) status() (*Status, error) {
	st, err := ReadStatus(v.eng.S.StateDir)
	switch {
	case errors.Is(err, ErrNoDaemon):
		return nil, &NotLiveError{Why: err.Error()}
	case err != nil:
		return nil, err
	case !st.Running():
		return nil, &NotLiveError{Why: fmt.Sprintf("%v (it last reported at %s)", ErrNoDaemon, st.Updated.Format(time.RFC3339))}
	}
	return st, nil
}

func (v diskView) generation(n int) (*reconcile.Generation, error) { return v.eng.Generation(n) }

// waitFor polls the daemon's status until done says so. g is the live
// generation (nil before the first). A hold makes it fail unless held is
// expected.
func waitFor(ctx context.Context, eng *reconcile.Engine, holdOK bool, done func(st *Status, g *reconcile.Generation) (bool, error)) error {
	return waitUntil(ctx, eng, diskView{eng}, holdOK, nil, done)
}

// waitUntil is waitFor reading v again whenever changed's channel is
// closed (the daemon wrote its status), or every waitPoll without changed.
func waitUntil(ctx context.Context, eng *reconcile.Engine, v view, holdOK bool, changed func() <-chan struct{},
	done func(st *Status, g *reconcile.Generation) (bool, error)) error {
	var live *reconcile.Generation
	for {
		var next <-chan struct{}
		if changed != nil {
			next = changed() // before the read, so that no write is missed
		}
		st, err := v.status()
		if err != nil {
			return err
		}
		// the hold file, not the status, says whether a hold is in force
		// now: the status may predate a resume
		hold, err := eng.CurrentHold()
		if err != nil {
			return err
		}
		if hold != nil && !holdOK {
			return &NotLiveError{Why: fmt.Sprintf("the daemon holds generation %d (a rollback by %s); run haproxy-config resume", hold.Generation, hold.Actor)}
		}
		if st.Live != nil && (live == nil || live.Number != st.Live.Generation) {
			if live, err = v.generation(st.Live.Generation); err != nil {
				return err
			}
		}
		if ok, err := done(st, live); ok || err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			why := "timed out waiting for the daemon"
			if r := st.LastReload; r != nil && !r.OK {
				why += fmt.Sprintf("; its last reload (generation %d) failed: %s", r.Generation, r.Error)
			}
			if st.Pending != nil {
				why += fmt.Sprintf("; %d changes pending since %s", st.Pending.Changes, st.Pending.Since.Format(time.RFC3339))
			}
			return &NotLiveError{Why: why}
		case <-next:
		case <-pollAfter(next):
		}
	}
}

// pollAfter paces a wait: every waitPoll without a change signal, and only
// as a backstop with one.
func pollAfter(signal <-chan struct{}) <-chan time.Time {
	if signal == nil {
		return time.After(waitPoll)
	}
	return time.After(time.Second)
}
