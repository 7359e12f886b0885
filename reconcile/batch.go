package reconcile

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"haproxy-config/assemble"
	"haproxy-config/fragments"
	"haproxy-config/reload"
)

// Op is one change of a batch: an apply of Change, or with Remove the
// removal of the fragment Change.Name.
type Op struct {
	Change
	Remove bool
	// Actor is who asked, for the history; "" is this process's user.
	Actor string
}

// OpResult answers one Op. Err is nil when the change was accepted and
// stored; otherwise it is what Apply or Remove would have returned
// (assemble.Problems, *reload.EnvError, fragments.ErrNotFound, ...).
type OpResult struct {
	Apply *ApplyResult // an accepted apply
	Err   error
}

// ApplyBatch validates a group of changes together, in one haproxy -c when
// they all pass, and stores those that go live together. When the group
// fails, the culprits are found from haproxy's messages where they name a
// changed fragment's line, else by bisecting the group; the others are
// accepted. Each change gets its own answer, in the order given. A fragment
// named twice waits for the next round, so that each round changes a
// fragment at most once. Every change's own checks (host lookups among
// them) run first, without the store's lock; the rounds then run under
// one lock, so that no publish sees a version a later round replaces.
// ApplyBatch is the daemon's API writer: the history records its changes
// as fragments.ViaAPI.
func (e *Engine) ApplyBatch(ctx context.Context, ops []Op) []OpResult {
	results := make([]OpResult, len(ops))
	checked := e.checkOps(ctx, ops, results)
	var left []int
	for i, c := range checked {
		if c != nil {
			left = append(left, i)
		}
	}
	if len(left) == 0 {
		return results
	}
	unlock, err := e.lock(ctx)
	if err != nil {
		for _, i := range left {
			results[i].Err = err
		}
		return results
	}
	defer unlock()
	for len(left) > 0 {
		var round []*batchChange
		var later []int
		seen := map[string]bool{}
		for _, i := range left {
			if seen[ops[i].Name] {
				later = append(later, i)
				continue
			}
			seen[ops[i].Name] = true
			round = append(round, checked[i])
		}
		e.applyRound(ctx, ops, round, results)
		left = later
	}
	return results
}

// checkOps runs each op's own checks: a valid name for a removal, the
// per-fragment checks and host lookups for an apply. It returns the ops
// that passed, by index (nil for the others, whose results it sets).
func (e *Engine) checkOps(ctx context.Context, ops []Op, results []OpResult) []*batchChange {
	checked := make([]*batchChange, len(ops))
	base, err := e.Base()
	if err != nil {
		for i := range ops {
			results[i].Err = err
		}
		return checked
	}
	pol := e.policy(base)
	for i, op := range ops {
		if op.Remove {
			if err := fragments.ValidName(op.Name); err != nil {
				results[i].Err = &UsageError{Err: err}
				continue
			}
			checked[i] = &batchChange{op: i, name: op.Name}
			continue
		}
		f, ps := fragments.Parse(op.Name, op.ConfFile, op.Conf, op.MapFile, op.Map, pol)
		if len(ps) == 0 {
			ps = fragments.CheckHosts(ctx, f, pol, e.Resolve)
		}
		if len(ps) > 0 {
			results[i].Err = ps
			continue
		}
		e.hostsOK[f.Checksum] = true
		checked[i] = &batchChange{op: i, name: op.Name, frag: f}
	}
	return checked
}

// batchChange is one op of a round that passed its own checks.
type batchChange struct {
	op   int                // index into the ops
	name string             // the fragment it changes
	frag *assemble.Fragment // the new version; nil removes the fragment
}

// applyTo returns set with the change made.
func (c *batchChange) applyTo(set []*assemble.Fragment) []*assemble.Fragment {
	set = without(set, c.name)
	if c.frag != nil {
		set = append(set, c.frag)
	}
	return set
}

// applyRound validates and stores pending, changes that passed their own
// checks and no two of which name the same fragment. The caller holds the
// store's lock.
func (e *Engine) applyRound(ctx context.Context, ops []Op, pending []*batchChange, results []OpResult) {
	failAll := func(changes []*batchChange, err error) {
		for _, c := range changes {
			results[c.op].Err = err
		}
	}
	sel, err := e.load()
	if err != nil {
		failAll(pending, err)
		return
	}
	e.checkHosts(ctx, sel)
	if err := e.selectValid(ctx, sel, sel.candidates(), true); err != nil {
		failAll(pending, err)
		return
	}
	var changes []*batchChange
	for _, c := range pending {
		if _, ok := sel.Stored[c.name]; !ok && c.frag == nil {
			results[c.op].Err = fmt.Errorf("fragment %q: %w", c.name, fragments.ErrNotFound)
			continue
		}
		if err := e.orphanCheck(sel, c.name, c.applyTo(sel.Live)); err != nil {
			results[c.op].Err = err
			continue
		}
		changes = append(changes, c)
	}
	b := &batch{e: e, ctx: ctx, sel: sel, changes: changes, warnings: map[int]assemble.Problems{}}
	accepted, rejected, err := groupCommit(len(changes), b.try)
	if err != nil {
		failAll(changes, err)
		return
	}
	for m, ps := range rejected {
		results[changes[m].op].Err = b.own(changes[m], ps)
	}
	// the accepted were validated together: they are stored together, in
	// one transaction, or none is
	slices.Sort(accepted)
	group := make([]fragments.GroupChange, len(accepted))
	for k, m := range accepted {
		c := changes[m]
		group[k] = fragments.GroupChange{Name: c.name, Fragment: c.frag, Event: opEvent(ops[c.op], c)}
	}
	gone, err := e.Store.WriteGroup(group)
	if err != nil {
		for _, m := range accepted {
			results[changes[m].op].Err = &reload.EnvError{Err: err}
		}
		return
	}
	for _, m := range accepted {
		c := changes[m]
		if c.frag == nil && slices.Contains(gone, c.name) {
			// its files went between the read and the commit
			results[c.op].Err = fmt.Errorf("fragment %q: %w", c.name, fragments.ErrNotFound)
			continue
		}
		if c.frag != nil {
			e.hostsOK[c.frag.Checksum] = true
			_, replaced := sel.Stored[c.name]
			results[c.op].Apply = &ApplyResult{Fragment: c.frag, Replaced: replaced, Warnings: b.warnings[m]}
		}
	}
}

