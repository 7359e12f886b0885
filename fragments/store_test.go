package fragments

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"haproxy-config/assemble"
	"haproxy-config/statedir"
)

func newStore(t *testing.T) *Store {
	t.Helper()
	root := t.TempDir()
	return &Store{Dir: filepath.Join(root, "fragments"), StateDir: filepath.Join(root, "state")}
}

func mustParse(t *testing.T, name, conf, mapData string) *assemble.Fragment {
	t.Helper()
	f, ps := Parse(name, name+".cfg", []byte(conf), name+".map", []byte(mapData), Policy{})
	if len(ps) != 0 {
		t.Fatalf("Parse(%s): %v", name, ps)
	}
	return f
}

func writeRaw(t *testing.T, dir, file, data string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, file), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestStoreWriteRead(t *testing.T) {
	s := newStore(t)
	f := mustParse(t, "shop", "backend shop\r\n    server s1 10.0.0.1:80", "Shop.Example.com shop")
	if err := s.Write(f, nil); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if got, want := dirNames(t, s.Dir), []string{"shop.cfg", "shop.map"}; !reflect.DeepEqual(got, want) {
		t.Errorf("directory holds %q, want %q (no temp files)", got, want)
	}
	st, err := s.Read("shop")
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	conf, hostMap := s.Paths("shop")
	if conf != filepath.Join(s.Dir, "shop.cfg") || hostMap != filepath.Join(s.Dir, "shop.map") {
		t.Errorf("Paths = %q %q", conf, hostMap)
	}
	if st.Name != "shop" || st.ConfPath != conf || st.MapPath != hostMap {
		t.Errorf("Read = %+v", st)
	}
	if string(st.Conf) != "backend shop\n    server s1 10.0.0.1:80\n" || string(st.Map) != "shop.example.com shop\n" {
		t.Errorf("Read content = %q / %q", st.Conf, st.Map)
	}
	if st.ModTime.IsZero() {
		t.Errorf("ModTime not set")
	}
	// What was stored parses back to the same fragment.
	g, ps := st.Parse(Policy{})
	if len(ps) != 0 || g.Checksum != f.Checksum || g.ConfFile != conf || g.MapFile != hostMap {
		t.Errorf("stored fragment parses to %+v, %v; want checksum %s", g, ps, f.Checksum)
	}

	// Overwriting replaces both parts, still without leftovers.
	f2 := mustParse(t, "shop", "backend shop\n", "")
	if err := s.Write(f2, nil); err != nil {
		t.Fatalf("second Write: %v", err)
	}
	st, err = s.Read("shop")
	if err != nil || string(st.Conf) != "backend shop\n" || string(st.Map) != "" || st.MapPath != hostMap {
		t.Errorf("Read after overwrite = %+v, %v", st, err)
	}
	if got, want := dirNames(t, s.Dir), []string{"shop.cfg", "shop.map"}; !reflect.DeepEqual(got, want) {
		t.Errorf("directory holds %q after overwrite, want %q", got, want)
	}

	if err := s.Write(&assemble.Fragment{Name: "../evil"}, nil); err == nil {
		t.Errorf("Write of an invalid name succeeded")
	}
}

func TestStoreReadErrors(t *testing.T) {
	s := newStore(t)
	if _, err := s.Read("nosuch"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Read of a missing store = %v, want ErrNotFound", err)
	}
	writeRaw(t, s.Dir, "other.cfg", "backend other\n")
	_, err := s.Read("nosuch")
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("Read(nosuch) = %v, want ErrNotFound", err)
	}
	if err != nil && err.Error() != `fragment "nosuch": no such fragment` {
		t.Errorf("Read(nosuch) error text = %q", err)
	}
	for _, name := range []string{"../other", "Other", "other.cfg", ""} {
		if _, err := s.Read(name); err == nil || errors.Is(err, ErrNotFound) {
			t.Errorf("Read(%q) = %v, want a name error", name, err)
		}
	}
}

