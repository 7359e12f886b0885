package watcher

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"haproxy-config/assemble"
	"haproxy-config/fragments"
	"haproxy-config/reconcile"
	"haproxy-config/reload"
)

// TestWireErrors sends each kind of error through JSON and checks that the
// client gets the type its exit code depends on, with the same text.
func TestWireErrors(t *testing.T) {
	problems := assemble.Problems{{Location: assemble.Location{Fragment: "shop", File: "shop.cfg", Line: 3}, Msg: "bad port"}}
	for _, tc := range []struct {
		name string
		err  error
		is   func(error) bool
		exit int
	}{
		{"rejected", problems, func(err error) bool { var ps assemble.Problems; return errors.As(err, &ps) && ps[0].Line == 3 }, 4},
		{"usage", &reconcile.UsageError{Err: errors.New("bad name")}, func(err error) bool { var u *reconcile.UsageError; return errors.As(err, &u) }, 2},
		{"env", &reload.EnvError{Err: errors.New("no haproxy")}, func(err error) bool { var e *reload.EnvError; return errors.As(err, &e) }, 5},
		{"permission", fmt.Errorf("open: %w", fs.ErrPermission), func(err error) bool { var e *reload.EnvError; return errors.As(err, &e) }, 5},
		{"not found", fmt.Errorf("fragment %q: %w", "x", fragments.ErrNotFound), func(err error) bool { return errors.Is(err, fragments.ErrNotFound) }, 6},
		{"quarantined", &QuarantinedError{Name: "x", Errors: []string{"x.cfg:1: bad"}}, func(err error) bool {
			var q *QuarantinedError
			return errors.As(err, &q) && q.Name == "x" && q.Errors[0] == "x.cfg:1: bad"
		}, 4},
		{"not live", &NotLiveError{Why: "held"}, func(err error) bool { var n *NotLiveError; return errors.As(err, &n) }, 7},
		{"no daemon", fmt.Errorf("status: %w", ErrNoDaemon), func(err error) bool { var e *reload.EnvError; return errors.As(err, &e) }, 5},
		{"internal", errors.New("surprise"), func(err error) bool {
			var u *reconcile.UsageError
			var e *reload.EnvError
			return !errors.As(err, &u) && !errors.As(err, &e)
		}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, err := json.Marshal(&Answer{Error: toWire(tc.err)})
			if err != nil {
				t.Fatal(err)
			}
			var a Answer
			if err := json.Unmarshal(data, &a); err != nil {
				t.Fatal(err)
			}
			got := a.Error.Err()
			if !tc.is(got) {
				t.Errorf("%v came back as %T %v", tc.err, got, got)
			}
			if code, back := KindOf(tc.err).ExitCode(), KindOf(got).ExitCode(); code != tc.exit || back != tc.exit {
				t.Errorf("exit code %d, %d after the trip over the socket; want %d", code, back, tc.exit)
			}
			if got.Error() != tc.err.Error() {
				t.Errorf("text %q came back as %q", tc.err.Error(), got.Error())
			}
		})
	}
	if err := toWire(nil).Err(); err != nil {
		t.Errorf("no error came back as %v", err)
	}
}

func TestReadLine(t *testing.T) {
	req := &Request{Op: OpApply, Name: "shop", Conf: []byte("backend b\n\x00\xff"), Map: []byte("a.example.com b\n")}
	data, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var got Request
	if err := readLine(bufio.NewReaderSize(strings.NewReader(string(data)+"\n"), 16), int64(len(data)+1), &got); err != nil {
		t.Fatal(err)
	}
	if got.Name != "shop" || string(got.Conf) != string(req.Conf) || string(got.Map) != string(req.Map) {
		t.Errorf("read %+v, want %+v", got, req)
	}
	if err := readLine(bufio.NewReaderSize(strings.NewReader(string(data)+"\n"), 16), int64(len(data)-1), &got); err == nil {
		t.Error("a line past the limit was read")
	}
	if err := readLine(bufio.NewReader(strings.NewReader(string(data))), 1<<20, &got); err == nil {
		t.Error("a line cut short was read")
	}
	if n := maxRequest(256 << 10); n < 2*(256<<10)*4/3 {
		t.Errorf("maxRequest(256 KiB) = %d: two base64 parts do not fit", n)
	}
}

