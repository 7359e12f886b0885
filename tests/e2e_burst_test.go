package tests

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"haproxy-config/statedir"
)

// stressName, stressHost, stressConf and stressMap describe tenant n's
// fragment: backend b_N answering body, routed from N.example.com.
func stressName(n int) string { return fmt.Sprintf("t%d", n) }

func stressHost(n int) string { return fmt.Sprintf("%d.example.com", n) }

func stressConf(n int, body string) string { return backendConf(fmt.Sprintf("b_%d", n), body) }

func stressMap(n int) string { return fmt.Sprintf("%d.example.com b_%d\n", n, n) }

// stressChecksumRE finds the checksum apply prints for the stored version.
var stressChecksumRE = regexp.MustCompile(`\((sha256:[0-9a-f]{64})\)`)

// stressLiveFragments reads the fragments (name -> checksum) of the
// generation the daemon reports live, from its meta.json.
func stressLiveFragments(in *install, gen int) (map[string]string, error) {
	data, err := os.ReadFile(in.state().GenerationMeta(gen))
	if err != nil {
		return nil, err
	}
	var meta struct {
		Fragments map[string]string `json:"fragments"`
	}
	if err := json.Unmarshal(data, &meta); err != nil {
		return nil, fmt.Errorf("generation %d meta.json: %w", gen, err)
	}
	return meta.Fragments, nil
}

// stressLeftovers lists what an interrupted run may leave under root and
// a later run must clear: staged files never committed, validation
// candidates, half-written generations.
func stressLeftovers(root string) ([]string, error) {
	var found []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // removed while walking
		}
		if err != nil {
			return err
		}
		name := d.Name()
		if strings.Contains(name, ".hc-staged-") || strings.HasPrefix(name, statedir.CandidatePrefix) ||
			(strings.HasPrefix(name, statedir.PartialPrefix) && filepath.Base(filepath.Dir(path)) == statedir.Generations) {
			found = append(found, path)
		}
		return nil
	})
	return found, err
}

// stressLongestGap returns the longest time between from, the daemon log
// lines that contain what, and to.
func stressLongestGap(in *install, what string, from, to time.Time) (time.Duration, error) {
	logs, err := filepath.Glob(filepath.Join(in.root, "daemon-*.log"))
	if err != nil || len(logs) != 1 {
		return 0, fmt.Errorf("want one daemon log, found %v (%v)", logs, err)
	}
	data, err := os.ReadFile(logs[0])
	if err != nil {
		return 0, err
	}
	var longest time.Duration
	last := from
	for _, l := range strings.Split(string(data), "\n") {
		stamp, _, ok := strings.Cut(strings.TrimPrefix(l, "time="), " ")
		if !ok || !strings.Contains(l, what) {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, stamp)
		if err != nil || at.Before(from) || at.After(to) {
			continue
		}
		longest = max(longest, at.Sub(last))
		last = at
	}
	return max(longest, to.Sub(last)), nil
}

// stressApply is one apply run's outcome.
type stressApply struct {
	tenant   int
	body     string
	checksum string
	failure  string // empty when it exited 0 and printed a checksum
}

