package tests

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The load generator speaks HTTP/1.1 over TLS on raw connections instead of
// using http.Client: net/http's Transport silently resends an idempotent
// request when a reused connection fails before the response starts, which
// would hide exactly the errors a reload storm test looks for. Here every
// failure is counted, and nothing is ever retried.

// loadMode is how the generator's workers use connections.
type loadMode int

const (
	// loadConnPerRequest opens a new TCP+TLS connection for every request
	// and sends "Connection: close": each request depends on a listening
	// socket accepting a new connection.
	loadConnPerRequest loadMode = iota
	// loadKeepAlive keeps one connection per worker and sends request
	// after request on it, opening a new one only when the server ended
	// the previous one with "Connection: close" on a complete response
	// (RFC 9112 section 9.6), as every HTTP/1.1 client must.
	loadKeepAlive
)

func (m loadMode) String() string {
	if m == loadKeepAlive {
		return "keep-alive"
	}
	return "conn-per-request"
}

// loadTarget is what the workers ask for and what they must get back.
type loadTarget struct {
	addr string // 127.0.0.1:port of the TLS frontend
	host string // SNI and Host header
	body string // the expected body of the 200 answer
}

// Failure classes: the phase a request failed in, and for network errors
// the kind of error. "before-response" means no byte of the response
// arrived; "reused" means on a connection that had already carried a
// request (the keep-alive race a browser would silently retry).
const (
	failDial   = "dial"
	failTLS    = "tls-handshake"
	failWrite  = "write"
	failIdle   = "read-before-response"
	failReused = "read-before-response-reused"
	failRead   = "read-response"
	failStatus = "unexpected-status"
	failBody   = "unexpected-body"
)

// loadResult is one run of the generator.
type loadResult struct {
	mode     loadMode
	workers  int
	elapsed  time.Duration
	requests int // answered 200 with the expected body
	conns    int // connections opened (TCP connect and TLS handshake done)
	// keep-alive responses carrying "Connection: close" (an old worker
	// retiring the connection after a reload, with idle-close-on-response):
	// the response is complete and counted; the worker reconnects
	serverCloses int
	failures     map[string]int // class (failDial, failReused+" eof", ...) -> count
	examples     []string       // the first few failures in full
	latencies    []time.Duration
}

// failed is the number of failed requests.
func (r *loadResult) failed() int {
	n := 0
	for _, c := range r.failures {
		n += c
	}
	return n
}

func (r *loadResult) rps() float64 { return float64(r.requests) / r.elapsed.Seconds() }

// quantile returns the latency quantile q (0.5, 0.99) of the answered
// requests.
func (r *loadResult) quantile(q float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	sorted := slices.Clone(r.latencies)
	slices.Sort(sorted)
	return percentile(sorted, q)
}

// failureSummary lists the failure classes, most frequent first.
func (r *loadResult) failureSummary() string {
	if len(r.failures) == 0 {
		return "none"
	}
	classes := make([]string, 0, len(r.failures))
	for c := range r.failures {
		classes = append(classes, c)
	}
	sort.Slice(classes, func(i, j int) bool {
		if r.failures[classes[i]] != r.failures[classes[j]] {
			return r.failures[classes[i]] > r.failures[classes[j]]
		}
		return classes[i] < classes[j]
	})
	parts := make([]string, len(classes))
	for i, c := range classes {
		parts[i] = fmt.Sprintf("%s: %d", c, r.failures[c])
	}
	return strings.Join(parts, ", ")
}

func (r *loadResult) String() string {
	return fmt.Sprintf("%s, %d workers, %s: %d requests (%.0f/s), %d failed (%s), %d connections, %d server closes, p50 %.2f ms, p99 %.2f ms",
		r.mode, r.workers, r.elapsed.Round(time.Millisecond), r.requests, r.rps(), r.failed(), r.failureSummary(),
		r.conns, r.serverCloses, ms(r.quantile(0.5)), ms(r.quantile(0.99)))
}

// loadRequestTimeout bounds one request, connection set-up included.
const loadRequestTimeout = 10 * time.Second

// loadExamples is how many failures are kept in full.
const loadExamples = 5

// loadProgress counts failed requests while a run goes on.
type loadProgress struct {
	failed atomic.Int64
}

