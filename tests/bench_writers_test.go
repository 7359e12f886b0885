package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"haproxy-config/internal/testkit"
	"haproxy-config/watcher"
)

// Concurrent writers: writerCount tenants change their own fragment
// writerChanges times each, all at once, without --wait. The rows are the
// throughput until every last change is live, the haproxy -c runs and the
// reloads it cost, the slowest answer, and the daemon's memory and CPU.
const (
	writerCount   = 20
	writerChanges = 50
	// writerBudget bounds one burst: a writer that has not finished by then
	// stops, and the rates count the changes made.
	writerBudget = 25 * time.Second
)

// seedDomains writes n fragments straight into the store, each one backend
// with two servers (no health checks) and perFragment domains.
func seedDomains(tb testing.TB, in *install, n, perFragment int) {
	tb.Helper()
	dir := in.fragmentsDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	for i := range n {
		name := fmt.Sprintf("tenant%05d", i)
		conf := fmt.Sprintf("backend be_%s\n    server s1 127.0.0.1:%d\n    server s2 127.0.0.1:%d\n", name, in.serverPort(20000+i%20000), in.serverPort(40000+i%20000))
		var hosts strings.Builder
		for d := range perFragment {
			fmt.Fprintf(&hosts, "d%d.%s.example.com be_%s\n", d, name, name)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".cfg"), []byte(conf), 0o644); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".map"), []byte(hosts.String()), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
}

// rssSampler records the largest resident size of pid until stopped.
func rssSampler(pid int) (stop func() (peakKB int)) {
	done := make(chan struct{})
	var peak int
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			if _, _, rss, err := readProc(pid); err == nil {
				peak = max(peak, rss)
			}
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
	return func() int {
		close(done)
		wg.Wait()
		return peak
	}
}

// liveChecksums reads which checksum of each named fragment the daemon's
// live generation holds.
func (in *install) liveChecksums(tb testing.TB) map[string]string {
	tb.Helper()
	st := in.status(tb)
	if st.Live == nil {
		return nil
	}
	data, err := os.ReadFile(in.state().GenerationMeta(st.Live.Generation))
	if err != nil {
		return nil // pruned between the two reads: ask again
	}
	var meta struct {
		Fragments map[string]string `json:"fragments"`
	}
	if err := json.Unmarshal(data, &meta); err != nil {
		tb.Fatal(err)
	}
	return meta.Fragments
}

// storedChecksums is what list --json says of the named fragments.
func (in *install) storedChecksums(tb testing.TB, names []string) map[string]string {
	tb.Helper()
	cmd := exec.Command(binary, "list", "--json")
	cmd.Env = childEnv(in.env)
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("list --json: %v", err)
	}
	var infos []struct {
		Name     string `json:"name"`
		Checksum string `json:"checksum"`
	}
	if err := json.Unmarshal(out, &infos); err != nil {
		tb.Fatal(err)
	}
	sums := map[string]string{}
	for _, info := range infos {
		if slices.Contains(names, info.Name) {
			sums[info.Name] = info.Checksum
		}
	}
	return sums
}

// BenchmarkWriters is 1,000 changes from 20 concurrent writers against a
// daemon with 300 and with 10,000 stored tenants (5 domains each: 50,000
// at 10,000), first changes to the writers' config parts (each needs a
// reload), then changes to their host maps alone. Run: make bench (or go
// test -run '^$' -bench Writers -benchtime 1x ./tests/).
func BenchmarkWriters(b *testing.B) {
	for _, n := range []int{300, 10000} {
		b.Run(fmt.Sprintf("fragments=%d", n), func(b *testing.B) {
			in := newInstall(b)
			in.startWait = 5 * time.Minute // 10,000 fragments on a busy machine
			seedDomains(b, in, n, 5)
			wrapper, checks := testkit.CountingHaproxy(b, in.root)
			in.env = in.with("HAPROXY_CONFIG_HAPROXY="+wrapper, "HAPROXY_CONFIG_RELOAD_INTERVAL=100ms")
			dir := testkit.OpenTempDir(b)
			names := make([]string, writerCount)
			for w := range names {
				names[w] = fmt.Sprintf("writer%02d", w)
				writeFile(b, filepath.Join(in.fragmentsDir(), names[w]+".cfg"), backendConf("be_"+names[w], "v0"))
				writeFile(b, filepath.Join(in.fragmentsDir(), names[w]+".map"), names[w]+".example.com be_"+names[w]+"\n")
			}
			d := in.startDaemon(b)
			idleCPU0, _, _ := procTimes(b, d.pid())
			time.Sleep(2 * time.Second)
			idleCPU1, _, idleRSS := procTimes(b, d.pid())
			for _, run := range []struct{ kind, via string }{{"config", "cli"}, {"map-only", "cli"}, {"map-only", "socket"}} {
				name := run.kind
				if run.via == "socket" {
					name += "/socket"
				}
				b.Run(name, func(b *testing.B) {
					for b.Loop() {
						in.writersBurst(b, d, dir, names, run.kind, run.via, checks)
					}
					b.ReportMetric(float64(idleRSS)/1024, "idle-rss-MB")
					b.ReportMetric(100*(idleCPU1-idleCPU0).Seconds()/2, "idle-cpu-%")
				})
			}
		})
	}
}

