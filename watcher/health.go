package watcher

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/google/renameio/v2"

	"haproxy-config/reload"
	"haproxy-config/statedir"
)

// Drained says this node is out of service for maintenance. It lasts,
// across restarts, until undrain.
type Drained struct {
	Since  time.Time `json:"since"`
	By     string    `json:"by,omitempty"`
	Reason string    `json:"reason,omitempty"`
}

// Behind says the daemon cannot bring HAProxy to what the store holds: the
// base config does not validate, or a reload that no fragment is to blame
// for failed. HAProxy keeps serving the generation in Live.
type Behind struct {
	Since  time.Time `json:"since"`
	Reason string    `json:"reason"`
}

// Announced is what "haproxy-config announce" last told ExaBGP.
type Announced struct {
	PID     int             `json:"pid"`
	Updated time.Time       `json:"updated"`
	Routes  []AnnouncedAddr `json:"routes"`
}

// AnnouncedAddr is one service address and whether its route is announced.
type AnnouncedAddr struct {
	Address   string    `json:"address"`
	Announced bool      `json:"announced"`
	Since     time.Time `json:"since"`
	// why the route is withdrawn, or the last failed check
	Reason string `json:"reason,omitempty"`
}

// Drain records that this node is drained. Draining a drained node keeps
// the first time and updates the reason.
func Drain(stateDir, by, reason string) (*Drained, error) {
	d, err := ReadDrained(stateDir)
	if err != nil {
		return nil, err
	}
	if d == nil {
		d = &Drained{Since: time.Now().UTC()}
	}
	d.By, d.Reason = by, reason
	if err := writeJSON(statedir.Layout(stateDir).Drained(), d); err != nil {
		return nil, &reload.EnvError{Err: fmt.Errorf("drain: %w", err)}
	}
	return d, nil
}

// Undrain puts the node back in service. It reports whether it was drained.
func Undrain(stateDir string) (bool, error) {
	err := os.Remove(statedir.Layout(stateDir).Drained())
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, &reload.EnvError{Err: fmt.Errorf("undrain: %w", err)}
	}
	return true, nil
}

// ReadDrained returns the drain record, or nil when the node is in service.
func ReadDrained(stateDir string) (*Drained, error) {
	d := &Drained{}
	ok, err := readJSON(statedir.Layout(stateDir).Drained(), d)
	if !ok {
		return nil, err
	}
	return d, nil
}

// WriteAnnounced replaces the announce report.
func WriteAnnounced(stateDir string, a *Announced) error {
	return writeJSON(statedir.Layout(stateDir).Announced(), a)
}

// ReadAnnounced returns the announce report, or nil when announce never
// ran here.
func ReadAnnounced(stateDir string) (*Announced, error) {
	a := &Announced{}
	ok, err := readJSON(statedir.Layout(stateDir).Announced(), a)
	if !ok {
		return nil, err
	}
	return a, nil
}

func writeJSON(file string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return renameio.WriteFile(file, append(data, '\n'), 0o644, renameio.WithTempDir(filepath.Dir(file)))
}

// readJSON reads file into v; ok is false when the file does not exist or
// cannot be read (then err says why).
func readJSON(file string, v any) (ok bool, err error) {
	data, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, &reload.EnvError{Err: err} // it names the file
	}
	if err := json.Unmarshal(data, v); err != nil {
		return false, &reload.EnvError{Err: fmt.Errorf("%s: %w", file, err)}
	}
	return true, nil
}