// runLoad runs workers against target until ctx is done; a request in
// flight then is finished and counted. progress, if not nil, counts
// failures as they happen.
func runLoad(ctx context.Context, target loadTarget, mode loadMode, workers int, progress *loadProgress) *loadResult {
	total := &loadResult{mode: mode, workers: workers, failures: map[string]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	began := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &loadWorker{target: target, mode: mode, res: &loadResult{failures: map[string]int{}}, progress: progress}
			w.loop(ctx)
			mu.Lock()
			defer mu.Unlock()
			total.add(w.res)
		}()
	}
	wg.Wait()
	total.elapsed = time.Since(began)
	return total
}

// add counts o's requests, failures and latencies into r; elapsed times
// add up too, for runs one after the other.
func (r *loadResult) add(o *loadResult) {
	r.elapsed += o.elapsed
	r.requests += o.requests
	r.conns += o.conns
	r.serverCloses += o.serverCloses
	for c, n := range o.failures {
		r.failures[c] += n
	}
	r.examples = append(r.examples, o.examples[:min(len(o.examples), loadExamples-len(r.examples))]...)
	r.latencies = append(r.latencies, o.latencies...)
}

// loadWorker sends one request at a time.
type loadWorker struct {
	target   loadTarget
	mode     loadMode
	res      *loadResult
	conn     net.Conn // the kept connection (keep-alive mode), nil if none
	br       *bufio.Reader
	used     bool // conn has carried a request already
	progress *loadProgress
}

func (w *loadWorker) loop(ctx context.Context) {
	defer w.closeConn()
	req := "GET / HTTP/1.1\r\nHost: " + w.target.host + "\r\nUser-Agent: haproxy-config-storm\r\n"
	if w.mode == loadConnPerRequest {
		req += "Connection: close\r\n"
	}
	req += "\r\n"
	for ctx.Err() == nil {
		start := time.Now()
		class, err := w.one(req)
		if err != nil {
			w.closeConn()
			w.res.failures[class]++
			if w.progress != nil {
				w.progress.failed.Add(1)
			}
			if len(w.res.examples) < loadExamples {
				w.res.examples = append(w.res.examples, fmt.Sprintf("%s at %s: %v", class, start.Format("15:04:05.000"), err))
			}
			continue
		}
		w.res.requests++
		w.res.latencies = append(w.res.latencies, time.Since(start))
	}
}

// one sends one request and reads its answer; on failure it returns the
// failure class.
func (w *loadWorker) one(req string) (string, error) {
	if w.conn == nil {
		if class, err := w.dial(); err != nil {
			return class, err
		}
	}
	if err := w.conn.SetDeadline(time.Now().Add(loadRequestTimeout)); err != nil {
		return failWrite, err
	}
	if _, err := io.WriteString(w.conn, req); err != nil {
		return failWrite + " " + netErrorKind(err), err
	}
	before := failIdle
	if w.used {
		before = failReused
	}
	w.used = true
	// a failure before the first byte of the answer is told apart from
	// one in the middle of it
	if _, err := w.br.Peek(1); err != nil {
		return before + " " + netErrorKind(err), err
	}
	resp, err := http.ReadResponse(w.br, nil)
	if err != nil {
		return failRead + " " + netErrorKind(err), err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return failRead + " " + netErrorKind(err), err
	}
	if resp.StatusCode != http.StatusOK {
		return failStatus, fmt.Errorf("status %d, body %.200q", resp.StatusCode, body)
	}
	if string(body) != w.target.body {
		return failBody, fmt.Errorf("body %.200q, want %q", body, w.target.body)
	}
	if w.mode == loadConnPerRequest || resp.Close {
		if w.mode == loadKeepAlive {
			w.res.serverCloses++
		}
		w.closeConn()
	}
	return "", nil
}

// dial opens a TCP connection and completes the TLS handshake.
func (w *loadWorker) dial() (string, error) {
	d := net.Dialer{Timeout: loadRequestTimeout}
	raw, err := d.Dial("tcp", w.target.addr)
	if err != nil {
		return failDial + " " + netErrorKind(err), err
	}
	conn := tls.Client(raw, &tls.Config{ServerName: w.target.host, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	if err := conn.SetDeadline(time.Now().Add(loadRequestTimeout)); err != nil {
		raw.Close()
		return failTLS, err
	}
	if err := conn.Handshake(); err != nil {
		raw.Close()
		return failTLS + " " + netErrorKind(err), err
	}
	w.conn, w.br, w.used = conn, bufio.NewReader(conn), false
	w.res.conns++
	return "", nil
}

func (w *loadWorker) closeConn() {
	if w.conn != nil {
		w.conn.Close()
		w.conn, w.br = nil, nil
	}
}

// netErrorKind names a network error: eof, reset, refused, timeout or
// other.
func netErrorKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "other"
}
