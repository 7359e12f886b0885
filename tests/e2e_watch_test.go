package tests

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"haproxy-config/internal/testkit"
)

// TestWatchApplyRemove drives the daemon through the CLI: apply --wait
// returns once the domain answers from the new backend, remove --wait once
// it is gone, with one verified reload each.
func TestWatchApplyRemove(t *testing.T) {
	in := newInstall(t)
	in.startDaemon(t)
	dir := t.TempDir()
	conf := writeFile(t, filepath.Join(dir, "shop.cfg"), backendConf("shop_web", "shop v1"))
	hosts := writeFile(t, filepath.Join(dir, "shop.map"), "shop.example.com shop_web\n")

	in.expectUnknown(t, "shop.example.com")
	out := mustRun(t, in.env, "", "apply", "--wait", "shop", conf, hosts)
	if !strings.HasSuffix(out, "live\n") {
		t.Errorf("apply --wait printed %q, want it to end with \"live\"", out)
	}
	in.expectBody(t, "shop.example.com", "shop v1")

	writeFile(t, conf, backendConf("shop_web", "shop v2"))
	mustRun(t, in.env, "", "apply", "--wait", "shop", conf, hosts)
	in.expectBody(t, "shop.example.com", "shop v2")

	mustRun(t, in.env, "", "remove", "--wait", "shop")
	in.expectUnknown(t, "shop.example.com")

	st := in.status(t)
	if st.Counts.Reloads != 3 || st.Counts.ReloadsFailed != 0 {
		t.Errorf("reloads: %+v, want 3 ok and none failed", st.Counts)
	}
	if st.Live == nil || st.Live.Fragments != 0 {
		t.Errorf("live: %+v, want a generation with no fragments", st.Live)
	}
}

