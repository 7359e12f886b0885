package certs

import (
	"fmt"
	"testing"

	"github.com/go-acme/lego/v4/acme"
)

// TestRefusedReplaces: an order naming the certificate it replaces is
// made again without when the CA refuses that order's request, but not
// for its rate limits, a bad nonce, or a problem with another request.
func TestRefusedReplaces(t *testing.T) {
	const newOrder = "https://ca.test/order-plz"
	a := &ACME{newOrder: newOrder}
	for _, c := range []struct {
		url, problem string
		status       int
		want         bool
	}{
		{newOrder, "urn:ietf:params:acme:error:unauthorized", 403, true},
		{newOrder, "urn:ietf:params:acme:error:malformed", 400, true},
		{newOrder, "urn:ietf:params:acme:error:malformed", 404, true},
		// Pebble, when it does not match the certificate to its order
		{newOrder, serverInternalErr, 500, true},
		{newOrder, acme.RateLimitedErr, 429, false},
		{newOrder, acme.BadNonceErr, 400, false},
		{newOrder, "urn:ietf:params:acme:error:serverInternal", 503, false},
		{"https://ca.test/finalize/1", "urn:ietf:params:acme:error:unauthorized", 403, false},
	} {
		err := fmt.Errorf("obtain: %w", &acme.ProblemDetails{URL: c.url, Type: c.problem, HTTPStatus: c.status})
		if got := a.refusedReplaces(err); got != c.want {
			t.Errorf("%d %s at %s: refused %v, want %v", c.status, c.problem, c.url, got, c.want)
		}
	}
}
