package watcher

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"

	"haproxy-config/fragments"
	"haproxy-config/reconcile"
	"haproxy-config/reload"
	"haproxy-config/settings"
)

// apiGroup is the group whose members may use the API besides root.
const apiGroup = "haproxy-config"

// apiServer serves the API socket. Its writer goroutine is the only one
// that changes the store while the daemon runs: it takes every request
// waiting when it is free and validates them together (group commit), so
// that validation never holds up the daemon's loop, which learns of what
// was committed through Committed.
type apiServer struct {
	log      *slog.Logger
	ln       *net.UnixListener
	path     string
	gid      int // apiGroup's, -1 when there is no such group
	settings atomic.Pointer[settings.Settings]
	queue    chan *apiCall
	certs    *certRenewal          // nil when ACME is off
	parses   *reconcile.ParseCache // shared with the daemon's loop

	mu        sync.Mutex
	committed []string // burst keys committed (fragments, holdKey), not yet taken by the loop
	// stored is the checksum of the version of each fragment the API
	// stored last ("" once removed): a waiter whose version was replaced
	// is told so, rather than waiting for a version that never goes live
	stored map[string]storedVersion
	kick   chan struct{} // holds a token while committed is not empty
	// wrote is what the writer left of each fragment it changed, with
	// the count of its groups then (wroteSeq), until its files are seen
	// holding something else or a publish read the store since (echo)
	wrote    map[string]wroteFiles
	wroteSeq uint64
	// asked counts the calls made and not yet answered; idle holds a
	// token once it fell to zero; expect is when the writer stops waiting
	// for the callers it answered last (UnixNano). For the loop: Busy.
	asked  atomic.Int64
	idle   chan struct{}
	expect atomic.Int64
	status chan struct{} // closed and replaced when the daemon writes its status
	// the status last written (memView), its JSON and, once a waiter
	// asked, decoded
	last struct {
		data    []byte
		decoded *Status
	}
	// the generation a waiter read last (memView)
	genMu sync.Mutex
	gen   *reconcile.Generation

	// slots bounds the connections served at once (maxAPIConnections): a
	// runaway script does not take the daemon's file descriptors
	slots   chan struct{}
	busyLog rate.Sometimes // the refusals are logged, not each one

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// maxAPIConnections bounds the API connections open at once; a --wait
// holds its connection until the change is live. One more is answered
// that the daemon is busy (exit 5), and closed.
const maxAPIConnections = 256

// holdKey is the burst key of a hold set or released through the API.
const holdKey = "(hold)"

// apiCall is one request waiting for the writer.
type apiCall struct {
	op reconcile.Op // an apply or remove, committed with the others waiting
	// alone, when set, is the call instead: a change of the hold, made
	// between batches
	alone  func(ctx context.Context, eng *reconcile.Engine) callResult
	answer chan callResult
	waits  bool // the caller waits for the change to go live, not coming back before
	// state is callQueued until the writer takes the call or its caller
	// gives up on it, whichever comes first
	state  atomic.Int32
	queued time.Time // when it was queued
}

// callResult is the writer's answer to one call.
type callResult struct {
	reconcile.OpResult
	held     *reconcile.Hold // a rollback's
	released bool            // a resume released a hold
}

const (
	callQueued = iota
	callTaken
	callAbandoned
)

// listenAPI opens the socket: mode 0660, group apiGroup when it exists.
// A socket left by a killed daemon is replaced; one another daemon
// listens on is an error.
func listenAPI(s *settings.Settings, log *slog.Logger) (*apiServer, error) {
	a := &apiServer{log: log, path: s.APISocket, gid: -1, queue: make(chan *apiCall, 1024), stored: map[string]storedVersion{}, wrote: map[string]wroteFiles{}, busyLog: rate.Sometimes{First: 1, Interval: time.Minute},
		slots: make(chan struct{}, maxAPIConnections),
		kick:  make(chan struct{}, 1), idle: make(chan struct{}, 1), status: make(chan struct{})}
	a.settings.Store(s)
	if g, err := user.LookupGroup(apiGroup); err == nil {
		if a.gid, err = strconv.Atoi(g.Gid); err != nil {
			return nil, fmt.Errorf("group %s: %w", apiGroup, err)
		}
	}
	if err := fragments.MkdirAll(filepath.Dir(a.path), 0o750); err != nil {
		return nil, fmt.Errorf("API socket directory: %w", err)
	}
	if err := privateDir(filepath.Dir(a.path)); err != nil {
		return nil, err
	}
	if c, err := Dial(a.path); err == nil {
		c.Close()
		return nil, fmt.Errorf("another daemon listens on the API socket %s (HAPROXY_CONFIG_API_SOCKET)", a.path)
	} else if !errors.Is(err, ErrNoDaemonAPI) {
		return nil, err
	}
	if err := os.Remove(a.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove the stale API socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: a.path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("API socket: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	// the peer check stands even if this goes wrong or is undone
	if err := os.Chmod(a.path, 0o660); err == nil && a.gid >= 0 {
		err = os.Chown(a.path, -1, a.gid)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("API socket mode: %w", err)
	}
	a.ln = ln
	return a, nil
}

// privateDir refuses a socket directory anyone but this process's user
// (or root) may write to: the socket is removed, created, chmod-ed and
// chown-ed by path, and someone who can put a symlink there could turn
// that against another file.
func privateDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("API socket directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("API socket directory %s: no owner known", dir)
	}
	if fi.Mode().Perm()&0o022 != 0 || (st.Uid != 0 && int(st.Uid) != os.Geteuid()) {
		return fmt.Errorf("API socket directory %s (HAPROXY_CONFIG_API_SOCKET) may be written by others (mode %v, owner uid %d): "+
			"use a directory only root or this user may write to", dir, fi.Mode().Perm(), st.Uid)
	}
	return nil
}

// serve starts accepting and the writer; stop ends both, every connection
// included, and waits for them.
func (a *apiServer) serve(ctx context.Context) (stop func()) {
	ctx, a.cancel = context.WithCancel(ctx)
	a.wg.Add(2)
	go func() {
		defer a.wg.Done()
		a.write(ctx)
	}()
	go func() {
		defer a.wg.Done()
		a.accept(ctx)
	}()
	return func() {
		a.cancel()
		a.ln.Close()
		a.wg.Wait()
	}
}

func (a *apiServer) accept(ctx context.Context) {
	var pause time.Duration
	for {
		conn, err := a.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// out of file descriptors (clients at once), say: it passes
			pause = min(max(2*pause, 5*time.Millisecond), time.Second)
			a.log.Error("API socket: accept failed; retrying", "in", pause, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(pause):
			}
			continue
		}
		pause = 0
		select {
		case a.slots <- struct{}{}:
		default:
			a.busy(conn)
			continue
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			defer func() { <-a.slots }()
			a.handle(ctx, conn)
		}()
	}
}

// Committed signals that changes were committed; TakeCommitted returns
// their burst keys.
func (a *apiServer) Committed() <-chan struct{} { return a.kick }

// TakeCommitted returns the burst keys committed since the last call: the
// fragments changed, and holdKey when the hold was.
func (a *apiServer) TakeCommitted() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	names := a.committed
	a.committed = nil
	return names
}

