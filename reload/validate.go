// Package reload talks to HAProxy: validation with "haproxy -c" and the
// translation of its messages back to the files people wrote.
package reload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"haproxy-config/assemble"
)

// EnvError is a problem with the machine (haproxy missing, no permission,
// a validation that hung), as opposed to a problem with the input.
type EnvError struct{ Err error }

func (e *EnvError) Error() string { return e.Err.Error() }
func (e *EnvError) Unwrap() error { return e.Err }

// Validator runs "haproxy -c".
type Validator struct {
	Haproxy string // binary; a bare name is looked up in PATH, then /usr/sbin
	// Credential runs the check as another user, so that what a future
	// bypass of the tenant policy makes HAProxy read is read without
	// root's rights; nil runs it as this process.
	Credential *syscall.Credential
	// Timeout bounds one check; zero means DefaultCheckTimeout.
	Timeout time.Duration
}

// DefaultCheckTimeout bounds one haproxy -c; 50,000 backends take about 0.6 s.
const DefaultCheckTimeout = time.Minute

// UnfinishedError is a check that did not finish: it ran past its timeout
// or was killed (out of memory). Whether that is the machine's fault or a
// fragment's is for the caller to find out.
type UnfinishedError struct{ Why string }

func (e *UnfinishedError) Error() string { return "haproxy -c did not finish: " + e.Why }

// Env is the whole environment HAProxy and haproxy -c run with. HAProxy
// expands "$VAR" in the configuration and serves env() to its rules; the
// tenant policy refuses both, and even a bypass finds nothing here.
func Env() []string {
	return []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
}

// Message is one ALERT or WARNING line haproxy printed.
type Message struct {
	Level string // "ALERT" or "WARNING"
	Text  string
}

// Result is the outcome of one validation.
type Result struct {
	Valid    bool
	Messages []Message
}

// Binary resolves the haproxy executable.
func (v *Validator) Binary() (string, error) {
	if strings.ContainsRune(v.Haproxy, '/') {
		if _, err := exec.LookPath(v.Haproxy); err != nil {
			return "", &EnvError{fmt.Errorf("haproxy binary %s (HAPROXY_CONFIG_HAPROXY) is not usable: %w", v.Haproxy, err)}
		}
		return v.Haproxy, nil
	}
	name := v.Haproxy
	if name == "" {
		name = "haproxy"
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if p, err := exec.LookPath("/usr/sbin/" + name); err == nil {
		return p, nil
	}
	return "", &EnvError{fmt.Errorf("haproxy binary %q not found in PATH or /usr/sbin: install haproxy (apt-get install haproxy) or set HAPROXY_CONFIG_HAPROXY", name)}
}

var lineRE = regexp.MustCompile(`^\[(ALERT|WARNING)\]\s+\(\d+\) : (?:config : )?(.*)$`)

// Check validates the config at cfgPath exactly as HAProxy would load it.
// A configuration HAProxy rejects is not an error: Result.Valid is false.
func (v *Validator) Check(ctx context.Context, cfgPath string) (*Result, error) {
	bin, err := v.Binary()
	if err != nil {
		return nil, err
	}
	timeout := v.Timeout
	if timeout <= 0 {
		timeout = DefaultCheckTimeout
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, bin, "-c", "-f", cfgPath)
	cmd.Env = Env()
	cmd.Dir = "/"
	if v.Credential != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: v.Credential}
	}
	cmd.WaitDelay = time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	res := &Result{}
	var exit *exec.ExitError
	switch {
	case err == nil:
		res.Valid = true
	case ctx.Err() != nil:
		return nil, &EnvError{fmt.Errorf("haproxy -c: %w", ctx.Err())}
	case cctx.Err() != nil:
		return nil, &UnfinishedError{Why: fmt.Sprintf("it ran past %s (HAPROXY_CONFIG_CHECK_TIMEOUT)", timeout)}
	case errors.As(err, &exit) && exit.ExitCode() < 0:
		return nil, &UnfinishedError{Why: fmt.Sprintf("it was %s (out of memory?)", exit.ProcessState.String())}
	case errors.As(err, &exit) && exit.ExitCode() == 1:
	default:
		return nil, &EnvError{fmt.Errorf("run %s -c: %w: %s", bin, err, strings.TrimSpace(out.String()))}
	}
	res.Messages = ParseMessages(out.String())
	if !res.Valid && len(res.Messages) == 0 {
		return nil, &EnvError{fmt.Errorf("haproxy -c failed without a message: %s", strings.TrimSpace(out.String()))}
	}
	return res, nil
}

