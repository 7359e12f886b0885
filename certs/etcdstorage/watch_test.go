package etcdstorage

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"haproxy-config/certs"
)

// next is what ch sends next, within d.
func next(t *testing.T, ch <-chan string, d time.Duration) string {
	t.Helper()
	select {
	case key, ok := <-ch:
		if !ok {
			t.Fatal("the watch channel is closed")
		}
		return key
	case <-time.After(d):
		t.Fatalf("the watch sent nothing within %v", d)
	}
	return ""
}

// made waits for the "" a watch sends once it is made.
func made(t *testing.T, ch <-chan string) {
	t.Helper()
	if key := next(t, ch, 10*time.Second); key != "" {
		t.Fatalf("the watch sent %q first, want \"\" once made", key)
	}
}

// expectKey wants want to be the next thing ch sends.
func expectKey(t *testing.T, ch <-chan string, want string) {
	t.Helper()
	if got := next(t, ch, 5*time.Second); got != want {
		t.Fatalf("the watch sent %q, want %q", got, want)
	}
}

// watchCtx is a context for a watch, canceled by the test's cleanup.
func watchCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return ctx
}

func TestWatch(t *testing.T) {
	c := cluster(t)
	cfg := fleet(t, c)
	s := open(t, cfg)
	peerCfg := cfg
	peerCfg.Owner = "node-2"
	peer := open(t, peerCfg)
	other := open(t, fleet(t, c))
	ctx := context.Background()
	ch := s.Watch(watchCtx(t), "certificates")
	made(t, ch)

	if err := peer.Store(ctx, "certificates/a.example.com.pem", []byte("a")); err != nil {
		t.Fatal(err)
	}
	expectKey(t, ch, "certificates/a.example.com.pem")

	// none of these is under the prefix; the watch sends in revision
	// order, so the deeper value stored after them is the next key
	if err := peer.Store(ctx, "acme/state.json", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if err := peer.Store(ctx, "certificates-old/b.example.com.pem", []byte("b")); err != nil {
		t.Fatal(err)
	}
	if err := peer.Store(ctx, "certificates", []byte("not under itself")); err != nil {
		t.Fatal(err)
	}
	if err := other.Store(ctx, "certificates/b.example.com.pem", []byte("another fleet's")); err != nil {
		t.Fatal(err)
	}
	if err := peer.PutToken(ctx, "token", certs.Token{Domain: "b.example.com", KeyAuth: "token.thumbprint"}); err != nil {
		t.Fatal(err)
	}
	if err := peer.Store(ctx, "certificates/deeper/c.example.com.pem", []byte("c")); err != nil {
		t.Fatal(err)
	}
	expectKey(t, ch, "certificates/deeper/c.example.com.pem")

	if err := peer.Delete(ctx, "certificates/a.example.com.pem"); err != nil {
		t.Fatal(err)
	}
	expectKey(t, ch, "certificates/a.example.com.pem")

	// this node's own changes are sent too
	if err := s.Store(ctx, "certificates/d.example.com.pem", []byte("d")); err != nil {
		t.Fatal(err)
	}
	expectKey(t, ch, "certificates/d.example.com.pem")

	select {
	case key := <-ch:
		t.Errorf("the watch sent %q after the last change", key)
	case <-time.After(500 * time.Millisecond):
	}
}

func TestWatchSlowConsumer(t *testing.T) {
	c := cluster(t)
	cfg := fleet(t, c)
	s := open(t, cfg)
	peer := open(t, cfg)
	ctx := context.Background()
	ch := s.Watch(watchCtx(t), "certificates")
	made(t, ch)

	// nobody reads while more keys come than the watch holds
	store := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			if err := peer.Store(ctx, fmt.Sprintf("certificates/%d.example.com.pem", i), []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
	}
	store(0, watchBuffer)
	for deadline := time.Now().Add(10 * time.Second); len(ch) < watchBuffer; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d keys held after %d values stored, want %d", len(ch), watchBuffer, watchBuffer)
		}
	}
	stored := watchBuffer + 20
	store(watchBuffer, stored)
	time.Sleep(time.Second) // the watch hears of the last ones
	keys := 0
	for {
		key := next(t, ch, 5*time.Second)
		if key == "" {
			break
		}
		if want := fmt.Sprintf("certificates/%d.example.com.pem", keys); key != want {
			t.Fatalf("key %d: %q, want %q", keys, key, want)
		}
		keys++
	}
	if keys != watchBuffer {
		t.Errorf("%d keys before the \"\" that stands for the rest, want the %d the watch holds", keys, watchBuffer)
	}
	t.Logf("%d values stored without a reader: %d keys, then \"\"", stored, keys)

	// keys are sent again after it
	if err := peer.Delete(ctx, "certificates/0.example.com.pem"); err != nil {
		t.Fatal(err)
	}
	expectKey(t, ch, "certificates/0.example.com.pem")
}