func (a *apiServer) addCommitted(names []string) {
	if len(names) == 0 {
		return
	}
	a.mu.Lock()
	a.committed = append(a.committed, names...)
	a.mu.Unlock()
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// wroteFiles is what the writer left of a fragment: its files (nil once
// removed), and the group that did.
type wroteFiles struct {
	st  *fragments.Stored
	seq uint64
}

// wroteMark returns the count of groups the writer committed so far.
func (a *apiServer) wroteMark() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.wroteSeq
}

// echo reports whether st, fragment name as its files were read after
// mark (wroteMark) was taken (nil when neither part is there), is what the
// writer left of it: the file events of the writer's own renames, which
// it reported to the loop itself (Committed). Once the files hold
// anything else, nothing is an echo until the writer changes the fragment
// again.
func (a *apiServer) echo(name string, st *fragments.Stored, mark uint64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	w, ok := a.wrote[name]
	switch {
	case !ok:
		return false
	case fragments.SameFiles(w.st, st):
		return true
	case w.seq <= mark:
		// a group after mark may have changed the files since they were read
		delete(a.wrote, name)
	}
	return false
}

// forgetWrote forgets what the groups up to mark (wroteMark) left, once a
// publish read the store after them: whatever it read is what counts
// since, and files holding those groups' bytes again hold a change.
func (a *apiServer) forgetWrote(mark uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for name, w := range a.wrote {
		if w.seq <= mark {
			delete(a.wrote, name)
		}
	}
}