// writersBurst runs one burst of the writers' changes of kind and reports
// its metrics. Each writer is a CLI process per change (via "cli"), or
// with via "socket" a connection per change to the daemon's API socket
// from this process: the daemon's own rate, without the 20 processes
// competing with it for the cores.
func (in *install) writersBurst(b *testing.B, d *daemon, dir string, names []string, kind, via string, checks func() int) {
	checks0, reloads0 := checks(), in.status(b).Counts.Reloads
	cpu0, _, _ := procTimes(b, d.pid())
	stopRSS := rssSampler(d.pid())
	start := time.Now()
	deadline := start.Add(writerBudget)
	answers := make([][]time.Duration, len(names))
	errs := make(chan error, len(names))
	var wg sync.WaitGroup
	for w, name := range names {
		wg.Go(func() {
			// the config part as stored: the map-only burst keeps it
			conf := filepath.Join(dir, name+"-stored.cfg")
			stored, err := os.ReadFile(filepath.Join(in.fragmentsDir(), name+".cfg"))
			if err == nil {
				err = os.WriteFile(conf, stored, 0o644)
			}
			if err != nil {
				errs <- err
				return
			}
			for i := range writerChanges {
				if time.Now().After(deadline) {
					return
				}
				var hosts string
				if kind == "config" {
					conf = filepath.Join(dir, fmt.Sprintf("%s-%d.cfg", name, i))
					if err := os.WriteFile(conf, []byte(backendConf("be_"+name, fmt.Sprintf("%s-v%d", kind, i+1))), 0o644); err != nil {
						errs <- err
						return
					}
					hosts = fmt.Sprintf("%s.example.com be_%s\n", name, name)
				} else {
					hosts = fmt.Sprintf("%s.example.com be_%s\nn%d.%s.example.com be_%s\n", name, name, i, name, name)
				}
				hostsFile := filepath.Join(dir, fmt.Sprintf("%s-%s-%d.map", name, kind, i))
				if err := os.WriteFile(hostsFile, []byte(hosts), 0o644); err != nil {
					errs <- err
					return
				}
				t := time.Now()
				if err := in.writerApply(via, name, conf, hostsFile); err != nil {
					errs <- fmt.Errorf("%s change %d: %w", name, i, err)
					return
				}
				answers[w] = append(answers[w], time.Since(t))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	want := in.storedChecksums(b, names)
	for {
		live := in.liveChecksums(b)
		if !slices.ContainsFunc(names, func(n string) bool { return live[n] != want[n] }) {
			break
		}
		if time.Since(start) > writerBudget+time.Minute {
			b.Fatalf("the writers' last changes are not live a minute after the budget: live %v, stored %v", live, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	peak := stopRSS()
	cpu1, _, _ := procTimes(b, d.pid())
	all := slices.Concat(answers...)
	slices.Sort(all)
	b.ReportMetric(float64(len(all)), "changes")
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "changes/s")
	b.ReportMetric(float64(checks()-checks0), "haproxy-c-runs")
	b.ReportMetric(float64(in.status(b).Counts.Reloads-reloads0), "reloads")
	b.ReportMetric(ms(percentile(all, 0.99)), "answer-p99-ms")
	b.ReportMetric(ms(all[len(all)-1]), "answer-max-ms")
	b.ReportMetric(float64(peak)/1024, "burst-peak-rss-MB")
	b.ReportMetric((cpu1 - cpu0).Seconds(), "burst-cpu-s")
}

// writerApply applies name's conf and hosts files, by the CLI or over the
// API socket.
func (in *install) writerApply(via, name, conf, hosts string) error {
	if via == "cli" {
		cmd := exec.Command(binary, "apply", name, conf, hosts)
		cmd.Env = childEnv(in.env)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%v\n%s", err, out)
		}
		return nil
	}
	req := &watcher.Request{Op: watcher.OpApply, Name: name, ConfFile: conf, MapFile: hosts}
	var err error
	if req.Conf, err = os.ReadFile(conf); err != nil {
		return err
	}
	if req.Map, err = os.ReadFile(hosts); err != nil {
		return err
	}
	c, err := watcher.Dial(in.apiSocket())
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Send(context.Background(), req)
	return err
}
