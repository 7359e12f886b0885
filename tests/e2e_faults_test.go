package tests

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"haproxy-config/internal/testkit"
	"haproxy-config/watcher"
)

func (in *install) liveMap() string { return filepath.Join(in.stateDir(), "live/hosts.map") }

// liveFiles reads the live config and map.
func (in *install) liveFiles(t *testing.T) (cfg, hostMap string) {
	t.Helper()
	c, err := os.ReadFile(in.liveConfig())
	if err != nil {
		t.Fatalf("read the live config: %v", err)
	}
	m, err := os.ReadFile(in.liveMap())
	if err != nil {
		t.Fatalf("read the live map: %v", err)
	}
	return string(c), string(m)
}

// generations lists the kept generations' directories.
func (in *install) generations(t *testing.T) string {
	t.Helper()
	entries, err := os.ReadDir(in.state().Generations())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return strings.Join(names, " ")
}

// TestAssembleRefusals: assemble with the fragment directory moved away,
// or during a hold, exits 5 and leaves the live config and map byte for
// byte as they were (no daemon runs: the engine itself refuses).
func TestAssembleRefusals(t *testing.T) {
	testkit.RequireHaproxy(t)
	in := newInstall(t)
	dir := t.TempDir()
	for _, name := range []string{"one", "two"} {
		conf := writeFile(t, filepath.Join(dir, name+".cfg"), backendConf(name+"_web", name))
		hosts := writeFile(t, filepath.Join(dir, name+".map"), name+".example.com "+name+"_web\n")
		mustRun(t, in.env, "", "apply", name, conf, hosts)
	}
	mustRun(t, in.env, "", "assemble")
	cfg, hostMap := in.liveFiles(t)
	gens := in.generations(t)

	refused := func(t *testing.T, why string) {
		t.Helper()
		stdout, stderr, code := run(t, in.env, "", "assemble")
		if code != 5 || !strings.Contains(stderr, why) {
			t.Errorf("assemble: exit %d, want 5 saying %q\nstdout:\n%s\nstderr:\n%s", code, why, stdout, stderr)
		}
		if c, m := in.liveFiles(t); c != cfg || m != hostMap {
			t.Errorf("the live files changed:\nconfig:\n%s\nmap:\n%s", c, m)
		}
		if got := in.generations(t); got != gens {
			t.Errorf("generations kept: %s, want %s", got, gens)
		}
	}

	t.Run("fragment directory moved away", func(t *testing.T) {
		away := in.fragmentsDir() + ".old"
		if err := os.Rename(in.fragmentsDir(), away); err != nil {
			t.Fatal(err)
		}
		refused(t, in.fragmentsDir()+" cannot be read, so nothing is published and the live configuration stays as it is")
		if err := os.Rename(away, in.fragmentsDir()); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("fragment directory replaced by a file", func(t *testing.T) {
		away := in.fragmentsDir() + ".old"
		if err := os.Rename(in.fragmentsDir(), away); err != nil {
			t.Fatal(err)
		}
		writeFile(t, in.fragmentsDir(), "not a directory\n")
		refused(t, "not a directory")
		if err := os.Remove(in.fragmentsDir()); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(away, in.fragmentsDir()); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("during a hold", func(t *testing.T) {
		mustRun(t, in.env, "", "rollback", "1")
		// a change the hold leaves pending
		if err := os.Remove(filepath.Join(in.fragmentsDir(), "two.cfg")); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(in.fragmentsDir(), "two.map")); err != nil {
			t.Fatal(err)
		}
		refused(t, "generation 1 is held (a rollback by")
		mustRun(t, in.env, "", "resume")
		out := mustRun(t, in.env, "", "assemble")
		if !strings.Contains(out, "generation 2 written") || !strings.Contains(out, "1 fragment live") {
			t.Errorf("assemble after resume printed %q, want generation 2 with one fragment", out)
		}
	})
}

// killPID sends sig to pid and waits until it is gone.
func killPID(t *testing.T, pid int, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(pid, sig); err != nil {
		t.Fatalf("kill %d: %v", pid, err)
	}
	eventually(t, 10*time.Second, fmt.Sprintf("pid %d gone", pid), func() error {
		if cmdlineOf(pid) != "" {
			return errNotYet
		}
		return nil
	})
}

// servingAgain waits until the daemon reports generation gen verified
// after a restart, with a master and workers other than the killed ones
// that run.
func (in *install) servingAgain(t *testing.T, gen int, dead ...int) *watcher.Status {
	t.Helper()
	var st *watcher.Status
	eventually(t, 30*time.Second, "haproxy restarted and the generation verified", func() error {
		st = in.status(t)
		switch {
		case st.Counts.Restarts < 1:
			return fmt.Errorf("no restart yet")
		case st.Live == nil || st.Live.Generation != gen:
			return fmt.Errorf("live %+v, want generation %d", st.Live, gen)
		case st.HAProxy == nil || len(st.HAProxy.Workers) == 0:
			return fmt.Errorf("haproxy processes %+v", st.HAProxy)
		}
		for _, pid := range append([]int{st.HAProxy.Master.PID}, st.HAProxy.Workers[0].PID) {
			for _, d := range dead {
				if pid == d {
					return fmt.Errorf("status still shows the killed pid %d", pid)
				}
			}
			if !runsUnder(in.root, pid) {
				return fmt.Errorf("status shows pid %d, which does not run", pid)
			}
		}
		return nil
	})
	return st
}

// TestRestartAfterWorkerKilled: a killed worker makes the master exit; the
// daemon restarts HAProxy, which serves again, and the status shows the
// verified generation and the new processes at once, not after the next
// change. The apply takes the only reload token for a minute: a restart
// needs none, and its verification must not wait for one.
func TestRestartAfterWorkerKilled(t *testing.T) {
	in := newInstall(t)
	in.startDaemon(t, "HAPROXY_CONFIG_RELOAD_BURST=1", "HAPROXY_CONFIG_RELOAD_INTERVAL=1m")
	dir := t.TempDir()
	conf := writeFile(t, filepath.Join(dir, "shop.cfg"), backendConf("shop_web", "shop"))
	hosts := writeFile(t, filepath.Join(dir, "shop.map"), "shop.example.com shop_web\n")
	mustRun(t, in.env, "", "apply", "--wait", "shop", conf, hosts)
	st := in.status(t)
	gen, master, worker := st.Live.Generation, st.HAProxy.Master.PID, st.HAProxy.Workers[0].PID

	killPID(t, worker, syscall.SIGKILL)
	st = in.servingAgain(t, gen, master, worker)
	in.expectBody(t, "shop.example.com", "shop")
	if st.Counts.Restarts != 1 {
		t.Errorf("restarts %d, want 1", st.Counts.Restarts)
	}
	out, _, code := run(t, in.env, "", "status")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("live:        generation %d", gen)) {
		t.Errorf("status (exit %d) does not show generation %d live:\n%s", code, gen, out)
	}
}

// TestRestartAfterLiveDirectoryDeleted: the live directory deleted, then
// the master killed: the daemon writes the live files of the generation
// it served again before restarting HAProxy, which serves again, and a new
// change goes live.
func TestRestartAfterLiveDirectoryDeleted(t *testing.T) {
	in := newInstall(t)
	in.startDaemon(t)
	dir := t.TempDir()
	conf := writeFile(t, filepath.Join(dir, "shop.cfg"), backendConf("shop_web", "shop"))
	hosts := writeFile(t, filepath.Join(dir, "shop.map"), "shop.example.com shop_web\n")
	mustRun(t, in.env, "", "apply", "--wait", "shop", conf, hosts)
	st := in.status(t)
	gen, master := st.Live.Generation, st.HAProxy.Master.PID
	cfg, hostMap := in.liveFiles(t)

	// the daemon may still be writing next to the live files (a pass
	// after the apply's own): RemoveAll fails while a file appears in
	// the directory it empties
	eventually(t, 5*time.Second, "the live directory deleted", func() error {
		return os.RemoveAll(filepath.Dir(in.liveConfig()))
	})
	killPID(t, master, syscall.SIGKILL)
	in.servingAgain(t, gen, master)
	in.expectBody(t, "shop.example.com", "shop")
	if c, m := in.liveFiles(t); c != cfg || m != hostMap {
		t.Errorf("the live files written again differ from generation %d's:\nconfig:\n%s\nmap:\n%s", gen, c, m)
	}

	writeFile(t, conf, backendConf("shop_web", "shop v2"))
	mustRun(t, in.env, "", "apply", "--wait", "shop", conf, hosts)
	in.expectBody(t, "shop.example.com", "shop v2")
}

// TestWatchStoreMovedAway: the daemon, through the same engine rule as
// assemble, does not publish a fragment directory moved away as an empty
// store; it says so in the status and picks the store up once it is back.
func TestWatchStoreMovedAway(t *testing.T) {
	in := newInstall(t)
	in.startDaemon(t, "HAPROXY_CONFIG_WAIT_MIN=50ms")
	dir := t.TempDir()
	conf := writeFile(t, filepath.Join(dir, "shop.cfg"), backendConf("shop_web", "shop"))
	hosts := writeFile(t, filepath.Join(dir, "shop.map"), "shop.example.com shop_web\n")
	mustRun(t, in.env, "", "apply", "--wait", "shop", conf, hosts)
	gen := in.status(t).Live.Generation
	cfg, hostMap := in.liveFiles(t)

	away := in.fragmentsDir() + ".old"
	if err := os.Rename(in.fragmentsDir(), away); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the missing store reported", func() error {
		if b := in.status(t).Behind; b == nil || !strings.Contains(b.Reason, "cannot be read, so nothing is published") {
			return fmt.Errorf("behind: %+v", b)
		}
		return nil
	})
	in.expectBody(t, "shop.example.com", "shop")
	if c, m := in.liveFiles(t); c != cfg || m != hostMap {
		t.Errorf("the live files changed while the store was away:\n%s\n%s", c, m)
	}
	if st := in.status(t); st.Live == nil || st.Live.Generation != gen {
		t.Errorf("live %+v, want generation %d still", st.Live, gen)
	}
	if err := os.Rename(away, in.fragmentsDir()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the store back", func() error {
		if b := in.status(t).Behind; b != nil {
			return fmt.Errorf("behind: %+v", b)
		}
		return nil
	})
	in.expectBody(t, "shop.example.com", "shop")
}