// Busy says how much longer the writer is busy, as of now: for as long
// as callers wait for it (maxLinger stands for that), else until it stops
// waiting for the callers it answered last (they tend to come back at
// once); 0 when it is idle. Idle signals when no caller waits any more.
func (a *apiServer) Busy(now time.Time) time.Duration {
	if a.asked.Load() > 0 {
		return maxLinger
	}
	return max(time.Unix(0, a.expect.Load()).Sub(now), 0)
}

// Idle: see Busy.
func (a *apiServer) Idle() <-chan struct{} { return a.idle }

// expectBack records, before calls are answered, until when the writer
// waits for their callers to come back with their next change: until
// (the end of its linger), unless every one of them waits for its change
// to go live first.
func (a *apiServer) expectBack(calls []*apiCall, until time.Time) {
	var ns int64
	if slices.ContainsFunc(calls, func(c *apiCall) bool { return !c.waits }) {
		ns = until.UnixNano()
	}
	a.expect.Store(ns)
}

// StatusWritten hands the connections waiting for a change to go live the
// status the daemon just wrote (its JSON), and wakes them.
func (a *apiServer) StatusWritten(data []byte) {
	if a == nil {
		return
	}
	a.mu.Lock()
	a.last.data, a.last.decoded = data, nil
	close(a.status)
	a.status = make(chan struct{})
	a.mu.Unlock()
}

// memView is the view of the waits inside the daemon: the status it last
// wrote, decoded once for every waiter (without the drain and announce
// records, which no wait reads), and the live generation, read once for
// every waiter (its meta.json names every fragment: about 1 MB at 10,000).
type memView struct {
	a   *apiServer
	eng *reconcile.Engine // for the generations' files
}

func (v memView) status() (*Status, error) {
	a := v.a
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.last.decoded == nil {
		if a.last.data == nil {
			// no status written yet by this daemon: the file's, if any
			return diskView{v.eng}.status()
		}
		st := &Status{}
		if err := json.Unmarshal(a.last.data, st); err != nil {
			return nil, fmt.Errorf("the daemon's status: %w", err)
		}
		a.last.decoded = st
	}
	return a.last.decoded, nil
}

func (v memView) generation(n int) (*reconcile.Generation, error) {
	a := v.a
	a.genMu.Lock()
	defer a.genMu.Unlock()
	if g := a.gen; g != nil && g.Number == n {
		return g, nil
	}
	g, err := v.eng.Generation(n)
	if err != nil {
		return nil, err
	}
	a.gen = g
	return g, nil
}

func (a *apiServer) statusChanged() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status
}

// SetSettings hands re-read settings to the writer.
func (a *apiServer) SetSettings(s *settings.Settings) { a.settings.Store(s) }

// write is the writer: it validates and commits the waiting requests as
// one batch, answers each, and tells the loop what was committed. A
// change of the hold is made alone, in its turn between batches.
func (a *apiServer) write(ctx context.Context) {
	var eng *reconcile.Engine
	var engFor *settings.Settings
	// the calls the last group answered, and when
	answered, answeredAt := 0, time.Time{}
	linger := minLinger // for the callers of the last group
	for {
		var calls []*apiCall
		select {
		case <-ctx.Done():
			return
		case c := <-a.queue:
			calls = append(calls, c)
		}
		calls = gather(a.queue, calls, answered, answeredAt, linger, time.After)
		calls = slices.DeleteFunc(calls, func(c *apiCall) bool { return !c.state.CompareAndSwap(callQueued, callTaken) })
		if len(calls) == 0 {
			continue
		}
		if s := a.settings.Load(); s != engFor {
			eng, engFor = newEngine(s, a.parses), s
		}
		for len(calls) > 0 {
			if c := calls[0]; c.alone != nil {
				res := c.alone(ctx, eng)
				if res.Err == nil && (res.held != nil || res.released) {
					a.addCommitted([]string{holdKey})
				}
				answered, answeredAt, linger = 1, time.Now(), minLinger
				a.expectBack(calls[:1], answeredAt.Add(linger))
				c.answer <- res
				calls = calls[1:]
				continue
			}
			n := slices.IndexFunc(calls, func(c *apiCall) bool { return c.alone != nil })
			if n < 0 {
				n = len(calls)
			}
			answered = n
			answeredAt, linger = a.commit(ctx, eng, calls[:n])
			calls = calls[n:]
		}
	}
}

