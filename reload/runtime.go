package reload

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"haproxy-config/assemble"
)

// Runtime is HAProxy's runtime API: the stats socket opened at "level
// admin". Each command gets its own connection (about 0.06 ms on a unix
// socket), so commands from several goroutines never interleave.
type Runtime struct {
	Path string
	// Timeout bounds one command when ctx has no earlier deadline; 0 means
	// 10 s.
	Timeout time.Duration
}

// RefusedError is HAProxy answering a runtime command with an error.
type RefusedError struct {
	Command string
	Answer  string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("runtime api refused %q: %s", e.Command, strings.TrimSpace(e.Answer))
}

// maxPayload is the most payload bytes sent with one command: well under
// tune.bufsize (16 KB), beyond which HAProxy drops the connection and adds
// nothing.
const maxPayload = 8 << 10

// Command sends one command line, with payload after it in the "<<"
// syntax when payload is not nil, and returns HAProxy's whole answer.
func (r *Runtime) Command(ctx context.Context, line string, payload []byte) (string, error) {
	if len(payload) > maxPayload {
		return "", fmt.Errorf("runtime api: %q: payload of %d bytes exceeds %d", line, len(payload), maxPayload)
	}
	timeout := r.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", r.Path)
	if err != nil {
		return "", fmt.Errorf("runtime api: %w", err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	if err := conn.SetDeadline(deadline); err != nil {
		return "", fmt.Errorf("runtime api: %w", err)
	}
	msg := line + "\n"
	if payload != nil {
		// an empty line ends the payload, so the payload holds none
		var b strings.Builder
		b.WriteString(line + " <<\n")
		for l := range strings.Lines(string(payload)) {
			if l = strings.TrimRight(l, "\r\n"); l != "" {
				b.WriteString(l + "\n")
			}
		}
		msg = b.String() + "\n"
	}
	if _, err := io.WriteString(conn, msg); err != nil {
		return "", fmt.Errorf("runtime api: send %q: %w", line, err)
	}
	// without "prompt" HAProxy answers the one command and closes
	if err := conn.(*net.UnixConn).CloseWrite(); err != nil {
		return "", fmt.Errorf("runtime api: %w", err)
	}
	out, err := io.ReadAll(conn)
	if err != nil {
		return "", fmt.Errorf("runtime api: read answer to %q: %w", line, err)
	}
	return string(out), nil
}

// expect runs a command and refuses any answer other than one that
// contains want ("" wants an empty answer).
func (r *Runtime) expect(ctx context.Context, line string, payload []byte, want string) (string, error) {
	out, err := r.Command(ctx, line, payload)
	if err != nil {
		return "", err
	}
	if (want == "" && strings.TrimSpace(out) != "") || !strings.Contains(out, want) || refusal(out) {
		return out, &RefusedError{Command: line, Answer: out}
	}
	return out, nil
}

// refusal reports whether an answer carries one of HAProxy's error forms,
// which some commands give alongside words of their success message
// ("can't be deleted!").
func refusal(out string) bool {
	return strings.Contains(out, "ERROR") || strings.Contains(out, "can't") || strings.Contains(out, "Can't")
}

// MapInfo is one line of "show map" without argument.
type MapInfo struct {
	ID      int
	File    string // the name the configuration gave the file
	Entries int
}

// Ref is the map's name for other commands.
func (m MapInfo) Ref() string { return "#" + strconv.Itoa(m.ID) }

// Maps lists the maps the running process loaded.
func (r *Runtime) Maps(ctx context.Context) ([]MapInfo, error) {
	out, err := r.Command(ctx, "show map", nil)
	if err != nil {
		return nil, err
	}
	var maps []MapInfo
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// 0 (hosts.map) pattern loaded from file ... entry_cnt=2
		id, rest, ok := strings.Cut(line, " (")
		file, rest2, ok2 := strings.Cut(rest, ") ")
		n, err := strconv.Atoi(id)
		if !ok || !ok2 || err != nil {
			return nil, &RefusedError{Command: "show map", Answer: out}
		}
		m := MapInfo{ID: n, File: file}
		for _, f := range strings.Fields(rest2) {
			if v, ok := strings.CutPrefix(f, "entry_cnt="); ok {
				m.Entries, _ = strconv.Atoi(v)
			}
		}
		maps = append(maps, m)
	}
	return maps, nil
}

// ErrMapNotLoaded means the running process has no map by that name.
var ErrMapNotLoaded = errors.New("haproxy has no such map loaded")

// FindMap returns the reference ("#ID") of the loaded map whose file name,
// as the configuration spelled it, is one of names. HAProxy lists a map
// under the name the configuration used: a relative one when the config
// relies on "default-path config".
func (r *Runtime) FindMap(ctx context.Context, names ...string) (string, error) {
	m, err := r.LookupMap(ctx, names...)
	if err != nil {
		return "", err
	}
	return m.Ref(), nil
}

// LookupMap is FindMap returning the map's whole "show map" line.
func (r *Runtime) LookupMap(ctx context.Context, names ...string) (MapInfo, error) {
	maps, err := r.Maps(ctx)
	if err != nil {
		return MapInfo{}, err
	}
	for _, m := range maps {
		for _, n := range names {
			if filepath.Clean(m.File) == filepath.Clean(n) {
				return m, nil
			}
		}
	}
	return MapInfo{}, fmt.Errorf("%w: %s", ErrMapNotLoaded, strings.Join(names, " or "))
}

// ShowMap reads a map's current entries. A key listed more than once (as
// "add map" can make) is returned in duplicates; entries holds the value
// HAProxy uses for it, the first.
func (r *Runtime) ShowMap(ctx context.Context, ref string) (entries map[string]string, duplicates []string, err error) {
	return r.showMap(ctx, "show map "+ref)
}

func (r *Runtime) showMap(ctx context.Context, line string) (map[string]string, []string, error) {
	out, err := r.Command(ctx, line, nil)
	if err != nil {
		return nil, nil, err
	}
	entries := map[string]string{}
	var dups []string
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if sc.Text() == "" {
			continue
		}
		// 0x55c75789a6f0 key value
		f := strings.Fields(sc.Text())
		if len(f) != 3 || !strings.HasPrefix(f[0], "0x") {
			return nil, nil, &RefusedError{Command: line, Answer: out}
		}
		if _, seen := entries[f[1]]; seen {
			dups = append(dups, f[1])
			continue
		}
		entries[f[1]] = f[2]
	}
	return entries, dups, nil
}