// TestStatusOfAStoppedDaemon: status prints the last report of a daemon
// that no longer runs and exits 5 (environment), as documented.
func TestStatusOfAStoppedDaemon(t *testing.T) {
	in := newInstall(t)
	in.startDaemon(t).stop(t)
	stdout, stderr, code := run(t, in.env, "", "status")
	if code != 5 || !strings.Contains(stdout, "daemon:      not running") || !strings.Contains(stderr, "no haproxy-config watch daemon is running") {
		t.Errorf("status after the daemon stopped: exit %d, want 5 with its last report\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}

// TestCheckCountsStrays: a misnamed file in the fragment directory makes
// check and assemble exit 4, and their summaries say why.
func TestCheckCountsStrays(t *testing.T) {
	testkit.RequireHaproxy(t)
	in := newInstall(t)
	dir := t.TempDir()
	conf := writeFile(t, filepath.Join(dir, "shop.cfg"), backendConf("shop_web", "shop"))
	hosts := writeFile(t, filepath.Join(dir, "shop.map"), "shop.example.com shop_web\n")
	mustRun(t, in.env, "", "apply", "shop", conf, hosts)
	stray := writeFile(t, filepath.Join(in.fragmentsDir(), "my shop.cfg"), backendConf("other_web", "other"))
	for _, tc := range []struct{ cmd, summary string }{
		{"check", "1 fragment valid, 0 rejected, 1 stray file\n"},
		{"assemble", "(1 fragment live, 0 rejected, 1 stray file)\n"},
	} {
		stdout, stderr, code := run(t, in.env, "", tc.cmd)
		if code != 4 || !strings.HasSuffix(stdout, tc.summary) || !strings.Contains(stderr, stray) {
			t.Errorf("%s with a stray file: exit %d, want 4, a summary ending %q and the file named\nstdout:\n%s\nstderr:\n%s", tc.cmd, code, tc.summary, stdout, stderr)
		}
	}
}

// fillDisk writes zeros to a file under dir until the file system is full
// and returns the file's path.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill the disk: %v", err)
			}
			break
		}
	}
	// a small tail may still fit in what a 64 KB write could not use
	for {
		if _, err := f.Write(chunk[:512]); err != nil {
			break
		}
	}
	return path
}

