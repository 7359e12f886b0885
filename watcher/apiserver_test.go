package watcher

import (
	"bufio"
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"haproxy-config/settings"
	"haproxy-config/statedir"
)

// testAPI listens on an API socket in a fresh state directory and serves
// it; the returned stop is also run at cleanup.
func testAPI(t *testing.T) (*apiServer, func()) {
	t.Helper()
	return testAPIWith(t, func(*apiServer) {})
}

// testAPIWith is testAPI with the server changed by tweak before it serves.
func testAPIWith(t *testing.T, tweak func(*apiServer)) (*apiServer, func()) {
	t.Helper()
	root := t.TempDir()
	s, err := settings.Load(settings.Source{Getenv: func(k string) (string, bool) {
		if k == "HAPROXY_CONFIG_ROOT" {
			return root, true
		}
		return "", false
	}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := listenAPI(s, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	tweak(a)
	stopped := make(chan struct{})
	stop := a.serve(t.Context())
	var once bool
	stopOnce := func() {
		if !once {
			once = true
			stop()
			close(stopped)
		}
	}
	t.Cleanup(func() {
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			t.Error("the API server did not stop")
		}
	})
	t.Cleanup(stopOnce)
	return a, stopOnce
}

// askUnknown sends a request the daemon refuses without touching the store
// and returns its answer's error kind.
func askUnknown(t *testing.T, path string) (Kind, error) {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if err := writeLine(conn, &Request{Op: "frobnicate", Name: "shop"}); err != nil {
		return "", err
	}
	a := &Answer{}
	if err := readLine(bufio.NewReader(conn), 1<<20, a); err != nil {
		return "", err
	}
	if a.Error == nil {
		return "", nil
	}
	return a.Error.Kind, nil
}

// TestAPIStopsWithIdleConnection: a client that connects and sends nothing
// (or half a request) must not keep the daemon from stopping.
func TestAPIStopsWithIdleConnection(t *testing.T) {
	a, stop := testAPI(t)
	idle, err := net.Dial("unix", a.path)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	half, err := net.Dial("unix", a.path)
	if err != nil {
		t.Fatal(err)
	}
	defer half.Close()
	if _, err := half.Write([]byte(`{"op":"apply","na`)); err != nil {
		t.Fatal(err)
	}
	if kind, err := askUnknown(t, a.path); err != nil || kind != KindUsage {
		t.Fatalf("an unknown operation: kind %q, %v; want %q", kind, err, KindUsage)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		stop()
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		idle.Close()
		half.Close()
		t.Fatal("stop waits for a client that sends no request")
	}
}

// TestAPIAcceptSurvivesFDLimit: running out of file descriptors for a
// while (many clients at once) stops accepting only as long as it lasts.
func TestAPIAcceptSurvivesFDLimit(t *testing.T) {
	a, _ := testAPI(t)
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	restore := func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
			t.Fatal(err)
		}
	}
	defer restore()
	// room for the client's end of one connection and not for its accepted end
	low := old
	low.Cur = uint64(len(entries)) // entries counted the directory read
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("unix", a.path)
	if err != nil {
		restore()
		t.Fatalf("connect with one descriptor to spare: %v", err)
	}
	time.Sleep(200 * time.Millisecond) // the accept fails meanwhile
	conn.Close()
	restore()
	if kind, err := askUnknown(t, a.path); err != nil || kind != KindUsage {
		t.Fatalf("after the descriptors ran out for a moment: kind %q, %v; want the daemon's answer %q", kind, err, KindUsage)
	}
}

