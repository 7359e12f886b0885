package certs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"time"
)

// Domain is what the manager knows of one domain.
type Domain struct {
	Name string `json:"name"`
	// the names its certificate is ordered for: Name, and "*."+Name too
	// when both are mapped (a SAN pair)
	Names []string `json:"names,omitempty"`
	// http-01 or dns-01: how the CA is shown the names are ours
	Challenge string `json:"challenge,omitempty"`
	// why no certificate is ordered (the fallback is served), or empty
	Blocked string `json:"blocked,omitempty"`
	// the certificate HAProxy serves (empty before the first one)
	File      string    `json:"file,omitempty"`
	Covers    []string  `json:"covers,omitempty"` // the names on that certificate
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
	return LoadState(context.Background(), NewFileStorage(stateDir, ""))
}

// LoadState reads the state from s; none stored is an empty state.
func LoadState(ctx context.Context, s Storage) (*State, error) {
	st := &State{Domains: map[string]*Domain{}}
	data, err := s.Load(ctx, Keys.State())
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("certificate state: %w", err)
	}
	if err := json.Unmarshal(data, st); err != nil {
		return nil, fmt.Errorf("certificate state %s: %w", location(s, Keys.State()), err)
	}
	if st.Domains == nil {
		st.Domains = map[string]*Domain{}
	}
	for name, d := range st.Domains {
		d.Name = name
	}
	return st, nil
}

func (st *State) save(ctx context.Context, s Storage) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("certificate state: %w", err)
	}
	if err := s.Store(ctx, Keys.State(), append(data, '\n')); err != nil {
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

// names are the names the certificate is for (states written before
// SAN pairs name none: the domain alone).
func (d *Domain) names() []string {
	if len(d.Names) == 0 {
		return []string{d.Name}
	}
	return d.Names
}

// served are the names the current certificate is served for: every
// name it covers (one that left the map stays until the renewal, like a
// domain in its removal grace).
func (d *Domain) served() []string {
	if d.File == "" {
		return nil
	}
	if len(d.Covers) == 0 {
		return []string{d.Name}
	}
	return d.Covers
}

// covered reports whether the current certificate covers every wanted name.
func (d *Domain) covered() bool {
	served := d.served()
	return !slices.ContainsFunc(d.names(), func(n string) bool { return !slices.Contains(served, n) })
}

// Conditions are the values of Condition, in the order people read them.
var Conditions = []string{"valid", "renewing", "pending", "failing", "expired", "removing", "fallback"}

// Condition summarises a domain for people: "valid", "renewing", "pending"
// (no certificate yet), "failing", "expired", "removing", or "fallback"
// (none can be ordered: Blocked says why).
func (d *Domain) Condition(now time.Time) string {
	switch {
	case !d.RemovedAt.IsZero():
		return "removing"
	case d.Blocked != "" && d.File == "":
		return "fallback"
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
