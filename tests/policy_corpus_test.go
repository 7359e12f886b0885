package tests

// The fragment policy corpus (tests/testdata/policy, see its README.md):
// hostile fragments that HAProxy 2.6 itself accepts, so that only the
// policy stands between a tenant and the attack, and ordinary fragments
// that must keep working. The tests here check the corpus against the
// real haproxy; the policy's own tests decide what it refuses.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"haproxy-config/assemble"
	"haproxy-config/certs"
	"haproxy-config/internal/testkit"
)

// policyCase is one corpus case: NNN-slug.cfg, with NNN-slug.map when the
// case has a map part.
type policyCase struct {
	File     string // NNN-slug, the case's file name without extension
	Fragment string // fragment name to check it under: "h" or "b" and NNN
	Attack   string // hostile: what the fragment would do if accepted
	Purpose  string // benign: what an ordinary tenant wants from it
	Refused  refusal
	Haproxy  string            // hostile: "valid", "invalid" or "hangs"
	Reason   string            // why haproxy -c does not pass the case (invalid, hangs)
	Env      []string          // NAME=value for the haproxy -c run
	Settings map[string]string // HAPROXY_CONFIG_* policy settings for the case
	Conf     []byte            // the config part: the whole .cfg, header comments included
	Map      []byte            // the map part, empty without a .map file
}

// refusal is where the policy must refuse a hostile case.
type refusal struct {
	Part string // "cfg" or "map"
	Line int    // 1-based line of that part
	Word string // what the error must mention
}

var (
	caseFileRE = regexp.MustCompile(`^([0-9]{3})-[a-z0-9]+(-[a-z0-9]+)*$`)
	headerRE   = regexp.MustCompile(`^# ([a-z]+): (.*\S)$`)
	headerKey  = regexp.MustCompile(`^# [a-z]+:`) // a header line, well-formed or not
	refusedRE  = regexp.MustCompile(`^(cfg|map) ([1-9][0-9]*) (\S+)$`)
	envRE      = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)
	settingRE  = regexp.MustCompile(`^HAPROXY_CONFIG_[A-Z0-9_]+=`)
)

// partLines splits a part into its lines; a final line feed ends the last
// line rather than starting another.
func partLines(data []byte) []string {
	if len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
}

