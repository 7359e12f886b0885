package certs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/google/renameio/v2"
)

// StateFile is the certificate manager's persisted state, under the
// daemon's state directory. The manager writes it before every order, so a
// daemon restarted in a loop never orders again what it just ordered.
const StateFile = "acme/state.json"

// Domain is what the manager knows of one domain.
type Domain struct {
	Name string `json:"name"`
	// the certificate HAProxy serves (empty before the first one)
	File      string    `json:"file,omitempty"`
	Issuer    string    `json:"issuer,omitempty"`
	Serial    string    `json:"serial,omitempty"`
	NotBefore time.Time `json:"not_before,omitzero"`
	NotAfter  time.Time `json:"not_after,omitzero"`
	// when to renew; from the CA's renewal information (ARI) when it
	// offers it, else when a third of the lifetime is left, minus jitter
	RenewAt    time.Time `json:"renew_at,omitzero"`
	RenewBy    string    `json:"renew_by,omitempty"` // "ari" or "lifetime"
	ARICheckAt time.Time `json:"ari_check_at,omitzero"`
	// failures since the last success, orders started since then (saved
	// before each starts), and when the next try may start
	Failures    int       `json:"failures,omitempty"`
	Started     int       `json:"started,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	// the domain left the map: the certificate goes after the grace
	RemovedAt time.Time `json:"removed_at,omitzero"`
	// a renewal was asked for ("certs renew")
	Forced bool `json:"forced,omitempty"`
}

// State is the manager's whole persisted state.
type State struct {
	Domains map[string]*Domain `json:"domains"`
	// when each order of the current window started (the order budget)
	Orders []time.Time `json:"orders"`
	// orders started since the state was created, for tests and metrics
	OrdersTotal int `json:"orders_total"`
}

// ReadState reads the state under stateDir; a missing file is an empty
// state.
func ReadState(stateDir string) (*State, error) {
	st := &State{Domains: map[string]*Domain{}}
	data, err := os.ReadFile(filepath.Join(stateDir, StateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("certificate state: %w", err)
	}
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("certificate state %s: %w", filepath.Join(stateDir, StateFile), err)
	}
	if st.Domains == nil {
		st.Domains = map[string]*Domain{}
	}
	for name, d := range st.Domains {
		d.Name = name
	}
	return st, nil
}

func (st *State) write(stateDir string) error {
	path := filepath.Join(stateDir, StateFile)
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("certificate state: %w", err)
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("certificate state: %w", err)
	}
	if err := renameio.WriteFile(path, append(data, '\n'), 0o640); err != nil {
		return fmt.Errorf("write certificate state: %w", err)
	}
	return nil
}

// Sorted returns the domains by name.
func (st *State) Sorted() []*Domain {
	out := make([]*Domain, 0, len(st.Domains))
	for _, d := range st.Domains {
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b *Domain) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}

// Condition summarises a domain for people: "valid", "renewing", "pending"
// (no certificate yet), "failing", "expired" or "removing".
func (d *Domain) Condition(now time.Time) string {
	switch {
	case !d.RemovedAt.IsZero():
		return "removing"
	case d.File != "" && !now.Before(d.NotAfter):
		return "expired"
	case d.Failures > 0:
		return "failing"
	case d.File == "":
		return "pending"
	case d.Forced || (!d.RenewAt.IsZero() && !now.Before(d.RenewAt)):
		return "renewing"
	}
	return "valid"
}