func TestStoreReadAll(t *testing.T) {
	s := newStore(t)

	// A missing directory is an empty store.
	all, ps, err := s.ReadAll()
	if all != nil || ps != nil || err != nil {
		t.Errorf("ReadAll of a missing directory = %v, %v, %v", all, ps, err)
	}

	files := map[string]string{
		"zeta.cfg":       "backend zeta\n",
		"zeta.map":       "zeta.example.com zeta\n",
		"alpha.cfg":      "backend alpha\n",
		"maponly.map":    "m.example.com base_backend\n",
		"m-1.cfg":        "backend m1\n",
		".hidden.cfg":    "x",
		"x.cfg~":         "x",
		"x.cfg.bak":      "x",
		".x.cfg.swp":     "x",
		"README":         "x",
		"x.cfg.dpkg-old": "x",
		"x.cfg.orig":     "x",
		"x.txt":          "x",
		".shop.cfg12345": "x", // a renameio temp file
		"Bad_Name.cfg":   "x",
		"bad..name.map":  "x",
		"x.map.cfg":      "x",
	}
	for file, data := range files {
		writeRaw(t, s.Dir, file, data)
	}
	if err := os.Mkdir(filepath.Join(s.Dir, "dir.cfg"), 0o755); err != nil {
		t.Fatal(err)
	}

	all, ps, err = s.ReadAll()
	if err != nil {
		t.Fatalf("ReadAll: %v", err)
	}
	type got struct{ Name, ConfPath, MapPath, Conf, Map string }
	var gots []got
	for _, st := range all {
		gots = append(gots, got{st.Name, st.ConfPath, st.MapPath, string(st.Conf), string(st.Map)})
		if st.ModTime.IsZero() {
			t.Errorf("%s: ModTime not set", st.Name)
		}
	}
	p := func(f string) string { return filepath.Join(s.Dir, f) }
	want := []got{
		{"alpha", p("alpha.cfg"), "", "backend alpha\n", ""},
		{"m-1", p("m-1.cfg"), "", "backend m1\n", ""},
		{"maponly", "", p("maponly.map"), "", "m.example.com base_backend\n"},
		{"zeta", p("zeta.cfg"), p("zeta.map"), "backend zeta\n", "zeta.example.com zeta\n"},
	}
	if !reflect.DeepEqual(gots, want) {
		t.Errorf("ReadAll =\n%+v\nwant\n%+v", gots, want)
	}
	// Invalid names come in directory order (sorted by file name), then
	// the files that were refused, the directory named like a fragment too.
	wantPs := []where{
		{"Bad_Name", p("Bad_Name.cfg"), 0, `fragment name "Bad_Name" is invalid: use 1 to 64 of a-z 0-9 . _ - starting with a letter or digit`},
		{"bad..name", p("bad..name.map"), 0, `fragment name "bad..name" is invalid: it contains ".."`},
		{"x.map", p("x.map.cfg"), 0, `fragment name "x.map" is invalid: leave out the .cfg/.map suffix`},
		{"dir", p("dir.cfg"), 0, "read fragment " + p("dir.cfg") + ": is a directory, not a regular file"},
	}
	if got := wheres(ps); !reflect.DeepEqual(got, wantPs) {
		t.Errorf("ReadAll problems =\n%+v\nwant\n%+v", got, wantPs)
	}

	// A map-only fragment parses (its conf part is empty).
	for _, st := range all {
		if st.Name != "maponly" {
			continue
		}
		f, ps := st.Parse(Policy{})
		if len(ps) != 0 || f.ConfFile != "" || f.MapFile != p("maponly.map") || len(f.Map) != 1 {
			t.Errorf("maponly parses to %+v, %v", f, ps)
		}
	}
}