func TestWatchQuorum(t *testing.T) {
	c := cluster(t)
	cfg := fleet(t, c)
	s := open(t, cfg)
	peer := open(t, cfg)
	ctx := context.Background()
	ch := s.Watch(watchCtx(t), "certificates")
	made(t, ch)
	if err := peer.Store(ctx, "certificates/a.example.com.pem", []byte("a")); err != nil {
		t.Fatal(err)
	}
	expectKey(t, ch, "certificates/a.example.com.pem")

	c.Stop(0)
	c.Stop(1)
	stopped := time.Now()
	if key := next(t, ch, 20*time.Second); key != "" {
		t.Fatalf("with 2 of 3 members stopped the watch sent %q, want \"\"", key)
	}
	t.Logf("with 2 of 3 members stopped the watch sent \"\" after %v", time.Since(stopped).Round(time.Millisecond))

	c.Start(0)
	c.Start(1)
	for i := range c.Members {
		c.WaitHealthy(i)
	}
	back := time.Now()
	if err := peer.Store(ctx, "certificates/b.example.com.pem", []byte("b")); err != nil {
		t.Fatal(err)
	}
	for {
		key := next(t, ch, 20*time.Second)
		if key == "certificates/b.example.com.pem" {
			break
		}
		if key != "" {
			t.Fatalf("the watch sent %q, want \"\" or the change made once the members are back", key)
		}
	}
	t.Logf("the members back, a change is seen %v after", time.Since(back).Round(time.Millisecond))
}

// watchGoroutines counts the goroutines of Watch and of the etcd
// client's watches.
func watchGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "etcdstorage.(*watch)") || strings.Contains(g, "client/v3.(*watchGRPCStream)") {
			count++
		}
	}
	return count
}

