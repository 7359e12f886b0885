// Command benchtable turns the output of make bench's go test runs into
// one table: every metric each benchmark reported, side by side with the
// goal issues #12 and #13 set for it, and writes the same rows as JSON.
//
//	go run ./tests/benchtable -json bench.json bench.out...
//
// It exits 1 when the input holds no benchmark result or cannot be read;
// a missed goal is reported in the table, not by the exit code: the
// numbers are measured on shared machines and are read, not gated on.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"text/tabwriter"

	"golang.org/x/perf/benchfmt"
)

// Row is one measured value.
type Row struct {
	Benchmark string  `json:"benchmark"` // without Benchmark and the -GOMAXPROCS suffix
	Metric    string  `json:"metric"`
	Value     float64 `json:"value"`
	Goal      string  `json:"goal,omitempty"`
	Met       *bool   `json:"met,omitempty"` // nil without a goal
}

// Goal is a bound on one metric of the benchmarks whose name matches.
type Goal struct {
	Bench  *regexp.Regexp
	Metric string
	AtMost bool // else at least
	Bound  float64
}

func (g Goal) String() string {
	if g.AtMost {
		return fmt.Sprintf("≤ %g", g.Bound)
	}
	return fmt.Sprintf("≥ %g", g.Bound)
}

func (g Goal) met(v float64) bool {
	if g.AtMost {
		return v <= g.Bound
	}
	return v >= g.Bound
}

// Goals are issue #12's, per row of its table, and issue #13's. The assembly row is
// derived: Assemble's time over HaproxyCheck's at the same size.
var Goals = []Goal{
	{regexp.MustCompile(`^APIApply$`), "socket-map-only-p50-ms", true, 2},
	{regexp.MustCompile(`^MapOnlyChange\b`), "cli-p50-ms", true, 15},
	{regexp.MustCompile(`^ApplyToLive\b`), "ratio-p50", true, 1.2},
	{regexp.MustCompile(`^Writers/fragments=10000/config$`), "changes/s", false, 50},
	{regexp.MustCompile(`^Writers/fragments=10000/map-only$`), "changes/s", false, 1000},
	{regexp.MustCompile(`^Writers/fragments=10000/map-only/socket$`), "changes/s", false, 1000},
	{regexp.MustCompile(`^Writers/`), "answer-p99-ms", true, 1000},
	{regexp.MustCompile(`^Writers/fragments=10000/`), "idle-rss-MB", true, 150},
	{regexp.MustCompile(`^Writers/fragments=10000/`), "burst-peak-rss-MB", true, 150},
	{regexp.MustCompile(`^AssembleVsCheck/`), "ratio", true, 0.10},
	// issue #13: one order per domain, however many nodes
	{regexp.MustCompile(`^Fleet100/`), "orders", true, 100},
}

var gomaxprocs = regexp.MustCompile(`-\d+$`)

// Read collects every result in r.
func Read(r io.Reader, name string) ([]Row, error) {
	var rows []Row
	br := benchfmt.NewReader(r, name)
	for br.Scan() {
		switch rec := br.Result().(type) {
		case *benchfmt.Result:
			bench := gomaxprocs.ReplaceAllString(strings.TrimPrefix(rec.Name.String(), "Benchmark"), "")
			for _, v := range rec.Values {
				value, unit := v.Value, v.Unit
				if v.OrigUnit != "" {
					value, unit = v.OrigValue, v.OrigUnit
				}
				rows = append(rows, Row{Benchmark: bench, Metric: unit, Value: value})
			}
		case *benchfmt.SyntaxError:
			return nil, rec
		}
	}
	return rows, br.Err()
}

// Derive adds the rows computed from others: assembly's share of the
// time haproxy -c takes at each size both were measured at.
func Derive(rows []Row) []Row {
	perOp := func(bench string) (float64, bool) {
		for _, r := range rows {
			if r.Benchmark == bench && r.Metric == "ns/op" {
				return r.Value, true
			}
		}
		return 0, false
	}
	var derived []Row
	for _, r := range rows {
		size, ok := strings.CutPrefix(r.Benchmark, "Assemble/")
		if !ok || r.Metric != "ns/op" {
			continue
		}
		if check, ok := perOp("HaproxyCheck/" + size); ok && check > 0 {
			derived = append(derived, Row{Benchmark: "AssembleVsCheck/" + size, Metric: "ratio", Value: r.Value / check})
		}
	}
	return append(rows, derived...)
}

// Judge sets each row's goal and whether it was met.
func Judge(rows []Row, goals []Goal) {
	for i := range rows {
		for _, g := range goals {
			if g.Metric == rows[i].Metric && g.Bench.MatchString(rows[i].Benchmark) {
				met := g.met(rows[i].Value)
				rows[i].Goal, rows[i].Met = g.String(), &met
			}
		}
	}
}

// Print writes the table.
func Print(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "benchmark\tmetric\tvalue\tgoal\t")
	for _, r := range rows {
		verdict := ""
		switch {
		case r.Met == nil:
		case *r.Met:
			verdict = "met"
		default:
			verdict = "MISSED"
		}
		fmt.Fprintf(tw, "%s\t%s\t%.4g\t%s\t%s\n", r.Benchmark, r.Metric, r.Value, r.Goal, verdict)
	}
	return tw.Flush()
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("benchtable", flag.ContinueOnError)
	jsonPath := fs.String("json", "", "also write the rows as JSON to `FILE`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("name the files go test -bench wrote")
	}
	var rows []Row
	for _, path := range fs.Args() {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		got, err := Read(f, path)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		rows = append(rows, got...)
	}
	if len(rows) == 0 {
		return errors.New("no benchmark results in the input")
	}
	rows = Derive(rows)
	Judge(rows, Goals)
	if err := Print(stdout, rows); err != nil {
		return err
	}
	if *jsonPath == "" {
		return nil
	}
	data, err := json.MarshalIndent(rows, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(*jsonPath, append(data, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "rows written as JSON to", *jsonPath)
	return nil
}