// ReplaceMap swaps a map's whole content atomically: the entries go into a
// new prepared version, in chunks under tune.bufsize; the version is
// committed only once it reads back exactly as entries. On any error the
// live map is left as it was and the prepared version is cleared.
func (r *Runtime) ReplaceMap(ctx context.Context, ref string, entries map[string]string) (err error) {
	out, err := r.expect(ctx, "prepare map "+ref, nil, "New version created: ")
	if err != nil {
		return err
	}
	ver := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(out), "New version created: "))
	if _, perr := strconv.Atoi(ver); perr != nil {
		return &RefusedError{Command: "prepare map " + ref, Answer: out}
	}
	defer func() {
		if err != nil {
			// the entries of an uncommitted version would otherwise stay in
			// memory until the next commit
			_, _ = r.Command(context.WithoutCancel(ctx), "clear map @"+ver+" "+ref, nil)
		}
	}()
	keys := make([]string, 0, len(entries))
	for k, v := range entries {
		if k == "" || v == "" || strings.ContainsAny(k+v, " \t\r\n") {
			return fmt.Errorf("runtime api: map entry %q %q: keys and values must be single words", k, v)
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	add := "add map @" + ver + " " + ref
	var chunk []byte
	for i, k := range keys {
		chunk = assemble.AppendHostMapLine(chunk, k, entries[k])
		if i == len(keys)-1 || len(chunk)+len(keys[i+1])+len(entries[keys[i+1]])+2 > maxPayload {
			if _, err := r.expect(ctx, add, chunk, ""); err != nil {
				return err
			}
			chunk = chunk[:0]
		}
	}
	got, dups, err := r.showMap(ctx, "show map @"+ver+" "+ref)
	if err != nil {
		return err
	}
	if n := len(got) + len(dups); n != len(entries) || !maps.Equal(got, entries) {
		return fmt.Errorf("runtime api: prepared version %s of map %s holds %d entries, want %d: not committed", ver, ref, n, len(entries))
	}
	_, err = r.expect(ctx, "commit map @"+ver+" "+ref, nil, "")
	return err
}

// MapDelta is what turns a map's entries into others, key by key.
type MapDelta struct {
	Set map[string]string // keys the map has, with their new value
	Add map[string]string // keys it does not have yet
	Del []string          // keys to remove, sorted
}

// DiffMap returns the changes from the entries old to want.
func DiffMap(old, want map[string]string) MapDelta {
	d := MapDelta{Set: map[string]string{}, Add: map[string]string{}}
	for k, v := range want {
		switch ov, ok := old[k]; {
		case !ok:
			d.Add[k] = v
		case ov != v:
			d.Set[k] = v
		}
	}
	for k := range old {
		if _, ok := want[k]; !ok {
			d.Del = append(d.Del, k)
		}
	}
	slices.Sort(d.Del)
	return d
}

// Len is the number of keys the delta changes.
func (d MapDelta) Len() int { return len(d.Set) + len(d.Add) + len(d.Del) }

// UpdateMap changes map ref in place by delta, then reads every changed key
// back: "set map" for keys the map has ("add map" would add a duplicate
// that loses to the first), "add map" for new ones, "del map" for removed
// ones. The commands go several to a line, joined by ";", each line well
// under tune.bufsize and on its own connection; the read-back ("get map")
// is batched the same way. Other keys are not touched and not read. On an
// error the map may hold part of the delta: the caller swaps the whole map
// (ReplaceMap) to repair it.
func (r *Runtime) UpdateMap(ctx context.Context, ref string, delta MapDelta) error {
	var cmds []string
	for _, k := range delta.Del {
		cmds = append(cmds, "del map "+ref+" "+k)
	}
	for _, k := range slices.Sorted(maps.Keys(delta.Set)) {
		cmds = append(cmds, "set map "+ref+" "+k+" "+delta.Set[k])
	}
	for _, k := range slices.Sorted(maps.Keys(delta.Add)) {
		cmds = append(cmds, "add map "+ref+" "+k+" "+delta.Add[k])
	}
	want := map[string]string{}
	for _, m := range []map[string]string{delta.Set, delta.Add} {
		for k, v := range m {
			if !cliWord(k) || !cliWord(v) {
				return fmt.Errorf("runtime api: map entry %q %q: keys and values must be single words without ;, \\, # or quotes", k, v)
			}
			want[k] = v
		}
	}
	for _, k := range delta.Del {
		if !cliWord(k) {
			return fmt.Errorf("runtime api: map key %q: keys must be single words without ;, \\, # or quotes", k)
		}
		want[k] = ""
	}
	for _, line := range batch(cmds) {
		out, err := r.Command(ctx, line, nil)
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "" {
			return &RefusedError{Command: line, Answer: out}
		}
	}
	keys := slices.Sorted(maps.Keys(want))
	gets := make([]string, len(keys))
	for i, k := range keys {
		gets[i] = "get map " + ref + " " + k
	}
	got := map[string]string{}
	done := 0
	for _, line := range batch(gets) {
		out, err := r.Command(ctx, line, nil)
		if err != nil {
			return err
		}
		n := strings.Count(line, ";") + 1
		answers := strings.Split(strings.TrimRight(out, "\n"), "\n\n")
		if len(answers) != n {
			return &RefusedError{Command: line, Answer: out}
		}
		for i, a := range answers {
			k := keys[done+i]
			switch m := getMapRE.FindStringSubmatch(a); {
			case strings.Contains(a, "found=no"):
				got[k] = ""
			case m != nil && m[1] == k:
				got[k] = m[2]
			default:
				return &RefusedError{Command: gets[done+i], Answer: a}
			}
		}
		done += n
	}
	if !maps.Equal(got, want) {
		var wrong []string
		for _, k := range keys {
			if got[k] != want[k] {
				wrong = append(wrong, fmt.Sprintf("%s is %q, want %q", k, got[k], want[k]))
			}
		}
		return fmt.Errorf("runtime api: map %s after the update: %s", ref, strings.Join(wrong, "; "))
	}
	return nil
}

// getMapRE reads the key and value of a "get map" answer that found one.
var getMapRE = regexp.MustCompile(`found=yes, .*key="([^"]*)", value="([^"]*)"`)

// cliWord reports whether s passes through the CLI's tokenizer as itself.
func cliWord(s string) bool {
	return s != "" && !strings.ContainsAny(s, " \t\r\n;\\#\"'")
}

// batch joins commands with ";" into lines of at most maxPayload bytes.
func batch(cmds []string) []string {
	var lines []string
	var b strings.Builder
	for _, c := range cmds {
		if b.Len() > 0 && b.Len()+1+len(c) > maxPayload {
			lines = append(lines, b.String())
			b.Reset()
		}
		if b.Len() > 0 {
			b.WriteByte(';')
		}
		b.WriteString(c)
	}
	if b.Len() > 0 {
		lines = append(lines, b.String())
	}
	return lines
}

// CertKnown reports whether the running process has a certificate stored
// under path (loaded from the configuration or created at runtime).
func (r *Runtime) CertKnown(ctx context.Context, path string) (bool, error) {
	out, err := r.Command(ctx, "show ssl cert", nil)
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimPrefix(strings.TrimSpace(line), "*") == path {
			return true, nil
		}
	}
	return false, nil
}