// TestDialWithoutDaemon: no socket, and a socket nobody listens on (a
// killed daemon's), both mean the CLI does the work itself.
func TestDialWithoutDaemon(t *testing.T) {
	dir := t.TempDir()
	if _, err := Dial(filepath.Join(dir, "none.sock")); !errors.Is(err, ErrNoDaemonAPI) {
		t.Errorf("Dial of a missing socket: %v, want ErrNoDaemonAPI", err)
	}
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(stale); err != nil {
		t.Fatal(err)
	}
	if _, err := Dial(stale); !errors.Is(err, ErrNoDaemonAPI) {
		t.Errorf("Dial of a stale socket: %v, want ErrNoDaemonAPI", err)
	}
}

// TestPeerCredentials: the daemon's own user passes the check, and the
// groups of the caller are read.
func TestPeerCredentials(t *testing.T) {
	a := &apiServer{gid: -1}
	path := filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	conn, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	uid, err := a.permitted(conn)
	if err != nil || int(uid) != os.Getuid() {
		t.Errorf("permitted = %d, %v; want this process's uid %d allowed", uid, err, os.Getuid())
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var groups []uint32
	var gerr error
	if err := raw.Control(func(fd uintptr) { groups, gerr = peerGroups(int(fd)) }); err != nil {
		t.Fatal(err)
	}
	own, _ := os.Getgroups()
	if gerr != nil || len(groups) != len(own) {
		t.Errorf("peer groups %v (%v), want this process's %v", groups, gerr, own)
	}
}

func TestActor(t *testing.T) {
	for _, tc := range []struct {
		claimed string
		uid     uint32
		want    string
	}{
		{"", 0, "root"},
		{"root", 0, "root"},
		{"root (sudo by ann)", 0, "root (sudo by ann)"},
		{"tenant-42", 0, "tenant-42 (via root)"},
		{"rootkit", 0, "rootkit (via root)"},
		// a claim cannot forge a line of the history's display, nor grow it
		{"ann\n2025-01-01T00:00:00Z apply shop root", 0, "ann?2025-01-01T00:00:00Z apply shop root (via root)"},
		{"root \x1b[2Kbob", 0, "root ?[2Kbob"},
		{strings.Repeat("x", 1<<20), 0, strings.Repeat("x", maxActor) + " (via root)"},
		{"é" + strings.Repeat("x", maxActor), 0, "é" + strings.Repeat("x", maxActor-2) + " (via root)"},
	} {
		if got := actor(tc.claimed, tc.uid); got != tc.want {
			t.Errorf("actor(%q, %d) = %q, want %q", tc.claimed, tc.uid, got, tc.want)
		}
	}
}

// TestAnswerWaits: a second answer follows only an accepted request that
// asked to wait, and for resume only when it released a hold.
func TestAnswerWaits(t *testing.T) {
	refused := &Answer{Error: toWire(&NotLiveError{Why: "x"})}
	for _, tc := range []struct {
		req  Request
		ans  *Answer
		want bool
	}{
		{Request{Op: OpApply, Wait: true}, &Answer{}, true},
		{Request{Op: OpApply}, &Answer{}, false},
		{Request{Op: OpRemove, Wait: true}, refused, false},
		{Request{Op: OpRollback, Wait: true}, &Answer{Held: &reconcile.Hold{Generation: 2}}, true},
		{Request{Op: OpResume, Wait: true}, &Answer{Released: true}, true},
		{Request{Op: OpResume, Wait: true}, &Answer{}, false},
		{Request{Op: OpRenew, Wait: true}, &Answer{Renewing: []string{"a.example.com"}}, true},
		{Request{Op: OpRenew, Wait: true}, refused, false},
	} {
		if got := tc.ans.Waits(&tc.req); got != tc.want {
			t.Errorf("%+v answered %+v: Waits = %v, want %v", tc.req, tc.ans, got, tc.want)
		}
	}
}

// TestRequestRoundTrip: the fields of rollback and renew survive the trip.
func TestRequestRoundTrip(t *testing.T) {
	for _, req := range []*Request{
		{Op: OpRollback, Generation: 12, Wait: true},
		{Op: OpRenew, Domains: []string{"a.example.com", "*.b.example.com"}},
		{Op: OpResume},
	} {
		data, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		var got Request
		if err := readLine(bufio.NewReader(strings.NewReader(string(data)+"\n")), 1<<20, &got); err != nil {
			t.Fatal(err)
		}
		if got.Op != req.Op || got.Generation != req.Generation || strings.Join(got.Domains, " ") != strings.Join(req.Domains, " ") || got.Wait != req.Wait {
			t.Errorf("read %+v, want %+v", got, req)
		}
	}
}

func TestSameSerial(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"0A1B", "a1b", true},
		{"A1B", "a1b", true},
		{"a1c", "a1b", false},
		{"", "", false},
	} {
		if got := sameSerial(tc.a, tc.b); got != tc.want {
			t.Errorf("sameSerial(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}
