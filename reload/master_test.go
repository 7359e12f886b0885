package reload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// showProcCurrent is HAProxy 2.6.12's answer to "show proc" after a failed
// reload, byte for byte (the header has trailing blanks).
const showProcCurrent = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n" +
	"7358            master          5 [failed: 1]   0d00h10m17s     2.6.12-1+deb12u4\n" +
	"# workers\n" +
	"8084            worker          1               0d00h00m05s     2.6.12-1+deb12u4\n" +
	"# programs\n" +
	"\n"

// showProcOld is HAProxy 2.6.12's answer while two old workers still
// finish connections.
const showProcOld = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n" +
	"14659           master          4 [failed: 0]   0d00h00m12s     2.6.12-1+deb12u4\n" +
	"# workers\n" +
	"15633           worker          0               0d00h00m01s     2.6.12-1+deb12u4\n" +
	"# old workers\n" +
	"15552           worker          1               0d00h00m02s     2.6.12-1+deb12u4\n" +
	"14859           worker          3               0d00h00m11s     2.6.12-1+deb12u4\n" +
	"# programs\n" +
	"\n"

const version = "2.6.12-1+deb12u4"

func TestParseProcsCurrentWorker(t *testing.T) {
	got, err := ParseProcs(showProcCurrent)
	if err != nil {
		t.Fatalf("ParseProcs: %v", err)
	}
	want := &Procs{
		Master:  Proc{PID: 7358, Kind: "master", Reloads: 5, Uptime: "0d00h10m17s", Version: version},
		Failed:  1,
		Workers: []Proc{{PID: 8084, Kind: "worker", Reloads: 1, Uptime: "0d00h00m05s", Version: version}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseProcs =\n%+v\nwant\n%+v", got, want)
	}
}

func TestParseProcsOldWorkers(t *testing.T) {
	got, err := ParseProcs(showProcOld)
	if err != nil {
		t.Fatalf("ParseProcs: %v", err)
	}
	want := &Procs{
		Master:  Proc{PID: 14659, Kind: "master", Reloads: 4, Uptime: "0d00h00m12s", Version: version},
		Failed:  0,
		Workers: []Proc{{PID: 15633, Kind: "worker", Reloads: 0, Uptime: "0d00h00m01s", Version: version}},
		Old: []Proc{
			{PID: 15552, Kind: "worker", Reloads: 1, Uptime: "0d00h00m02s", Version: version},
			{PID: 14859, Kind: "worker", Reloads: 3, Uptime: "0d00h00m11s", Version: version},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseProcs =\n%+v\nwant\n%+v", got, want)
	}
}

func TestParseProcsIgnoresPrograms(t *testing.T) {
	// a program may be called "master": it must not replace the master line
	out := showProc(100, 2, 0, 200) + "9000            dataplane       0               0d00h00m05s     -\n" +
		"9001            master          0               0d00h00m02s     -\n"
	got, err := ParseProcs(out)
	if err != nil {
		t.Fatalf("ParseProcs: %v", err)
	}
	if len(got.Workers) != 1 || got.Workers[0].PID != 200 || len(got.Old) != 0 {
		t.Errorf("workers %+v, old %+v: want only worker 200", got.Workers, got.Old)
	}
	if got.Master.PID != 100 || got.Master.Reloads != 2 {
		t.Errorf("master = %+v, want PID 100 with 2 reloads", got.Master)
	}
}

func TestParseProcsErrors(t *testing.T) {
	for name, out := range map[string]string{
		"empty":            "",
		"header only":      "#<PID>          <type>          <reloads>       <uptime>        <version>      \n",
		"no master line":   "# workers\n8084            worker          0               0d00h00m05s     2.6.12\n",
		"garbage pid":      "abc             master          5 [failed: 1]   0d00h10m17s     2.6.12\n",
		"garbage reloads":  "7358            master          five            0d00h10m17s     2.6.12\n",
		"garbage worker":   showProc(100, 0, 0) + "8084x           worker          0               0d00h00m05s     2.6.12\n",
		"too few fields":   "7358            master          5\n",
		"garbage failed":   "7358            master          5 [failed: x]   0d00h10m17s     2.6.12\n",
		"not a proc table": "Unknown command: 'show proc'\n",
	} {
		t.Run(name, func(t *testing.T) {
			if p, err := ParseProcs(out); err == nil {
				t.Errorf("ParseProcs(%q) = %+v, want an error", out, p)
			} else if !strings.HasPrefix(err.Error(), "show proc:") {
				t.Errorf("error %q does not say it is about show proc", err)
			}
		})
	}
}

// showProc formats a process table the way HAProxy 2.6 prints it, with
// workers that have seen no reload.
func showProc(masterPID, reloads, failed int, workers ...int) string {
	procs := make([]Proc, len(workers))
	for i, w := range workers {
		procs[i] = Proc{PID: w}
	}
	return showProcTable(masterPID, reloads, failed, procs)
}

func showProcTable(masterPID, reloads, failed int, workers []Proc) string {
	var b strings.Builder
	fmt.Fprintf(&b, "#%-14s %-15s %-15s %-15s %-15s\n", "<PID>", "<type>", "<reloads>", "<uptime>", "<version>")
	fmt.Fprintf(&b, "%-15d %-15s %-15s %-15s %-15s\n", masterPID, "master", fmt.Sprintf("%d [failed: %d]", reloads, failed), "0d00h00m09s", version)
	b.WriteString("# workers\n")
	for _, w := range workers {
		fmt.Fprintf(&b, "%-15d %-15s %-15d %-15s %-15s\n", w.PID, "worker", w.Reloads, "0d00h00m01s", version)
	}
	b.WriteString("# programs\n\n")
	return b.String()
}

// reply is what the fake master does with one connection.
type reply struct {
	answer  string
	drop    bool          // close without answering
	hang    bool          // answer nothing and keep the connection open
	downFor time.Duration // then stop listening for this long, as a re-executing master does
}

// fakeMaster is a master CLI socket that answers from a script.
type fakeMaster struct {
	cli  *MasterCLI
	stop chan struct{}
	done chan struct{}

	mu   sync.Mutex
	ln   net.Listener
	got  []string // each connection's whole request
	errs []error
}

// startFakeMaster serves the socket until the test ends; handle picks the
// reply to each command (without its newline).
func startFakeMaster(t *testing.T, handle func(cmd string) reply) *fakeMaster {
	t.Helper()
	path := filepath.Join(t.TempDir(), "master.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	f := &fakeMaster{cli: &MasterCLI{Path: path}, stop: make(chan struct{}), done: make(chan struct{}), ln: ln}
	go f.serve(path, handle)
	t.Cleanup(func() {
		close(f.stop)
		f.mu.Lock()
		_ = f.ln.Close()
		f.mu.Unlock()
		select {
		case <-f.done:
		case <-time.After(5 * time.Second):
			t.Error("the fake master did not stop")
		}
		for _, err := range f.errors() {
			t.Errorf("fake master: %v", err)
		}
	})
	return f
}

func (f *fakeMaster) serve(path string, handle func(string) reply) {
	defer close(f.done)
	for {
		f.mu.Lock()
		ln := f.ln
		f.mu.Unlock()
		conn, err := ln.Accept()
		if err != nil {
			select {
			case <-f.stop:
			default:
				f.fail(fmt.Errorf("accept: %w", err))
			}
			return
		}
		r := f.answer(conn, handle)
		if r.downFor > 0 && !f.restart(path, r.downFor) {
			return
		}
	}
}

// answer reads the whole request, which ends when the client half-closes,
// and replies.
func (f *fakeMaster) answer(conn net.Conn, handle func(string) reply) reply {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	req, err := io.ReadAll(conn)
	if err != nil {
		f.fail(fmt.Errorf("read request (did the client half-close?): %w", err))
		return reply{}
	}
	f.mu.Lock()
	f.got = append(f.got, string(req))
	f.mu.Unlock()
	r := handle(strings.TrimSuffix(string(req), "\n"))
	switch {
	case r.drop:
	case r.hang:
		select {
		case <-f.stop:
		case <-time.After(5 * time.Second):
		}
	default:
		// a client whose context ended hangs up without reading: it
		// says so itself; only another failure is the fake's to report
		if _, err := io.WriteString(conn, r.answer); err != nil && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
			f.fail(fmt.Errorf("write answer: %w", err))
		}
	}
	return r
}

// restart stops listening for a while, then listens again on path.
func (f *fakeMaster) restart(path string, down time.Duration) bool {
	f.mu.Lock()
	_ = f.ln.Close()
	f.mu.Unlock()
	select {
	case <-f.stop:
		return false
	case <-time.After(down):
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.stop:
		return false
	default:
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		f.errs = append(f.errs, fmt.Errorf("listen again: %w", err))
		return false
	}
	f.ln = ln
	return true
}

func (f *fakeMaster) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs = append(f.errs, err)
}

func (f *fakeMaster) errors() []error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]error(nil), f.errs...)
}