func TestIgnored(t *testing.T) {
	for file, want := range map[string]bool{
		"a.cfg": false, "a.map": false, "a.b.cfg": false,
		".a.cfg": true, "a.cfg~": true, "a.cfg.bak": true, ".a.cfg.swp": true, "a.cfg.swo": true,
		"a.cfg.dpkg-old": true, "a.cfg.dpkg-new": true, "a.cfg.ucf-dist": true, "a.map.tmp": true,
		"README": true, "a.conf": true, "a.cfgx": true, "": true,
	} {
		if got := Ignored(file); got != want {
			t.Errorf("Ignored(%q) = %v, want %v", file, got, want)
		}
	}
}

func TestStoreDelete(t *testing.T) {
	s := newStore(t)
	if err := s.Write(mustParse(t, "shop", "backend shop\n", "shop.example.com shop\n"), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(mustParse(t, "keep", "backend keep\n", ""), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("shop", nil); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if got, want := dirNames(t, s.Dir), []string{"keep.cfg", "keep.map"}; !reflect.DeepEqual(got, want) {
		t.Errorf("after Delete the directory holds %q, want %q", got, want)
	}
	if _, err := s.Read("shop"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Read after Delete = %v, want ErrNotFound", err)
	}
	err := s.Delete("shop", nil)
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete = %v, want ErrNotFound", err)
	}
	if err := s.Delete("never-there", nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("Delete(never-there) = %v, want ErrNotFound", err)
	}
	if err := s.Delete("../keep", nil); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("Delete(../keep) = %v, want a name error", err)
	}

	// One part alone is deleted too.
	writeRaw(t, s.Dir, "half.map", "h.example.com keep\n")
	if err := s.Delete("half", nil); err != nil {
		t.Errorf("Delete of a map-only fragment: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.Dir, "half.map")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("half.map still there: %v", err)
	}
}

func TestStoreHistory(t *testing.T) {
	s := newStore(t)
	if events, err := s.History(); events != nil || err != nil {
		t.Errorf("History without a file = %v, %v", events, err)
	}
	if err := os.MkdirAll(s.StateDir, 0o750); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	want := []Event{
		{Time: t0, Action: "apply", Name: "shop", Checksum: "sha256:ab", Actor: "alice"},
		{Time: t0.Add(time.Minute), Action: "remove", Name: "shop", Actor: "bob (sudo by carol)"},
	}
	for _, e := range want {
		if err := s.Record(e); err != nil {
			t.Fatalf("Record: %v", err)
		}
	}
	got, err := s.History()
	if err != nil {
		t.Fatalf("History: %v", err)
	}
	if !eventsEqual(got, want) {
		t.Errorf("History = %+v, want %+v", got, want)
	}

	// A crash mid-write leaves a torn last line: History skips it.
	path := statedir.Layout(s.StateDir).History()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"time":"2024-05-06T07:10:00Z","action":"app`); err != nil {
		t.Fatal(err)
	}
	f.Close()
	got, err = s.History()
	if err != nil || !eventsEqual(got, want) {
		t.Errorf("History with a torn last line = %+v, %v; want %+v", got, err, want)
	}

	// The next event after the crash is not lost with the torn line.
	next := Event{Time: t0.Add(2 * time.Minute), Action: "apply", Name: "blog", Checksum: "sha256:cd", Actor: "dave"}
	if err := s.Record(next); err != nil {
		t.Fatal(err)
	}
	got, err = s.History()
	if want := append(slices.Clone(want), next); err != nil || !eventsEqual(got, want) {
		t.Errorf("History after recording past a torn line = %+v, %v; want %+v", got, err, want)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if data[len(data)-1] != '\n' {
		t.Errorf("history does not end in a newline")
	}
}

func TestStoreTrimHistory(t *testing.T) {
	s := newStore(t)
	if err := os.MkdirAll(s.StateDir, 0o750); err != nil {
		t.Fatal(err)
	}
	path := statedir.Layout(s.StateDir).History()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	enc := json.NewEncoder(f)
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	const n = historyKeep + 7
	for i := 0; i < n; i++ {
		if err := enc.Encode(Event{Time: t0.Add(time.Duration(i) * time.Second), Action: "apply", Name: "f", Actor: "a"}); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	if err := s.trimHistory(path); err != nil {
		t.Fatalf("trimHistory: %v", err)
	}
	events, err := s.History()
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != historyKeep {
		t.Fatalf("kept %d events, want %d", len(events), historyKeep)
	}
	if !events[0].Time.Equal(t0.Add(7*time.Second)) || !events[len(events)-1].Time.Equal(t0.Add((n-1)*time.Second)) {
		t.Errorf("kept %v .. %v, want the newest", events[0].Time, events[len(events)-1].Time)
	}
	if got := dirNames(t, s.StateDir); !reflect.DeepEqual(got, []string{statedir.History}) {
		t.Errorf("state directory holds %q", got)
	}
}

func eventsEqual(a, b []Event) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if !x.Time.Equal(y.Time) || x.Action != y.Action || x.Name != y.Name || x.Checksum != y.Checksum || x.Actor != y.Actor {
			return false
		}
	}
	return true
}