// TestDaemonStartedOnFullDisk: a daemon started while its state directory's
// file system is full cannot write its status; once space is freed it
// writes it without any change happening, so status sees it running and
// apply --wait returns once the change is live.
func TestDaemonStartedOnFullDisk(t *testing.T) {
	testkit.RequireHaproxy(t)
	if os.Geteuid() != 0 {
		t.Skip("SKIPPING: mounting the small file system that fills up needs root; run make test as root")
	}
	in := newInstall(t)
	// the whole installation on a 16 MB tmpfs of its own
	if err := syscall.Mount("tmpfs", in.root, "tmpfs", 0, "size=16m,mode=755"); err != nil {
		t.Fatalf("mount a tmpfs on %s: %v", in.root, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(in.root, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", in.root, err)
		}
	})
	dir := t.TempDir()
	conf := writeFile(t, filepath.Join(dir, "shop.cfg"), backendConf("shop_web", "shop"))
	hosts := writeFile(t, filepath.Join(dir, "shop.map"), "shop.example.com shop_web\n")
	mustRun(t, in.env, "", "apply", "shop", conf, hosts)
	mustRun(t, in.env, "", "assemble")

	filler := fillDisk(t, in.root)
	d := &daemon{in: in, exited: make(chan struct{}), log: filepath.Join(dir, "daemon.log")}
	logFile, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	d.cmd = exec.Command(binary, "watch")
	d.cmd.Env = childEnv(in.env)
	d.cmd.Stdout, d.cmd.Stderr = logFile, logFile
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = d.cmd.Wait()
		close(d.exited)
	}()
	t.Cleanup(func() { d.stop(t) })
	eventually(t, 30*time.Second, "the daemon serving on the full disk", func() error {
		select {
		case <-d.exited:
			t.Fatalf("watch exited on the full disk:\n%s", d.output())
		default:
		}
		if code, body, err := in.get("shop.example.com", "/"); err != nil || body != "shop" {
			return fmt.Errorf("%d %q %v", code, body, err)
		}
		if !strings.Contains(d.output(), "msg=ready") || !strings.Contains(d.output(), "write status") {
			return fmt.Errorf("not ready with a failed status write:\n%s", d.output())
		}
		return nil
	})
	if _, _, code := run(t, in.env, "", "status"); code != 5 {
		t.Errorf("status on the full disk: exit %d, want 5 (no report)", code)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "status sees the daemon once space is freed", func() error {
		out, stderr, code := run(t, in.env, "", "status")
		if code != 0 || !strings.Contains(out, "daemon:      ready (pid "+fmt.Sprint(d.pid())) {
			return fmt.Errorf("exit %d\n%s%s", code, out, stderr)
		}
		return nil
	})
	d.haproxy = in.haproxyPID()
	writeFile(t, conf, backendConf("shop_web", "shop v2"))
	mustRun(t, in.env, "", "apply", "--wait", "shop", conf, hosts)
	in.expectBody(t, "shop.example.com", "shop v2")
}