// opEvent is the history's record of an accepted change.
func opEvent(op Op, c *batchChange) *fragments.Event {
	actor := op.Actor
	if actor == "" {
		actor = fragments.Actor()
	}
	ev := &fragments.Event{Time: time.Now().UTC(), Action: "apply", Name: c.name, Actor: actor, Via: fragments.ViaAPI}
	if c.frag != nil {
		ev.Checksum = c.frag.Checksum
	} else {
		ev.Action = "remove"
	}
	return ev
}

// batch is one round's state for its trials.
type batch struct {
	e        *Engine
	ctx      context.Context
	sel      *Selection
	changes  []*batchChange
	warnings map[int]assemble.Problems // accepted change -> haproxy's warnings about it
}

// try validates what is live with the accepted changes and those of trial
// made. It returns no problems when that set is valid; else the problems,
// and those haproxy tied to a line of one of trial's fragments.
func (b *batch) try(accepted, trial []int) (assemble.Problems, map[int]assemble.Problems, error) {
	set := b.sel.Live
	for _, m := range append(slices.Clone(accepted), trial...) {
		set = b.changes[m].applyTo(set)
	}
	// a set whose config is the one selected needs no haproxy -c (maponly.go)
	v, _, err := b.e.validateChange(b.ctx, b.sel, set)
	var unfinished *reload.UnfinishedError
	if errors.As(err, &unfinished) {
		// the set without trial passed: the time is trial's doing
		return assemble.Problems{{Location: assemble.Location{File: "haproxy -c"},
			Msg: "haproxy -c does not finish once this fragment is added: " + unfinished.Why}}, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	if len(v.Errors) == 0 {
		for _, m := range trial {
			for _, w := range v.Warnings {
				if w.Fragment == "" || w.Fragment == b.changes[m].name {
					b.warnings[m] = append(b.warnings[m], w)
				}
			}
		}
		return nil, nil, nil
	}
	blamed := map[int]assemble.Problems{}
	for _, p := range v.Errors {
		for _, m := range trial {
			if c := b.changes[m]; c.frag != nil && p.Fragment == c.name {
				blamed[m] = append(blamed[m], p)
			}
		}
	}
	return v.Errors, blamed, nil
}

// own makes a rejected change's problems point at its own fragment, as
// Apply and Remove do: what was valid without it is not valid with it, so
// the fault is its own even where haproxy's message points elsewhere.
func (b *batch) own(c *batchChange, ps assemble.Problems) assemble.Problems {
	conf, _ := b.e.Store.Paths(c.name)
	at := assemble.Location{Fragment: c.name, File: conf}
	if c.frag != nil {
		at.File = c.frag.ConfFile
	}
	for _, p := range ps {
		if p.Fragment == "" && p.File == "haproxy -c" && p.Line == 0 {
			p.Location = at
		}
	}
	if c.frag == nil {
		return append(assemble.Problems{{Location: at, Msg: "remove refused: the configuration without this fragment is invalid"}}, ps...)
	}
	if !slices.Contains(ps.Fragments(), c.name) {
		return append(assemble.Problems{{Location: at, Msg: "haproxy rejects the configuration once this fragment is added:"}}, ps...)
	}
	return ps
}

// tryFunc validates the set with the members accepted so far and those of
// trial. No problems means the set is valid; blamed are the problems that
// name a member of trial.
type tryFunc func(accepted, trial []int) (errs assemble.Problems, blamed map[int]assemble.Problems, err error)

// groupCommit splits members 0..n-1 into those accepted together and
// those rejected, each with its problems. All members are tried at once;
// on failure the members haproxy blamed are rejected and the rest tried
// again, and when it blamed none the trial is halved. A member rejected
// alone gets the problems of the set it failed in.
func groupCommit(n int, try tryFunc) (accepted []int, rejected map[int]assemble.Problems, err error) {
	rejected = map[int]assemble.Problems{}
	var walk func(trial []int) error
	walk = func(trial []int) error {
		if len(trial) == 0 {
			return nil
		}
		errs, blamed, err := try(accepted, trial)
		switch {
		case err != nil:
			return err
		case len(errs) == 0:
			accepted = append(accepted, trial...)
			return nil
		case len(blamed) > 0:
			var rest []int
			for _, m := range trial {
				if ps, ok := blamed[m]; ok {
					rejected[m] = ps
				} else {
					rest = append(rest, m)
				}
			}
			return walk(rest)
		case len(trial) == 1:
			rejected[trial[0]] = errs
			return nil
		}
		half := len(trial) / 2
		if err := walk(trial[:half]); err != nil {
			return err
		}
		return walk(trial[half:])
	}
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	return accepted, rejected, walk(all)
}