func TestStoreLock(t *testing.T) {
	s := newStore(t)
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatalf("first Lock: %v", err)
	}
	if _, err := os.Stat(statedir.Layout(s.StateDir).StoreLock()); err != nil {
		t.Errorf("lock file: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	start := time.Now()
	unlock2, err := s.Lock(ctx)
	cancel()
	if err == nil {
		unlock2()
		t.Fatalf("second Lock succeeded while the first is held")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second Lock error = %v, want context.DeadlineExceeded", err)
	}
	if waited := time.Since(start); waited < 40*time.Millisecond {
		t.Errorf("second Lock gave up after %v, before its deadline", waited)
	}

	unlock()
	ctx, cancel = context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	unlock3, err := s.Lock(ctx)
	if err != nil {
		t.Fatalf("Lock after release: %v", err)
	}

	// A waiter gets the lock as soon as it is released.
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		u, err := s.Lock(ctx)
		if err == nil {
			u()
		}
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("waiter got the lock while it was held: %v", err)
	case <-time.After(30 * time.Millisecond):
	}
	unlock3()
	if err := <-done; err != nil {
		t.Errorf("waiter: %v", err)
	}
}

func TestStoreLockCanceled(t *testing.T) {
	s := newStore(t)
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Lock(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Lock with a canceled context = %v, want context.Canceled", err)
	}
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "out.cfg")
	for _, data := range []string{"first\n", "second, longer\n", ""} {
		if err := WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatalf("WriteFile: %v", err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != data {
			t.Errorf("read back %q, %v; want %q", got, err, data)
		}
		if names := dirNames(t, dir); !reflect.DeepEqual(names, []string{"out.cfg"}) {
			t.Errorf("directory holds %q, want only out.cfg", names)
		}
	}
	if err := WriteFile(filepath.Join(dir, "missing", "x"), []byte("x"), 0o600); err == nil {
		t.Errorf("WriteFile into a missing directory succeeded")
	}
}

func TestStoreReadAllUnreadablePart(t *testing.T) {
	s := newStore(t)
	if err := s.Write(mustParse(t, "good", "backend good\n", "good.example.com good\n"), nil); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc", filepath.Join(s.Dir, "etc.cfg")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(s.Dir, "missing"), filepath.Join(s.Dir, "ghost.map")); err != nil {
		t.Fatal(err)
	}
	stored, ps, err := s.ReadAll()
	if err != nil {
		t.Fatalf("one unreadable file failed the whole store: %v", err)
	}
	if len(stored) != 1 || stored[0].Name != "good" {
		t.Fatalf("stored = %v, want only good (no etc, no ghost)", stored)
	}
	// Symlinks are refused, a dangling one too.
	if len(ps) != 2 || ps[0].Fragment != "etc" || !strings.HasSuffix(ps[0].File, "etc.cfg") ||
		ps[1].Fragment != "ghost" || !strings.HasSuffix(ps[1].File, "ghost.map") {
		t.Fatalf("problems = %v, want one for etc.cfg and one for ghost.map", ps)
	}
}

