package tests

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"haproxy-config/internal/testkit"
	"haproxy-config/statedir"
)

// The tenant policy end to end: every hostile case of the corpus refused
// through apply (exit 4, at its own file and line, nothing changed) and
// quarantined when copied straight into the watched directory (the live
// configuration never holds it); every benign case accepted and live.

// policyEnv is the installation's environment with the default policy:
// newInstall allows loopback servers for the other tests, the corpus does
// not, unless a case's own settings say so.
func policyEnv(in *install, settings map[string]string) []string {
	env := slices.DeleteFunc(slices.Clone(in.env), func(kv string) bool {
		return strings.HasPrefix(kv, "HAPROXY_CONFIG_ALLOW_NETWORKS=")
	})
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		env = append(env, k+"="+settings[k])
	}
	return env
}

// mergeable tells a case whose settings one daemon can share with the
// others: section kinds and domain owners add up, but a case that allows
// loopback servers or moves a listener needs an installation of its own
// (the apply test has one per case).
func mergeable(c policyCase) bool {
	for k := range c.Settings {
		if k != "HAPROXY_CONFIG_ALLOW_SECTIONS" && k != "HAPROXY_CONFIG_DOMAIN_OWNERS" {
			return false
		}
	}
	return true
}

// unionSettings merges the cases' settings for one daemon: section kinds
// are added up, domain owners joined (with a catch-all so that unbound
// names map test domains as before).
func unionSettings(cases []policyCase) map[string]string {
	kinds := map[string]bool{}
	owners := []string{"*=example.test"}
	for _, c := range cases {
		for k, v := range c.Settings {
			switch k {
			case "HAPROXY_CONFIG_ALLOW_SECTIONS":
				for _, kind := range strings.Split(v, ",") {
					kinds[kind] = true
				}
			case "HAPROXY_CONFIG_DOMAIN_OWNERS":
				owners = append(owners, v)
			}
		}
	}
	out := map[string]string{"HAPROXY_CONFIG_DOMAIN_OWNERS": strings.Join(owners, " ")}
	if len(kinds) > 0 {
		list := make([]string, 0, len(kinds))
		for k := range kinds {
			list = append(list, k)
		}
		slices.Sort(list)
		out["HAPROXY_CONFIG_ALLOW_SECTIONS"] = strings.Join(list, ",")
	}
	return out
}

// refusedAt reports whether one of the messages points at the case's
// refusal: its part's file and line, and its word.
func (c *policyCase) refusedAt(cfgPath, mapPath string, messages []string) bool {
	file := cfgPath
	if c.Refused.Part == "map" {
		file = mapPath
	}
	where := fmt.Sprintf("%s:%d:", file, c.Refused.Line)
	for _, m := range messages {
		if strings.Contains(m, where) && strings.Contains(m, c.Refused.Word) {
			return true
		}
	}
	return false
}

// storeState is what a refused change must leave as it was: the fragment
// store and the state directory (but for scratch candidates).
func storeState(t *testing.T, in *install) map[string]string {
	t.Helper()
	files := map[string]string{}
	for _, dir := range []string{in.fragmentsDir(), in.stateDir()} {
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		for rel, data := range snapshot(t, dir) {
			if !strings.HasPrefix(rel, statedir.Candidates+"/") && rel != statedir.Validated && rel != statedir.StoreLock {
				files[filepath.Join(dir, rel)] = data
			}
		}
	}
	return files
}

