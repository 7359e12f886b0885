package fragments

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWatchedRefusedReplacementStaysRefused: a part replaced by something
// read refuses (a symlink, a hard-linked file, a file over MaxBytes) is
// reported, and reported again on the next read with no new event: the
// version cached before the replacement is not served in its place.
func TestWatchedRefusedReplacementStaysRefused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		replace func(t *testing.T, s *Store, path string)
		want    string
	}{
		{"symlink", func(t *testing.T, s *Store, path string) {
			target := filepath.Join(t.TempDir(), "target")
			if err := os.WriteFile(target, []byte("backend evil\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			tmp := filepath.Join(s.Dir, ".tmp-link")
			if err := os.Symlink(target, tmp); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}, "symbolic link"},
		{"hard link", func(t *testing.T, s *Store, path string) {
			src := filepath.Join(filepath.Dir(s.Dir), "linked")
			if err := os.WriteFile(src, []byte("backend linked\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			tmp := filepath.Join(s.Dir, ".tmp-link")
			if err := os.Link(src, tmp); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}, "hard links"},
		{"too big", func(t *testing.T, s *Store, path string) {
			tmp := filepath.Join(s.Dir, ".tmp-big")
			if err := os.WriteFile(tmp, []byte("backend "+strings.Repeat("x", 100)+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		}, "over the limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			s.MaxBytes = 64
			s.Files = NewFileCache()
			s.Files.Watch(s.Dir)
			writeRaw(t, s.Dir, "a.cfg", "backend a\n")
			if got := readConfs(t, s); got["a"] != "backend a\n" {
				t.Fatalf("first read: %v", got)
			}
			path := filepath.Join(s.Dir, "a.cfg")
			tc.replace(t, s, path)
			s.Files.Changed(path) // as the file watcher reports the rename
			for i := range 2 {
				all, ps, err := s.ReadAll()
				if err != nil {
					t.Fatal(err)
				}
				if len(ps) != 1 || !strings.Contains(ps[0].Msg, tc.want) {
					var served []string
					for _, st := range all {
						served = append(served, st.Name+"="+string(st.Conf))
					}
					t.Fatalf("read %d after the replacement: problems %v, served %q; want a.cfg refused (%s)", i+1, ps, served, tc.want)
				}
			}
		})
	}
}