// guard is how long a store read may take before the test calls it blocked.
const guard = 10 * time.Second

// within returns f's result, failing the test if f has not returned within
// guard: opening a FIFO without O_NONBLOCK blocks until a writer comes.
func within[T any](t *testing.T, what string, f func() T) T {
	t.Helper()
	done := make(chan T, 1)
	go func() { done <- f() }()
	var v T
	select {
	case v = <-done:
	case <-time.After(guard):
		t.Fatalf("%s still blocked after %v", what, guard)
	}
	return v
}

// storeWithGood returns a store holding the good fragment y.
func storeWithGood(t *testing.T) *Store {
	t.Helper()
	s := newStore(t)
	if err := s.Write(mustParse(t, "y", "backend y\n", "y.example.com y\n"), nil); err != nil {
		t.Fatal(err)
	}
	return s
}

// secretFile writes a file outside the store only its owner can read, as
// /etc/shadow is, and returns its path.
func secretFile(t *testing.T, secret string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "shadow")
	if err := os.WriteFile(path, []byte("root:"+secret+":19000:0:99999:7:::\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// expectRefused checks that the store file (fragment name's part) is
// refused with "read fragment PATH: why": ReadAll reports it as a problem
// at the file and keeps fragment name out, while y is still read; Read(name)
// fails the same way. Neither may show secret, when given.
func expectRefused(t *testing.T, s *Store, name, file, why, secret string) {
	t.Helper()
	path := filepath.Join(s.Dir, file)
	want := "read fragment " + path + ": " + why
	type result struct {
		stored []*Stored
		ps     assemble.Problems
		err    error
	}
	r := within(t, "ReadAll", func() result {
		stored, ps, err := s.ReadAll()
		return result{stored, ps, err}
	})
	if r.err != nil {
		t.Fatalf("ReadAll failed the whole store: %v", r.err)
	}
	var names []string
	for _, st := range r.stored {
		names = append(names, st.Name)
	}
	if !reflect.DeepEqual(names, []string{"y"}) {
		t.Errorf("ReadAll returned %q, want only y", names)
	}
	if len(r.ps) != 1 || r.ps[0].Fragment != name || r.ps[0].File != path || r.ps[0].Line != 0 || r.ps[0].Msg != want {
		t.Errorf("ReadAll problems = %v, want one for fragment %q at %s: %q", r.ps, name, path, want)
	}
	err := within(t, "Read", func() error { _, err := s.Read(name); return err })
	if err == nil || err.Error() != want {
		t.Errorf("Read(%s) = %v, want %q", name, err, want)
	}
	if secret != "" {
		for _, msg := range []string{r.ps.Error(), fmt.Sprint(err)} {
			if strings.Contains(msg, secret) {
				t.Errorf("a message shows the refused file's content: %q", msg)
			}
		}
	}
	if st, err := s.Read("y"); err != nil || string(st.Conf) != "backend y\n" {
		t.Errorf("Read(y) = %+v, %v", st, err)
	}
}

func TestStoreReadFIFO(t *testing.T) {
	s := storeWithGood(t)
	if err := syscall.Mkfifo(filepath.Join(s.Dir, "x.cfg"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A FIFO with a name that is not a fragment's is not even opened.
	if err := syscall.Mkfifo(filepath.Join(s.Dir, "x.cfg~"), 0o644); err != nil {
		t.Fatal(err)
	}
	expectRefused(t, s, "x", "x.cfg", "is a named pipe (FIFO), not a regular file", "")
}

func TestStoreReadSymlink(t *testing.T) {
	s := storeWithGood(t)
	const secret = "$6$SECRET-HASH"
	if err := os.Symlink(secretFile(t, secret), filepath.Join(s.Dir, "leak.cfg")); err != nil {
		t.Fatal(err)
	}
	expectRefused(t, s, "leak", "leak.cfg", "is a symbolic link; copy the file instead of linking it", secret)
}

func TestStoreReadHardLink(t *testing.T) {
	s := storeWithGood(t)
	const secret = "$6$SECRET-HASH"
	if err := os.Link(secretFile(t, secret), filepath.Join(s.Dir, "leak.map")); err != nil {
		t.Fatal(err)
	}
	expectRefused(t, s, "leak", "leak.map", "has 2 hard links; copy the file instead of linking it", secret)
}

func TestStoreReadDirectory(t *testing.T) {
	s := storeWithGood(t)
	if err := os.Mkdir(filepath.Join(s.Dir, "z.cfg"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The readable map part does not bring fragment z in without its config part.
	writeRaw(t, s.Dir, "z.map", "z.example.com y\n")
	// Directories that are not named like fragments stay ignored.
	for _, dir := range []string{".git", "old", "z.cfg.orig"} {
		if err := os.Mkdir(filepath.Join(s.Dir, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	expectRefused(t, s, "z", "z.cfg", "is a directory, not a regular file", "")
}

func TestStoreReadSocket(t *testing.T) {
	s := storeWithGood(t)
	path := filepath.Join(s.Dir, "sock.cfg")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Skipf("SKIPPED: cannot create a unix socket at %s to test refusing one: %v", path, err)
	}
	defer l.Close()
	expectRefused(t, s, "sock", "sock.cfg", "is a socket, not a regular file", "")
}

func TestStoreReadDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: creating device nodes needs root; run the tests as root to cover refusing devices")
	}
	for _, tc := range []struct {
		name       string
		mode       uint32
		major, min uint32
		why        string
	}{
		{"char", syscall.S_IFCHR, 1, 3, "is a character device, not a regular file"}, // as /dev/null
		{"block", syscall.S_IFBLK, 7, 0, "is a block device, not a regular file"},    // as /dev/loop0
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := storeWithGood(t)
			path := filepath.Join(s.Dir, "dev.cfg")
			if err := syscall.Mknod(path, tc.mode|0o600, int(unix.Mkdev(tc.major, tc.min))); err != nil {
				t.Skipf("SKIPPED: mknod %s as root failed (no CAP_MKNOD here?), device refusal untested: %v", path, err)
			}
			expectRefused(t, s, "dev", "dev.cfg", tc.why, "")
		})
	}
}

func TestStoreReadOverMaxBytes(t *testing.T) {
	s := storeWithGood(t)
	s.MaxBytes = 262144
	path := filepath.Join(s.Dir, "big.cfg")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	// Sparse: 1 GiB long, next to nothing on disk.
	const size = 1 << 30
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	expectRefused(t, s, "big", "big.cfg", "file is 1073741824 bytes, over the limit of 262144", "")
	runtime.ReadMemStats(&after)
	// Reading even a part of the file would allocate far more than this.
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
		t.Errorf("refusing a %d-byte file allocated %d bytes", size, grew)
	}

	// The limit itself is allowed, one byte more is not.
	if err := os.Truncate(path, s.MaxBytes); err != nil {
		t.Fatal(err)
	}
	if st, err := s.Read("big"); err != nil || len(st.Conf) != int(s.MaxBytes) {
		t.Errorf("Read of a file at the limit = %d bytes, %v", len(st.Conf), err)
	}
	if err := os.Truncate(path, s.MaxBytes+1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Read("big"); err == nil || !strings.Contains(err.Error(), "file is 262145 bytes, over the limit of 262144") {
		t.Errorf("Read of a file one byte over the limit = %v", err)
	}
}

// growing is a file that grows to 1 MiB while it is read; it counts what
// was read of it.
type growing struct{ read int64 }

func (g *growing) Read(p []byte) (int, error) {
	n := min(int64(len(p)), 1<<20-g.read)
	if n == 0 {
		return 0, io.EOF
	}
	for i := range n {
		p[i] = 'x'
	}
	g.read += n
	return int(n), nil
}

func TestReadAtMost(t *testing.T) {
	for _, tc := range []struct {
		name     string
		data     string
		size     int64 // as fstat said before reading
		maxBytes int64
	}{
		{"as expected", "backend a\n", 10, 100},
		{"grew within the limit", "backend a\nbackend b\n", 10, 20},
		{"shrank", "back", 10, 100},
		{"no limit", "backend a\nbackend b\n", 10, 0},
	} {
		got, err := readAtMost(strings.NewReader(tc.data), tc.size, tc.maxBytes)
		if err != nil || string(got) != tc.data {
			t.Errorf("%s: readAtMost = %q, %v; want %q", tc.name, got, err, tc.data)
		}
		// the whole store is kept in memory: no read buffer's slack with it
		if int64(len(got)) <= tc.size && int64(cap(got)) > tc.size+1 {
			t.Errorf("%s: %d bytes read into a buffer of %d", tc.name, len(got), cap(got))
		}
	}

	// A file growing past the limit while read is refused, and read no
	// further than one byte past it.
	r := &growing{}
	got, err := readAtMost(r, 10, 64)
	if got != nil || err == nil || err.Error() != "file grew past the limit of 64 bytes while being read" {
		t.Errorf("readAtMost of a growing file = %q, %v", got, err)
	}
	if r.read > 65 {
		t.Errorf("read %d bytes of a growing file, want at most 65", r.read)
	}
}

func TestStoreWriteModes(t *testing.T) {
	s := newStore(t)
	if err := s.Write(mustParse(t, "shop", "backend shop\n", "shop.example.com shop\n"), nil); err != nil {
		t.Fatal(err)
	}
	umask := syscall.Umask(0)
	syscall.Umask(umask)
	for path, want := range map[string]fs.FileMode{
		s.Dir:                            fs.ModeDir | 0o750&^fs.FileMode(umask),
		filepath.Join(s.Dir, "shop.cfg"): 0o640,
		filepath.Join(s.Dir, "shop.map"): 0o640,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s has mode %v, want %v", path, fi.Mode(), want)
		}
	}
}

// TestFileCache: with a cache, ReadAll opens again only what changed, and
// never trusts a file changed within racyWindow of its read.
func TestFileCache(t *testing.T) {
	s := newStore(t)
	s.Files = NewFileCache()
	for _, name := range []string{"a", "b", "c"} {
		if err := s.Write(mustParse(t, name, "backend "+name+"\n", name+".example.com "+name+"\n"), nil); err != nil {
			t.Fatal(err)
		}
	}
	readConf := func(name string) string {
		t.Helper()
		all, ps, err := s.ReadAll()
		if err != nil || len(ps) > 0 {
			t.Fatal(err, ps)
		}
		for _, st := range all {
			if st.Name == name {
				return string(st.Conf)
			}
		}
		return ""
	}
	// mark marks what the cache holds: a cache hit returns the mark
	mark := func(age time.Duration) {
		s.Files.mu.Lock()
		defer s.Files.mu.Unlock()
		for path, cp := range s.Files.m {
			cp.readAt = cp.readAt.Add(age)
			cp.data = []byte("cached " + filepath.Base(path))
			s.Files.m[path] = cp
		}
	}
	readConf("a")
	mark(0)
	if got := readConf("a"); got != "backend a\n" {
		t.Errorf("a file changed just before it was read was trusted: %q", got)
	}
	mark(2 * racyWindow)
	if got := readConf("a"); got != "cached a.cfg" {
		t.Errorf("an unchanged file was read again: %q", got)
	}
	// the same size, written in place: other times
	if err := os.WriteFile(filepath.Join(s.Dir, "b.cfg"), []byte("backend B\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := readConf("b"); got != "backend B\n" {
		t.Errorf("a file written in place came from the cache: %q", got)
	}
	// replaced by rename, as Write and Ansible do: another inode
	if err := s.Write(mustParse(t, "c", "backend C\n", "c.example.com C\n"), nil); err != nil {
		t.Fatal(err)
	}
	if got := readConf("c"); got != "backend C\n" {
		t.Errorf("a replaced file came from the cache: %q", got)
	}
	if err := s.Delete("a", nil); err != nil {
		t.Fatal(err)
	}
	readConf("b")
	s.Files.mu.Lock()
	_, kept := s.Files.m[filepath.Join(s.Dir, "a.cfg")]
	s.Files.mu.Unlock()
	if kept {
		t.Error("the cache keeps a removed file")
	}
}

// TestFileCacheSharedBytesStayPrivate: the daemon's two engines share one
// FileCache, so the bytes a cache hit hands out are handed to both. What
// one does with its fragment (Normalize appends the missing last newline)
// must not write into memory the other holds.
func TestFileCacheSharedBytesStayPrivate(t *testing.T) {
	loop := newStore(t)
	loop.Files = NewFileCache()
	api := &Store{Dir: loop.Dir, StateDir: loop.StateDir, Files: loop.Files}
	writeRaw(t, loop.Dir, "a.cfg", "backend a") // no last newline
	writeRaw(t, loop.Dir, "a.map", "a.example.com a")
	if _, _, err := loop.ReadAll(); err != nil {
		t.Fatal(err)
	}
	loop.Files.mu.Lock()
	for path, cp := range loop.Files.m { // read long after its last change
		cp.readAt = cp.readAt.Add(2 * racyWindow)
		loop.Files.m[path] = cp
	}
	loop.Files.mu.Unlock()
	readA := func(s *Store) *Stored {
		t.Helper()
		all, ps, err := s.ReadAll()
		if err != nil || len(ps) > 0 || len(all) != 1 {
			t.Fatal(all, ps, err)
		}
		return all[0]
	}
	a, b := readA(loop), readA(api)
	if &a.Conf[0] != &b.Conf[0] {
		t.Fatal("the second read did not come from the cache")
	}
	var wg sync.WaitGroup
	for _, st := range []*Stored{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, ps := st.Parse(Policy{}); len(ps) > 0 {
				t.Error(ps)
			}
		}()
	}
	wg.Wait()
	mine := append(a.Conf, '#')
	if n := len(b.Conf); cap(b.Conf) > n && b.Conf[:n+1][n] == mine[n] {
		t.Errorf("appending to one reader's bytes wrote into the other's (cap %d, len %d)", cap(b.Conf), n)
	}
}

// TestWriteFiles: every file is replaced with its data and mode, in
// several directories; a rename that fails leaves no hidden file behind.
func TestWriteFiles(t *testing.T) {
	root := t.TempDir()
	a, b := filepath.Join(root, "a"), filepath.Join(root, "b")
	for _, dir := range []string{a, b} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(a, "one"), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	files := []TxnWrite{
		{Path: filepath.Join(a, "one"), Data: []byte("1"), Perm: 0o640},
		{Path: filepath.Join(a, "two"), Data: []byte("2"), Perm: 0o640},
		{Path: filepath.Join(b, "three"), Data: []byte("3"), Perm: 0o600},
	}
	if err := WriteFiles(files); err != nil {
		t.Fatal(err)
	}
	for _, w := range files {
		data, err := os.ReadFile(w.Path)
		if err != nil || string(data) != string(w.Data) {
			t.Errorf("%s: %q %v, want %q", w.Path, data, err, w.Data)
		}
		if fi, err := os.Stat(w.Path); err != nil || fi.Mode().Perm() != w.Perm {
			t.Errorf("%s: mode %v %v, want %v", w.Path, fi.Mode().Perm(), err, w.Perm)
		}
	}
	if err := os.Mkdir(filepath.Join(b, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b, "dir", "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFiles([]TxnWrite{{Path: filepath.Join(b, "four"), Data: []byte("4"), Perm: 0o640}, {Path: filepath.Join(b, "dir"), Data: []byte("5"), Perm: 0o640}}); err == nil {
		t.Fatal("a file renamed over a directory that is not empty")
	}
	assertNoStaged(t, b)
}