// loadPolicyCorpus reads every case in dir ("hostile" or "benign" under
// tests/testdata/policy), numbered 001 up without gaps, and fails the test
// on a malformed header.
func loadPolicyCorpus(t *testing.T, dir string) []policyCase {
	t.Helper()
	hostile := filepath.Base(dir) == "hostile"
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("policy corpus: %v", err)
	}
	var cases []policyCase
	numbered := 0
	for _, e := range entries {
		name := e.Name()
		base, ok := strings.CutSuffix(name, ".cfg")
		if !ok {
			if stem, isMap := strings.CutSuffix(name, ".map"); !isMap || !fileExists(filepath.Join(dir, stem+".cfg")) {
				t.Errorf("policy corpus %s: stray file %s", dir, name)
			}
			continue
		}
		m := caseFileRE.FindStringSubmatch(base)
		if m == nil {
			t.Errorf("policy corpus %s: %s is not named NNN-slug.cfg", dir, name)
			continue
		}
		numbered++
		if want := fmt.Sprintf("%03d", numbered); m[1] != want {
			t.Fatalf("policy corpus %s: %s should be numbered %s", dir, name, want)
		}
		c := policyCase{File: base, Fragment: "b" + m[1], Settings: map[string]string{}}
		if hostile {
			c.Fragment = "h" + m[1]
		}
		if c.Conf, err = os.ReadFile(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
		if c.Map, err = os.ReadFile(filepath.Join(dir, base+".map")); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if err := c.parseHeader(hostile); err != nil {
			t.Errorf("policy corpus %s/%s: %v", dir, name, err)
			continue
		}
		cases = append(cases, c)
	}
	return cases
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// parseHeader reads the header: the leading lines of the config part
// that start "# key:". A comment after them belongs to the fragment.
func (c *policyCase) parseHeader(hostile bool) error {
	lines := partLines(c.Conf)
	seen := map[string]bool{}
	n := 0
	for ; n < len(lines) && headerKey.MatchString(lines[n]); n++ {
		m := headerRE.FindStringSubmatch(lines[n])
		if m == nil {
			return fmt.Errorf("line %d: header lines read \"# key: value\"", n+1)
		}
		key, value := m[1], m[2]
		if seen[key] && key != "env" && key != "settings" {
			return fmt.Errorf("line %d: second %q header", n+1, key)
		}
		seen[key] = true
		switch {
		case key == "attack" && hostile:
			c.Attack = value
		case key == "purpose" && !hostile:
			c.Purpose = value
		case key == "refused" && hostile:
			r := refusedRE.FindStringSubmatch(value)
			if r == nil {
				return fmt.Errorf("line %d: refused: want \"cfg|map LINE WORD\", got %q", n+1, value)
			}
			line, _ := strconv.Atoi(r[2])
			c.Refused = refusal{Part: r[1], Line: line, Word: r[3]}
		case key == "haproxy" && hostile:
			verdict, reason, _ := strings.Cut(value, " ")
			if verdict != "valid" && verdict != "invalid" && verdict != "hangs" || verdict == "valid" && reason != "" || verdict == "invalid" && reason == "" {
				return fmt.Errorf("line %d: haproxy: want \"valid\", \"invalid REASON\" or \"hangs\", got %q", n+1, value)
			}
			c.Haproxy, c.Reason = verdict, reason
		case key == "env":
			if !envRE.MatchString(value) {
				return fmt.Errorf("line %d: env: want NAME=value, got %q", n+1, value)
			}
			c.Env = append(c.Env, value)
		case key == "settings":
			if !settingRE.MatchString(value) {
				return fmt.Errorf("line %d: settings: want HAPROXY_CONFIG_NAME=value, got %q", n+1, value)
			}
			k, v, _ := strings.Cut(value, "=")
			if _, dup := c.Settings[k]; dup {
				return fmt.Errorf("line %d: setting %s given twice", n+1, k)
			}
			c.Settings[k] = v
		case hostile:
			return fmt.Errorf("line %d: unknown header %q for a hostile case", n+1, key)
		default:
			return fmt.Errorf("line %d: unknown header %q for a benign case", n+1, key)
		}
	}
	if n == len(lines) {
		return errors.New("no fragment after the header")
	}
	if !hostile {
		if c.Purpose == "" {
			return errors.New("missing \"# purpose:\" header")
		}
		return nil
	}
	if c.Attack == "" || c.Refused.Part == "" || c.Haproxy == "" {
		return errors.New("a hostile case needs \"# attack:\", \"# refused:\" and \"# haproxy:\" headers")
	}
	part, first := lines, n+1 // a config refusal points below the header
	if c.Refused.Part == "map" {
		part, first = partLines(c.Map), 1
	}
	if l := c.Refused.Line; l < first || l > len(part) || strings.TrimSpace(part[l-1]) == "" {
		return fmt.Errorf("refused: %s line %d is not a line of the fragment's %s part", c.Refused.Part, l, c.Refused.Part)
	}
	return nil
}

// The two halves of the corpus, relative to the package directory.
const (
	hostileDir = "testdata/policy/hostile"
	benignDir  = "testdata/policy/benign"
)

// corpusBase renders the default base for a fresh root directory, with the
// fallback certificate and crt-list in root/certs/ as in haproxy-config's
// state directory. It returns the root and the base text.
func corpusBase(t *testing.T) (string, []byte) {
	t.Helper()
	root := t.TempDir()
	fallback, crtList := filepath.Join(root, "certs/fallback.pem"), filepath.Join(root, "certs/crt-list")
	if err := certs.EnsureFiles(fallback, crtList); err != nil {
		t.Fatal(err)
	}
	httpsPort := strconv.Itoa(testkit.FreePort(t))
	base, err := assemble.RenderBase("base.cfg", assemble.DefaultBase, assemble.Vars{
		HTTPAddr:      testkit.FreeAddr(t),
		HTTPSAddr:     "127.0.0.1:" + httpsPort,
		HTTPSPort:     ":" + httpsPort,
		MapFile:       "hosts.map",
		CrtList:       crtList,
		FallbackCert:  fallback,
		RuntimeSocket: filepath.Join(root, "run/admin.sock"),
		ChallengeAddr: testkit.FreeAddr(t),
		StatusAddr:    testkit.FreeAddr(t),
		Marker:        assemble.MarkerPlaceholder,
	})
	if err != nil {
		t.Fatalf("render the default base: %v", err)
	}
	return root, base.Text
}

// haproxyCheck writes base + fragment config as root/dir/haproxy.cfg and
// the map part as root/dir/hosts.map, runs haproxy -c on them in root with
// PATH and env only, and returns the exit code and haproxy's output.
func haproxyCheck(t *testing.T, haproxy, root, dir string, base, conf, hostsMap []byte, env []string) (int, string) {
	t.Helper()
	code, out, finished := runHaproxyCheck(t, 20*time.Second, haproxy, root, dir, base, conf, hostsMap, env)
	if !finished {
		t.Fatalf("haproxy -c did not finish in time:\n%s", out)
	}
	return code, out
}

// hangLimit bounds a case that claims haproxy -c hangs: 3 s of run time
// (the cases take a minute or forever) and 1 GiB of address space.
const (
	hangLimit  = 3 * time.Second
	hangMemory = 1 << 30
)

// runHaproxyCheck is haproxyCheck with a time limit that may run out: it
// reports whether haproxy finished. The process runs under prlimit with
// hangMemory of address space, so a case that reads forever stops there.
func runHaproxyCheck(t *testing.T, limit time.Duration, haproxy, root, dir string, base, conf, hostsMap []byte, env []string) (int, string, bool) {
	t.Helper()
	dir = filepath.Join(root, dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, slices.Concat(base, []byte("\n"), conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hosts.map"), hostsMap, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	// prlimit sets the limit and then executes haproxy in its place, so
	// the context kills haproxy itself
	cmd := exec.CommandContext(ctx, "prlimit", fmt.Sprintf("--as=%d", hangMemory), haproxy, "-c", "-f", cfg)
	// haproxy's working directory is the state root, as / is the daemon's:
	// default-path config does not cover everything (server crt files are
	// read after parsing, relative to the working directory)
	cmd.Dir = root
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return -1, string(out), false
	case err != nil && !errors.As(err, &exit):
		t.Fatalf("run haproxy -c: %v", err)
	}
	return cmd.ProcessState.ExitCode(), string(out), true
}

func requireCorpusHaproxy(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs haproxy -c on every corpus case")
	}
	return testkit.RequireHaproxy(t)
}

// TestHostileCorpusIsRealHAProxy: haproxy accepts every hostile case
// marked valid, refuses every one marked invalid, with the default base,
// and does not finish a case marked hangs within hangLimit.
func TestHostileCorpusIsRealHAProxy(t *testing.T) {
	hostile, benign := loadPolicyCorpus(t, hostileDir), loadPolicyCorpus(t, benignDir)
	if len(hostile) < 60 || len(benign) < 30 {
		t.Errorf("the corpus has %d hostile and %d benign cases, want at least 60 and 30", len(hostile), len(benign))
	}
	haproxy := requireCorpusHaproxy(t)
	root, base := corpusBase(t)
	for _, c := range hostile {
		t.Run(c.File, func(t *testing.T) {
			t.Parallel()
			if c.Haproxy == "hangs" {
				if code, out, finished := runHaproxyCheck(t, hangLimit, haproxy, root, c.File, base, c.Conf, c.Map, c.Env); finished {
					t.Errorf("haproxy -c finished (exit %d) within %v; the case says it hangs (%s):\n%s", code, hangLimit, c.Reason, out)
				}
				return
			}
			code, out := haproxyCheck(t, haproxy, root, c.File, base, c.Conf, c.Map, c.Env)
			switch {
			case c.Haproxy == "valid" && code != 0:
				t.Errorf("haproxy -c exit %d, want 0 (the case says valid):\n%s", code, out)
			case c.Haproxy == "invalid" && code == 0:
				t.Errorf("haproxy -c accepts the case, which says invalid (%s):\n%s", c.Reason, out)
			}
		})
	}
}

// TestBenignCorpusIsRealHAProxy: all benign cases together, each routing
// its own bNNN.example.test, are one valid configuration.
func TestBenignCorpusIsRealHAProxy(t *testing.T) {
	benign := loadPolicyCorpus(t, benignDir)
	var conf, hostsMap bytes.Buffer
	var env []string
	for _, c := range benign {
		if !routesOwn(c.Map, c.Fragment) {
			t.Errorf("%s: the map part does not route %s.example.test to a %s_ backend", c.File, c.Fragment, c.Fragment)
		}
		conf.Write(c.Conf)
		conf.WriteString("\n")
		hostsMap.Write(c.Map)
		hostsMap.WriteString("\n")
		env = append(env, c.Env...)
	}
	haproxy := requireCorpusHaproxy(t)
	root, base := corpusBase(t)
	if code, out := haproxyCheck(t, haproxy, root, "live", base, conf.Bytes(), hostsMap.Bytes(), env); code != 0 {
		t.Fatalf("haproxy -c on base + %d benign cases: exit %d, want 0:\n%s", len(benign), code, out)
	}
}

// routesOwn reports whether a map part routes the fragment's own domain
// (NAME.example.test) to one of its backends (NAME_...).
func routesOwn(mapPart []byte, fragment string) bool {
	for _, line := range partLines(mapPart) {
		fields := strings.Fields(line)
		if len(fields) == 2 && fields[0] == fragment+".example.test" && strings.HasPrefix(fields[1], fragment+"_") {
			return true
		}
	}
	return false
}
