package watcher

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/prometheus/procfs"

	"haproxy-config/reconcile"
	"haproxy-config/reload"
	"haproxy-config/statedir"
)

// Status is what the daemon reports.
type Status struct {
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
	Updated time.Time `json:"updated"`
	// when the last reconcile read the store: a quarantine is about a
	// change committed before this
	ReconciledAt time.Time       `json:"reconciled_at"`
	State        string          `json:"state"` // starting, ready, stopped
	Strategy     string          `json:"strategy"`
	Live         *Live           `json:"live,omitempty"`
	Held         *reconcile.Hold `json:"held,omitempty"`
	Pending      *Pending        `json:"pending,omitempty"`
	LastReload   *ReloadResult   `json:"last_reload,omitempty"`
	LastRuntime  *RuntimeResult  `json:"last_runtime_update,omitempty"`
	Counts       Counts          `json:"counts"`
	Quarantined  []Quarantined   `json:"quarantined"`
	Strays       []string        `json:"strays,omitempty"`
	LastError    string          `json:"last_error,omitempty"`
	HAProxy      *reload.Procs   `json:"haproxy,omitempty"`
	Certs        *CertSummary    `json:"certs,omitempty"`
	Behind       *Behind         `json:"behind,omitempty"`
	Fleet        *FleetStatus    `json:"fleet,omitempty"`
	// read from their own files by ReadStatus, not written by the daemon
	Drained  *Drained   `json:"drained,omitempty"`
	Announce *Announced `json:"announce,omitempty"`
}

// Live is the generation seen serving.
type Live struct {
	Generation int       `json:"generation"`
	Since      time.Time `json:"since"`
	Marker     string    `json:"marker,omitempty"`
	Fragments  int       `json:"fragments"`
}

// Pending describes changes seen but not live yet.
type Pending struct {
	Since   time.Time `json:"since"`
	Changes int       `json:"changes"` // fragments (or files) changed
}

// ReloadResult is the outcome of the last reload.
type ReloadResult struct {
	Generation   int       `json:"generation"`
	At           time.Time `json:"at"`
	OK           bool      `json:"ok"`
	Error        string    `json:"error,omitempty"`
	DurationMS   float64   `json:"duration_ms"`
	RolledBackTo int       `json:"rolled_back_to,omitempty"`
}

// RuntimeResult is the last host map change that went live through the
// runtime API, without a reload.
type RuntimeResult struct {
	Generation int       `json:"generation"`
	At         time.Time `json:"at"`
	Entries    int       `json:"entries"`
	// from the first file event of the change to the runtime map read
	// back equal to the live map file
	DurationMS float64 `json:"duration_ms"`
}

// Counts are totals since the daemon started.
type Counts struct {
	Reconciles    int `json:"reconciles"`
	Reloads       int `json:"reloads"`
	ReloadsFailed int `json:"reloads_failed"`
	Rollbacks     int `json:"rollbacks"`
	Restarts      int `json:"haproxy_restarts"`
	// changes that went live through the runtime API, without a reload
	RuntimeUpdates int `json:"runtime_updates"`
	// times the runtime map differed from the live map file although no
	// change was due, and was set back to the file
	DriftRepairs int `json:"drift_repairs"`
	// map changes the runtime API could not apply, so a reload did
	RuntimeFallbacks int `json:"runtime_fallbacks"`
}

// Quarantined is a fragment left out of the live configuration.
type Quarantined struct {
	Name     string    `json:"name"`
	Checksum string    `json:"checksum,omitempty"`
	Since    time.Time `json:"since"`
	Errors   []string  `json:"errors"`
	// held back after a failed reload, to be retried alone
	Retrying bool `json:"retrying,omitempty"`
	// the checksum of the earlier version that stays live meanwhile
	LastGood string `json:"last_good,omitempty"`
}

// ErrNoDaemon means no daemon is running for this state directory.
var ErrNoDaemon = errors.New("no haproxy-config watch daemon is running")

// ReadStatus reads the daemon's last report, with the drain record and the
// announce report as they are now; one of those that cannot be read is
// left out (status --check reads the drain record itself).
func ReadStatus(stateDir string) (*Status, error) {
	st, err := ReadDaemonStatus(stateDir)
	if err != nil {
		return nil, err
	}
	st.Drained, _ = ReadDrained(stateDir)
	st.Announce, _ = ReadAnnounced(stateDir)
	return st, nil
}

// ReadDaemonStatus reads the daemon's last report alone.
func ReadDaemonStatus(stateDir string) (*Status, error) {
	st := &Status{}
	ok, err := readJSON(statedir.Layout(stateDir).Status(), st)
	if !ok && err == nil {
		return nil, fmt.Errorf("%w (no %s in %s)", ErrNoDaemon, statedir.Status, stateDir)
	}
	if err != nil {
		return nil, err
	}
	return st, nil
}

// Running reports whether the process that wrote the status still runs:
// a process of that PID that started after the report's start (after a
// reboot, say) is another one.
func (st *Status) Running() bool {
	if st.State == "stopped" || !ProcessRuns(st.PID) {
		return false
	}
	started, ok := processStart(st.PID)
	return !ok || !started.After(st.Started.Add(2*time.Second))
}

// ProcessRuns reports whether a process runs; one of another user counts.
func ProcessRuns(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// processStart is when a process started, from /proc (to the 10 ms
// clock tick); ok is false where /proc cannot tell.
func processStart(pid int) (time.Time, bool) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return time.Time{}, false
	}
	stat, err := p.Stat()
	if err != nil {
		return time.Time{}, false
	}
	secs, err := stat.StartTime()
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(0, int64(secs*float64(time.Second))), true
}

// Quarantine returns the entry for a fragment, or nil.
func (st *Status) Quarantine(name string) *Quarantined {
	for i := range st.Quarantined {
		if st.Quarantined[i].Name == name {
			return &st.Quarantined[i]
		}
	}
	return nil
}

// MarkQuarantined notes in infos (reconcile's List) the fragment versions
// this report leaves out of the live configuration, with the reasons.
func (st *Status) MarkQuarantined(infos []reconcile.Info) {
	for i := range infos {
		q := st.Quarantine(infos[i].Name)
		if q == nil || q.Checksum == "" || q.Checksum != infos[i].Checksum {
			continue // another version, or nothing to tell versions apart
		}
		infos[i].Quarantined = q.Errors
		if len(q.Errors) == 0 {
			infos[i].Quarantined = []string{"quarantined by the daemon"}
		}
	}
}

// writeStatus writes the daemon's report and returns its JSON, also when
// the file could not be written (the waits inside the daemon read it).
func writeStatus(stateDir string, st *Status) ([]byte, error) {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, err
	}
	// a status lost in a power cut is rewritten by the next reconcile, so
	// this write does not pay for an fsync
	tmp := statedir.Layout(stateDir).StatusTemp()
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		os.Remove(tmp) // a part written to a full disk takes space
		return data, err
	}
	return data, os.Rename(tmp, statedir.Layout(stateDir).Status())
}

// add adds the counts in o.
func (c *Counts) add(o Counts) {
	c.Reconciles += o.Reconciles
	c.Reloads += o.Reloads
	c.ReloadsFailed += o.ReloadsFailed
	c.Rollbacks += o.Rollbacks
	c.Restarts += o.Restarts
	c.RuntimeUpdates += o.RuntimeUpdates
	c.DriftRepairs += o.DriftRepairs
	c.RuntimeFallbacks += o.RuntimeFallbacks
}
