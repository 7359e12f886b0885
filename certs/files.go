package certs

import (
	"bytes"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/google/renameio/v2"
	"golang.org/x/net/idna"
)

// ValidDomain reports whether name can have a certificate: a lower-case
// DNS name of at least two labels, or a wildcard "*." in front of one.
// IP addresses and single labels cannot.
func ValidDomain(name string) bool {
	host := strings.TrimPrefix(name, "*.")
	if strings.Count(host, ".") < 1 || len(host) > 253 || strings.ContainsAny(host, "*") {
		return false
	}
	ascii, err := idna.Lookup.ToASCII(host)
	if err != nil || ascii != host {
		return false
	}
	last := host[strings.LastIndexByte(host, '.')+1:]
	if _, err := strconv.Atoi(last); err == nil {
		return false // an IPv4 address
	}
	return true
}

// fileName is the certificate file of a domain: its name, with a wildcard
// written "_wildcard", which no DNS label can be.
func fileName(domain string) string {
	if rest, ok := strings.CutPrefix(domain, "*."); ok {
		return "_wildcard." + rest + ".pem"
	}
	return domain + ".pem"
}

// bundle is what HAProxy loads for one certificate: the chain, then the key.
func bundle(iss *Issued) []byte {
	var b bytes.Buffer
	b.Write(bytes.TrimSpace(iss.Chain))
	b.WriteByte('\n')
	b.Write(bytes.TrimSpace(iss.Key))
	b.WriteByte('\n')
	return b.Bytes()
}

// haproxyGID is the group HAProxy reads certificates as, -1 when there is
// no such group or we may not hand files to it.
func haproxyGID() int {
	if os.Geteuid() != 0 {
		return -1
	}
	g, err := user.LookupGroup("haproxy")
	if err != nil {
		return -1
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return -1
	}
	return gid
}

// writeSecret writes data atomically with mode 0640, group haproxy when
// there is one.
func writeSecret(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	t, err := renameio.NewPendingFile(path, renameio.WithPermissions(0o640), renameio.WithTempDir(filepath.Dir(path)))
	if err != nil {
		return err
	}
	defer t.Cleanup()
	if _, err := t.Write(data); err != nil {
		return err
	}
	if gid := haproxyGID(); gid >= 0 {
		if err := t.Chown(-1, gid); err != nil {
			return fmt.Errorf("give %s to group haproxy: %w", path, err)
		}
	}
	return t.CloseAtomicallyReplace()
}

// crtList renders the crt-list: one line per name a certificate serves
// (a SAN pair has two), its file and the name, sorted by name so the file
// changes only when the set does.
func crtList(dir string, st *State) []byte {
	var b bytes.Buffer
	for _, d := range st.Sorted() {
		for _, name := range d.served() {
			fmt.Fprintf(&b, "%s %s\n", filepath.Join(dir, d.File), name)
		}
	}
	return b.Bytes()
}
