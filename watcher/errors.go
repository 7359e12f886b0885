package watcher

import (
	"errors"
	"io/fs"

	"haproxy-config/assemble"
	"haproxy-config/fragments"
	"haproxy-config/reconcile"
	"haproxy-config/reload"
)

// Kind is a class of failure. Each has one exit code (README "Exit
// codes") and one name on the API socket; KindOf is the one place that
// sorts errors into them, for the CLI's exit status and for the answers
// the daemon sends.
type Kind string

// The kinds, with their exit codes.
const (
	KindInternal    Kind = "internal"    // 1
	KindUsage       Kind = "usage"       // 2
	KindRejected    Kind = "rejected"    // 4
	KindQuarantined Kind = "quarantined" // 4
	KindEnv         Kind = "env"         // 5
	KindNotFound    Kind = "not_found"   // 6
	KindNotLive     Kind = "not_live"    // 7
	KindFlagged     Kind = "flagged"     // 8
)

// Exit codes besides the kinds'. 3 is left out: urfave/cli uses it for
// "no help topic".
const (
	ExitOK    = 0
	ExitUsage = 2
)

// ExitCode is the kind's exit code; an unknown kind is an internal error.
func (k Kind) ExitCode() int {
	switch k {
	case KindUsage:
		return ExitUsage
	case KindRejected, KindQuarantined:
		return 4
	case KindEnv:
		return 5
	case KindNotFound:
		return 6
	case KindNotLive:
		return 7
	case KindFlagged:
		return 8
	}
	return 1
}

// KindOf sorts err into its kind: KindInternal for what no rule knows.
func KindOf(err error) Kind {
	var ps assemble.Problems
	var usage *reconcile.UsageError
	var env *reload.EnvError
	var quarantined *QuarantinedError
	var notLive *NotLiveError
	var flagged *FlaggedError
	switch {
	case errors.As(err, &flagged):
		return KindFlagged
	case errors.As(err, &usage):
		return KindUsage
	case errors.As(err, &quarantined):
		return KindQuarantined
	case errors.As(err, &notLive):
		return KindNotLive
	case errors.Is(err, fragments.ErrNotFound):
		return KindNotFound
	case errors.As(err, &env), errors.Is(err, fs.ErrPermission), errors.Is(err, ErrNoDaemon):
		return KindEnv
	case errors.As(err, &ps):
		return KindRejected
	}
	return KindInternal
}
