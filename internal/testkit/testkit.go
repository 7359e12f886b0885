// Package testkit holds the helpers the tests of every package share:
// loopback ports, finding haproxy, directories the check user can reach,
// and processes started and stopped by their PID.
package testkit

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// FreePort returns a loopback port, free for TCP and UDP a moment ago,
// that no other test process on this machine is handed while this one
// runs. It is taken below the kernel's ephemeral range, so that no
// outgoing connection takes it before the test's server binds it, and
// reserved by an flock on a file named after it, which the kernel
// releases when the process ends however it ends.
func FreePort(tb testing.TB) int {
	tb.Helper()
	ports.mu.Lock()
	defer ports.mu.Unlock()
	shared := os.MkdirAll(portLocks, 0o777|os.ModeSticky) == nil
	if shared {
		// past the umask: every user's tests share it, and the sticky bit
		// keeps one user from removing another's lock files
		_ = os.Chmod(portLocks, 0o777|os.ModeSticky)
	}
	lo, hi := portRange()
	for range 1000 {
		port := lo + rand.IntN(hi-lo)
		if _, mine := ports.held[port]; mine {
			continue
		}
		if !shared {
			// no lock directory: the bind check alone
			if bindable(port) {
				ports.held[port] = nil
				return port
			}
			continue
		}
		f, err := lockFile(filepath.Join(portLocks, strconv.Itoa(port)))
		if err != nil {
			continue // another user's file this one may not open: taken
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil || !bindable(port) {
			f.Close()
			continue
		}
		ports.held[port] = f // held, and locked, until the process ends
		return port
	}
	tb.Fatalf("find a free port: none free in %d-%d after 1000 tries", lo, hi)
	return 0
}

// portLocks holds a lock file for each port FreePort handed out.
var portLocks = filepath.Join(os.TempDir(), "haproxy-config-test-ports")

// ports are the ports this process holds, with their lock files (nil
// without the lock directory).
var ports = struct {
	mu   sync.Mutex
	held map[int]*os.File
}{held: map[int]*os.File{}}

// lockFile opens a port's lock file read-only, which is enough for an
// flock, so that the file another user made serves this one too; a new
// one is made readable by all, past the umask.
func lockFile(name string) (*os.File, error) {
	f, err := os.Open(name)
	if !errors.Is(err, fs.ErrNotExist) {
		return f, err
	}
	f, err = os.OpenFile(name, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrExist) {
		return os.Open(name) // made by another process meanwhile
	}
	if err == nil {
		_ = f.Chmod(0o644)
	}
	return f, err
}

// portRange is where FreePort picks: from 10000 up to the start of the
// ephemeral range (net.ipv4.ip_local_port_range), or 32768 when that
// cannot be read.
func portRange() (lo, hi int) {
	lo, hi = 10000, 32768
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	if f := strings.Fields(string(data)); len(f) == 2 {
		if n, err := strconv.Atoi(f[0]); err == nil && n > lo+1000 {
			hi = n
		}
	}
	return lo, hi
}

// bindable tells whether port is free on 127.0.0.1 for TCP and for UDP.
func bindable(port int) bool {
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// FreeAddr is FreePort as a "127.0.0.1:PORT" address.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	return fmt.Sprintf("127.0.0.1:%d", FreePort(tb))
}

// HaproxyBinary finds haproxy the way the CLI does: PATH, then /usr/sbin.
func HaproxyBinary() (string, error) { return findBinary("haproxy", "/usr/sbin/haproxy") }

// RequireHaproxy returns haproxy's path, or skips a test that cannot run
// without it.
func RequireHaproxy(tb testing.TB) string {
	tb.Helper()
	return require(tb, HaproxyBinary, "haproxy", "")
}

// findBinary looks name up in PATH, then at the path a Debian package
// installs it to.
func findBinary(name, debian string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return exec.LookPath(debian)
}

// require returns what find finds, or skips the test with a loud reason:
// name is not installed, and tests/install-deps.sh installs it (from the
// Debian package pkg, when that is another name).
func require(tb testing.TB, find func() (string, error), name, pkg string) string {
	tb.Helper()
	p, err := find()
	if err != nil {
		from := ""
		if pkg != "" {
			from = " (Debian's " + pkg + ")"
		}
		tb.Skipf("SKIPPING: %s not installed: run tests/install-deps.sh%s (%v)", name, from, err)
	}
	return p
}

// OpenTempDir is a temporary directory that haproxy -c, which runs as the
// unprivileged check user when the tests run as root, can reach.
func OpenTempDir(tb testing.TB) string {
	tb.Helper()
	dir := tb.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			tb.Fatalf("open %s to the check user: %v", d, err)
		}
	}
	return dir
}

// CountingHaproxy writes into dir (one OpenTempDir gave, so that the check
// user may run it) a wrapper in front of haproxy that counts every
// haproxy -c, and returns the wrapper's path and a function counting the
// runs so far. It skips the test without haproxy.
func CountingHaproxy(tb testing.TB, dir string) (wrapper string, checks func() int) {
	tb.Helper()
	real := RequireHaproxy(tb)
	count := filepath.Join(dir, "haproxy-checks")
	wrapper = filepath.Join(dir, "haproxy-counting")
	script := fmt.Sprintf("#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = -c ] && echo >>%s; done\nexec %s \"$@\"\n", count, real)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.Chmod(wrapper, 0o755); err != nil { // whatever the umask
		tb.Fatal(err)
	}
	if err := os.WriteFile(count, nil, 0o666); err != nil {
		tb.Fatal(err)
	}
	if err := os.Chmod(count, 0o666); err != nil { // the check user appends too
		tb.Fatal(err)
	}
	return wrapper, func() int {
		tb.Helper()
		data, err := os.ReadFile(count)
		if err != nil {
			tb.Fatal(err)
		}
		return len(data)
	}
}

// StartProc starts a helper process with its output in logFile and makes
// the test stop it (SIGTERM, then SIGKILL) by its PID.
func StartProc(tb testing.TB, logFile string, env []string, bin string, args ...string) *exec.Cmd {
	tb.Helper()
	out, err := os.Create(logFile)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		tb.Fatalf("start %s: %v", bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		out.Close()
		close(exited)
	}()
	tb.Cleanup(func() { stopProc(cmd, exited) })
	return cmd
}

// stopProc stops a process by its PID, SIGTERM then SIGKILL, and waits
// for it; nothing when it has exited.
func stopProc(cmd *exec.Cmd, exited chan struct{}) {
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// KillGroup kills pid and its process group with SIGKILL: what a test does
// with a HAProxy master its code under test failed to stop.
func KillGroup(pid int) {
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = syscall.Kill(pid, syscall.SIGKILL)
}
