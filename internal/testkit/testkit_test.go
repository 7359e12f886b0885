package testkit

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// TestFreePortReserved: a port is handed out once, below the ephemeral
// range, and stays reserved against every other process (whose flock on
// its lock file fails, as a second open file's does here) while this one
// runs.
func TestFreePortReserved(t *testing.T) {
	lo, hi := portRange()
	seen := map[int]bool{}
	for range 50 {
		p := FreePort(t)
		if p < lo || p >= hi {
			t.Errorf("port %d outside %d-%d", p, lo, hi)
		}
		if seen[p] {
			t.Errorf("port %d handed out twice", p)
		}
		seen[p] = true
		f, err := os.Open(filepath.Join(portLocks, strconv.Itoa(p)))
		if err != nil {
			t.Fatal(err)
		}
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		f.Close()
		if err == nil {
			t.Errorf("port %d: its lock file could be locked again", p)
		}
	}
}
