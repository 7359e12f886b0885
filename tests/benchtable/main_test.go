package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sample = `goos: linux
goarch: amd64
pkg: haproxy-config/reconcile
BenchmarkAssemble/fragments=1000-2         	       5	   2000000 ns/op
BenchmarkHaproxyCheck/fragments=1000-2     	       5	  40000000 ns/op
BenchmarkHaproxyCheck/fragments=10-2       	       5	  10000000 ns/op
pkg: haproxy-config/tests
BenchmarkApplyToLive-2   	       1	 9000000000 ns/op	  130.0 apply-live-p50-ms	  1.50 ratio-p50
BenchmarkWriters/fragments=10000/map-only-2 	  1	 1 ns/op	  1200 changes/s	  180.5 burst-peak-rss-MB
PASS
`

func TestTable(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "bench.out")
	if err := os.WriteFile(in, []byte(sample), 0o644); err != nil {
		t.Fatal(err)
	}
	jsonPath := filepath.Join(dir, "bench.json")
	var out bytes.Buffer
	if err := run([]string{"-json", jsonPath, in}, &out); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rows []Row
	if err := json.Unmarshal(data, &rows); err != nil {
		t.Fatal(err)
	}
	got := map[string]Row{}
	for _, r := range rows {
		got[r.Benchmark+" "+r.Metric] = r
	}
	for key, want := range map[string]struct {
		value float64
		met   string // "" without a goal
	}{
		"AssembleVsCheck/fragments=1000 ratio":               {0.05, "met"},
		"ApplyToLive ratio-p50":                              {1.5, "missed"},
		"ApplyToLive apply-live-p50-ms":                      {130, ""},
		"Writers/fragments=10000/map-only changes/s":         {1200, "met"},
		"Writers/fragments=10000/map-only burst-peak-rss-MB": {180.5, "missed"},
	} {
		r, ok := got[key]
		if !ok {
			t.Errorf("no row %q in %v", key, rows)
			continue
		}
		met := ""
		if r.Met != nil {
			met = map[bool]string{true: "met", false: "missed"}[*r.Met]
		}
		if r.Value != want.value || met != want.met {
			t.Errorf("%s = %v (%s), want %v (%s)", key, r.Value, met, want.value, want.met)
		}
	}
	if _, ok := got["AssembleVsCheck/fragments=10 ratio"]; ok {
		t.Error("a ratio was derived for a size Assemble was not measured at")
	}
	if !strings.Contains(out.String(), "MISSED") || !strings.Contains(out.String(), "ns/op") {
		t.Errorf("the table shows no missed goal or no ns/op row:\n%s", out.String())
	}
}

func TestNoResults(t *testing.T) {
	in := filepath.Join(t.TempDir(), "bench.out")
	if err := os.WriteFile(in, []byte("PASS\nok  \thaproxy-config/tests\t1.0s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run([]string{in}, &bytes.Buffer{}); err == nil {
		t.Error("an input without results was accepted")
	}
}
