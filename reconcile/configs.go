package reconcile

import (
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"strings"

	"haproxy-config/assemble"
)

// A daemon validates nearly the same set again and again: the API's writer
// checks what is stored before each group of changes, and the loop what it
// publishes. When the config of a set is one haproxy -c accepted, build
// need not assemble it to find that out: assemble.Build's config is made
// of the base's text and each fragment's name and config part, in name
// order, and nothing else, so those identify it (configID). The engines
// sharing a parse cache remember which configs they built, by that
// identity: its digest (what the known-valid cache is keyed by) and
// whether it reads the host map as plain strings.

// builtConfig is what build learnt of a config it assembled.
type builtConfig struct {
	id, digest [sha256.Size]byte
	asStrings  bool // mapReadAsStrings
}

// keepBuilt is how many configs the cache remembers: the live set's and
// those of the changes tried on it.
const keepBuilt = 8

// configID identifies the config assemble.Build makes of base and frags,
// without making it. ok is false when two fragments have one name, which
// no set validated has.
func configID(base *assemble.Base, frags []*assemble.Fragment) (id [sha256.Size]byte, ok bool) {
	sorted := slices.SortedFunc(slices.Values(frags), func(a, b *assemble.Fragment) int { return strings.Compare(a.Name, b.Name) })
	h := sha256.New()
	buf := binary.AppendUvarint(nil, uint64(len(base.Text)))
	h.Write(buf)
	h.Write(base.Text)
	for i, f := range sorted {
		if i > 0 && sorted[i-1].Name == f.Name {
			return id, false
		}
		conf := sha256.Sum256(f.Conf)
		buf = binary.AppendUvarint(buf[:0], uint64(len(f.Name)))
		buf = append(buf, f.Name...)
		h.Write(append(buf, conf[:]...))
	}
	h.Sum(id[:0])
	return id, true
}

// built returns what the cache remembers of the config id, if it does.
func (c *ParseCache) built(id [sha256.Size]byte) (builtConfig, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, b := range c.configs {
		if b.id == id {
			return b, true
		}
	}
	return builtConfig{}, false
}

// rememberBuilt records a config build assembled, newest first.
func (c *ParseCache) rememberBuilt(b builtConfig) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.configs = slices.DeleteFunc(c.configs, func(o builtConfig) bool { return o.id == b.id })
	c.configs = slices.Insert(c.configs, 0, b)
	c.configs = c.configs[:min(len(c.configs), keepBuilt)]
}
