package certs

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestPlanChoosesChallenges(t *testing.T) {
	mapped := []string{"shop.example.test", "*.shop.example.test", "*.lone.example.test", "plain.example.test",
		"db.internal.example.test", "internal.example.test", "notinternal.example.test", "Upper.Example.Test.", "10.0.0.1"}
	cases := []struct {
		name  string
		sel   Selection
		owner map[string]string
		want  map[string]string // key -> "names challenge" or "names blocked"
	}{
		{"with a provider", Selection{DNS: true, DNSSuffixes: []string{"Internal.Example.Test."}}, nil, map[string]string{
			"shop.example.test":        "shop.example.test,*.shop.example.test dns-01",
			"*.lone.example.test":      "*.lone.example.test dns-01",
			"plain.example.test":       "plain.example.test http-01",
			"db.internal.example.test": "db.internal.example.test dns-01",
			"internal.example.test":    "internal.example.test dns-01",
			"notinternal.example.test": "notinternal.example.test http-01",
			"upper.example.test":       "upper.example.test http-01",
		}},
		// tenant B's wildcard over tenant A's name: A's name stays on
		// HTTP-01, alone, whatever B's zone allows
		{"a wildcard of another fragment", Selection{DNS: true}, map[string]string{
			"shop.example.test": "a", "*.shop.example.test": "b", "plain.example.test": "a",
		}, map[string]string{
			"shop.example.test":        "shop.example.test http-01",
			"*.shop.example.test":      "*.shop.example.test dns-01",
			"*.lone.example.test":      "*.lone.example.test dns-01",
			"plain.example.test":       "plain.example.test http-01",
			"db.internal.example.test": "db.internal.example.test http-01",
			"internal.example.test":    "internal.example.test http-01",
			"notinternal.example.test": "notinternal.example.test http-01",
			"upper.example.test":       "upper.example.test http-01",
		}},
		{"without a provider", Selection{DNSSuffixes: []string{"internal.example.test"}}, nil, map[string]string{
			"shop.example.test":        "shop.example.test http-01",
			"*.shop.example.test":      "*.shop.example.test blocked",
			"*.lone.example.test":      "*.lone.example.test blocked",
			"plain.example.test":       "plain.example.test http-01",
			"db.internal.example.test": "db.internal.example.test http-01",
			"internal.example.test":    "internal.example.test http-01",
			"notinternal.example.test": "notinternal.example.test http-01",
			"upper.example.test":       "upper.example.test http-01",
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := map[string]string{}
			for key, w := range tc.sel.plan(mapped, tc.owner) {
				how := w.challenge
				if w.blocked != "" {
					how = "blocked"
				}
				got[key] = strings.Join(w.names, ",") + " " + how
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("plan:\n got %v\nwant %v", got, tc.want)
			}
		})
	}
}

func TestSANPairIsOneOrderWithALineEach(t *testing.T) {
	r := newRig(t, policy(), "")
	r.m.Selection = Selection{DNS: true}
	r.m.SetDomains([]string{"shop.example.test", "*.shop.example.test", "www.example.test"}, nil, nil)
	r.step()
	if got := fmt.Sprint(r.iss.orders, r.iss.chals); got != "[shop.example.test,*.shop.example.test www.example.test] [dns-01 http-01]" &&
		got != "[www.example.test shop.example.test,*.shop.example.test] [http-01 dns-01]" {
		t.Fatalf("orders %s, want one dns-01 order for the pair and one http-01 order", got)
	}
	d := r.domain("shop.example.test")
	if d.Condition(r.now) != "valid" || d.Challenge != DNS01 || !slices.Equal(d.Covers, []string{"shop.example.test", "*.shop.example.test"}) {
		t.Errorf("pair: %s, challenge %s, covers %v", d.Condition(r.now), d.Challenge, d.Covers)
	}
	if _, ok := r.m.Snapshot().Domains["*.shop.example.test"]; ok {
		t.Error("the wildcard of the pair has a state of its own")
	}
	pem := filepath.Join(r.dir, "certs/shop.example.test.pem")
	list, _ := os.ReadFile(filepath.Join(r.dir, "certs/crt-list"))
	want := pem + " shop.example.test\n" + pem + " *.shop.example.test\n" + filepath.Join(r.dir, "certs/www.example.test.pem") + " www.example.test\n"
	if string(list) != want {
		t.Errorf("crt-list:\n%s\nwant:\n%s", list, want)
	}
	if got := r.loader.loaded[pem]; got != "shop.example.test,*.shop.example.test" {
		t.Errorf("hot-loaded for %q, want both names", got)
	}
	// the wildcard leaves the map: no new order; the certificate serves
	// both names until its renewal, which asks for the plain name alone
	r.m.SetDomains([]string{"shop.example.test", "www.example.test"}, nil, nil)
	r.step()
	if r.iss.count() != 2 {
		t.Errorf("orders %v after the wildcard left, want no new one", r.iss.orders)
	}
	r.now = d.RenewAt
	r.step()
	if last := r.iss.orders[len(r.iss.orders)-2:]; !slices.Contains(last, "shop.example.test") {
		t.Errorf("orders %v, want the renewal for the plain name alone", r.iss.orders)
	}
	list, _ = os.ReadFile(filepath.Join(r.dir, "certs/crt-list"))
	if strings.Contains(string(list), "*.shop") || !strings.Contains(string(list), "shop.example.test") {
		t.Errorf("crt-list after the renewal without the wildcard:\n%s", list)
	}
	// a plain name gains a wildcard: a new pair order
	r.m.SetDomains([]string{"shop.example.test", "*.shop.example.test", "www.example.test", "*.www.example.test"}, nil, nil)
	r.step()
	n := len(r.iss.orders)
	if last := r.iss.orders[n-2:]; !slices.Contains(last, "www.example.test,*.www.example.test") || !slices.Contains(last, "shop.example.test,*.shop.example.test") ||
		r.iss.chals[n-1] != DNS01 || r.iss.chals[n-2] != DNS01 {
		t.Errorf("orders %v %v, want dns-01 pair orders for www and for shop (whose wildcard came back)", r.iss.orders, r.iss.chals)
	}
}

func TestWildcardWithoutProviderSaysWhy(t *testing.T) {
	r := newRig(t, policy(), "")
	r.m.SetDomains([]string{"*.wild.example.test", "wild.example.test"}, []string{"*.wild.example.test"}, nil)
	r.step()
	next := r.step()
	if fmt.Sprint(r.iss.orders) != "[wild.example.test]" {
		t.Errorf("orders %v, want the plain name only", r.iss.orders)
	}
	d := r.domain("*.wild.example.test")
	if d.Condition(r.now) != "fallback" || !strings.Contains(d.Blocked, "no DNS-01 provider") {
		t.Errorf("wildcard: %s, %q", d.Condition(r.now), d.Blocked)
	}
	if !next.Equal(r.domain("wild.example.test").RenewAt) {
		t.Errorf("next wake %v: the blocked wildcard must not wake the manager", next)
	}
	// with a provider (a restart with new settings), it is ordered
	r.m = r.manager(policy())
	r.m.Selection = Selection{DNS: true}
	r.m.SetDomains([]string{"*.wild.example.test", "wild.example.test"}, nil, nil)
	r.step()
	if last := r.iss.orders[len(r.iss.orders)-1]; last != "wild.example.test,*.wild.example.test" {
		t.Errorf("orders %v, want the pair once a provider is configured", r.iss.orders)
	}
}