func (f *fakeMaster) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.got...)
}

func testContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestMasterCLICommand(t *testing.T) {
	const answer = "line one\nline two\n\n"
	f := startFakeMaster(t, func(cmd string) reply { return reply{answer: answer} })
	got, err := f.cli.Command(testContext(t, 5*time.Second), "show info")
	if err != nil {
		t.Fatalf("Command: %v", err)
	}
	if got != answer {
		t.Errorf("answer = %q, want %q", got, answer)
	}
	if reqs := f.requests(); !reflect.DeepEqual(reqs, []string{"show info\n"}) {
		t.Errorf("the master received %q, want one request \"show info\\n\"", reqs)
	}
}

func TestMasterCLICommandNoSocket(t *testing.T) {
	cli := &MasterCLI{Path: filepath.Join(t.TempDir(), "nothing.sock")}
	_, err := cli.Command(testContext(t, 5*time.Second), "show proc")
	if err == nil || !strings.Contains(err.Error(), "master socket") {
		t.Errorf("Command on a missing socket: err = %v, want a master socket error", err)
	}
}

func TestMasterCLICommandHonorsDeadline(t *testing.T) {
	f := startFakeMaster(t, func(cmd string) reply { return reply{hang: true} })
	start := time.Now()
	_, err := f.cli.Command(testContext(t, 200*time.Millisecond), "show proc")
	if err == nil {
		t.Fatal("Command to a master that never answers returned no error")
	}
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Errorf("Command returned after %s, the context allowed 200ms", elapsed)
	}
	if !strings.Contains(err.Error(), `read answer to "show proc"`) {
		t.Errorf("err = %v, want it to say the answer was not read", err)
	}
}

