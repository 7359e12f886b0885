package assemble

// The differential test: Lex against the haproxy binary itself.
//
// Every probed text L goes at the end of an ACL line of a frontend:
//
//	<indent>acl tN str(x) -m str -- L
//
// The model reads the whole config line, with the same environment as
// the child haproxy and the pseudo-variables it would see there. Then:
//
//   - the lines the model refuses are checked with "haproxy -c": each must
//     get an ALERT for its own line, of the same kind and, where HAProxy
//     gives one, at the same position in the line;
//   - the lines the model accepts go into one config that haproxy must
//     start on ("haproxy -db"); the ACL patterns of each line are then read
//     back through the runtime API and must be the model's words after
//     "--", up to the first empty word, where HAProxy's pattern loop stops.

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	probeSection = "fe"
	// probeWords is how many words the ACL line has before L: "acl", "tN",
	// "str(x)", "-m", "str" and "--".
	probeWords = 6
	// errorBatch is how many refused lines go in one "haproxy -c" run;
	// haproxy stops reading a file after 50 fatal errors.
	errorBatch = 40
	// hangGuard bounds every wait on haproxy, so that a broken run fails
	// instead of hanging; nothing is asserted about durations.
	hangGuard = 20 * time.Second
)

// probeIndents are the blanks put before the ACL lines, in turn: the
// leading blanks readcfgfile() skips.
var probeIndents = []string{"    ", "\t", " \v\f", "\r", "", "\f\t "}

// haproxyOwnVars are variables haproxy 2.6 may set in its own environment
// before it reads the config; the oracle asks haproxy for their values.
var haproxyOwnVars = []string{"HAPROXY_LOCALPEER", "HAPROXY_STARTUP_VERSION", "HAPROXY_CFGFILES", "HAPROXY_MWORKER", "HAPROXY_MASTER_CLI"}

// probeEnv is the child's whole environment: the unit table's variables
// (B has blanks for "[*]" splitting, E is set but empty) and one more.
func probeEnv() map[string]string {
	env := map[string]string{"_x": "under"}
	for k, v := range lexTestEnv {
		if !strings.HasPrefix(k, ".") {
			env[k] = v
		}
	}
	return env
}

type lexOracle struct {
	bin string
	dir string
	env map[string]string
	own map[string]string // haproxyOwnVars that haproxy sets
}

type probe struct {
	text   string // L
	line   string // the config line carrying L
	acl    string // the ACL's name, tN
	lineNo int
	lexed  Lexed
}

type probeConfig struct {
	path   string
	sock   string
	probes []probe
}

func haproxyBinary(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("short mode: the differential test against haproxy does not run")
	}
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/haproxy"); err == nil {
		return "/usr/sbin/haproxy"
	}
	t.Skip("SKIPPING: haproxy not installed (neither in PATH nor /usr/sbin/haproxy); the lexer is NOT checked against HAProxy")
	return ""
}

var (
	ownVarsOnce sync.Once
	ownVars     map[string]string
	ownVarsErr  error
)

func newLexOracle(t testing.TB) *lexOracle {
	t.Helper()
	bin := haproxyBinary(t)
	// Not t.TempDir(): its name comes from the test's, and a '#' in a
	// fuzz seed's name would start a comment in the config.
	dir, err := os.MkdirTemp("", "lexprobe")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if strings.ContainsFunc(dir, func(c rune) bool { return c <= ' ' || strings.ContainsRune(`"'\#$`, c) }) {
		t.Fatalf("temporary directory %q has a byte haproxy's config reader would not take literally", dir)
	}
	o := &lexOracle{bin: bin, dir: dir, env: probeEnv()}
	ownVarsOnce.Do(func() { ownVars, ownVarsErr = o.askOwnVars() })
	if ownVarsErr != nil {
		t.Fatal(ownVarsErr)
	}
	o.own = ownVars
	return o
}