// The writer waits for the callers of the last group at least minLinger,
// at most maxLinger, and otherwise a quarter of what the last group took:
// a group that ran haproxy -c on 10,000 fragments (400 ms) is worth
// waiting 100 ms for 20 CLI processes to come back with their next change
// (they take 15 to 150 ms, started at once on 2 cores) rather than being
// run again for the first of them. A caller waits at most a quarter more
// than it would have.
const (
	minLinger = 2 * time.Millisecond
	maxLinger = 200 * time.Millisecond
)

// lingerAfter is how long to wait for the callers of a group that took
// took.
func lingerAfter(took time.Duration) time.Duration {
	return min(max(took/4, minLinger), maxLinger)
}

// gather adds to calls what is queued. Callers that were just answered
// tend to come back at once with their next change (a script, 20 writers).
// When the first call came within linger of the last answers (which began
// at answeredAt), gather waits, until linger after them at most, for as
// many calls as the last group answered and those that were waiting then:
// those callers and the ones that waited make one group, not two that take
// turns. A lone caller does not wait, nor does the first after a pause.
// calls holds the first call; after is time.After.
func gather(queue <-chan *apiCall, calls []*apiCall, answered int, answeredAt time.Time, linger time.Duration, after func(time.Duration) <-chan time.Time) []*apiCall {
	drain := func() {
		for {
			select {
			case c := <-queue:
				calls = append(calls, c)
			default:
				return
			}
		}
	}
	drain()
	if calls[0].queued.Sub(answeredAt) > linger {
		return calls
	}
	want := answered
	for _, c := range calls {
		if c.queued.Before(answeredAt) {
			want++
		}
	}
	var timeout <-chan time.Time
	for len(calls) < want {
		if timeout == nil {
			timeout = after(time.Until(answeredAt.Add(linger)))
		}
		select {
		case c := <-queue:
			calls = append(calls, c)
			drain()
		case <-timeout:
			return calls
		}
	}
	return calls
}

// commit validates and commits the applies and removes of calls as one
// batch and answers each; it returns when it began to answer, and how
// long to wait for those callers to come back (lingerAfter).
func (a *apiServer) commit(ctx context.Context, eng *reconcile.Engine, calls []*apiCall) (answeredAt time.Time, linger time.Duration) {
	ops := make([]reconcile.Op, len(calls))
	for i, c := range calls {
		ops[i] = c.op
	}
	start := time.Now()
	results := eng.ApplyBatch(ctx, ops)
	var names []string
	committed := time.Now()
	a.mu.Lock()
	a.wroteSeq++
	for i, r := range results {
		if r.Err == nil {
			names = append(names, ops[i].Name)
			// a fragment named twice is stored in index order: the
			// later op's version is the one the store keeps
			v := storedVersion{at: committed}
			var files *fragments.Stored
			if r.Apply != nil {
				f := r.Apply.Fragment
				v.checksum = f.Checksum
				files = &fragments.Stored{Name: f.Name, Conf: f.Conf, Map: f.MapText}
				files.ConfPath, files.MapPath = eng.Store.Paths(f.Name)
			}
			a.stored[ops[i].Name], a.wrote[ops[i].Name] = v, wroteFiles{files, a.wroteSeq}
		}
	}
	a.mu.Unlock()
	a.addCommitted(names)
	answeredAt = time.Now()
	linger = lingerAfter(answeredAt.Sub(start))
	a.expectBack(calls, answeredAt.Add(linger))
	for i, c := range calls {
		c.answer <- callResult{OpResult: results[i]}
	}
	a.log.Info("API batch", "requests", len(calls), "accepted", len(names), "duration_ms", float64(time.Since(start).Microseconds())/1000)
	return answeredAt, linger
}

// apiRequestTimeout bounds the reading of a request: the CLI sends it
// whole at once.
const apiRequestTimeout = 30 * time.Second

