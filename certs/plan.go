package certs

import (
	"slices"
	"strings"
)

// Selection decides which challenge proves which name.
type Selection struct {
	DNS bool // a DNS-01 provider is configured
	// plain names equal to or under these suffixes use DNS-01 too (with a
	// provider); the rest use HTTP-01
	DNSSuffixes []string
}

// NoDNSProvider is why a wildcard gets no certificate without a provider.
const NoDNSProvider = "a wildcard needs DNS-01 and no DNS-01 provider is configured (ACME_DNS_PROVIDER): the fallback certificate is served"

// want is one certificate to keep: the names it covers, the challenge
// that proves them, or why none is ordered.
type want struct {
	names     []string
	challenge string
	blocked   string
}

// challengeFor is the challenge of a plain name.
func (s Selection) challengeFor(name string) string {
	if s.DNS && slices.ContainsFunc(s.DNSSuffixes, func(suffix string) bool {
		suffix = strings.ToLower(strings.Trim(suffix, "."))
		return name == suffix || strings.HasSuffix(name, "."+suffix)
	}) {
		return DNS01
	}
	return HTTP01
}

// plan groups the wanted names into certificates, keyed by the state's
// name for each: a name and its wildcard, both wanted and mapped by the
// same fragment (owner names each name's fragment; nil: one owner for
// all), make one certificate (a SAN pair under the plain name, one order,
// one crt-list line each); a wildcard alone is keyed by itself, so that one
// tenant's wildcard cannot move another tenant's name to DNS-01. Wildcards
// need DNS-01; without a provider they are listed with the reason and
// never ordered.
func (s Selection) plan(names []string, owner map[string]string) map[string]want {
	sameOwner := func(a, b string) bool { return owner == nil || (owner[a] != "" && owner[a] == owner[b]) }
	set := map[string]bool{}
	for _, n := range names {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		if ValidDomain(n) {
			set[n] = true
		}
	}
	out := map[string]want{}
	for n := range set {
		if base, wild := strings.CutPrefix(n, "*."); wild {
			switch {
			case !s.DNS:
				out[n] = want{names: []string{n}, blocked: NoDNSProvider}
			case !set[base] || !sameOwner(base, n):
				out[n] = want{names: []string{n}, challenge: DNS01}
			}
			continue
		}
		w := want{names: []string{n}, challenge: s.challengeFor(n)}
		if s.DNS && set["*."+n] && sameOwner(n, "*."+n) {
			w.names, w.challenge = append(w.names, "*."+n), DNS01
		}
		out[n] = w
	}
	return out
}
