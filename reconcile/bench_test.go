package reconcile

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"

	"haproxy-config/assemble"
	"haproxy-config/certs"
	"haproxy-config/fragments"
)

var benchSizes = []int{10, 1000, 10000}

// benchFragment is a typical tenant: one backend with two servers and a
// health check, five domains.
func benchFragment(i int) (name string, conf, hostMap []byte) {
	name = fmt.Sprintf("tenant%05d", i)
	conf = fmt.Appendf(nil, "backend %s_web\n    balance roundrobin\n    option httpchk GET /health\n    server s1 127.0.0.1:%d check\n    server s2 127.0.0.1:%d check backup\n",
		name, 10000+i%50000, 10001+i%50000)
	for d := range 5 {
		hostMap = fmt.Appendf(hostMap, "d%d.%s.example.com %s_web\n", d, name, name)
	}
	return name, conf, hostMap
}

// benchPolicy lets the benchmark's servers be on loopback ports.
var benchPolicy = fragments.Policy{AllowNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}

func benchFragments(b *testing.B, n int) []*assemble.Fragment {
	b.Helper()
	frags := make([]*assemble.Fragment, n)
	for i := range n {
		name, conf, hostMap := benchFragment(i)
		f, ps := fragments.Parse(name, name+".cfg", conf, name+".map", hostMap, benchPolicy)
		if len(ps) > 0 {
			b.Fatal(ps)
		}
		frags[i] = f
	}
	return frags
}

// BenchmarkParse is the per-fragment checks of every fragment in the store
// (name, encoding, map with IDNA, policy), as a full reload pays them.
func BenchmarkParse(b *testing.B) {
	for _, n := range benchSizes {
		inputs := make([][3][]byte, n)
		for i := range n {
			name, conf, hostMap := benchFragment(i)
			inputs[i] = [3][]byte{[]byte(name), conf, hostMap}
		}
		b.Run(fmt.Sprintf("fragments=%d", n), func(b *testing.B) {
			for b.Loop() {
				for _, in := range inputs {
					name := string(in[0])
					if _, ps := fragments.Parse(name, name, in[1], name, in[2], benchPolicy); len(ps) > 0 {
						b.Fatal(ps)
					}
				}
			}
		})
	}
}

// BenchmarkAssemble is the cross-fragment checks plus the build of
// haproxy.cfg, the host map and the source map.
func BenchmarkAssemble(b *testing.B) {
	e := newEngine(b, nil)
	base, err := e.Base()
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range benchSizes {
		frags := benchFragments(b, n)
		b.Run(fmt.Sprintf("fragments=%d", n), func(b *testing.B) {
			for b.Loop() {
				if ps := assemble.Check(base, frags, assemble.Options{}); len(ps) > 0 {
					b.Fatal(ps)
				}
				assemble.Build(base, frags)
			}
		})
	}
}

// BenchmarkHaproxyCheck is "haproxy -c" on the same assembled configs: the
// yardstick for the two benchmarks above.
func BenchmarkHaproxyCheck(b *testing.B) {
	e := newEngine(b, nil)
	if _, err := e.Validator.Binary(); err != nil {
		b.Skip("SKIPPING: ", err)
	}
	base, err := e.Base()
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range benchSizes {
		out := assemble.Build(base, benchFragments(b, n))
		dir := filepath.Join(b.TempDir(), "candidate")
		cfg, _, err := e.writeTree(dir, out)
		if err != nil {
			b.Fatal(err)
		}
		if err := certs.EnsureFiles(e.S.FallbackCert(), e.S.CrtList()); err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("fragments=%d", n), func(b *testing.B) {
			for b.Loop() {
				res, err := e.Validator.Check(context.Background(), cfg)
				if err != nil || !res.Valid {
					b.Fatal(err, res)
				}
			}
		})
	}
}