// TestWatchCopiedFiles covers the Ansible path: files copied straight into
// the store (a temp file renamed into place, or written in place in
// several chunks) go live after the burst settles; deleting them removes
// the domain.
func TestWatchCopiedFiles(t *testing.T) {
	in := newInstall(t)
	in.startDaemon(t, "HAPROXY_CONFIG_WAIT_MIN=100ms")
	frag := in.fragmentsDir()

	// like Ansible's copy: a hidden temp file, then a rename
	tmp := writeFile(t, filepath.Join(frag, ".ansible_tmpabc.blog.cfg"), backendConf("blog_web", "blog"))
	if err := os.Rename(tmp, filepath.Join(frag, "blog.cfg")); err != nil {
		t.Fatal(err)
	}
	tmp = writeFile(t, filepath.Join(frag, ".ansible_tmpdef.blog.map"), "blog.example.org blog_web\n")
	if err := os.Rename(tmp, filepath.Join(frag, "blog.map")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "renamed-in fragment live", func() error {
		if code, body, err := in.get("blog.example.org", "/"); err != nil || body != "blog" {
			return fmt.Errorf("%d %q %v", code, body, err)
		}
		return nil
	})

	// like cp: the file is written in place, in chunks, with pauses
	// shorter than WAIT_MIN; a partial file must never go live
	f, err := os.Create(filepath.Join(frag, "wiki.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	full := backendConf("wiki_web", "wiki")
	for i := 0; i < len(full); i += 16 {
		if _, err := f.WriteString(full[i:min(i+16, len(full))]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.Close()
	writeFile(t, filepath.Join(frag, "wiki.map"), "wiki.example.org wiki_web\n")
	eventually(t, 10*time.Second, "written-in-place fragment live", func() error {
		if code, body, err := in.get("wiki.example.org", "/"); err != nil || body != "wiki" {
			return fmt.Errorf("%d %q %v", code, body, err)
		}
		return nil
	})
	if st := in.status(t); len(st.Quarantined) != 0 {
		t.Errorf("a partially written file was judged: quarantined %+v", st.Quarantined)
	}

	// editor leftovers are ignored
	writeFile(t, filepath.Join(frag, "wiki.cfg~"), "garbage\n")
	writeFile(t, filepath.Join(frag, ".wiki.cfg.swp"), "garbage\n")

	for _, name := range []string{"blog.cfg", "blog.map"} {
		if err := os.Remove(filepath.Join(frag, name)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "deleted fragment gone", func() error {
		if code, _, err := in.get("blog.example.org", "/"); err != nil || code != 404 {
			return fmt.Errorf("%d %v", code, err)
		}
		return nil
	})
	in.expectBody(t, "wiki.example.org", "wiki")
	if st := in.status(t); len(st.Quarantined) != 0 || len(st.Strays) != 0 {
		t.Errorf("editor leftovers were not ignored: quarantined %+v, strays %v", st.Quarantined, st.Strays)
	}
}

// TestWatchQuarantine copies a bad fragment straight into the store (one
// the policy passes and haproxy -c refuses): it is quarantined with
// haproxy's message at its own line, the others keep
// changing live, and fixing the file lets it go live by itself.
func TestWatchQuarantine(t *testing.T) {
	in := newInstall(t)
	metricsAddr := testkit.FreeAddr(t)
	in.startDaemon(t, "HAPROXY_CONFIG_WAIT_MIN=50ms", "HAPROXY_CONFIG_METRICS_ADDR="+metricsAddr)
	dir := t.TempDir()
	conf := writeFile(t, filepath.Join(dir, "good.cfg"), backendConf("good_web", "good v1"))
	hosts := writeFile(t, filepath.Join(dir, "good.map"), "good.example.com good_web\n")
	mustRun(t, in.env, "", "apply", "--wait", "good", conf, hosts)

	frag := in.fragmentsDir()
	writeFile(t, filepath.Join(frag, "bad.map"), "bad.example.com bad_web\n")
	writeFile(t, filepath.Join(frag, "bad.cfg"), "backend bad_web\n    hash-type bogus\n")
	eventually(t, 10*time.Second, "bad fragment quarantined", func() error {
		if q := in.status(t).Quarantine("bad"); q == nil {
			return errNotYet
		}
		return nil
	})
	q := in.status(t).Quarantine("bad")
	want := filepath.Join(frag, "bad.cfg") + `:2: fragment "bad": 'hash-type' only supports`
	if len(q.Errors) == 0 || !strings.HasPrefix(q.Errors[0], want) {
		t.Errorf("quarantine errors %q, want one starting %q", q.Errors, want)
	}
	in.expectUnknown(t, "bad.example.com")

	// the others still change live
	writeFile(t, conf, backendConf("good_web", "good v2"))
	mustRun(t, in.env, "", "apply", "--wait", "good", conf, hosts)
	in.expectBody(t, "good.example.com", "good v2")
	if data, err := os.ReadFile(filepath.Join(frag, "bad.cfg")); err != nil || string(data) != "backend bad_web\n    hash-type bogus\n" {
		t.Errorf("the quarantined file was touched: %q %v", data, err)
	}
	scraped := scrape(t, metricsAddr)
	for _, want := range []string{`haproxy_config_fragment_quarantined{fragment="bad"} 1`, `haproxy_config_reloads_total{result="ok"} 2`, "haproxy_config_last_reload_success 1"} {
		if !strings.Contains(scraped, want) {
			t.Errorf("metrics lack %q:\n%s", want, scraped)
		}
	}
	out, _, code := run(t, in.env, "", "status")
	if code != 0 || !strings.Contains(out, "quarantined: 1") || !strings.Contains(out, "only supports") {
		t.Errorf("status (exit %d) does not show the quarantined fragment:\n%s", code, out)
	}
	// list runs no haproxy -c, but shows what the daemon's does
	out = mustRun(t, in.env, "", "list")
	if !regexp.MustCompile(`(?m)^bad .*quarantined by the daemon: .*only supports`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^good .* ok$`).MatchString(out) {
		t.Errorf("list does not show bad quarantined and good ok:\n%s", out)
	}

	// fixed in place: it goes live by itself
	writeFile(t, filepath.Join(frag, "bad.cfg"), backendConf("bad_web", "fixed"))
	eventually(t, 10*time.Second, "fixed fragment live", func() error {
		if code, body, err := in.get("bad.example.com", "/"); err != nil || body != "fixed" {
			return fmt.Errorf("%d %q %v", code, body, err)
		}
		return nil
	})
	eventually(t, 5*time.Second, "quarantine cleared in the status", func() error {
		if q := in.status(t).Quarantined; len(q) != 0 {
			return fmt.Errorf("still quarantined: %+v", q)
		}
		return nil
	})
}

// TestWatchRefusedReload: a fragment that passes haproxy -c but cannot be
// loaded makes the reload fail; the daemon rolls back, the previous
// generation keeps answering, the fragment is quarantined with HAProxy's
// message, and apply --wait exits 4. Tenants cannot bind ports, so the
// fragment is one with more health-checked servers than the daemon's file
// limit (as its HAProxy inherits it) lets HAProxy check: haproxy -c does
// not count file descriptors, the reload does.
func TestWatchRefusedReload(t *testing.T) {
	in := newInstall(t)
	in.nofile = 256
	in.startDaemon(t)
	dir := t.TempDir()
	conf := writeFile(t, filepath.Join(dir, "good.cfg"), backendConf("good_web", "good"))
	hosts := writeFile(t, filepath.Join(dir, "good.map"), "good.example.com good_web\n")
	mustRun(t, in.env, "", "apply", "--wait", "good", conf, hosts)
	before := in.status(t).Live.Generation

	many := writeFile(t, filepath.Join(dir, "many.cfg"), "backend many_web\n    server-template s 1-400 192.0.2.1:80 check\n")
	empty := writeFile(t, filepath.Join(dir, "many.map"), "")
	stdout, stderr, code := run(t, in.env, "", "apply", "--wait", "many", many, empty)
	if code != 4 || !strings.Contains(stderr, "Cannot raise FD limit") || !strings.Contains(stderr, `"many"`) {
		t.Errorf("apply --wait of an unloadable fragment: exit %d, want 4 with HAProxy's file limit error naming many\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	in.expectBody(t, "good.example.com", "good")
	st := in.status(t)
	if st.Counts.ReloadsFailed != 1 || st.Counts.Rollbacks != 1 || st.LastReload == nil || st.LastReload.OK {
		t.Errorf("counts %+v, last reload %+v: want one failed reload and one rollback", st.Counts, st.LastReload)
	}
	if st.Live == nil || st.Live.Generation <= before || st.Quarantine("many") == nil {
		t.Errorf("live %+v (before: generation %d), quarantined %+v: want a newer generation without many", st.Live, before, st.Quarantined)
	}
	if out := mustRun(t, in.env, "", "list"); !regexp.MustCompile(`(?m)^many .*quarantined by the daemon: .*Cannot raise FD limit`).MatchString(out) {
		t.Errorf("list does not show many quarantined by the daemon:\n%s", out)
	}
	// HAProxy itself never stopped serving the previous generation
	if st.HAProxy == nil || len(st.HAProxy.Workers) != 1 || st.HAProxy.Failed != 1 {
		t.Errorf("haproxy processes %+v: want one worker and one failed reload", st.HAProxy)
	}
	// the others still go live afterwards
	writeFile(t, conf, backendConf("good_web", "good v2"))
	mustRun(t, in.env, "", "apply", "--wait", "good", conf, hosts)
	in.expectBody(t, "good.example.com", "good v2")
}

// TestWatchRollback: rollback holds an older generation live while later
// changes stay pending; resume serves the stored fragments again.
func TestWatchRollback(t *testing.T) {
	in := newInstall(t)
	in.startDaemon(t)
	dir := t.TempDir()
	conf := writeFile(t, filepath.Join(dir, "shop.cfg"), backendConf("shop_web", "v1"))
	hosts := writeFile(t, filepath.Join(dir, "shop.map"), "shop.example.com shop_web\n")
	mustRun(t, in.env, "", "apply", "--wait", "shop", conf, hosts)
	v1 := in.status(t).Live.Generation
	writeFile(t, conf, backendConf("shop_web", "v2"))
	mustRun(t, in.env, "", "apply", "--wait", "shop", conf, hosts)
	in.expectBody(t, "shop.example.com", "v2")

	out := mustRun(t, in.env, "", "rollback", "--wait")
	if !strings.Contains(out, fmt.Sprintf("holding generation %d", v1)) {
		t.Errorf("rollback printed %q, want it to hold generation %d", out, v1)
	}
	in.expectBody(t, "shop.example.com", "v1")

	// a change while held is stored but does not go live
	writeFile(t, conf, backendConf("shop_web", "v3"))
	_, stderr, code := run(t, in.env, "", "apply", "--wait", "--timeout", "2s", "shop", conf, hosts)
	if code != 7 || !strings.Contains(stderr, "resume") {
		t.Errorf("apply --wait while held: exit %d, want 7 naming resume\n%s", code, stderr)
	}
	in.expectBody(t, "shop.example.com", "v1")
	hist := mustRun(t, in.env, "", "history")
	if !strings.Contains(hist, "held") {
		t.Errorf("history does not show the hold:\n%s", hist)
	}

	mustRun(t, in.env, "", "resume", "--wait")
	in.expectBody(t, "shop.example.com", "v3")
	if st := in.status(t); st.Held != nil {
		t.Errorf("still held after resume: %+v", st.Held)
	}
	_, _, code = run(t, in.env, "", "rollback", "999")
	if code != 6 {
		t.Errorf("rollback to a generation that does not exist: exit %d, want 6", code)
	}
}

// scrape reads the daemon's Prometheus metrics.
func scrape(t *testing.T, addr string) string {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape metrics: %d %v", resp.StatusCode, err)
	}
	return string(body)
}