// CertSerial is the serial number, in hexadecimal, of the certificate the
// running process stores under path.
func (r *Runtime) CertSerial(ctx context.Context, path string) (string, error) {
	if strings.ContainsAny(path, " \t\r\n") {
		return "", fmt.Errorf("runtime api: certificate path %q has white space", path)
	}
	out, err := r.Command(ctx, "show ssl cert "+path, nil)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		if serial, ok := strings.CutPrefix(strings.TrimSpace(line), "Serial:"); ok {
			return strings.TrimSpace(serial), nil
		}
	}
	return "", &RefusedError{Command: "show ssl cert " + path, Answer: out}
}

// SetCert loads pem (certificate, chain and key) as the certificate stored
// under path, creating the entry when the process does not know it yet.
// Sites using it serve it from the next handshake. A PEM HAProxy refuses
// leaves everything as it was. The file at path must be written too: a
// reload reads the files.
func (r *Runtime) SetCert(ctx context.Context, path string, pem []byte) (err error) {
	if strings.ContainsAny(path, " \t\r\n") {
		return fmt.Errorf("runtime api: certificate path %q has white space", path)
	}
	known, err := r.CertKnown(ctx, path)
	if err != nil {
		return err
	}
	if !known {
		if _, err := r.expect(ctx, "new ssl cert "+path, nil, "New empty certificate store"); err != nil {
			return err
		}
	}
	defer func() {
		if err == nil {
			return
		}
		bg := context.WithoutCancel(ctx)
		_, _ = r.Command(bg, "abort ssl cert "+path, nil)
		if !known {
			_, _ = r.Command(bg, "del ssl cert "+path, nil)
		}
	}()
	if _, err := r.expect(ctx, "set ssl cert "+path, pem, "Transaction "); err != nil {
		return err
	}
	_, err = r.expect(ctx, "commit ssl cert "+path, nil, "Success!")
	return err
}