// waitGoroutines waits up to 5 s until watchGoroutines is want.
func waitGoroutines(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for watchGoroutines() != want {
		if time.Now().After(deadline) {
			t.Fatalf("%d watch goroutines after 5 s, want %d", watchGoroutines(), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestWatchEndsWithCtx(t *testing.T) {
	c := cluster(t)
	cfg := fleet(t, c)
	s := open(t, cfg)
	waitGoroutines(t, 0)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	certsCh := s.Watch(ctx, "certificates")
	renewCh := s.Watch(ctx, "acme/renew")
	made(t, certsCh)
	made(t, renewCh)
	if n := watchGoroutines(); n < 3 {
		t.Fatalf("%d watch goroutines while 2 watches run: the count misses them", n)
	}

	cancel()
	for name, ch := range map[string]<-chan string{"certificates": certsCh, "acme/renew": renewCh} {
		select {
		case key, ok := <-ch:
			if ok {
				t.Errorf("watch of %s: sent %q after its ctx ended, want the channel closed", name, key)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("watch of %s: the channel is not closed 5 s after its ctx ended", name)
		}
	}
	waitGoroutines(t, 0)

	if _, ok := <-s.Watch(ctx, "../certificates"); ok {
		t.Error("a watch of a prefix that is not a key sent something")
	}

	// closing the Storage ends its watches too
	closed, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ch := closed.Watch(context.Background(), "certificates")
	made(t, ch)
	if err := closed.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case key, ok := <-ch:
		if ok {
			t.Errorf("sent %q after the Storage was closed, want the channel closed", key)
		}
	case <-time.After(5 * time.Second):
		t.Error("the channel is not closed 5 s after the Storage was closed")
	}
	waitGoroutines(t, 0)
}

func TestPing(t *testing.T) {
	c := cluster(t)
	cfg := fleet(t, c)
	s := open(t, cfg)
	ctx := context.Background()
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("ping of a healthy cluster: %v", err)
	}

	c.Stop(0)
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("ping with 1 of 3 members stopped: %v", err)
	}
	c.Stop(1)
	start := time.Now()
	err := s.Ping(ctx)
	took := time.Since(start)
	if err == nil {
		t.Fatal("ping with 2 of 3 members stopped succeeded")
	}
	if took > cfg.RequestTimeout+time.Second {
		t.Errorf("ping with 2 of 3 members stopped failed after %v, beyond its bound %v", took, cfg.RequestTimeout)
	}
	for _, e := range c.Endpoints() {
		if !strings.Contains(err.Error(), e) {
			t.Errorf("the error does not name endpoint %s: %v", e, err)
		}
	}
	t.Logf("ping with 2 of 3 members stopped: failed after %v: %v", took.Round(time.Millisecond), err)

	c.Start(0)
	c.Start(1)
	for i := range c.Members {
		c.WaitHealthy(i)
	}
	if err := s.Ping(ctx); err != nil {
		t.Errorf("ping once the members are back: %v", err)
	}
}

// resumeAt runs a Watch of certificates as one made again after a break
// would: from revision rev.
func resumeAt(t *testing.T, s *Storage, rev int64) <-chan string {
	w := &watch{s: s, under: s.values + "certificates/", out: make(chan string, watchBuffer), next: rev}
	go w.run(watchCtx(t))
	return w.out
}

func TestWatchResumes(t *testing.T) {
	c := cluster(t)
	s := open(t, fleet(t, c))
	ctx := context.Background()
	for _, key := range []string{"certificates/a.example.com.pem", "certificates/b.example.com.pem"} {
		if err := s.Store(ctx, key, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := rawClient(t, c).Get(ctx, s.values+"certificates/a.example.com.pem")
	if err != nil {
		t.Fatal(err)
	}
	seen := resp.Kvs[0].ModRevision

	// made again after the change of revision seen: the changes after
	// it are sent
	ch := resumeAt(t, s, seen+1)
	made(t, ch)
	expectKey(t, ch, "certificates/b.example.com.pem")

	// once that revision is compacted: "" and the changes from the
	// current revision on
	if err := s.Store(ctx, "acme/state.json", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	resp, err = rawClient(t, c).Get(ctx, s.values+"acme/state.json")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rawClient(t, c).Compact(ctx, resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	ch = resumeAt(t, s, seen+1)
	if key := next(t, ch, 10*time.Second); key != "" {
		t.Fatalf("a watch from a compacted revision sent %q, want \"\"", key)
	}
	// the "" of the break, then the one of the watch made again (or one
	// for both), nothing else
	for deadline, quiet := time.Now().Add(10*time.Second), false; !quiet; {
		if time.Now().After(deadline) {
			t.Fatal("a watch from a compacted revision still breaks after 10 s")
		}
		select {
		case key := <-ch:
			if key != "" {
				t.Fatalf("a watch from a compacted revision sent %q, want \"\"", key)
			}
		case <-time.After(time.Second):
			quiet = true
		}
	}
	if err := s.Store(ctx, "certificates/c.example.com.pem", []byte("x")); err != nil {
		t.Fatal(err)
	}
	expectKey(t, ch, "certificates/c.example.com.pem")
}
