package certs

import (
	"cmp"
	"hash/fnv"
	"slices"
	"time"
)

// Policy is when the manager orders, retries and lets go. Every decision
// it makes takes the time as an argument, so tests drive it with a fake
// clock.
type Policy struct {
	Orders      int           // new orders allowed per Window
	Window      time.Duration // the order budget's window
	InFlight    int           // orders running at once
	BackoffMin  time.Duration // wait after the first failure; doubles after each
	BackoffMax  time.Duration
	RemoveGrace time.Duration // a domain gone from the map keeps its certificate this long
	ARIPoll     time.Duration // how often to ask the CA's renewal information when it names no Retry-After
}

// Jitter returns a random duration in [0, n); tests pass a fixed one.
type Jitter func(n time.Duration) time.Duration

// backoff is the wait after n consecutive failures: BackoffMin doubled
// n-1 times, at most BackoffMax, plus up to a tenth more so that domains
// failing together do not retry together.
func (p Policy) backoff(n int, jitter Jitter) time.Duration {
	d := p.BackoffMin
	for i := 1; i < n && d < p.BackoffMax; i++ {
		d *= 2
	}
	d = min(d, p.BackoffMax)
	return d + jitter(d/10+1)
}

// lifetimeRenewal is when to renew without the CA's advice: when a third
// of the lifetime is left, earlier by up to a twentieth of the lifetime so
// that a thousand certificates issued the same day renew over days, not in
// the same minute.
func lifetimeRenewal(notBefore, notAfter time.Time, jitter Jitter) time.Time {
	life := notAfter.Sub(notBefore)
	return notAfter.Add(-life / 3).Add(-jitter(life/20 + 1))
}

// wants reports whether d needs a certificate ordered, ignoring when the
// next attempt may start.
func (d *Domain) wants(now time.Time) bool {
	if !d.RemovedAt.IsZero() || d.Blocked != "" {
		return false
	}
	return !d.covered() || d.Forced || (!d.RenewAt.IsZero() && !now.Before(d.RenewAt))
}

// due returns the domains whose order may start now, most urgent first:
// domains without a certificate, then by expiry; among equals, in an
// order of node's own in fleet mode (spread), by name otherwise.
func (st *State) due(now time.Time, running map[string]bool, node string) []*Domain {
	var out []*Domain
	for _, d := range st.Domains {
		if d.dueNow(now, running) {
			out = append(out, d)
		}
	}
	var rank map[string]uint64 // spread, hashed once per domain, not per comparison
	if node != "" {
		rank = make(map[string]uint64, len(out))
		for _, d := range out {
			rank[d.Name] = spread(node, d.Name)
		}
	}
	slices.SortFunc(out, func(a, b *Domain) int {
		if (a.File == "") != (b.File == "") {
			if a.File == "" {
				return -1
			}
			return 1
		}
		if c := a.NotAfter.Compare(b.NotAfter); c != 0 {
			return c
		}
		if c := cmp.Compare(rank[a.Name], rank[b.Name]); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
	return out
}

// dueNow reports whether d's order may start now.
func (d *Domain) dueNow(now time.Time, running map[string]bool) bool {
	return d.wants(now) && !now.Before(d.NextAttempt) && !running[d.Name]
}

// spread ranks domain for node: the nodes of a fleet given the same new
// domains start their orders with different ones, where in name order
// they would all wait on the same few order locks while the others wait
// for a free slot.
func spread(node, domain string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(node))
	h.Write([]byte{0})
	h.Write([]byte(domain))
	return h.Sum64()
}

// budget drops orders older than the window and reports whether a new
// order fits; when it does not, free is when the oldest leaves the window.
func (st *State) budget(now time.Time, p Policy) (ok bool, free time.Time) {
	st.Orders = slices.DeleteFunc(st.Orders, func(t time.Time) bool { return !t.After(now.Add(-p.Window)) })
	if len(st.Orders) < p.Orders {
		return true, time.Time{}
	}
	return false, slices.MinFunc(st.Orders, func(a, b time.Time) int { return a.Compare(b) }).Add(p.Window)
}

// setDomains makes wanted the certificates to hold: new ones are added,
// ones that left are marked for removal, ones that came back are kept, and
// each gets its names, challenge and reason for not being ordered. It
// reports whether anything changed.
func (st *State) setDomains(now time.Time, wanted map[string]want) bool {
	changed := false
	for name, w := range wanted {
		d, ok := st.Domains[name]
		if !ok {
			d = &Domain{Name: name}
			st.Domains[name] = d
			changed = true
		} else if !d.RemovedAt.IsZero() {
			d.RemovedAt = time.Time{}
			changed = true
		}
		if !slices.Equal(d.Names, w.names) || d.Challenge != w.challenge || d.Blocked != w.blocked {
			d.Names, d.Challenge, d.Blocked = w.names, w.challenge, w.blocked
			changed = true
		}
	}
	for name, d := range st.Domains {
		if _, ok := wanted[name]; !ok && d.RemovedAt.IsZero() {
			d.RemovedAt = now
			changed = true
		}
	}
	return changed
}

// expired returns the domains whose removal grace is over and that no
// stored fragment names any more.
func (st *State) expired(now time.Time, p Policy, protected map[string]bool) []*Domain {
	var out []*Domain
	for _, d := range st.Sorted() {
		if !d.RemovedAt.IsZero() && !now.Before(d.RemovedAt.Add(p.RemoveGrace)) && !protected[d.Name] {
			out = append(out, d)
		}
	}
	return out
}

// nextWake is the earliest time something may need doing: an order that
// becomes due, a retry, a renewal-information check (when there is room
// for one), a removal (of a domain no fragment protects), or room in the
// order budget for orders that wait for it. Zero means nothing is
// scheduled; a job's end wakes the manager too.
func (st *State) nextWake(now time.Time, p Policy, running, protected map[string]bool, ari bool) time.Time {
	var next time.Time
	at := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	waiting := false
	room := len(running) < p.InFlight
	for _, d := range st.Domains {
		if running[d.Name] {
			continue
		}
		if !d.RemovedAt.IsZero() {
			if !protected[d.Name] {
				at(d.RemovedAt.Add(p.RemoveGrace))
			}
			continue
		}
		if d.wants(now) {
			if now.Before(d.NextAttempt) {
				at(d.NextAttempt)
			} else {
				waiting = true
			}
			continue
		}
		at(d.RenewAt)
		if ari && (room || d.ARICheckAt.After(now)) {
			at(d.ARICheckAt)
		}
	}
	if waiting {
		if ok, free := st.budget(now, p); !ok {
			at(free)
		}
	}
	return next
}
