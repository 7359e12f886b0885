package tests

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"haproxy-config/fragments"
	"haproxy-config/watcher"
)

// crashParent returns a process's parent PID, 0 when it is gone.
func crashParent(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

// crashProcs lists the live processes whose command line names a path
// under root (HAProxy is started with -f ROOT/...).
func crashProcs(root string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid != os.Getpid() && runsUnder(root, pid) {
			pids = append(pids, pid)
		}
	}
	sort.Ints(pids)
	return pids
}

// crashDescribe tells what a process and its children are doing: command
// line, state and signal masks.
func crashDescribe(root string, pid int) string {
	var b strings.Builder
	pids := []int{pid}
	for _, p := range crashProcs(root) {
		if crashParent(p) == pid {
			pids = append(pids, p)
		}
	}
	for _, p := range pids {
		fmt.Fprintf(&b, "\n  pid %d (parent %d): %s", p, crashParent(p), cmdlineOf(p))
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		for _, l := range strings.Split(string(data), "\n") {
			for _, k := range []string{"State:", "SigPnd:", "ShdPnd:", "SigBlk:", "SigIgn:", "SigCgt:"} {
				if strings.HasPrefix(l, k) {
					fmt.Fprintf(&b, "\n    %s", strings.Join(strings.Fields(l), " "))
				}
			}
		}
	}
	return b.String()
}

// crashTail returns the last n lines of a daemon log, leaving out what
// HAProxy printed unless it is an alert.
func crashTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		if !strings.Contains(l, "msg=haproxy ") || strings.Contains(l, "ALERT") {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// crashGrep returns the last n lines of a log that contain one of words.
func crashGrep(path string, n int, words ...string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				lines = append(lines, "  "+l)
				break
			}
		}
	}
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// crashDumpLogs logs the tail of every daemon log of the installation if
// the test failed. Register it after newInstall: it must run before the
// root is removed.
func crashDumpLogs(t *testing.T, in *install) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		logs, _ := filepath.Glob(filepath.Join(in.root, "daemon-*.log"))
		for _, l := range logs[max(0, len(logs)-3):] {
			t.Logf("%s (last lines):\n%s", filepath.Base(l), crashTail(l, 60))
		}
	})
}

// crashStaged reports whether fragment name has a staged file in dir.
func crashStaged(dir, name string) bool {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "."+name+".") && strings.Contains(e.Name(), ".hc-staged-") {
			return true
		}
	}
	return false
}

// loopbackPolicy is the tenant policy the e2e installations run with:
// the default one, with the tests' loopback servers allowed.
var loopbackPolicy = fragments.Policy{AllowNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}

// crashVersion is one version of a fragment; conf == "" means none stored.
type crashVersion struct {
	conf, hostMap, body string
}

func (v crashVersion) absent() bool { return v.conf == "" && v.hostMap == "" }

// checksum is the fragment's checksum as apply computes and prints it.
func (v crashVersion) checksum(t *testing.T, name string) string {
	t.Helper()
	f, ps := fragments.Parse(name, "", []byte(v.conf), "", []byte(v.hostMap), loopbackPolicy)
	if len(ps) > 0 {
		t.Fatalf("test fragment %s does not parse: %v", name, ps)
	}
	return f.Checksum
}

// crashRun is one regular apply of a burst.
type crashRun struct {
	tenant int
	wait   bool
	v      crashVersion
	stdout string
	stderr string
	code   int
}