// handle serves one connection: the peer is checked, its request queued
// for the writer, answered, and with Wait answered again once live.
func (a *apiServer) handle(ctx context.Context, conn *net.UnixConn) {
	defer conn.Close()
	uid, err := a.permitted(conn)
	if err != nil {
		a.log.Warn("API: connection refused", "err", err)
		_ = writeLine(conn, &Answer{Error: toWire(&reload.EnvError{Err: err})})
		return
	}
	s := a.settings.Load()
	req := &Request{}
	// neither a client that sends no request nor one that never ends it
	// holds the connection, or the daemon's stop, for long
	_ = conn.SetReadDeadline(time.Now().Add(apiRequestTimeout))
	stopRead := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Now()) })
	err = readLine(bufio.NewReader(conn), maxRequest(s.MaxFragmentBytes), req)
	if stopRead() {
		_ = conn.SetReadDeadline(time.Time{})
	}
	if err != nil {
		_ = writeLine(conn, &Answer{Error: toWire(&reconcile.UsageError{Err: fmt.Errorf("API request: %w", err)})})
		return
	}
	if !slices.Contains([]string{OpApply, OpRemove, OpRollback, OpResume, OpRenew}, req.Op) {
		_ = writeLine(conn, &Answer{Error: toWire(&reconcile.UsageError{Err: fmt.Errorf("API request: unknown operation %q", req.Op)})})
		return
	}
	// a client that hangs up stops its wait
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var reader sync.WaitGroup
	reader.Add(1)
	go func() {
		defer reader.Done()
		defer cancel()
		var b [1]byte
		_, _ = conn.Read(b[:])
	}()
	defer reader.Wait()
	defer func() { _ = conn.SetReadDeadline(time.Now()) }()

	ans, wait := a.serveRequest(ctx, req, actor(req.Actor, uid))
	if ans == nil {
		return
	}
	if err := writeLine(conn, ans); err != nil || !ans.Waits(req) {
		return
	}
	timeout := req.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	wctx, wcancel := context.WithTimeout(ctx, timeout)
	defer wcancel()
	err = wait(wctx)
	if err != nil && wctx.Err() != nil && ctx.Err() != nil {
		err = &NotLiveError{Why: "the daemon is stopping"}
	}
	_ = writeLine(conn, &Answer{Error: toWire(err)})
}

// busy answers a connection beyond maxAPIConnections and closes it. The
// answer is one short line, which the socket's buffer takes whole: the
// deadline only guards the accepting goroutine against the unexpected.
func (a *apiServer) busy(conn *net.UnixConn) {
	defer conn.Close()
	a.busyLog.Do(func() {
		a.log.Warn("API socket: too many connections; refusing those beyond the limit (logged at most once a minute)", "limit", cap(a.slots))
	})
	_ = conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_ = writeLine(conn, &Answer{Error: toWire(&reload.EnvError{Err: fmt.Errorf("the daemon serves %d API connections already: try again", cap(a.slots))})})
}

// serveRequest does what req asks and returns the first answer (nil when
// there is none to give: the client hung up before the writer could take
// the request) and how to wait for the change to be served.
func (a *apiServer) serveRequest(ctx context.Context, req *Request, actor string) (*Answer, func(context.Context) error) {
	s := a.settings.Load()
	eng := reconcile.New(s)
	call := &apiCall{answer: make(chan callResult, 1), waits: req.Wait}
	switch req.Op {
	case OpRenew:
		return a.renew(req.Domains)
	case OpRollback:
		n := req.Generation
		if n < 1 {
			return &Answer{Error: toWire(&reconcile.UsageError{Err: fmt.Errorf("API request: rollback to generation %d", n)})}, nil
		}
		call.alone = func(ctx context.Context, eng *reconcile.Engine) callResult {
			h, err := eng.SetHold(ctx, n, actor)
			if err == nil {
				a.log.Info("API: hold set", "generation", n, "actor", actor)
			}
			return callResult{OpResult: reconcile.OpResult{Err: err}, held: h}
		}
	case OpResume:
		call.alone = func(_ context.Context, eng *reconcile.Engine) callResult {
			released, err := eng.ReleaseHold()
			if released {
				a.log.Info("API: hold released", "actor", actor)
			}
			return callResult{OpResult: reconcile.OpResult{Err: err}, released: released}
		}
	default:
		call.op = reconcile.Op{Change: reconcile.Change{Name: req.Name, ConfFile: req.ConfFile, Conf: req.Conf, MapFile: req.MapFile, Map: req.Map},
			Actor: actor, Remove: req.Op == OpRemove}
	}
	res, ok := a.call(ctx, call)
	if !ok {
		return nil, nil
	}
	ans := &Answer{Error: toWire(res.Err), Held: res.held, Released: res.released}
	switch req.Op {
	case OpRollback:
		return ans, func(ctx context.Context) error {
			return waitUntil(ctx, eng, memView{a, eng}, true, a.statusChanged, servesHeld(req.Generation))
		}
	case OpResume:
		return ans, func(ctx context.Context) error {
			return waitUntil(ctx, eng, memView{a, eng}, true, a.statusChanged, servesNewest(eng))
		}
	}
	committed := time.Now()
	checksum := ""
	if r := res.Apply; r != nil {
		f := r.Fragment
		checksum = f.Checksum
		ans.Warnings = r.Warnings
		ans.Applied = &Applied{Name: f.Name, Checksum: f.Checksum, Replaced: r.Replaced, Domains: len(f.Map), Backends: f.Backends()}
	}
	return ans, func(ctx context.Context) error {
		return waitUntil(ctx, eng, memView{a, eng}, false, a.statusChanged, func(st *Status, g *reconcile.Generation) (bool, error) {
			if ok, err := liveOrQuarantined(st, g, req.Name, checksum, committed); ok || err != nil {
				return ok, err
			}
			return false, a.replaced(st, req.Name, checksum)
		})
	}
}