// TestWatchBurst drives the daemon with 1,000 applies from 20 concurrent
// writers on a store of a few hundred fragments: every apply succeeds,
// every final version goes live, and the reloads stay within the rate
// limit (RELOAD_BURST back to back, then one per RELOAD_INTERVAL).
func TestWatchBurst(t *testing.T) {
	const (
		existing  = 200 // fragments in the store before the burst
		writers   = 20
		applies   = 1000
		perWriter = applies / writers
		owned     = existing / writers // existing tenants each writer updates
		added     = 5                  // new tenants each writer adds
		burst     = 2
		interval  = time.Second
	)
	in := newInstall(t)
	crashDumpLogs(t, in)
	for n := 1; n <= existing; n++ {
		writeFile(t, filepath.Join(in.fragmentsDir(), stressName(n)+".cfg"), stressConf(n, fmt.Sprintf("body %d", n)))
		writeFile(t, filepath.Join(in.fragmentsDir(), stressName(n)+".map"), stressMap(n))
	}
	began := time.Now()
	in.startDaemon(t, "HAPROXY_CONFIG_RELOAD_INTERVAL="+interval.String(), fmt.Sprintf("HAPROXY_CONFIG_RELOAD_BURST=%d", burst))
	if st := in.status(t); st.Live == nil || st.Live.Fragments != existing {
		t.Fatalf("daemon started with live %+v, want %d fragments", st.Live, existing)
	}

	// writer w owns tenants no other writer touches, so each tenant's
	// last successful apply is its final version
	results := make([][]stressApply, writers)
	dirs := make([]string, writers)
	for w := range dirs {
		dirs[w] = t.TempDir()
	}
	var wg sync.WaitGroup
	applyStart := time.Now()
	for w := 0; w < writers; w++ {
		var tenants []int
		for i := 1; i <= owned; i++ {
			tenants = append(tenants, w*owned+i)
		}
		for i := 1; i <= added; i++ {
			tenants = append(tenants, existing+w*added+i)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			conf, hosts := filepath.Join(dirs[w], "conf"), filepath.Join(dirs[w], "map")
			for i := 0; i < perWriter; i++ {
				n := tenants[i%len(tenants)]
				a := stressApply{tenant: n, body: fmt.Sprintf("body %d v%d", n, i/len(tenants)+1)}
				err := os.WriteFile(conf, []byte(stressConf(n, a.body)), 0o644)
				if err == nil {
					err = os.WriteFile(hosts, []byte(stressMap(n)), 0o644)
				}
				if err != nil {
					a.failure = err.Error()
					results[w] = append(results[w], a)
					continue
				}
				stdout, stderr, code := run(t, in.env, "", "apply", stressName(n), conf, hosts)
				m := stressChecksumRE.FindStringSubmatch(stdout)
				switch {
				case code != 0:
					a.failure = fmt.Sprintf("exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
				case m == nil:
					a.failure = fmt.Sprintf("no checksum in the output %q", stdout)
				default:
					a.checksum = m[1]
				}
				results[w] = append(results[w], a)
			}
		}()
	}
	wg.Wait()
	applyEnd := time.Now()

	final := map[int]stressApply{} // tenant -> last successful apply
	for n := 1; n <= existing; n++ {
		final[n] = stressApply{tenant: n, body: fmt.Sprintf("body %d", n)}
	}
	var failed []string
	total := 0
	for _, rs := range results {
		for _, a := range rs {
			total++
			if a.failure != "" {
				failed = append(failed, fmt.Sprintf("apply %s (%q): %s", stressName(a.tenant), a.body, a.failure))
				continue
			}
			final[a.tenant] = a
		}
	}
	if total != applies {
		t.Errorf("%d applies ran, want %d", total, applies)
	}
	if len(failed) > 0 {
		t.Errorf("%d of %d applies failed; the first: %s", len(failed), applies, strings.Join(failed[:min(3, len(failed))], "\n"))
	}

	// every final version live: the live generation holds each tenant at
	// its last applied checksum and nothing is pending
	var allLive time.Time
	eventually(t, 60*time.Second, "every applied version live", func() error {
		st := in.status(t)
		if st.Pending != nil {
			return fmt.Errorf("%d changes pending", st.Pending.Changes)
		}
		if st.Live == nil {
			return errors.New("nothing live")
		}
		live, err := stressLiveFragments(in, st.Live.Generation)
		if err != nil {
			return err
		}
		for n, a := range final {
			if a.checksum != "" && live[stressName(n)] != a.checksum {
				return fmt.Errorf("generation %d has %s at %q, want %s (%q)", st.Live.Generation, stressName(n), live[stressName(n)], a.checksum, a.body)
			}
			if _, ok := live[stressName(n)]; !ok {
				return fmt.Errorf("generation %d lacks %s", st.Live.Generation, stressName(n))
			}
		}
		allLive = time.Now()
		return nil
	})
	st := in.status(t)
	elapsed := time.Since(began)
	if want := existing + writers*added; st.Live.Fragments != want {
		t.Errorf("live generation %d has %d fragments, want %d", st.Live.Generation, st.Live.Fragments, want)
	}
	if len(st.Quarantined) != 0 {
		t.Errorf("valid fragments quarantined: %+v", st.Quarantined)
	}
	limit := burst + int(math.Ceil(elapsed.Seconds()/interval.Seconds())) + 1
	if st.Counts.Reloads > limit {
		t.Errorf("%d reloads in %s, over the rate limit's %d (burst %d, interval %s)", st.Counts.Reloads, elapsed.Round(time.Millisecond), limit, burst, interval)
	}
	if st.Counts.Reloads == 0 {
		t.Errorf("no reload in %s after %d applies", elapsed.Round(time.Millisecond), applies)
	}
	if st.Counts.ReloadsFailed != 0 {
		t.Errorf("%d reloads failed; last: %+v", st.Counts.ReloadsFailed, st.LastReload)
	}
	if left, err := stressLeftovers(in.root); err != nil || len(left) > 0 {
		t.Errorf("leftovers after the burst: %v (%v)", left, err)
	}

	// and HAProxy answers every tenant with its last body
	var wrong []string
	for n := 1; n <= existing+writers*added; n++ {
		code, body, err := in.get(stressHost(n), "/")
		if err != nil || code != 200 || body != final[n].body {
			wrong = append(wrong, fmt.Sprintf("%s: %d %q (%v), want %q", stressHost(n), code, body, err, final[n].body))
		}
	}
	if len(wrong) > 0 {
		t.Errorf("%d hosts do not answer their last version; the first: %s", len(wrong), strings.Join(wrong[:min(3, len(wrong))], "\n"))
	}

	applying := applyEnd.Sub(applyStart)
	gap, err := stressLongestGap(in, "msg=reloaded", applyStart, applyEnd)
	if err != nil {
		t.Errorf("read the daemon log: %v", err)
	}
	t.Logf("longest time without a reload while the applies ran: %s (the rate limit allows one every %s)", gap.Round(time.Millisecond), interval)
	t.Logf("%d applies by %d writers in %s (%.1f/s, %s each on average); all live %s after the last apply",
		applies, writers, applying.Round(time.Millisecond), float64(applies)/applying.Seconds(),
		(applying / applies).Round(time.Microsecond), allLive.Sub(applyEnd).Round(time.Millisecond))
	t.Logf("%d reloads (limit %d), %d reconciles, in %s since the daemon started; live generation %d with %d fragments",
		st.Counts.Reloads, limit, st.Counts.Reconciles, elapsed.Round(time.Millisecond), st.Live.Generation, st.Live.Fragments)
}