// TestAPIConnectionLimit: beyond the limit a connection is answered that
// the daemon is busy (exit 5) and closed; once a connection ends, the
// next is served again.
func TestAPIConnectionLimit(t *testing.T) {
	a, _ := testAPIWith(t, func(a *apiServer) { a.slots = make(chan struct{}, 2) })
	var idle []net.Conn
	for range 2 {
		c, err := net.Dial("unix", a.path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	// the two idle connections hold both slots once accepted
	deadline := time.Now().Add(10 * time.Second)
	for len(a.slots) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 2 idle connections accepted", len(a.slots))
		}
		time.Sleep(5 * time.Millisecond)
	}
	// the CLI's client, which reads the answer of a daemon that hung up
	// before it took the request
	unknown := &Request{Op: "frobnicate", Name: "shop"}
	if _, err := ask(t, a.path, unknown); KindOf(err) != KindEnv || !strings.Contains(err.Error(), "2 API connections already") {
		t.Fatalf("a third connection: %v (kind %q); want the daemon's busy answer (%q, exit 5)", err, KindOf(err), KindEnv)
	}
	idle[0].Close()
	for {
		_, err := ask(t, a.path, unknown)
		if KindOf(err) == KindUsage {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after one idle connection closed: %v (kind %q); want the request served (%q)", err, KindOf(err), KindUsage)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAPIRefusesAnOpenDirectory: a socket directory others may write to
// (where a symlink could be put in the socket's place) is refused at start.
func TestAPIRefusesAnOpenDirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o1777); err != nil {
		t.Fatal(err)
	}
	s, err := settings.Load(settings.Source{Getenv: func(k string) (string, bool) {
		switch k {
		case "HAPROXY_CONFIG_ROOT":
			return t.TempDir(), true
		case "HAPROXY_CONFIG_API_SOCKET":
			return dir + "/api.sock", true
		}
		return "", false
	}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := listenAPI(s, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil {
		a.ln.Close()
		t.Fatal("an API socket in a directory everyone may write to was opened")
	}
	if _, serr := os.Lstat(dir + "/api.sock"); serr == nil {
		t.Errorf("the refused socket was created: %v", err)
	}
}

// ask sends req through the client and returns the first answer.
func ask(t *testing.T, path string, req *Request) (*Answer, error) {
	t.Helper()
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	return c.Send(ctx, req)
}

// TestAPIHoldRequests: rollback and resume go through the writer; a
// generation that is not kept is refused as not found (exit 6), a
// released hold tells the loop at once, and a resume without a hold says
// so and has nothing to wait for.
func TestAPIHoldRequests(t *testing.T) {
	a, _ := testAPI(t)
	s := a.settings.Load()
	if _, err := ask(t, a.path, &Request{Op: OpRollback}); KindOf(err) != KindUsage {
		t.Errorf("rollback without a generation: %v (kind %s), want a usage error", err, KindOf(err))
	}
	if _, err := ask(t, a.path, &Request{Op: OpRollback, Generation: 7}); KindOf(err).ExitCode() != 6 {
		t.Errorf("rollback to a generation never kept: %v (exit %d), want exit 6", err, KindOf(err).ExitCode())
	}
	if _, err := os.Stat(statedir.Layout(s.StateDir).Hold()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a refused rollback left a hold: %v", err)
	}

	ans, err := ask(t, a.path, &Request{Op: OpResume, Wait: true})
	if err != nil || ans.Released || ans.Waits(&Request{Op: OpResume, Wait: true}) {
		t.Errorf("resume without a hold: %+v, %v; want nothing released and nothing to wait for", ans, err)
	}
	select {
	case <-a.Committed():
		t.Errorf("a resume that released nothing told the loop %v", a.TakeCommitted())
	default:
	}

	if err := os.WriteFile(statedir.Layout(s.StateDir).Hold(), []byte(`{"generation": 3, "actor": "ann"}`), 0o640); err != nil {
		t.Fatal(err)
	}
	if ans, err := ask(t, a.path, &Request{Op: OpResume}); err != nil || !ans.Released {
		t.Fatalf("resume with a hold: %+v, %v; want it released", ans, err)
	}
	if _, err := os.Stat(statedir.Layout(s.StateDir).Hold()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the hold file is still there after resume: %v", err)
	}
	select {
	case <-a.Committed():
		if got := a.TakeCommitted(); !slices.Equal(got, []string{holdKey}) {
			t.Errorf("the loop was told %v, want %q", got, holdKey)
		}
	case <-time.After(5 * time.Second):
		t.Error("the loop was not told of the released hold")
	}
}

// TestAPIRenewWithoutCertificates: with ACME off, renew is a usage error.
func TestAPIRenewWithoutCertificates(t *testing.T) {
	a, _ := testAPI(t)
	if _, err := ask(t, a.path, &Request{Op: OpRenew, Domains: []string{"a.example.com"}}); KindOf(err) != KindUsage ||
		!strings.Contains(err.Error(), "certificates are off") {
		t.Errorf("renew with ACME off: %v, want a usage error saying certificates are off", err)
	}
}

// TestGatherWaitsForTheLastGroup: the writer takes what is queued, and
// waits for as many calls as the last group answered and were waiting
// then, until it has them or the linger is over; a lone caller does not
// wait, nor does the first call after a pause.
func TestGatherWaitsForTheLastGroup(t *testing.T) {
	answeredAt := time.Now()
	waiting := func() *apiCall { return &apiCall{queued: answeredAt.Add(-time.Millisecond)} }
	back := func() *apiCall { return &apiCall{queued: answeredAt.Add(time.Millisecond)} }
	never := func(time.Duration) <-chan time.Time { return nil }
	over := func(time.Duration) <-chan time.Time {
		c := make(chan time.Time, 1)
		c <- time.Now()
		return c
	}
	queue := make(chan *apiCall, 8)
	queue <- back()
	queue <- back()
	if got := gather(queue, []*apiCall{back()}, 0, answeredAt, minLinger, never); len(got) != 3 {
		t.Fatalf("took %d calls, want the 3 queued", len(got))
	}
	if got := gather(queue, []*apiCall{back()}, 1, answeredAt, minLinger, never); len(got) != 1 {
		t.Fatalf("a lone caller: took %d calls, want 1", len(got))
	}
	// two groups of 3 take turns: 3 waited while the last group's 3 were
	// answered, and those come back one after the other
	queue <- waiting()
	queue <- waiting()
	go func() {
		for range 3 {
			queue <- back()
		}
	}()
	if got := gather(queue, []*apiCall{waiting()}, 3, answeredAt, minLinger, never); len(got) != 6 {
		t.Fatalf("took %d calls, want the 3 waiting and the 3 answered last", len(got))
	}
	queue <- waiting()
	if got := gather(queue, []*apiCall{waiting()}, 3, answeredAt, minLinger, over); len(got) != 2 {
		t.Fatalf("after the linger: took %d calls, want the 2 there were", len(got))
	}
	// the first call after a pause: the last group's callers are not
	// coming back at once
	later := &apiCall{queued: answeredAt.Add(time.Second)}
	if got := gather(queue, []*apiCall{later}, 3, answeredAt, minLinger, never); len(got) != 1 {
		t.Fatalf("after a pause: took %d calls, want 1", len(got))
	}
	// 10 ms after the answers of a group that took long enough to wait
	// that long for its callers
	go func() {
		queue <- &apiCall{queued: later.queued}
		queue <- &apiCall{queued: later.queued}
	}()
	if got := gather(queue, []*apiCall{later}, 3, later.queued.Add(-10*time.Millisecond), lingerAfter(time.Second), never); len(got) != 3 {
		t.Fatalf("after a long group: took %d calls, want 3", len(got))
	}
	if lingerAfter(time.Millisecond) != minLinger || lingerAfter(time.Hour) != maxLinger || lingerAfter(80*time.Millisecond) != 20*time.Millisecond {
		t.Error("the linger is not a quarter of the group's time, within its bounds")
	}
}

// TestWriterBusyUntilAnswered: the writer is busy from the moment a call
// is made until its caller has the answer, or gave up, and then signals
// that it is idle; and while it waits for the callers it answered last
// to come back, unless they wait for their changes to go live.
func TestWriterBusyUntilAnswered(t *testing.T) {
	a := &apiServer{queue: make(chan *apiCall, 1), idle: make(chan struct{}, 1)}
	c := &apiCall{answer: make(chan callResult, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.call(t.Context(), c)
	}()
	taken := <-a.queue
	if a.Busy(time.Now()) != maxLinger {
		t.Fatal("not busy with a call taken and not answered")
	}
	select {
	case <-a.Idle():
		t.Fatal("idle signalled with a call not answered")
	default:
	}
	taken.answer <- callResult{}
	<-done
	if got := a.Busy(time.Now()); got != 0 {
		t.Fatalf("busy %v after the answer, with no callers expected back", got)
	}
	select {
	case <-a.Idle():
	case <-time.After(10 * time.Second):
		t.Fatal("no idle signal after the answer")
	}

	// a caller that gives up before the writer takes its call
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	a.queue <- &apiCall{} // full: the call cannot be queued
	if _, ok := a.call(ctx, &apiCall{answer: make(chan callResult, 1)}); ok {
		t.Fatal("a call given up before it was queued was answered")
	}
	if got := a.Busy(time.Now()); got != 0 {
		t.Fatalf("busy %v after the caller gave up", got)
	}

	// waiting for the callers of the last group, unless they all wait
	// for their changes to go live
	now := time.Now()
	a.expectBack([]*apiCall{{waits: true}, {}}, now.Add(20*time.Millisecond))
	if got := a.Busy(now); got != 20*time.Millisecond {
		t.Fatalf("busy %v while the last group's callers are expected back for 20ms", got)
	}
	a.expectBack([]*apiCall{{waits: true}, {waits: true}}, now.Add(20*time.Millisecond))
	if got := a.Busy(now); got != 0 {
		t.Fatalf("busy %v after a group whose callers all wait for their changes to go live", got)
	}
}