// TestWatchCrash kills the daemon with SIGKILL at a random moment of a
// burst of applies (and, in some rounds, one apply mid-way), 20 times over,
// and checks that a fresh daemon on the same root converges each time:
// every stored change live, a killed apply's fragment wholly old or wholly
// new, nothing quarantined, no leftovers, no HAProxy of the killed daemon
// once the fresh one runs, and none at all at the end.
func TestWatchCrash(t *testing.T) {
	const (
		rounds    = 20
		tenants   = 20
		writers   = 4
		perWriter = 4
		victim    = "victim"
	)
	seed := time.Now().UnixNano()
	if s := os.Getenv("E2E_CRASH_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseInt(s, 10, 64); err != nil {
			t.Fatalf("E2E_CRASH_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (E2E_CRASH_SEED=%d repeats the random choices)", seed, seed)
	rng := rand.New(rand.NewSource(seed))

	in := newInstall(t)
	t.Cleanup(func() {
		// after every daemon's cleanup: nothing of this root may run
		deadline := time.Now().Add(10 * time.Second)
		for len(crashProcs(in.root)) > 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		for _, pid := range crashProcs(in.root) {
			t.Errorf("process %d still runs after the test: %s", pid, cmdlineOf(pid))
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	crashDumpLogs(t, in)
	env := []string{"HAPROXY_CONFIG_RELOAD_INTERVAL=100ms", "HAPROXY_CONFIG_RELOAD_BURST=3"}

	expect := map[string]crashVersion{}
	hosts := map[string]string{victim: "victim.example.com"}
	for n := 1; n <= tenants; n++ {
		v := crashVersion{conf: stressConf(n, fmt.Sprintf("body %d r0", n)), hostMap: stressMap(n), body: fmt.Sprintf("body %d r0", n)}
		writeFile(t, filepath.Join(in.fragmentsDir(), stressName(n)+".cfg"), v.conf)
		writeFile(t, filepath.Join(in.fragmentsDir(), stressName(n)+".map"), v.hostMap)
		expect[stressName(n)] = v
		hosts[stressName(n)] = stressHost(n)
	}
	expect[victim] = crashVersion{}
	inputs := t.TempDir()

	cur := in.startDaemon(t, env...)
	outcomes := map[string]int{}
	orphans := 0        // HAProxy masters that outlived their killed daemon
	interrupted := 0    // apply --wait runs whose daemon was killed while they waited
	unansweredRuns := 0 // applies the daemon took and was killed before it answered
	began := time.Now()
	for round := 1; round <= rounds; round++ {
		// the random choices of the round, made here, in order
		total := writers * perWriter
		killAfter := rng.Intn(total) // applies finished before the daemon is killed
		killJitter := time.Duration(rng.Intn(30)) * time.Millisecond
		plan := make([][]crashRun, writers)
		for w := range plan {
			for i := 0; i < perWriter; i++ {
				n := w*(tenants/writers) + 1 + rng.Intn(tenants/writers)
				body := fmt.Sprintf("body %d r%d.%d", n, round, i)
				plan[w] = append(plan[w], crashRun{tenant: n, wait: rng.Intn(4) == 0,
					v: crashVersion{conf: stressConf(n, body), hostMap: stressMap(n), body: body}})
			}
		}
		killApply := rng.Intn(3) > 0
		// the victim apply is killed at a random time after its start, or
		// a few milliseconds after it stages its files
		atCommit := rng.Intn(2) == 0
		applyKillAt := time.Duration(rng.Intn(150)) * time.Millisecond
		if atCommit {
			applyKillAt = time.Duration(rng.Intn(4000)) * time.Microsecond
		}

		finished := make(chan struct{}, total)
		var wg sync.WaitGroup
		for w := range plan {
			dir := filepath.Join(inputs, fmt.Sprintf("r%d-w%d", round, w))
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range plan[w] {
					r := &plan[w][i]
					conf, hostMap := filepath.Join(dir, fmt.Sprintf("%d.cfg", i)), filepath.Join(dir, fmt.Sprintf("%d.map", i))
					err := os.MkdirAll(dir, 0o755)
					if err == nil {
						err = os.WriteFile(conf, []byte(r.v.conf), 0o644)
					}
					if err == nil {
						err = os.WriteFile(hostMap, []byte(r.v.hostMap), 0o644)
					}
					if err != nil {
						r.code, r.stderr = -1, err.Error()
					} else {
						args := []string{"apply", stressName(r.tenant), conf, hostMap}
						if r.wait {
							args = []string{"apply", "--wait", "--timeout", "30s", stressName(r.tenant), conf, hostMap}
						}
						r.stdout, r.stderr, r.code = run(t, in.env, "", args...)
					}
					finished <- struct{}{}
				}
			}()
		}

		// one apply of the victim fragment, killed mid-way
		old := expect[victim]
		next := crashVersion{conf: backendConf(fmt.Sprintf("vb_%d", round), fmt.Sprintf("victim r%d", round)),
			hostMap: fmt.Sprintf("victim.example.com vb_%d\n", round), body: fmt.Sprintf("victim r%d", round)}
		victimDone := make(chan string, 1)
		if killApply {
			conf := writeFile(t, filepath.Join(inputs, fmt.Sprintf("victim-%d.cfg", round)), next.conf)
			hostMap := writeFile(t, filepath.Join(inputs, fmt.Sprintf("victim-%d.map", round)), next.hostMap)
			p := start(t, in.env, "", "apply", victim, conf, hostMap)
			exited := make(chan struct{})
			var waitErr error
			go func() {
				waitErr = p.cmd.Wait()
				p.cancel()
				close(exited)
			}()
			go func() {
				// at commit: once it has staged its files, inside its commit
				for atCommit && !crashStaged(in.fragmentsDir(), victim) {
					select {
					case <-exited:
						return
					case <-time.After(200 * time.Microsecond):
					}
				}
				time.Sleep(applyKillAt)
				_ = p.cmd.Process.Kill()
			}()
			go func() {
				<-exited
				var exit *exec.ExitError
				switch {
				case waitErr == nil:
					victimDone <- "completed"
				case errors.As(waitErr, &exit) && exit.ExitCode() < 0:
					victimDone <- "killed"
				case errors.As(waitErr, &exit) && exit.ExitCode() == 5 && strings.Contains(p.stderr.String(), "the daemon did not answer"):
					// the daemon was killed first, after it took the request:
					// stored whole or not at all, as a killed apply
					victimDone <- "unanswered"
				default:
					victimDone <- fmt.Sprintf("failed: %v\nstderr: %s", waitErr, p.stderr.String())
				}
			}()
		} else {
			victimDone <- ""
		}

		for i := 0; i < killAfter; i++ {
			<-finished
		}
		time.Sleep(killJitter)
		killed := cur
		killed.kill9()
		duringBurst := len(finished) < total-killAfter
		wg.Wait()
		victimOutcome := <-victimDone

		// an apply the daemon took but did not answer before it was
		// killed stored its version whole or not at all: which one is read
		// from the store once the next daemon has finished its commit
		unanswered := map[string][2]crashVersion{} // name -> {before, sent}
		for w := range plan {
			for _, r := range plan[w] {
				name := stressName(r.tenant)
				stored := strings.Contains(r.stdout, "fragment \""+name+"\"")
				switch {
				case r.code == 0:
					delete(unanswered, name)
				case r.wait && r.code == 7 && stored:
					// --wait: stored, then the daemon it waited for was killed
					interrupted++
					delete(unanswered, name)
				case r.code == 5 && strings.Contains(r.stderr, "the daemon did not answer"):
					unanswered[name] = [2]crashVersion{expect[name], r.v}
					unansweredRuns++
					continue
				default:
					t.Errorf("round %d: apply (--wait %v) %s: exit %d\nstdout: %s\nstderr: %s", round, r.wait, name, r.code, r.stdout, r.stderr)
					continue
				}
				if want := r.v.checksum(t, name); !strings.Contains(r.stdout, want) {
					t.Errorf("round %d: apply %s printed %q, want its checksum %s", round, name, r.stdout, want)
				}
				expect[name] = r.v
			}
		}
		if t.Failed() {
			t.FailNow()
		}
		if strings.HasPrefix(victimOutcome, "failed") {
			t.Fatalf("round %d: the victim apply %s", round, victimOutcome)
		}

		// the HAProxy of the killed daemon soft-stops by itself (its
		// parent-death signal) unless the kill came in the middle of a
		// reload, which loses the signal; the new daemon stops it then
		for deadline := time.Now().Add(2 * time.Second); runsUnder(in.root, killed.haproxy); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				orphans++
				t.Logf("round %d: HAProxy %d of the killed daemon still runs 2s after the kill; the daemon's last reload steps:\n%s",
					round, killed.haproxy, crashGrep(killed.log, 3, "msg=reloaded", "Reloading HAProxy", "Loading success", "msg=ready"))
				break
			}
		}

		cur = in.startDaemon(t, env...)
		if cur.haproxy == killed.haproxy {
			t.Fatalf("round %d: the new daemon reports the old HAProxy %d", round, cur.haproxy)
		}
		eventually(t, 10*time.Second, fmt.Sprintf("round %d: HAProxy %d of the killed daemon gone", round, killed.haproxy), func() error {
			if runsUnder(in.root, killed.haproxy) {
				return fmt.Errorf("still running beside the new daemon's HAProxy %d:%s", cur.haproxy, crashDescribe(in.root, killed.haproxy))
			}
			return nil
		})

		// the victim is wholly old or wholly new (the new daemon's first
		// publish took the lock, which finishes an interrupted commit)
		if killApply {
			got := crashVersion{}
			conf, errC := os.ReadFile(filepath.Join(in.fragmentsDir(), victim+".cfg"))
			hostMap, errM := os.ReadFile(filepath.Join(in.fragmentsDir(), victim+".map"))
			if (errC != nil && !errors.Is(errC, fs.ErrNotExist)) || (errM != nil && !errors.Is(errM, fs.ErrNotExist)) {
				t.Fatalf("round %d: read the victim: %v, %v", round, errC, errM)
			}
			got.conf, got.hostMap = string(conf), string(hostMap)
			switch {
			case got.conf == next.conf && got.hostMap == next.hostMap:
				expect[victim] = next
				victimOutcome += ", new version stored"
			case victimOutcome == "completed":
				t.Fatalf("round %d: the victim apply completed but the store holds conf %q map %q", round, got.conf, got.hostMap)
			case got.conf == old.conf && got.hostMap == old.hostMap:
				victimOutcome += ", old version kept"
			default:
				t.Fatalf("round %d: the killed apply left a mix: conf %q map %q; old was %q %q, new %q %q",
					round, got.conf, got.hostMap, old.conf, old.hostMap, next.conf, next.hostMap)
			}
			outcomes[victimOutcome]++
		}

		for name, v := range unanswered {
			conf, errC := os.ReadFile(filepath.Join(in.fragmentsDir(), name+".cfg"))
			hostMap, errM := os.ReadFile(filepath.Join(in.fragmentsDir(), name+".map"))
			if errC != nil || errM != nil {
				t.Fatalf("round %d: read %s: %v, %v", round, name, errC, errM)
			}
			switch got := (crashVersion{conf: string(conf), hostMap: string(hostMap)}); {
			case got.conf == v[1].conf && got.hostMap == v[1].hostMap:
				expect[name] = v[1]
			case got.conf != v[0].conf || got.hostMap != v[0].hostMap:
				t.Fatalf("round %d: an unanswered apply of %s left a mix: conf %q map %q", round, name, got.conf, got.hostMap)
			}
		}

		// the fresh daemon serves every stored version
		eventually(t, 30*time.Second, fmt.Sprintf("round %d: converged", round), func() error {
			st, err := watcher.ReadStatus(in.stateDir())
			switch {
			case err != nil:
				return err
			case st.PID != cur.pid():
				return fmt.Errorf("status by pid %d", st.PID)
			case st.Pending != nil:
				return fmt.Errorf("%d changes pending", st.Pending.Changes)
			case st.Live == nil:
				return errors.New("nothing live")
			}
			live, err := stressLiveFragments(in, st.Live.Generation)
			if err != nil {
				return err
			}
			for name, v := range expect {
				if v.absent() {
					if _, ok := live[name]; ok {
						return fmt.Errorf("generation %d has %s, which is not stored", st.Live.Generation, name)
					}
				} else if want := v.checksum(t, name); live[name] != want {
					return fmt.Errorf("generation %d has %s at %q, want %s (%q)", st.Live.Generation, name, live[name], want, v.body)
				}
			}
			for name := range live {
				if _, ok := expect[name]; !ok {
					return fmt.Errorf("generation %d has an unknown fragment %s", st.Live.Generation, name)
				}
			}
			return nil
		})
		st := in.status(t)
		if len(st.Quarantined) != 0 {
			t.Fatalf("round %d: quarantined: %+v", round, st.Quarantined)
		}
		if st.Counts.ReloadsFailed != 0 {
			t.Fatalf("round %d: %d reloads failed; last: %+v", round, st.Counts.ReloadsFailed, st.LastReload)
		}
		for name, v := range expect {
			code, body, err := in.get(hosts[name], "/")
			if v.absent() {
				if err != nil || code != 404 {
					t.Fatalf("round %d: GET %s: %d %q (%v), want the 404 page", round, hosts[name], code, body, err)
				}
				continue
			}
			if err != nil || code != 200 || body != v.body {
				t.Fatalf("round %d: GET %s: %d %q (%v), want 200 %q", round, hosts[name], code, body, err, v.body)
			}
			conf, errC := os.ReadFile(filepath.Join(in.fragmentsDir(), name+".cfg"))
			hostMap, errM := os.ReadFile(filepath.Join(in.fragmentsDir(), name+".map"))
			if errC != nil || errM != nil || string(conf) != v.conf || string(hostMap) != v.hostMap {
				t.Fatalf("round %d: store holds %s as %q %q (%v, %v), want %q %q", round, name, conf, hostMap, errC, errM, v.conf, v.hostMap)
			}
		}
		if left, err := stressLeftovers(in.root); err != nil || len(left) > 0 {
			t.Fatalf("round %d: leftovers after convergence: %v (%v)", round, left, err)
		}
		// what runs of this root is the new daemon's HAProxy and its
		// workers, or a check the new daemon runs
		for _, pid := range crashProcs(in.root) {
			if pp := crashParent(pid); pid != cur.haproxy && pp != cur.haproxy && pp != cur.pid() {
				t.Fatalf("round %d: process %d (parent %d) runs beside the new daemon's HAProxy %d: %s",
					round, pid, pp, cur.haproxy, cmdlineOf(pid))
			}
		}
		if victimOutcome == "" {
			victimOutcome = "none"
		}
		t.Logf("round %d: daemon killed after %d of %d applies (+%s, during the burst: %v); victim apply: %s; live generation %d",
			round, killAfter, total, killJitter, duringBurst, victimOutcome, st.Live.Generation)
	}

	cur.stop(t)
	eventually(t, 10*time.Second, "no process of the installation left", func() error {
		if pids := crashProcs(in.root); len(pids) > 0 {
			return fmt.Errorf("still running: %v", pids)
		}
		return nil
	})
	t.Logf("%d rounds in %s; killed applies: %v; apply --wait runs cut short by the kill (exit 7, change stored): %d; "+
		"HAProxy left running by a killed daemon until the next one started: %d of %d",
		rounds, time.Since(began).Round(time.Millisecond), outcomes, interrupted, orphans, rounds)
}