func TestMasterCLIShowProc(t *testing.T) {
	f := startFakeMaster(t, func(cmd string) reply {
		if cmd != "show proc" {
			return reply{answer: "Unknown command\n"}
		}
		return reply{answer: showProcOld}
	})
	got, err := f.cli.ShowProc(testContext(t, 5*time.Second))
	if err != nil {
		t.Fatalf("ShowProc: %v", err)
	}
	want, _ := ParseProcs(showProcOld)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ShowProc = %+v, want %+v", got, want)
	}
}

func TestMasterCLIShowProcBadAnswer(t *testing.T) {
	f := startFakeMaster(t, func(cmd string) reply { return reply{answer: "Permission denied\n"} })
	if p, err := f.cli.ShowProc(testContext(t, 5*time.Second)); err == nil {
		t.Errorf("ShowProc on a refusal = %+v, want an error", p)
	}
}

func TestMasterCLIReload(t *testing.T) {
	f := startFakeMaster(t, func(cmd string) reply { return reply{} })
	if err := f.cli.Reload(testContext(t, 5*time.Second)); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if reqs := f.requests(); !reflect.DeepEqual(reqs, []string{"reload\n"}) {
		t.Errorf("the master received %q, want one request \"reload\\n\"", reqs)
	}
}

// reloadScript plays a master: "show proc" answers before until "reload",
// then the master is away for a moment, drops the next dropped
// connections, and answers after from then on.
type reloadScript struct {
	before, after string
	dropped       int

	mu       sync.Mutex
	reloaded bool
	drops    int
	polls    int // show proc after the reload, dropped ones included
}

func (s *reloadScript) handle(cmd string) reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case cmd == "reload":
		s.reloaded = true
		return reply{downFor: 30 * time.Millisecond}
	case cmd != "show proc":
		return reply{answer: "Unknown command: '" + cmd + "'\n"}
	case !s.reloaded:
		return reply{answer: s.before}
	}
	s.polls++
	if s.drops < s.dropped {
		s.drops++
		return reply{drop: true}
	}
	return reply{answer: s.after}
}

func (s *reloadScript) pollsAfterReload() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.polls
}

// reloadAndWait runs the daemon's sequence: show proc, reload, wait.
func reloadAndWait(t *testing.T, s *reloadScript, timeout time.Duration) (*Procs, error) {
	t.Helper()
	f := startFakeMaster(t, s.handle)
	ctx := testContext(t, timeout)
	before, err := f.cli.ShowProc(ctx)
	if err != nil {
		t.Fatalf("ShowProc before: %v", err)
	}
	if err := f.cli.Reload(ctx); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	return f.cli.WaitReloaded(ctx, before)
}