func TestHostileCorpusRefusedByApply(t *testing.T) {
	testkit.RequireHaproxy(t)
	cases := loadPolicyCorpus(t, hostileDir)
	in := newInstall(t)
	// an incumbent tenant whose objects the hostile cases reach for
	src := t.TempDir()
	mustRun(t, policyEnv(in, nil), "", "apply", "shop",
		writeFile(t, filepath.Join(src, "shop.cfg"), backendConf("shop_web", "shop")),
		writeFile(t, filepath.Join(src, "shop.map"), "shop.example.com shop_web\n"))
	before := storeState(t, in)
	for _, c := range cases {
		t.Run(c.File, func(t *testing.T) {
			cfg := filepath.Join(src, c.File+".cfg")
			hosts := filepath.Join(src, c.File+".map")
			if err := os.WriteFile(cfg, c.Conf, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(hosts, c.Map, 0o644); err != nil {
				t.Fatal(err)
			}
			stdout, stderr, code := run(t, append(policyEnv(in, c.Settings), c.Env...), "", "apply", c.Fragment, cfg, hosts)
			if code != 4 {
				t.Fatalf("apply: exit %d, want 4 (%s)\nstdout:\n%s\nstderr:\n%s", code, c.Attack, stdout, stderr)
			}
			if !c.refusedAt(cfg, hosts, strings.Split(stderr, "\n")) {
				t.Errorf("refused, but not at %s line %d naming %q:\n%s", c.Refused.Part, c.Refused.Line, c.Refused.Word, stderr)
			}
			if after := storeState(t, in); !maps.Equal(before, after) {
				t.Errorf("a refused apply changed the store or the state")
			}
		})
	}
}

func TestHostileCorpusQuarantinedByWatch(t *testing.T) {
	testkit.RequireHaproxy(t)
	cases := slices.DeleteFunc(loadPolicyCorpus(t, hostileDir), func(c policyCase) bool { return !mergeable(c) })
	in := newInstall(t)
	in.env = policyEnv(in, unionSettings(cases))
	in.startDaemon(t, "HAPROXY_CONFIG_WAIT_MIN=50ms")
	src := t.TempDir()
	mustRun(t, in.env, "", "apply", "--wait", "shop",
		writeFile(t, filepath.Join(src, "shop.cfg"), backendConf("shop_web", "shop")),
		writeFile(t, filepath.Join(src, "shop.map"), "shop.example.com shop_web\n"))
	live, err := os.ReadFile(in.liveConfig())
	if err != nil {
		t.Fatal(err)
	}
	// all of them at once, as a copy by Ansible would land
	frag := in.fragmentsDir()
	for _, c := range cases {
		writeFile(t, filepath.Join(frag, c.Fragment+".map"), string(c.Map))
		writeFile(t, filepath.Join(frag, c.Fragment+".cfg"), string(c.Conf))
	}
	eventually(t, 60*time.Second, "every hostile fragment quarantined", func() error {
		st := in.status(t)
		for _, c := range cases {
			if st.Quarantine(c.Fragment) == nil {
				return fmt.Errorf("%s (%s) is not quarantined", c.Fragment, c.File)
			}
		}
		return nil
	})
	st := in.status(t)
	for _, c := range cases {
		q := st.Quarantine(c.Fragment)
		cfg, hosts := filepath.Join(frag, c.Fragment+".cfg"), filepath.Join(frag, c.Fragment+".map")
		if !c.refusedAt(cfg, hosts, q.Errors) {
			t.Errorf("%s quarantined, but not at %s line %d naming %q: %q", c.File, c.Refused.Part, c.Refused.Line, c.Refused.Word, q.Errors)
		}
		if data, err := os.ReadFile(cfg); err != nil || string(data) != string(c.Conf) {
			t.Errorf("%s: the quarantined file was touched", c.File)
		}
	}
	now, err := os.ReadFile(in.liveConfig())
	if err != nil {
		t.Fatal(err)
	}
	if string(now) != string(live) {
		t.Errorf("the live configuration changed although every new fragment is hostile")
	}
	in.expectBody(t, "shop.example.com", "shop")
}

func TestBenignCorpusAccepted(t *testing.T) {
	testkit.RequireHaproxy(t)
	cases := loadPolicyCorpus(t, benignDir)
	in := newInstall(t)
	in.env = policyEnv(in, unionSettings(cases))
	in.startDaemon(t)
	src := t.TempDir()
	for _, c := range cases {
		cfg := writeFile(t, filepath.Join(src, c.File+".cfg"), string(c.Conf))
		hosts := writeFile(t, filepath.Join(src, c.File+".map"), string(c.Map))
		if _, stderr, code := run(t, in.env, "", "apply", c.Fragment, cfg, hosts); code != 0 {
			t.Errorf("%s (%s): apply exit %d\n%s", c.File, c.Purpose, code, stderr)
		}
	}
	mustRun(t, in.env, "", "apply", "--wait", "last",
		writeFile(t, filepath.Join(src, "last.cfg"), backendConf("last_web", "last")),
		writeFile(t, filepath.Join(src, "last.map"), "last.example.test last_web\n"))
	st := in.status(t)
	if len(st.Quarantined) != 0 {
		t.Errorf("quarantined: %+v", st.Quarantined)
	}
	if st.Live == nil || st.Live.Fragments != len(cases)+1 {
		t.Errorf("live %+v, want all %d benign fragments and the last one", st.Live, len(cases))
	}
	in.expectBody(t, "last.example.test", "last")
}

// TestBadUpdateKeepsServing: a live fragment overwritten in the store by a
// version that fails keeps serving its last good version, never falling
// through to another tenant's wildcard, until it is fixed.
func TestBadUpdateKeepsServing(t *testing.T) {
	in := newInstall(t)
	in.startDaemon(t, "HAPROXY_CONFIG_WAIT_MIN=50ms")
	src := t.TempDir()
	mustRun(t, in.env, "", "apply", "--wait", "wild",
		writeFile(t, filepath.Join(src, "wild.cfg"), backendConf("wild_web", "wild")),
		writeFile(t, filepath.Join(src, "wild.map"), "*.example.test wild_web\n"))
	mustRun(t, in.env, "", "apply", "--wait", "shop",
		writeFile(t, filepath.Join(src, "shop.cfg"), backendConf("shop_web", "shop v1")),
		writeFile(t, filepath.Join(src, "shop.map"), "shop.example.test shop_web\n"))
	in.expectBody(t, "shop.example.test", "shop v1")
	for _, bad := range []string{
		"backend shop_web\n    http-request return status 200 content-type text/plain lf-string \"%[env(HOME)]\"\n",
		"backend shop_web\n    hash-type bogus\n",
	} {
		writeFile(t, filepath.Join(in.fragmentsDir(), "shop.cfg"), bad)
		eventually(t, 10*time.Second, "the bad version quarantined", func() error {
			if q := in.status(t).Quarantine("shop"); q == nil || q.LastGood == "" {
				return errNotYet
			}
			return nil
		})
		in.expectBody(t, "shop.example.test", "shop v1")
	}
	out, _, code := run(t, in.env, "", "status")
	if code != 0 || !strings.Contains(out, "the version before it stays live") {
		t.Errorf("status (exit %d) does not say the last good version stays live:\n%s", code, out)
	}
	writeFile(t, filepath.Join(in.fragmentsDir(), "shop.cfg"), backendConf("shop_web", "shop v2"))
	eventually(t, 10*time.Second, "the fixed version live", func() error {
		if _, body, err := in.get("shop.example.test", "/"); err != nil || body != "shop v2" {
			return fmt.Errorf("%q %v", body, err)
		}
		return nil
	})
}
