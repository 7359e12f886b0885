// Package statedir is the one home of the state directory's layout: every
// file name the engine, the daemon, the fragment store and the health
// commands keep there is written here once. The certificate files live
// behind the certs package's storage and are not part of it.
package statedir

import (
	"fmt"
	"path/filepath"
	"strconv"
)

// The names, relative to the state directory.
const (
	// Generations holds one directory per kept generation, named by its
	// zero-padded number, each with the config, the map and Meta.
	Generations = "generations"
	// Meta is a generation's metadata, inside its directory.
	Meta = "meta.json"
	// PartialPrefix starts the name of a generation being written; a killed
	// run can leave one, which the next run removes.
	PartialPrefix = ".new-"
	// Candidates is the scratch directory for candidates haproxy -c checks.
	Candidates = "candidates"
	// CandidatePrefix starts the name of one candidate's directory in
	// Candidates.
	CandidatePrefix = "candidate-"
	// Versions holds a copy of every fragment version that went live, named
	// by its checksum.
	Versions = "versions"
	// Validated lists the keys of the configs haproxy -c accepted lately.
	Validated = "validated"
	// Serving names the generation HAProxy was last seen serving.
	Serving = "serving"
	// Hold records a hold on a generation; the daemon watches for it.
	Hold = "hold.json"
	// Status is the daemon's report, replaced atomically; the CLI reads it
	// without talking to the daemon.
	Status = "status.json"
	// Drained is written by drain and removed by undrain.
	Drained = "drained.json"
	// Announced is the announce command's report.
	Announced = "announce.json"
	// HAProxyPID is the PID file of the HAProxy the daemon manages.
	HAProxyPID = "haproxy.pid"
	// History is the fragment store's event log; the daemon watches it.
	History = "history.jsonl"
	// APISocket is the daemon's API socket, by default.
	APISocket = "api.sock"
	// StoreLock is the fragment store's lock file.
	StoreLock = "store.lock"
	// Journal is the fragment store's plan of a change being committed.
	Journal = "journal.json"
)

// Layout is a state directory; its methods return the path of each thing
// it holds.
type Layout string

// Dir is the state directory itself.
func (l Layout) Dir() string { return string(l) }

func (l Layout) join(name string) string { return filepath.Join(string(l), name) }

// Generations is the directory of the kept generations.
func (l Layout) Generations() string { return l.join(Generations) }

// Generation is generation n's directory.
func (l Layout) Generation(n int) string {
	return filepath.Join(l.Generations(), fmt.Sprintf("%06d", n))
}

// ParseGeneration returns the number a generation directory's name stands
// for; false for any other name.
func ParseGeneration(name string) (int, bool) {
	n, err := strconv.Atoi(name)
	return n, err == nil
}

// GenerationMeta is generation n's metadata file.
func (l Layout) GenerationMeta(n int) string { return filepath.Join(l.Generation(n), Meta) }

// Candidates is the scratch directory for candidates.
func (l Layout) Candidates() string { return l.join(Candidates) }

// Versions is the directory of kept fragment versions.
func (l Layout) Versions() string { return l.join(Versions) }

// Validated is the file listing the configs haproxy -c accepted lately.
func (l Layout) Validated() string { return l.join(Validated) }

// Serving is the file naming the generation HAProxy was last seen serving.
func (l Layout) Serving() string { return l.join(Serving) }

// Hold is the file recording a hold.
func (l Layout) Hold() string { return l.join(Hold) }

// Status is the daemon's report.
func (l Layout) Status() string { return l.join(Status) }

// StatusTemp is where the daemon writes its report before renaming it.
func (l Layout) StatusTemp() string { return l.join("." + Status + ".tmp") }

// Drained is the drain record.
func (l Layout) Drained() string { return l.join(Drained) }

// Announced is the announce report.
func (l Layout) Announced() string { return l.join(Announced) }

// HAProxyPID is the managed HAProxy's PID file.
func (l Layout) HAProxyPID() string { return l.join(HAProxyPID) }

// History is the fragment store's event log.
func (l Layout) History() string { return l.join(History) }

// APISocket is the daemon's API socket when the settings do not move it.
func (l Layout) APISocket() string { return l.join(APISocket) }

// StoreLock is the fragment store's lock file.
func (l Layout) StoreLock() string { return l.join(StoreLock) }

// Journal is the fragment store's journal.
func (l Layout) Journal() string { return l.join(Journal) }
