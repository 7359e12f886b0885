package reload

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeUnits plays systemd's D-Bus connection: it records each reload and
// reports result on the job channel, as go-systemd does from its own
// goroutine once the job finishes.
type fakeUnits struct {
	result string // job result to report; "" reports nothing
	err    error  // ReloadUnitContext fails with it
	queued func() // runs once the job is queued

	mu    sync.Mutex
	calls [][2]string // unit name and mode
}

func (f *fakeUnits) ReloadUnitContext(ctx context.Context, name, mode string, ch chan<- string) (int, error) {
	f.mu.Lock()
	f.calls = append(f.calls, [2]string{name, mode})
	n := len(f.calls)
	f.mu.Unlock()
	if f.err != nil {
		return 0, f.err
	}
	if f.queued != nil {
		f.queued()
	}
	if f.result != "" {
		go func() { ch <- f.result }()
	}
	return n, nil
}

func (f *fakeUnits) reloads() [][2]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][2]string(nil), f.calls...)
}

// systemdWith returns a Systemd strategy that connects to units and counts
// its connections.
func systemdWith(units UnitReloader, connects *int) *Systemd {
	return &Systemd{
		Unit: "haproxy.service",
		Connect: func(ctx context.Context) (UnitReloader, error) {
			*connects++
			return units, nil
		},
	}
}

func TestSystemdReloadDone(t *testing.T) {
	units := &fakeUnits{result: "done"}
	connects := 0
	if err := systemdWith(units, &connects).Reload(testContext(t, 5*time.Second)); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	got := units.reloads()
	if len(got) != 1 || got[0] != [2]string{"haproxy.service", "replace"} {
		t.Errorf("systemd reloads = %q, want one of haproxy.service in mode replace", got)
	}
}

func TestSystemdReloadJobFailed(t *testing.T) {
	for _, result := range []string{"failed", "timeout", "canceled", "dependency"} {
		t.Run(result, func(t *testing.T) {
			connects := 0
			err := systemdWith(&fakeUnits{result: result}, &connects).Reload(testContext(t, 5*time.Second))
			if err == nil {
				t.Fatalf("Reload with job result %q returned no error", result)
			}
			if !strings.Contains(err.Error(), "haproxy.service") || !strings.Contains(err.Error(), result) {
				t.Errorf("err = %v, want it to name the unit and the job result", err)
			}
		})
	}
}

func TestSystemdReloadUnitError(t *testing.T) {
	denied := errors.New("interactive authentication required")
	connects := 0
	err := systemdWith(&fakeUnits{err: denied}, &connects).Reload(testContext(t, 5*time.Second))
	if !errors.Is(err, denied) {
		t.Fatalf("err = %v, want it to wrap the D-Bus error", err)
	}
	if !strings.Contains(err.Error(), "haproxy.service") {
		t.Errorf("err = %v, want it to name the unit", err)
	}
}

func TestSystemdConnectError(t *testing.T) {
	noBus := errors.New("dial unix /run/systemd/private: connect: no such file or directory")
	units := &fakeUnits{result: "done"}
	connects := 0
	r := &Systemd{Unit: "haproxy.service", Connect: func(ctx context.Context) (UnitReloader, error) {
		connects++
		if connects == 1 {
			return nil, noBus
		}
		return units, nil
	}}
	ctx := testContext(t, 5*time.Second)
	err := r.Reload(ctx)
	if !errors.Is(err, noBus) || !strings.Contains(err.Error(), "connect to systemd") {
		t.Fatalf("err = %v, want the connection error", err)
	}
	if n := len(units.reloads()); n != 0 {
		t.Errorf("%d reloads asked without a connection", n)
	}
	// a failed connection is not kept: the next reload connects again
	if err := r.Reload(ctx); err != nil {
		t.Fatalf("Reload after a failed connection: %v", err)
	}
	if connects != 2 || len(units.reloads()) != 1 {
		t.Errorf("%d connections and %d reloads, want 2 and 1", connects, len(units.reloads()))
	}
}

func TestSystemdConnectsOnce(t *testing.T) {
	units := &fakeUnits{result: "done"}
	connects := 0
	r := systemdWith(units, &connects)
	ctx := testContext(t, 5*time.Second)
	for i := 0; i < 2; i++ {
		if err := r.Reload(ctx); err != nil {
			t.Fatalf("Reload %d: %v", i+1, err)
		}
	}
	if connects != 1 {
		t.Errorf("connected %d times for two reloads, want 1", connects)
	}
	if n := len(units.reloads()); n != 2 {
		t.Errorf("%d reload jobs, want 2", n)
	}
}

func TestSystemdCancelledBeforeResult(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// the job is queued, then the caller gives up before systemd reports
	units := &fakeUnits{queued: cancel}
	connects := 0
	err := systemdWith(units, &connects).Reload(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if !strings.Contains(err.Error(), "haproxy.service") {
		t.Errorf("err = %v, want it to name the unit", err)
	}
	if n := len(units.reloads()); n != 1 {
		t.Errorf("%d reload jobs, want 1", n)
	}
}

func TestCommandSucceeds(t *testing.T) {
	if err := (&Command{Line: "true"}).Reload(testContext(t, 5*time.Second)); err != nil {
		t.Errorf("Reload with true: %v", err)
	}
}

func TestCommandFails(t *testing.T) {
	err := (&Command{Line: "echo boom >&2; exit 3"}).Reload(testContext(t, 5*time.Second))
	if err == nil {
		t.Fatal("a command exiting 3 reloaded without error")
	}
	if !strings.Contains(err.Error(), "boom") {
		t.Errorf("err = %v, want the command's output in it", err)
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 3 {
		t.Errorf("err = %v, want exit status 3", err)
	}
}

func TestCommandRunsThroughShell(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "ran")
	// $0 is the shell running the line; the redirection needs a shell too
	line := `echo "$0" > '` + marker + `'`
	if err := (&Command{Line: line}).Reload(testContext(t, 5*time.Second)); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	got, err := os.ReadFile(marker)
	if err != nil {
		t.Fatalf("the command did not run: %v", err)
	}
	if strings.TrimSpace(string(got)) != "/bin/sh" {
		t.Errorf("the command ran under %q, want /bin/sh", strings.TrimSpace(string(got)))
	}
}

func TestCommandHonorsContext(t *testing.T) {
	start := time.Now()
	// not exec'd: the shell stays the parent of sleep, which must be killed too
	err := (&Command{Line: "sleep 30; true"}).Reload(testContext(t, 200*time.Millisecond))
	if err == nil {
		t.Fatal("a command outliving its context reloaded without error")
	}
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("Reload returned after %s, the context allowed 200ms", elapsed)
	}
}