func TestWaitReloadedNewWorker(t *testing.T) {
	s := &reloadScript{before: showProc(100, 0, 0, 200), after: showProc(100, 1, 0, 201), dropped: 3}
	now, err := reloadAndWait(t, s, 5*time.Second)
	if err != nil {
		t.Fatalf("WaitReloaded: %v", err)
	}
	if now.Master.Reloads != 1 || len(now.Workers) != 1 || now.Workers[0].PID != 201 {
		t.Errorf("WaitReloaded = %+v, want the table with 1 reload and worker 201", now)
	}
	if n := s.pollsAfterReload(); n != 4 {
		t.Errorf("show proc asked %d times after the reload, want 4 (3 dropped, then the answer)", n)
	}
}

func TestWaitReloadedMasterRestarted(t *testing.T) {
	s := &reloadScript{before: showProc(100, 7, 0, 200), after: showProc(300, 0, 0, 301)}
	now, err := reloadAndWait(t, s, 5*time.Second)
	if err != nil {
		t.Fatalf("WaitReloaded after a new master with a new worker: %v", err)
	}
	if now.Master.PID != 300 {
		t.Errorf("master PID = %d, want 300", now.Master.PID)
	}
}

func TestWaitReloadedFailedCounter(t *testing.T) {
	// the worker that kept serving has outlived one reload
	after := showProcTable(100, 1, 1, []Proc{{PID: 200, Reloads: 1}})
	s := &reloadScript{before: showProc(100, 0, 0, 200), after: after, dropped: 1}
	now, err := reloadAndWait(t, s, 5*time.Second)
	if !errors.Is(err, ErrReloadFailed) {
		t.Fatalf("WaitReloaded err = %v, want ErrReloadFailed", err)
	}
	if now == nil || now.Failed != 1 || now.Master.Reloads != 1 {
		t.Errorf("WaitReloaded = %+v, want the table after the failure (1 reload, 1 failed)", now)
	}
}

// A raised failed counter means the reload failed whatever the worker list
// says (two reloads may have happened since before, the last one failing).
func TestWaitReloadedFailedCounterBeatsNewWorker(t *testing.T) {
	s := &reloadScript{before: showProc(100, 0, 0, 200), after: showProc(100, 2, 1, 201)}
	_, err := reloadAndWait(t, s, 5*time.Second)
	if !errors.Is(err, ErrReloadFailed) {
		t.Fatalf("WaitReloaded err = %v, want ErrReloadFailed", err)
	}
}

func TestWaitReloadedSameWorker(t *testing.T) {
	s := &reloadScript{before: showProc(100, 0, 0, 200), after: showProc(100, 1, 0, 200)}
	now, err := reloadAndWait(t, s, 5*time.Second)
	if !errors.Is(err, ErrReloadFailed) {
		t.Fatalf("WaitReloaded err = %v, want ErrReloadFailed", err)
	}
	if !strings.Contains(err.Error(), "no new worker") {
		t.Errorf("err = %v, want it to say there is no new worker", err)
	}
	if now == nil || now.Master.Reloads != 1 {
		t.Errorf("WaitReloaded = %+v, want the table after the reload", now)
	}
}

func TestWaitReloadedNothingChanges(t *testing.T) {
	s := &reloadScript{before: showProc(100, 0, 0, 200), after: showProc(100, 0, 0, 200)}
	start := time.Now()
	now, err := reloadAndWait(t, s, 300*time.Millisecond)
	if err == nil || errors.Is(err, ErrReloadFailed) {
		t.Fatalf("WaitReloaded err = %v, want a timeout", err)
	}
	if !strings.Contains(err.Error(), "reload not seen in time") {
		t.Errorf("err = %v, want it to say the reload was not seen in time", err)
	}
	if now != nil {
		t.Errorf("WaitReloaded returned a table %+v with its timeout", now)
	}
	if elapsed := time.Since(start); elapsed > 3*time.Second {
		t.Errorf("WaitReloaded returned after %s, the context allowed 300ms", elapsed)
	}
	if n := s.pollsAfterReload(); n < 2 {
		t.Errorf("show proc asked %d times after the reload, want it polled", n)
	}
}

func TestWaitReloadedMasterGone(t *testing.T) {
	cli := &MasterCLI{Path: filepath.Join(t.TempDir(), "gone.sock")}
	before, _ := ParseProcs(showProc(100, 0, 0, 200))
	now, err := cli.WaitReloaded(testContext(t, 200*time.Millisecond), before)
	if err == nil || !strings.Contains(err.Error(), "reload not seen in time: master socket") {
		t.Errorf("WaitReloaded err = %v, want the timeout with the last socket error", err)
	}
	if now != nil {
		t.Errorf("WaitReloaded returned a table %+v with its error", now)
	}
}