// askOwnVars has haproxy print each of haproxyOwnVars twice, with two
// different defaults, which tells an unset variable from an empty one.
func (o *lexOracle) askOwnVars() (map[string]string, error) {
	path := filepath.Join(o.dir, "own.cfg")
	var b strings.Builder
	b.WriteString(warmUp(4096))
	for _, name := range haproxyOwnVars {
		fmt.Fprintf(&b, ".notice \"${%s-}\"\n.notice \"${%s-unset}\"\n", name, name)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(o.bin, "-c", "-f", path)
	cmd.Env = o.environ()
	out, _ := cmd.CombinedOutput()
	notice := regexp.MustCompile(`(?m)^\[NOTICE\] +\(\d+\) : (?:config : )?parsing \[` + regexp.QuoteMeta(path) + `:(\d+)\]: '(.*)'\.$`)
	seen := map[int]string{}
	for _, m := range notice.FindAllStringSubmatch(string(out), -1) {
		n, _ := strconv.Atoi(m[1])
		seen[n] = m[2]
	}
	own := map[string]string{}
	for i, name := range haproxyOwnVars {
		plain, okPlain := seen[2*i+2]
		marked, okMarked := seen[2*i+3]
		if !okPlain || !okMarked {
			return nil, fmt.Errorf("haproxy did not print %s back:\n%s", name, out)
		}
		if plain == marked {
			own[name] = plain
		}
	}
	return own, nil
}

func (o *lexOracle) environ() []string {
	env := make([]string, 0, len(o.env))
	for k, v := range o.env {
		env = append(env, k+"="+v)
	}
	return env
}

// getenv is what the child haproxy sees while it reads line lineNo of
// the config at path.
func (o *lexOracle) getenv(path string, lineNo int) func(string) (string, bool) {
	return func(name string) (string, bool) {
		switch name {
		case ".LINE":
			return strconv.Itoa(lineNo), true
		case ".FILE":
			return path, true
		case ".SECTION":
			return probeSection, true
		}
		if v, ok := o.own[name]; ok {
			return v, true
		}
		v, ok := o.env[name]
		return v, ok
	}
}

// longestValue bounds what one expansion can add to a line's output.
func (o *lexOracle) longestValue(path string) int {
	n := len(path) + len(probeSection) + 20
	for _, v := range o.env {
		n = max(n, len(v))
	}
	for _, v := range o.own {
		n = max(n, len(v))
	}
	return n
}

// warmUp is a first config line, a ".diag" directive (silent without
// -dD), whose only job is to make haproxy's output buffer for parsed lines
// n bytes long: HAProxy 2.6 reparses a line that outgrows that buffer, and
// the reparse refuses a "${NAME-default}" (see Lex). That depends on the
// lines before, not on the line, and is not what the comparison is about.
func warmUp(n int) string { return ".diag \"" + strings.Repeat("w", n) + "\"\n" }

// config writes a config carrying texts, one per ACL line, after a warm-up
// line bigger than any of them can expand to.
func (o *lexOracle) config(t testing.TB, name string, texts []string) probeConfig {
	t.Helper()
	path := filepath.Join(o.dir, name+".cfg")
	c := probeConfig{path: path, sock: filepath.Join(o.dir, name+".sock")}
	longest := 0
	for _, text := range texts {
		longest = max(longest, len(text))
	}
	var b strings.Builder
	b.WriteString(warmUp(1024 + (longest+64)*o.longestValue(path)))
	fmt.Fprintf(&b, "global\n    stats socket %s level admin\n", c.sock)
	b.WriteString("defaults\n    mode http\n    timeout client 1s\n    timeout server 1s\n    timeout connect 1s\n")
	fmt.Fprintf(&b, "frontend %s\n", probeSection)
	lineNo := strings.Count(b.String(), "\n")
	for i, text := range texts {
		lineNo++
		acl := fmt.Sprintf("t%d", i)
		line := fmt.Sprintf("%sacl %s str(x) -m str -- %s", probeIndents[i%len(probeIndents)], acl, text)
		c.probes = append(c.probes, probe{text: text, line: line, acl: acl, lineNo: lineNo, lexed: Lex(line, o.getenv(path, lineNo))})
		b.WriteString(line + "\n")
	}
	// A line with a raw NUL must not be the last one: haproxy would call
	// it a missing line feed instead.
	b.WriteString("# end\n")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// alerts runs haproxy's output through the ALERT lines about the config's
// own lines, first one first.
func alerts(path string, out []byte) map[int][]string {
	re := regexp.MustCompile(`(?m)^\[ALERT\] +\(\d+\) : (?:config : )?parsing \[` + regexp.QuoteMeta(path) + `:(\d+)\] ?: (.*)$`)
	got := map[int][]string{}
	for _, m := range re.FindAllSubmatch(out, -1) {
		n, _ := strconv.Atoi(string(m[1]))
		got[n] = append(got[n], string(m[2]))
	}
	return got
}

// sameError tells whether HAProxy's alert is the model's error: the same
// message and position. For too many words HAProxy gives a position in
// its output buffer, not in the line, so only the message is compared.
func sameError(e *LexError, alert string) bool {
	if !strings.HasPrefix(alert, e.Msg) {
		return false
	}
	if strings.HasPrefix(e.Msg, "too many words") {
		return true
	}
	rest := strings.TrimPrefix(alert[len(e.Msg):], fmt.Sprintf(" at position %d", e.Offset+1))
	return rest == ":" || rest == "."
}

// judgeAlerts compares the model's verdict on each probe with the alerts
// haproxy gave. It returns the probes haproxy refused.
func judgeAlerts(t testing.TB, c probeConfig, out []byte) map[int]bool {
	t.Helper()
	got := alerts(c.path, out)
	for _, as := range got {
		if strings.HasPrefix(as[0], "too many fatal errors") {
			t.Fatalf("haproxy stopped reading %s after too many errors, the rest is unchecked:\n%s", c.path, out)
		}
	}
	refused := map[int]bool{}
	for _, p := range c.probes {
		as, ok := got[p.lineNo]
		delete(got, p.lineNo)
		refused[p.lineNo] = ok
		switch {
		case p.lexed.Err == nil && ok:
			t.Errorf("haproxy refuses %q, the model accepts it:\n  line %q\n  model words %q\n  haproxy: %s", p.text, p.line, p.lexed.Words, strings.Join(as, "\n  haproxy: "))
		case p.lexed.Err != nil && !ok:
			t.Errorf("the model refuses %q (%v), haproxy accepts it:\n  line %q", p.text, p.lexed.Err, p.line)
		case p.lexed.Err != nil && !sameError(p.lexed.Err, as[0]):
			t.Errorf("haproxy and the model refuse %q differently:\n  line %q\n  model: %s at position %d\n  haproxy: %s", p.text, p.line, p.lexed.Err.Msg, p.lexed.Err.Offset+1, as[0])
		}
	}
	for n, as := range got {
		t.Errorf("haproxy alert about line %d of %s, which carries no probe: %q", n, c.path, as)
	}
	return refused
}

// checkRefused runs "haproxy -c" on c, whose probes the model refuses
// (or may refuse: the comparison does not depend on it).
func (o *lexOracle) checkRefused(t testing.TB, c probeConfig) {
	t.Helper()
	cmd := exec.Command(o.bin, "-c", "-f", c.path)
	cmd.Env = o.environ()
	out, _ := cmd.CombinedOutput()
	judgeAlerts(t, c, out)
}

type liveHAProxy struct {
	sock string
}

// start runs "haproxy -db" on c. It returns nil and haproxy's output when
// haproxy exits instead of opening its socket. The process is stopped by
// its PID when t ends.
func (o *lexOracle) start(t testing.TB, c probeConfig) (*liveHAProxy, []byte) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(o.bin, "-db", "-f", c.path)
	cmd.Env = o.environ()
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	deadline := time.Now().Add(hangGuard)
	for {
		select {
		case <-exited:
			return nil, out.Bytes()
		default:
		}
		if conn, err := net.Dial("unix", c.sock); err == nil {
			conn.Close()
			return &liveHAProxy{sock: c.sock}, nil
		}
		if time.Now().After(deadline) {
			t.Fatalf("haproxy neither opened %s nor exited", c.sock)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// command sends one runtime API command; haproxy answers and closes.
func (h *liveHAProxy) command(cmd string) (string, error) {
	conn, err := net.Dial("unix", h.sock)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(hangGuard)); err != nil {
		return "", err
	}
	if _, err := io.WriteString(conn, cmd+"\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(conn)
	return string(b), err
}

// patterns is what the model says the ACL of p holds.
func (p probe) patterns() []string {
	var pats []string
	for _, w := range p.lexed.Words[probeWords:] {
		if w == "" {
			break
		}
		pats = append(pats, w)
	}
	return pats
}

// matchShowACL tells whether out, the answer to "show acl #ID", lists
// exactly want: one "<address> <pattern>\n" per pattern, then an empty
// line. Patterns are printed raw, so one with a line feed spans lines;
// matching the whole answer against the expected sequence (and the count
// haproxy gives in "show acl") still compares them byte for byte. Only a
// pattern that forged a whole "\n0x<address> " entry, with an address
// haproxy really used, could make two lists look alike.
func matchShowACL(out string, want []string) bool {
	for _, w := range want {
		if !strings.HasPrefix(out, "0x") {
			return false
		}
		out = strings.TrimLeft(out[2:], "0123456789abcdef")
		var ok bool
		if out, ok = strings.CutPrefix(out, " "+w+"\n"); !ok {
			return false
		}
	}
	return out == "\n"
}

var showACLRef = regexp.MustCompile(`(?m)^(\d+) \(\) acl '[^']*' file '(.*)' line (\d+)\. curr_ver=\d+ next_ver=\d+ entry_cnt=(\d+)$`)

// comparePatterns reads back the ACL patterns of every probe of c from a
// running haproxy.
func comparePatterns(t testing.TB, h *liveHAProxy, c probeConfig) {
	t.Helper()
	list, err := h.command("show acl")
	if err != nil {
		t.Fatalf("show acl: %v", err)
	}
	type ref struct{ id, count int }
	refs := map[int]ref{}
	for _, m := range showACLRef.FindAllStringSubmatch(list, -1) {
		if m[2] != c.path {
			continue
		}
		id, _ := strconv.Atoi(m[1])
		line, _ := strconv.Atoi(m[3])
		count, _ := strconv.Atoi(m[4])
		refs[line] = ref{id, count}
	}
	for _, p := range c.probes {
		if w := p.lexed.Words; len(w) < probeWords || !slices.Equal(w[:probeWords], []string{"acl", p.acl, "str(x)", "-m", "str", "--"}) {
			t.Errorf("the model reads the ACL line %q as %q", p.line, w)
			continue
		}
		r, ok := refs[p.lineNo]
		if !ok {
			t.Errorf("haproxy lists no ACL for line %d (%q)", p.lineNo, p.line)
			continue
		}
		want := p.patterns()
		out, err := h.command(fmt.Sprintf("show acl #%d", r.id))
		if err != nil {
			t.Fatalf("show acl #%d: %v", r.id, err)
		}
		if r.count != len(want) || !matchShowACL(out, want) {
			t.Errorf("haproxy and the model split %q differently:\n  line %q\n  model patterns %q\n  haproxy (%d patterns) %q", p.text, p.line, want, r.count, out)
		}
	}
}

// compare runs the whole comparison on texts and returns how many lines
// were compared by their patterns and by their errors.
func (o *lexOracle) compare(t testing.TB, texts []string) (accepted, refused int) {
	t.Helper()
	var good, bad, nul []string
	for _, text := range texts {
		// The verdict does not depend on the ACL number, the indent or
		// the line number, so a stand-in line sorts the texts.
		lx := Lex("acl t0 str(x) -m str -- "+text, o.getenv("", 1))
		switch {
		case strings.IndexByte(text, 0) >= 0:
			nul = append(nul, text)
		case lx.Err != nil:
			bad = append(bad, text)
		default:
			good = append(good, text)
		}
	}
	// After a raw NUL haproxy stops reading the file, so a line with one
	// goes last in its batch, and a batch has at most one.
	var batches [][]string
	for len(bad) > 0 || len(nul) > 0 {
		n := min(len(bad), errorBatch-1)
		batch := append([]string(nil), bad[:n]...)
		bad = bad[n:]
		if len(nul) > 0 {
			batch = append(batch, nul[0])
			nul = nul[1:]
		}
		batches = append(batches, batch)
	}
	for i, batch := range batches {
		o.checkRefused(t, o.config(t, fmt.Sprintf("refused%d", i), batch))
		refused += len(batch)
	}
	if len(good) == 0 {
		return 0, refused
	}
	c := o.config(t, "accepted", good)
	h, out := o.start(t, c)
	if h == nil {
		// The model accepts some line haproxy refuses: say which, and
		// go on with the lines haproxy takes.
		gone := judgeAlerts(t, c, out)
		var kept []string
		for _, p := range c.probes {
			if !gone[p.lineNo] {
				kept = append(kept, p.text)
			}
		}
		if len(kept) == 0 {
			return 0, refused
		}
		c = o.config(t, "accepted-again", kept)
		if h, out = o.start(t, c); h == nil {
			t.Fatalf("haproxy does not start on %s:\n%s", c.path, out)
		}
	}
	comparePatterns(t, h, c)
	return len(c.probes), refused
}

// lexAlphabet is what generated lines are made of, biased to the bytes
// that matter to parse_line: each entry is drawn with the same chance, so
// repeats weigh more.
var lexAlphabet = []string{
	`"`, `"`, `"`, `"`, `'`, `'`, `'`,
	`\`, `\`, `\\`, `\x`, `\x41`, `\x7e`, `\x00`, `\x0a`, `\x20`, `\x22`, `\x23`, `\x27`, `\xff`, `\xZ1`,
	`\$`, `\#`, `\n`, `\r`, `\t`, `\ `, `\'`, `\"`, `\q`, `\[`,
	"$", "$", "$", "{", "}", "}", "[", "*", "]", "[*]", "-", "-", ".", "#", "${", "${", "$.", "$.",
	" ", " ", " ", " ", "\t", "\v", "\f", "\r",
	"a", "b", "z", "x", "A", "B", "E", "Q", "U", "_x", "_", "0", "9", "w",
	".LINE", ".FILE", ".SECTION", ".X", "[x]",
	"é", "\u00a0", "\u2028", "\xff", "\x80", "\x85", "\x01", "\x1f", "\x7f",
	"~", "!", ",", "%", "&", "(", ")", "+", ";", ":", "/", "<", "=", ">", "?", "@", "^", "`", "|",
	`"$A"`, `"${B[*]}"`, `"${U-d f}"`, `"${U[*]-p q}"`, `"$.LINE"`, `"${.SECTION}"`, `"${Q}"`, `"$E"`, `""`, `''`,
	`"${A[`, `"${A x}"`, `"${U[x]}"`, `"${_x[*]-}"`, `"${.FILE-f}"`, `"${U-`,
}

// genLine makes one line from r. One in 20 is a run of words close to the
// 64-word limit (the ACL prefix takes 6 of them); one in 100 gets a raw NUL.
func genLine(r *rand.Rand) string {
	var b strings.Builder
	if r.IntN(20) == 0 {
		n := MaxLineWords - probeWords - 2 + r.IntN(4)
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteString(" ")
			}
			b.WriteString("w")
			if r.IntN(10) == 0 {
				b.WriteString(lexAlphabet[r.IntN(len(lexAlphabet))])
			}
		}
		b.WriteString([]string{"", " ", "\t", "#c", " #c", `""`, ` ""`, ` "${B[*]}"`}[r.IntN(8)])
		return b.String()
	}
	for n := 1 + r.IntN(24); n > 0; n-- {
		b.WriteString(lexAlphabet[r.IntN(len(lexAlphabet))])
	}
	s := b.String()
	if r.IntN(100) == 0 {
		at := r.IntN(len(s) + 1)
		s = s[:at] + "\x00" + s[at:]
	}
	return s
}

// lexDiffLines is how many generated lines the differential test probes.
const lexDiffLines = 4000

func TestLexMatchesHAProxy(t *testing.T) {
	o := newLexOracle(t)
	var texts []string
	for _, c := range lexCases {
		if !strings.Contains(c.line, "\n") {
			texts = append(texts, c.line)
		}
	}
	r := rand.New(rand.NewPCG(2026, 64))
	for range lexDiffLines {
		texts = append(texts, genLine(r))
	}
	// Lines longer than the 2048 bytes haproxy first reads them into:
	// random ones, which are nearly always refused, and ones made of
	// tokens that cannot fail, one with a raw NUL past the first 2048.
	safe := []string{"a", "Z", `\x41`, `\\`, `\ `, `\"`, `\#`, `"$A"`, `"${U-d f}"`, "'x y'", `"$.LINE"`}
	for n := 2040; n < 6000; n += 500 {
		var random, sure strings.Builder
		for random.Len() < n {
			random.WriteString(genLine(r) + " ")
		}
		for sure.Len() < n {
			sure.WriteString(safe[r.IntN(len(safe))])
		}
		texts = append(texts, random.String(), sure.String())
	}
	texts = append(texts, texts[len(texts)-1][:3000]+"\x00"+texts[len(texts)-1][3000:])
	accepted, refused := o.compare(t, texts)
	t.Logf("compared %d lines with haproxy: %d by their ACL patterns, %d by their errors", len(texts), accepted, refused)
	if accepted < len(texts)/4 || refused < len(texts)/4 {
		t.Errorf("the generated lines are lopsided (%d accepted, %d refused): the comparison would miss one side", accepted, refused)
	}
	// The comparison is only as good as what the lines exercise.
	seen := map[string]int{}
	for _, text := range texts {
		lx := Lex("acl t0 str(x) -m str -- "+text, o.getenv("", 1))
		if lx.Err != nil {
			msg, _, _ := strings.Cut(lx.Err.Msg, ",")
			seen["refused: "+msg]++
			continue
		}
		for _, e := range lx.Expansions {
			seen[fmt.Sprintf("expansion braces=%v default=%v split=%v", e.Braces, e.HasDefault, e.WordSplit)]++
		}
		if len(lx.Words) == MaxLineWords {
			seen["64 words"]++
		}
		if slices.Contains(lx.Words[probeWords:], "") {
			seen["empty word"]++
		}
		if strings.Contains(text, `\x00`) {
			seen["hex NUL"]++
		}
	}
	for _, want := range []string{
		"refused: unmatched quote", "refused: unmatched brace in environment variable name",
		"refused: forbidden first char in environment variable name", "refused: truncated or invalid hexadecimal sequence",
		"refused: truncated or invalid word expansion sequence", "refused: too many words", "refused: Stray NUL character",
		"expansion braces=false default=false split=false", "expansion braces=true default=false split=false",
		"expansion braces=true default=true split=false", "expansion braces=true default=false split=true",
		"expansion braces=true default=true split=true", "64 words", "empty word", "hex NUL",
	} {
		if seen[want] == 0 {
			t.Errorf("no generated line has %s", want)
		}
	}
	t.Logf("coverage: %v", seen)
}

// TestLexScopeMatchesHAProxy checks which lines are scope markers, which
// the ACL probes cannot: a probe never starts its config line. Each line
// goes alone in a frontend, since some scope errors make haproxy stop
// reading. HAProxy takes a scope marker silently or refuses it with an
// alert about the scope; any other line here is an unknown keyword.
func TestLexScopeMatchesHAProxy(t *testing.T) {
	o := newLexOracle(t)
	lines := []string{"[x]", "\v\f\r [x] y", "[", "[a b]", "[x]#c", `\[x]`, `"[x]"`, `'['`, "x [y]", "\x85[x]"}
	r := rand.New(rand.NewPCG(2026, 91))
	for len(lines) < 24 {
		line := probeIndents[r.IntN(len(probeIndents))] + "[" + genLine(r)
		if !strings.ContainsRune(line, 0) {
			lines = append(lines, line)
		}
	}
	scopes := 0
	for i, line := range lines {
		path := filepath.Join(o.dir, fmt.Sprintf("scope%d.cfg", i))
		cfg := warmUp(4096) + "global\nfrontend " + probeSection + "\n" + line + "\n# end\n"
		if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		const lineNo = 4
		cmd := exec.Command(o.bin, "-c", "-f", path)
		cmd.Env = o.environ()
		out, _ := cmd.CombinedOutput()
		as := alerts(path, out)[lineNo]
		haproxyScope := !slices.ContainsFunc(as, func(a string) bool { return !strings.Contains(a, "scope") })
		lx := Lex(line, o.getenv(path, lineNo))
		if lx.Scope != haproxyScope {
			t.Errorf("Lex(%q).Scope = %v, haproxy says %q", line, lx.Scope, as)
		}
		if lx.Scope {
			scopes++
		}
	}
	if scopes < len(lines)/2 {
		t.Errorf("only %d of %d lines are scope markers", scopes, len(lines))
	}
}

// lexFuzzSeeds are starting points for FuzzLex.
var lexFuzzSeeds = []string{
	`a "b c" 'd e' \x41\x00f`,
	`"${B[*]}" "${U-x y}" "$.LINE" "$.FILE" "$.SECTION"`,
	`"$HAPROXY_LOCALPEER" "${E-e}" "$Q"`,
	`\#\'\"\ \\\$ "\$A" '\$A' # "`,
	"\v\f a\rb",
	`"${A[*]-}" ${A} $A "$1" "${A`,
	"a\x00b",
	words(MaxLineWords-probeWords) + " ",
}

func FuzzLex(f *testing.F) {
	haproxyBinary(f)
	for _, s := range lexFuzzSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		if i := strings.IndexByte(text, '\n'); i >= 0 {
			text = text[:i] // a config line ends at its line feed
		}
		if len(text) > 4096 {
			t.Skip("long lines add nothing but time")
		}
		o := newLexOracle(t)
		o.compare(t, []string{text})
	})
}
