package watcher

// The daemon's API: one JSON object per line over a unix stream socket
// (API_SOCKET). The client sends one Request; the daemon answers with one
// Answer (accepted, or refused with the reason), and when the request asks
// to wait and was accepted, with a second Answer on the same connection
// once HAProxy serves the change, or it is quarantined or not live in time.
// This file is the whole protocol, both ends of it.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"haproxy-config/assemble"
	"haproxy-config/fragments"
	"haproxy-config/reconcile"
	"haproxy-config/reload"
)

// Request operations.
const (
	OpApply  = "apply"
	OpRemove = "remove"
	// OpRollback holds Generation: the daemon serves it and leaves the
	// fragments' changes pending until OpResume releases the hold.
	OpRollback = "rollback"
	OpResume   = "resume"
	// OpRenew renews the certificates of Domains (all when none) now.
	OpRenew = "renew"
)

// Request is what a client asks of the daemon.
type Request struct {
	Op       string `json:"op"`
	Name     string `json:"name"`
	ConfFile string `json:"conf_file,omitempty"` // as the user named it, for messages
	Conf     []byte `json:"conf,omitempty"`
	MapFile  string `json:"map_file,omitempty"`
	Map      []byte `json:"map,omitempty"`
	// Generation is the one a rollback holds.
	Generation int `json:"generation,omitempty"`
	// Domains are those whose certificates a renew renews, none for all.
	Domains []string `json:"domains,omitempty"`
	// Actor is who asks, for the history (HAPROXY_CONFIG_ACTOR or the
	// user); the daemon records the connecting uid beside it.
	Actor string `json:"actor,omitempty"`
	// Wait asks for the second answer, given within Timeout.
	Wait    bool          `json:"wait,omitempty"`
	Timeout time.Duration `json:"timeout,omitempty"`
}

// Answer is one reply of the daemon. Error is nil for an accepted change
// (first answer) and for a live one (second answer).
type Answer struct {
	Error    *WireError        `json:"error,omitempty"`
	Warnings assemble.Problems `json:"warnings,omitempty"`
	Applied  *Applied          `json:"applied,omitempty"` // an accepted apply
	Held     *reconcile.Hold   `json:"held,omitempty"`    // an accepted rollback
	// Released says that a resume released a hold; without one in force
	// there is nothing to wait for, and no second answer.
	Released bool `json:"released,omitempty"`
	// Renewing are the domains an accepted renew renews.
	Renewing []string `json:"renewing,omitempty"`
}

// Waits reports whether the answer to req is followed by a second one:
// req asked to wait, and there is something to wait for.
func (a *Answer) Waits(req *Request) bool {
	return req.Wait && a.Error == nil && (req.Op != OpResume || a.Released)
}

// Applied describes the fragment an apply stored.
type Applied struct {
	Name     string   `json:"name"`
	Checksum string   `json:"checksum"`
	Replaced bool     `json:"replaced"`
	Domains  int      `json:"domains"`
	Backends []string `json:"backends"`
}

// WireError carries an error with its kind, so that the client exits with
// the code the same error has when the CLI does the work itself.
type WireError struct {
	Kind     Kind              `json:"kind"`
	Message  string            `json:"message"`
	Problems assemble.Problems `json:"problems,omitempty"` // kind "rejected"
	Name     string            `json:"name,omitempty"`     // kind "quarantined"
	Errors   []string          `json:"errors,omitempty"`   // kind "quarantined"
}

// toWire encodes err; nil stays nil.
func toWire(err error) *WireError {
	if err == nil {
		return nil
	}
	w := &WireError{Kind: KindOf(err), Message: err.Error()}
	var ps assemble.Problems
	var quarantined *QuarantinedError
	var notLive *NotLiveError
	switch {
	case w.Kind == KindQuarantined && errors.As(err, &quarantined):
		w.Name, w.Errors = quarantined.Name, quarantined.Errors
	case w.Kind == KindNotLive && errors.As(err, &notLive):
		w.Message = notLive.Why
	case w.Kind == KindRejected && errors.As(err, &ps):
		w.Problems = ps
	}
	return w
}

