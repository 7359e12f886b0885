package fragments

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// crashAt stages a new version of fragment "shop", writes the journal, and
// performs only the first n renames, as a kill -9 in the middle would.
func crashAt(t *testing.T, s *Store, n int, record bool) {
	t.Helper()
	f := mustParse(t, "shop", "backend shop_v2\n", "shop.example.com shop_v2\n")
	ev := &Event{Time: time.Unix(1700000000, 0).UTC(), Action: "apply", Name: "shop", Checksum: f.Checksum, Actor: "test"}
	tx := &Txn{Event: ev}
	if err := tx.Stage(s.path("shop", true), f.Conf, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := tx.Stage(s.path("shop", false), f.MapText, 0o644); err != nil {
		t.Fatal(err)
	}
	plan, _ := json.Marshal(tx)
	if err := WriteFile(s.journalPath(), plan, 0o640); err != nil {
		t.Fatal(err)
	}
	for _, w := range tx.Writes[:n] {
		if err := os.Rename(w.Staged, w.Path); err != nil {
			t.Fatal(err)
		}
	}
	if record {
		if err := s.Record(*ev); err != nil {
			t.Fatal(err)
		}
	}
}

func TestJournalFinishesAnInterruptedWrite(t *testing.T) {
	for _, tc := range []struct {
		name    string
		renames int
		record  bool
	}{
		{"crash before any rename", 0, false},
		{"crash between the two parts", 1, false},
		{"crash after the history line, before clearing the journal", 2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			if err := s.Write(mustParse(t, "shop", "backend shop_web\n", "shop.example.com shop_web\n"), nil); err != nil {
				t.Fatal(err)
			}
			crashAt(t, s, tc.renames, tc.record)

			unlock, err := s.Lock(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer unlock()
			st, err := s.Read("shop")
			if err != nil {
				t.Fatal(err)
			}
			if string(st.Conf) != "backend shop_v2\n" || string(st.Map) != "shop.example.com shop_v2\n" {
				t.Fatalf("after recovery: conf %q map %q, want both parts of the new version", st.Conf, st.Map)
			}
			if _, err := os.Stat(s.journalPath()); !os.IsNotExist(err) {
				t.Errorf("journal still there after recovery: %v", err)
			}
			events, _ := s.History()
			if len(events) != 1 || events[0].Name != "shop" {
				t.Errorf("history = %+v, want the apply once", events)
			}
			assertNoStaged(t, s.Dir)
		})
	}
}

func TestUnjournaledStagingLeavesEverythingAsItWas(t *testing.T) {
	s := newStore(t)
	if err := s.Write(mustParse(t, "shop", "backend shop_web\n", "shop.example.com shop_web\n"), nil); err != nil {
		t.Fatal(err)
	}
	tx := &Txn{}
	if err := tx.Stage(s.path("shop", true), []byte("backend half\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// crash here: staged, no journal
	unlock, err := s.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	st, err := s.Read("shop")
	if err != nil || string(st.Conf) != "backend shop_web\n" {
		t.Fatalf("old version not intact: %q %v", st.Conf, err)
	}
	assertNoStaged(t, s.Dir)
}

func assertNoStaged(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), stagedMark) {
			t.Errorf("staged file left behind: %s", filepath.Join(dir, e.Name()))
		}
	}
}
