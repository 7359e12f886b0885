package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// procTimes returns a process's user+system CPU time and its peak and
// current resident memory, from /proc.
func procTimes(tb testing.TB, pid int) (cpu time.Duration, peakKB, rssKB int) {
	tb.Helper()
	cpu, peakKB, rssKB, err := readProc(pid)
	if err != nil {
		tb.Fatal(err)
	}
	return cpu, peakKB, rssKB
}

// readProc is procTimes for callers that cannot fail a test: goroutines.
func readProc(pid int) (cpu time.Duration, peakKB, rssKB int, err error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	// fields after the command name, which is in parentheses
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	cpu = time.Duration(utime+stime) * 10 * time.Millisecond // USER_HZ is 100 on Linux
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, 0, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		switch k {
		case "VmHWM":
			peakKB = n
		case "VmRSS":
			rssKB = n
		}
	}
	return cpu, peakKB, rssKB, nil
}

// BenchmarkCerts100 measures the time until HAProxy serves a verified
// certificate for each of 100 newly mapped domains, against Pebble with
// validation skipped (our own overhead) and with real HTTP-01 validation
// through HAProxy, with the default 4 orders in flight and with 16. lego
// polls at the CA's Retry-After (Pebble here: 1 s for authorizations and
// orders) and every 5 s for challenges, which name none: that, not the
// daemon, sets the pace.
//
//	go test -run '^$' -bench Certs100 -benchtime 1x ./tests/
func BenchmarkCerts100(b *testing.B) {
	const n = 100
	for _, mode := range []struct {
		name        string
		alwaysValid bool
		inFlight    int
	}{{"always-valid", true, 4}, {"always-valid", true, 16}, {"http-01", false, 4}, {"http-01", false, 16}} {
		b.Run(fmt.Sprintf("%s/in-flight-%d", mode.name, mode.inFlight), func(b *testing.B) {
			for range b.N {
				in := newInstall(b)
				p := startPebble(b, pebbleOptions{httpPort: in.httpPort, alwaysValid: mode.alwaysValid})
				in.env = append(in.env, p.env("HAPROXY_CONFIG_ACME_PROFILE=default", fmt.Sprint("HAPROXY_CONFIG_ACME_IN_FLIGHT=", mode.inFlight))...)
				d := in.startDaemon(b)
				var m strings.Builder
				hosts := make([]string, n)
				for i := range hosts {
					hosts[i] = fmt.Sprintf("site%03d.example.com", i)
					fmt.Fprintf(&m, "%s b_many\n", hosts[i])
				}
				dir := b.TempDir()
				conf := writeFile(b, filepath.Join(dir, "many.cfg"), backendConf("b_many", "many"))
				mapFile := writeFile(b, filepath.Join(dir, "many.map"), m.String())
				cpu0, _, _ := procTimes(b, d.pid())
				start := time.Now()
				cmd := exec.Command(binary, "apply", "--wait", "many", conf, mapFile)
				cmd.Env = childEnv(in.env)
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("apply --wait: %v\n%s", err, out)
				}
				reloads := in.status(b).Counts.Reloads
				maxInFlight := 0
				deadline := time.Now().Add(5 * time.Minute)
				for {
					st := in.status(b)
					if st.Certs != nil {
						maxInFlight = max(maxInFlight, st.Certs.InFlight)
						if st.Certs.Conditions["valid"] == n {
							break
						}
					}
					if time.Now().After(deadline) {
						b.Fatalf("not all certificates valid after 5 minutes: %+v", st.Certs)
					}
					time.Sleep(20 * time.Millisecond)
				}
				roots := p.roots(b)
				for _, h := range hosts {
					for {
						_, err := in.servedCert(h, roots)
						if err == nil {
							break
						}
						if time.Now().After(deadline) {
							b.Fatalf("%s not served: %v", h, err)
						}
						time.Sleep(20 * time.Millisecond)
					}
				}
				elapsed := time.Since(start)
				cpu1, peak, rss := procTimes(b, d.pid())
				if got := in.status(b).Counts.Reloads; got != reloads {
					b.Errorf("reloads %d -> %d during the certificate step", reloads, got)
				}
				b.ReportMetric(elapsed.Seconds(), "s-all-served")
				b.ReportMetric(float64(maxInFlight), "max-in-flight")
				b.ReportMetric((cpu1 - cpu0).Seconds(), "daemon-cpu-s")
				b.ReportMetric(float64(peak)/1024, "daemon-peak-rss-MB")
				b.Logf("%s: %d certificates served %v after apply; %d orders at most in flight (ACME_IN_FLIGHT %d); "+
					"daemon CPU %v, peak RSS %.1f MB, RSS now %.1f MB; Pebble saw %d orders",
					mode.name, n, elapsed.Round(time.Millisecond), maxInFlight, mode.inFlight, cpu1-cpu0, float64(peak)/1024, float64(rss)/1024, p.orders(b))
			}
		})
	}
}