// Err decodes the error into the type the CLI's own work returns.
func (w *WireError) Err() error {
	if w == nil {
		return nil
	}
	msg := errors.New(w.Message)
	switch w.Kind {
	case KindRejected:
		if len(w.Problems) == 0 {
			return assemble.Problems{{Location: assemble.Location{File: "haproxy-config watch"}, Msg: w.Message}}
		}
		return w.Problems
	case KindQuarantined:
		return &QuarantinedError{Name: w.Name, Errors: w.Errors}
	case KindUsage:
		return &reconcile.UsageError{Err: msg}
	case KindEnv:
		return &reload.EnvError{Err: msg}
	case KindNotFound:
		return &wrapped{msg: w.Message, is: fragments.ErrNotFound}
	case KindNotLive:
		return &NotLiveError{Why: w.Message}
	}
	return msg
}

// wrapped is a message that keeps the sentinel it came from.
type wrapped struct {
	msg string
	is  error
}

func (e *wrapped) Error() string { return e.msg }
func (e *wrapped) Unwrap() error { return e.is }

// maxRequest bounds one request line: two parts of maxPart bytes, base64
// encoded, and the rest.
func maxRequest(maxPart int64) int64 { return 2*(maxPart+2)*4/3 + 64<<10 }

// readLine reads one JSON line of at most limit bytes into v.
func readLine(r *bufio.Reader, limit int64, v any) error {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if int64(len(line)) > limit {
			return fmt.Errorf("message longer than %d bytes", limit)
		}
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) && len(line) > 0 {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return json.Unmarshal(line, v)
}

func writeLine(w io.Writer, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(data, '\n'))
	return err
}

// ErrNoDaemonAPI means nobody listens on the API socket: the caller does
// the work itself.
var ErrNoDaemonAPI = errors.New("no daemon listens on the API socket")

// Client is one connection to the daemon's API.
type Client struct {
	conn *net.UnixConn
	r    *bufio.Reader
}

// ErrNotSent means the daemon went away before it read the request, so it
// did nothing with it: the caller may send it again, or do the work itself
// when no daemon listens any more.
var ErrNotSent = errors.New("the daemon went away before it read the request")

// Dial connects to the daemon's socket at path. It returns ErrNoDaemonAPI
// when there is no socket or nobody listens on it (a daemon killed leaves
// its socket behind), and an environment error when the caller may not
// connect.
func Dial(path string) (*Client, error) {
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return nil, ErrNoDaemonAPI
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return nil, &reload.EnvError{Err: fmt.Errorf("the daemon's API socket %s: %w: only root and the %s group may use it", path, err, apiGroup)}
	case err != nil:
		return nil, &reload.EnvError{Err: fmt.Errorf("connect to the daemon's API socket: %w", err)}
	}
	return &Client{conn: conn, r: bufio.NewReader(conn)}, nil
}

// Close ends the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Send sends req and returns the first answer: the error is the refusal,
// decoded, or what went wrong with the connection.
func (c *Client) Send(ctx context.Context, req *Request) (*Answer, error) {
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetDeadline(time.Now()) })
	defer stop()
	if err := writeLine(c.conn, req); err != nil {
		// a daemon that refuses the caller says why and hangs up at once
		if a, rerr := c.read(); rerr == nil && a.Error != nil {
			return a, a.Error.Err()
		}
		return nil, &reload.EnvError{Err: fmt.Errorf("%w: %w", ErrNotSent, err)}
	}
	a, err := c.read()
	if err != nil {
		why := "it may have stopped or been killed"
		if ctx.Err() != nil {
			why = "it may be stopped or stuck"
		}
		return nil, &reload.EnvError{Err: fmt.Errorf("the daemon did not answer (%w): %s; %s", err, why, req.whole())}
	}
	return a, a.Error.Err()
}

// whole says what a request that got no answer may have done, and how to
// find out.
func (r *Request) whole() string {
	switch r.Op {
	case OpRollback, OpResume:
		return "the hold was changed whole or not at all: see haproxy-config history, or send it again"
	case OpRenew:
		return "see haproxy-config certs, or send it again"
	}
	return fmt.Sprintf("the change was stored whole or not at all: see haproxy-config show %s, or send it again", r.Name)
}

// Wait reads the second answer: nil once the change is live.
func (c *Client) Wait(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetDeadline(time.Now()) })
	defer stop()
	a, err := c.read()
	if err != nil {
		if ctx.Err() != nil {
			return &NotLiveError{Why: "timed out waiting for the daemon"}
		}
		return &NotLiveError{Why: fmt.Sprintf("the daemon closed the connection before the change went live (%v): it may have stopped; see haproxy-config status", err)}
	}
	return a.Error.Err()
}

func (c *Client) read() (*Answer, error) {
	a := &Answer{}
	if err := readLine(c.r, 64<<20, a); err != nil {
		return nil, err
	}
	return a, nil
}