// DelCert removes a certificate no crt-list or bind line uses any more.
func (r *Runtime) DelCert(ctx context.Context, path string) error {
	_, err := r.expect(ctx, "del ssl cert "+path, nil, "deleted!")
	return err
}

// AddCrtList adds a line to a loaded crt-list: the certificate at path
// (set with SetCert first), served for the SNI filters snis.
func (r *Runtime) AddCrtList(ctx context.Context, list, path string, snis []string) error {
	line := path
	for _, s := range snis {
		if s == "" || strings.ContainsAny(s, " \t\r\n[]") {
			return fmt.Errorf("runtime api: sni filter %q is not a host name pattern", s)
		}
		line += " " + s
	}
	_, err := r.expect(ctx, "add ssl crt-list "+list, []byte(line+"\n"), "Success!")
	return err
}

// DelCrtList removes the line of certificate path from a loaded crt-list.
func (r *Runtime) DelCrtList(ctx context.Context, list, path string) error {
	_, err := r.expect(ctx, "del ssl crt-list "+list+" "+path, nil, "deleted in crtlist")
	return err
}

// CrtListEntry is one line of a loaded crt-list.
type CrtListEntry struct {
	Cert string
	SNIs []string // SNI filters; "[...]" SSL options are skipped
}

// ShowCrtList reads a loaded crt-list's lines.
func (r *Runtime) ShowCrtList(ctx context.Context, list string) ([]CrtListEntry, error) {
	out, err := r.Command(ctx, "show ssl crt-list "+list, nil)
	if err != nil {
		return nil, err
	}
	// the list's lines follow a "# <list>" header; anything else is an
	// error message ("didn't find the specified filename")
	if !strings.HasPrefix(out, "# ") {
		return nil, &RefusedError{Command: "show ssl crt-list " + list, Answer: out}
	}
	var entries []CrtListEntry
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		e := CrtListEntry{Cert: f[0]}
		inOpts := false
		for _, w := range f[1:] {
			switch {
			case strings.HasPrefix(w, "["):
				inOpts = !strings.HasSuffix(w, "]")
			case inOpts:
				inOpts = !strings.HasSuffix(w, "]")
			default:
				e.SNIs = append(e.SNIs, w)
			}
		}
		entries = append(entries, e)
	}
	return entries, nil
}
