package reconcile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"haproxy-config/assemble"
	"haproxy-config/fragments"
	"haproxy-config/reload"
)

// Generations returns every kept generation, newest first.
func (e *Engine) Generations() ([]*Generation, error) {
	nums, err := e.generationNumbers()
	if err != nil {
		return nil, err
	}
	gens := make([]*Generation, 0, len(nums))
	for _, n := range slices.Backward(nums) {
		g, err := e.readGeneration(n)
		if err != nil {
			return nil, err
		}
		gens = append(gens, g)
	}
	return gens, nil
}

// NewestGeneration is the newest kept generation's number, 0 for none.
func (e *Engine) NewestGeneration() (int, error) {
	nums, err := e.generationNumbers()
	if err != nil || len(nums) == 0 {
		return 0, err
	}
	return nums[len(nums)-1], nil
}

// Generation returns one kept generation, fragments.ErrNotFound when it
// was pruned or never existed.
func (e *Engine) Generation(n int) (*Generation, error) {
	if _, err := os.Stat(e.state().Generation(n)); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("generation %d: %w (see haproxy-config history)", n, fragments.ErrNotFound)
	}
	return e.readGeneration(n)
}

// checkedGeneration returns kept generation n and its files after haproxy
// -c has accepted them again (certificates may have changed since), on a
// candidate copy of the same bytes, as every check runs.
func (e *Engine) checkedGeneration(ctx context.Context, n int) (g *Generation, cfgPath, mapPath string, err error) {
	if g, err = e.Generation(n); err != nil {
		return nil, "", "", err
	}
	if cfgPath, mapPath, err = e.layout(g.Dir); err != nil {
		return nil, "", "", err
	}
	out, err := readOutput(n, cfgPath, mapPath)
	if err != nil {
		return nil, "", "", err
	}
	dir, err := e.candidateDir()
	if err != nil {
		return nil, "", "", err
	}
	defer os.RemoveAll(dir)
	cfg, _, err := e.writeTree(dir, out)
	if err != nil {
		return nil, "", "", &reload.EnvError{Err: fmt.Errorf("write candidate: %w", err)}
	}
	res, err := e.check(ctx, dir, cfg)
	if err != nil {
		return nil, "", "", err
	}
	if !res.Valid {
		return nil, "", "", &reload.EnvError{Err: fmt.Errorf("generation %d no longer passes haproxy -c: %v", n, res.Messages)}
	}
	return g, cfgPath, mapPath, nil
}

// Restore puts a kept generation's config and map back as the live files,
// after haproxy -c has accepted them again (certificates may have changed
// since). The fragments are not touched.
func (e *Engine) Restore(ctx context.Context, n int) (*Generation, error) {
	unlock, err := e.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	g, cfgPath, mapPath, err := e.checkedGeneration(ctx, n)
	if err != nil {
		return nil, err
	}
	out, err := readOutput(n, cfgPath, mapPath)
	if err != nil {
		return nil, err
	}
	if err := e.writeLive(out); err != nil {
		return nil, err
	}
	return g, nil
}

// Republish writes kept generation n's config and map as the live files
// again unless they hold exactly those bytes: HAProxy about to be started
// anew reads the live files, which may have been deleted or edited since
// n went live. Rewritten files pass haproxy -c first, as Restore's do. It
// reports whether it wrote them.
func (e *Engine) Republish(ctx context.Context, n int) (bool, error) {
	unlock, err := e.lock(ctx)
	if err != nil {
		return false, err
	}
	defer unlock()
	g, err := e.Generation(n)
	if err != nil {
		return false, err
	}
	cfgPath, mapPath, err := e.layout(g.Dir)
	if err != nil {
		return false, err
	}
	out, err := readOutput(n, cfgPath, mapPath)
	if err != nil {
		return false, err
	}
	if e.liveEquals(out) {
		return false, nil
	}
	if _, _, _, err := e.checkedGeneration(ctx, n); err != nil {
		return false, err
	}
	return true, e.writeLive(out)
}

// readOutput reads generation n's config and map.
func readOutput(n int, cfgPath, mapPath string) (*assemble.Output, error) {
	out := &assemble.Output{}
	var err error
	if out.Config, err = os.ReadFile(cfgPath); err != nil {
		return nil, &reload.EnvError{Err: fmt.Errorf("generation %d: %w", n, err)}
	}
	if out.Map, err = os.ReadFile(mapPath); err != nil {
		return nil, &reload.EnvError{Err: fmt.Errorf("generation %d: %w", n, err)}
	}
	return out, nil
}

// Hold is a rollback by hand: the daemon serves this generation and leaves
// changes to the fragments pending until the hold is released.
type Hold struct {
	Generation int       `json:"generation"`
	Since      time.Time `json:"since"`
	Actor      string    `json:"actor"`
}

// MarkServing records that HAProxy serves generation n, which prune then
// keeps: it is the last good one a failed reload goes back to.
func (e *Engine) MarkServing(n int) error {
	return fragments.WriteFile(e.state().Serving(), []byte(strconv.Itoa(n)+"\n"), 0o640)
}

// Serving is the generation last marked serving, 0 if none.
func (e *Engine) Serving() int {
	data, err := os.ReadFile(e.state().Serving())
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return n
}

// SetHold records a hold on generation n by actor, which must be kept
// and must still pass haproxy -c. It takes the store lock, so the
// generation cannot be pruned meanwhile.
func (e *Engine) SetHold(ctx context.Context, n int, actor string) (*Hold, error) {
	unlock, err := e.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, _, _, err := e.checkedGeneration(ctx, n); err != nil {
		return nil, err
	}
	h := &Hold{Generation: n, Since: time.Now().UTC(), Actor: actor}
	data, err := json.MarshalIndent(h, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := fragments.MkdirAll(e.S.StateDir, 0o750); err != nil {
		return nil, &reload.EnvError{Err: err}
	}
	if err := fragments.WriteFile(e.state().Hold(), append(data, '\n'), 0o640); err != nil {
		return nil, &reload.EnvError{Err: err}
	}
	return h, nil
}

// ReleaseHold removes the hold; false when there was none.
func (e *Engine) ReleaseHold() (bool, error) {
	err := os.Remove(e.state().Hold())
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, &reload.EnvError{Err: err}
	}
	return true, fragments.Sync(e.S.StateDir)
}

// CurrentHold returns the hold in force, or nil.
func (e *Engine) CurrentHold() (*Hold, error) {
	data, err := os.ReadFile(e.state().Hold())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, &reload.EnvError{Err: err}
	}
	h := &Hold{}
	if err := json.Unmarshal(data, h); err != nil {
		return nil, &reload.EnvError{Err: fmt.Errorf("%s: %w", e.state().Hold(), err)}
	}
	return h, nil
}