// storedVersion is the version of a fragment the API stored last.
type storedVersion struct {
	checksum string // "" once removed
	at       time.Time
}

// replaced is a NotLiveError when the API stored another version of
// fragment name after the one with checksum ("" for its removal) and the
// daemon, in st, has read the store since: what it serves next is that
// version, never the awaited one. Before that read, a reconcile of the
// awaited version may still be going live.
func (a *apiServer) replaced(st *Status, name, checksum string) error {
	a.mu.Lock()
	now, known := a.stored[name]
	a.mu.Unlock()
	if !known || now.checksum == checksum || !st.ReconciledAt.After(now.at) {
		return nil
	}
	what := "removed it"
	if now.checksum != "" {
		what = "stored " + now.checksum
	}
	return &NotLiveError{Why: fmt.Sprintf("a later change of fragment %q %s before this one went live", name, what)}
}

// call queues c for the writer and returns its result; false when the
// client hung up (or the daemon stops) before the writer took it and
// there is no one to tell.
func (a *apiServer) call(ctx context.Context, c *apiCall) (callResult, bool) {
	c.queued = time.Now()
	a.asked.Add(1)
	defer func() {
		if a.asked.Add(-1) == 0 {
			select {
			case a.idle <- struct{}{}:
			default:
			}
		}
	}()
	select {
	case a.queue <- c:
	case <-ctx.Done():
		return callResult{}, false
	}
	select {
	case res := <-c.answer:
		return res, true
	case <-ctx.Done():
		// a call the writer took is answered even while it stops
		if c.state.CompareAndSwap(callQueued, callAbandoned) {
			return callResult{OpResult: reconcile.OpResult{Err: &reload.EnvError{Err: errors.New("the daemon is stopping (or the client hung up): nothing changed")}}}, true
		}
		return <-c.answer, true
	}
}

// maxActor bounds the claimed actor that the history keeps, in bytes.
const maxActor = 200

// actor is who the history names: what the client says, and the uid it
// connected as when that is not the user it says.
func actor(claimed string, uid uint32) string {
	claimed = printable(claimed)
	name := "uid " + strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		name = u.Username
	}
	switch {
	case claimed == "":
		return name
	case claimed == name || len(claimed) > len(name) && claimed[:len(name)+1] == name+" ":
		return claimed
	}
	return claimed + " (via " + name + ")"
}

// printable is s cut to maxActor bytes with every character that is not
// printable (a newline, a terminal escape) replaced by "?": the claim is
// the caller's own text, shown by list and kept in the history.
func printable(s string) string {
	var b strings.Builder
	for _, r := range s {
		if !unicode.IsPrint(r) {
			r = '?'
		}
		if b.Len()+utf8.RuneLen(r) > maxActor {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}

// permitted checks the peer's credentials, whatever the socket's mode:
// root, this daemon's own user, or a member of apiGroup.
func (a *apiServer) permitted(conn *net.UnixConn) (uint32, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var groups []uint32
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		if cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); credErr == nil {
			groups, credErr = peerGroups(int(fd))
		}
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, fmt.Errorf("peer credentials: %w", credErr)
	}
	if cred.Uid == 0 || int(cred.Uid) == os.Geteuid() ||
		a.gid >= 0 && (int(cred.Gid) == a.gid || slices.Contains(groups, uint32(a.gid))) {
		return cred.Uid, nil
	}
	return cred.Uid, fmt.Errorf("permission denied: uid %d (pid %d) is neither root nor in the %s group", cred.Uid, cred.Pid, apiGroup)
}

// peerGroups reads the peer's supplementary groups (SO_PEERGROUPS).
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 64)
	for {
		size := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		switch {
		case errno == unix.ERANGE && int(size/4) > len(buf):
			buf = make([]uint32, size/4)
			continue
		case errno != 0:
			return nil, errno
		}
		return buf[:size/4], nil
	}
}