// ParseMessages picks the ALERT and WARNING lines out of haproxy's output.
func ParseMessages(out string) []Message {
	var msgs []Message
	for _, l := range strings.Split(out, "\n") {
		if m := lineRE.FindStringSubmatch(strings.TrimSpace(l)); m != nil {
			msgs = append(msgs, Message{Level: m[1], Text: strings.TrimSpace(m[2])})
		}
	}
	return msgs
}

// summaryRE matches the closing lines haproxy adds after the real errors.
var summaryRE = regexp.MustCompile(`^(Error\(s\) found in configuration file|Fatal errors found in configuration|Failed to initialize server\(s\) addr)`)

// proxyRE finds the proxy a message without a line number is about.
var proxyRE = regexp.MustCompile(`(?:Proxy|backend|frontend|listen) '([^']+)'|'server ([^'/]+)/`)

// Explain turns haproxy's messages about the files at cfgPath and mapPath
// into problems located in the base config or in fragments. Errors come
// first, then warnings, each as haproxy ordered them.
//
// A message may be about several places ("reuses the id declared at ...").
// It is blamed on the fragment with the highest rank among those it names
// (by line or by proxy): callers rank fragments by arrival, so that a clash
// is the newcomer's fault, never the incumbent's. A nil rank takes the
// first place named.
func Explain(src *assemble.SourceMap, cfgPath, mapPath string, msgs []Message, rank func(fragment string) int) (errs, warnings assemble.Problems) {
	refRE := regexp.MustCompile(`\[?(` + regexp.QuoteMeta(cfgPath) + `|` + regexp.QuoteMeta(mapPath) + `):(\d+)\]?`)
	locate := func(ref []string) (assemble.Location, bool) {
		n, _ := strconv.Atoi(ref[2])
		if ref[1] == mapPath {
			return src.MapLine(n)
		}
		return src.ConfigLine(n)
	}
	for _, m := range msgs {
		if summaryRE.MatchString(m.Text) {
			continue
		}
		var named []assemble.Location
		for _, ref := range refRE.FindAllStringSubmatch(m.Text, -1) {
			if loc, ok := locate(ref); ok {
				named = append(named, loc)
			}
		}
		for _, sub := range proxyRE.FindAllStringSubmatch(m.Text, -1) {
			if loc, ok := src.Proxy(sub[1] + sub[2]); ok {
				named = append(named, loc)
			}
		}
		blamed := assemble.Location{File: "haproxy -c"}
		if len(named) > 0 {
			blamed = named[0]
		}
		for _, loc := range named[min(1, len(named)):] {
			if loc.Fragment != "" && (blamed.Fragment == "" || rank != nil && rank(loc.Fragment) > rank(blamed.Fragment)) {
				blamed = loc
			}
		}
		text := refRE.ReplaceAllStringFunc(m.Text, func(ref string) string {
			loc, ok := locate(refRE.FindStringSubmatch(ref))
			switch {
			case !ok:
				return "generated line " + refRE.FindStringSubmatch(ref)[2]
			case loc == blamed:
				return "\x00"
			}
			return loc.String()
		})
		text = strings.TrimPrefix(strings.TrimPrefix(text, "parsing "), "Parsing ")
		text = strings.TrimLeft(strings.TrimPrefix(text, "\x00"), " :")
		text = strings.ReplaceAll(text, "\x00", "this line")
		p := &assemble.Problem{Location: blamed, Msg: text}
		if m.Level == "ALERT" {
			errs = append(errs, p)
		} else {
			warnings = append(warnings, p)
		}
	}
	return errs, warnings
}
