package settings

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"haproxy-config/assemble"
)

// env is a fake environment for Source.Getenv.
func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := vars[k]
		return v, ok
	}
}

// writeFile writes a defaults file in a fresh temporary directory.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "haproxy-config")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// acmeDefaults are the built-in certificate settings.
var acmeDefaults = ACME{
	Directory:   LetsEncrypt,
	KeyType:     "ec256",
	CheckDNS:    true,
	ARI:         true,
	Orders:      300,
	OrderWindow: 3 * time.Hour,
	InFlight:    4,
	BackoffMin:  5 * time.Minute,
	BackoffMax:  6 * time.Hour,
	RemoveGrace: 24 * time.Hour,
	DNS: DNS{TSIGAlgorithm: "hmac-sha256", PropagationTimeout: 2 * time.Minute, PollingInterval: 2 * time.Second,
		TTL: time.Minute},
}

// healthDefaults are the built-in settings of status --check and announce.
var healthDefaults = Health{CertWarning: 14 * 24 * time.Hour, CertCritical: 7 * 24 * time.Hour, Pending: 5 * time.Minute,
	CheckPort: 80, Interval: time.Second, Rise: 3, Fall: 3}

// fleetDefaults are the built-in fleet settings under root: fleet mode off.
func fleetDefaults(root string) Fleet {
	return Fleet{Prefix: "/haproxy-config/default", SealKey: filepath.Join(root, "etc/haproxy-config/fleet.key"),
		Node: hostName(""), LockTTL: 15 * time.Second, Heartbeat: 10 * time.Second}
}

// builtIn are the settings with every built-in default under root.
func builtIn(root, defaultsFile string) *Settings {
	return &Settings{
		Root:             root,
		DefaultsFile:     defaultsFile,
		BaseConfig:       filepath.Join(root, "etc/haproxy-config/base.cfg"),
		BaseIsDefault:    true,
		FragmentsDir:     filepath.Join(root, "etc/haproxy-config/fragments"),
		OutputConfig:     filepath.Join(root, "var/lib/haproxy-config/live/haproxy.cfg"),
		OutputMap:        filepath.Join(root, "var/lib/haproxy-config/live/hosts.map"),
		StateDir:         filepath.Join(root, "var/lib/haproxy-config"),
		Haproxy:          "haproxy",
		RuntimeSocket:    filepath.Join(root, "run/haproxy-config/admin.sock"),
		APISocket:        filepath.Join(root, "var/lib/haproxy-config/api.sock"),
		CertsDir:         filepath.Join(root, "var/lib/haproxy-config/certs"),
		HTTPAddr:         ":80",
		HTTPSAddr:        ":443",
		ChallengeAddr:    "127.0.0.1:8402",
		CrossRefs:        false,
		MaxFragmentBytes: 262144,
		KeepGenerations:  20,
		StatusAddr:       "127.0.0.1:8404",
		MasterSocket:     filepath.Join(root, "run/haproxy-config/master.sock"),
		Reload:           "managed",
		ReloadUnit:       "haproxy.service",
		WaitMin:          500 * time.Millisecond,
		WaitMax:          5 * time.Second,
		ReloadInterval:   2 * time.Second,
		ReloadBurst:      3,
		Rescan:           time.Minute,
		VerifyTimeout:    30 * time.Second,
		CheckUser:        "haproxy",
		CheckTimeout:     time.Minute,
		Health:           healthDefaults,
		ACME:             acmeDefaults,
		Fleet:            fleetDefaults(root),
		Raw:              rawDefaults(root),
	}
}

// rawDefaults is every setting's default as text.
func rawDefaults(root string) map[string]string {
	raw := map[string]string{}
	for _, k := range Keys {
		raw[k.Name] = k.Default(root)
	}
	return raw
}

func TestHealthSettings(t *testing.T) {
	s, err := Load(Source{Getenv: env(map[string]string{
		"HAPROXY_CONFIG_ROOT":                     t.TempDir(),
		"HAPROXY_CONFIG_ANNOUNCE_ADDRESSES":       "192.0.2.10, 2001:db8::1,::ffff:192.0.2.10",
		"HAPROXY_CONFIG_ANNOUNCE_CHECK_PATH":      "/haproxy-monitor",
		"HAPROXY_CONFIG_HEALTH_CERT_WARNING_DAYS": "30",
	})})
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::1")}
	if !slices.Equal(s.Health.Addresses, want) {
		t.Errorf("addresses %v, want %v (the mapped IPv4 one is the first)", s.Health.Addresses, want)
	}
	if s.Health.CheckPath != "/haproxy-monitor" || s.Health.CertWarning != 30*24*time.Hour {
		t.Errorf("health settings %+v", s.Health)
	}
}

func TestLoadBuiltInDefaults(t *testing.T) {
	empty := writeFile(t, "")
	s, err := Load(Source{Getenv: env(map[string]string{"HAPROXY_CONFIG_DEFAULTS": empty})})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := &Settings{
		Root:             "/",
		DefaultsFile:     empty,
		BaseConfig:       "/etc/haproxy-config/base.cfg",
		BaseIsDefault:    true,
		FragmentsDir:     "/etc/haproxy-config/fragments",
		OutputConfig:     "/var/lib/haproxy-config/live/haproxy.cfg",
		OutputMap:        "/var/lib/haproxy-config/live/hosts.map",
		StateDir:         "/var/lib/haproxy-config",
		Haproxy:          "haproxy",
		RuntimeSocket:    "/run/haproxy-config/admin.sock",
		APISocket:        "/var/lib/haproxy-config/api.sock",
		CertsDir:         "/var/lib/haproxy-config/certs",
		HTTPAddr:         ":80",
		HTTPSAddr:        ":443",
		ChallengeAddr:    "127.0.0.1:8402",
		MaxFragmentBytes: 262144,
		KeepGenerations:  20,
		StatusAddr:       "127.0.0.1:8404",
		MasterSocket:     "/run/haproxy-config/master.sock",
		Reload:           "managed",
		ReloadUnit:       "haproxy.service",
		WaitMin:          500 * time.Millisecond,
		WaitMax:          5 * time.Second,
		ReloadInterval:   2 * time.Second,
		ReloadBurst:      3,
		Rescan:           time.Minute,
		VerifyTimeout:    30 * time.Second,
		CheckUser:        "haproxy",
		CheckTimeout:     time.Minute,
		Health:           healthDefaults,
		ACME:             acmeDefaults,
		Fleet:            fleetDefaults("/"),
		Raw:              rawDefaults("/"),
	}
	if !reflect.DeepEqual(s, want) {
		t.Errorf("Load:\n got %+v\nwant %+v", s, want)
	}
	if got, want := s.CrtList(), "/var/lib/haproxy-config/certs/crt-list"; got != want {
		t.Errorf("CrtList() = %q, want %q", got, want)
	}
	if got, want := s.FallbackCert(), "/var/lib/haproxy-config/certs/fallback.pem"; got != want {
		t.Errorf("FallbackCert() = %q, want %q", got, want)
	}
}

func TestLoadRoot(t *testing.T) {
	root := t.TempDir() // holds no defaults file: the default location may be missing
	other := t.TempDir()
	tests := []struct {
		name string
		src  Source
		root string
	}{
		{"environment", Source{Getenv: env(map[string]string{"HAPROXY_CONFIG_ROOT": root})}, root},
		{"flag", Source{Flags: map[string]string{"root": root}, Getenv: env(nil)}, root},
		{"flag beats environment", Source{Flags: map[string]string{"root": root}, Getenv: env(map[string]string{"HAPROXY_CONFIG_ROOT": other})}, root},
		{"empty root is /", Source{Getenv: env(map[string]string{"HAPROXY_CONFIG_ROOT": "", "HAPROXY_CONFIG_DEFAULTS": writeFile(t, "")})}, "/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Load(tt.src)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			defaultsFile := filepath.Join(tt.root, "etc/default/haproxy-config")
			if tt.root == "/" {
				defaultsFile = s.DefaultsFile // named explicitly above
			}
			if want := builtIn(tt.root, defaultsFile); !reflect.DeepEqual(s, want) {
				t.Errorf("Load:\n got %+v\nwant %+v", s, want)
			}
		})
	}
}

func TestLoadRootDefaultsFile(t *testing.T) {
	// The defaults file at its default location under the root is read.
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc/default"), 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(root, "etc/default/haproxy-config")
	if err := os.WriteFile(path, []byte("HAPROXY_CONFIG_HTTP_ADDR=127.0.0.1:8080\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Load(Source{Getenv: env(map[string]string{"HAPROXY_CONFIG_ROOT": root})})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if s.DefaultsFile != path {
		t.Errorf("DefaultsFile = %q, want %q", s.DefaultsFile, path)
	}
	if s.HTTPAddr != "127.0.0.1:8080" {
		t.Errorf("HTTPAddr = %q, want the defaults file's 127.0.0.1:8080", s.HTTPAddr)
	}
	// The defaults file does not move the root or itself.
	if s.Root != root || s.StateDir != filepath.Join(root, "var/lib/haproxy-config") {
		t.Errorf("Root = %q, StateDir = %q", s.Root, s.StateDir)
	}
}

func TestLoadPrecedence(t *testing.T) {
	keys := []struct {
		key   string // Name of the setting
		flag  string
		vals  [4]string // flag, env, file, built-in default (as given)
		want  [4]any    // the parsed field for each source
		field func(*Settings) any
	}{
		{"BASE", "base", [4]string{"/f/base.cfg", "/e/base.cfg", "/d/base.cfg", ""},
			[4]any{"/f/base.cfg", "/e/base.cfg", "/d/base.cfg", "ROOT/etc/haproxy-config/base.cfg"},
			func(s *Settings) any { return s.BaseConfig }},
		{"FRAGMENTS", "fragments", [4]string{"/f", "/e", "/d", ""},
			[4]any{"/f", "/e", "/d", "ROOT/etc/haproxy-config/fragments"},
			func(s *Settings) any { return s.FragmentsDir }},
		{"OUTPUT", "output", [4]string{"/f", "/e", "/d", ""},
			[4]any{"/f", "/e", "/d", "ROOT/var/lib/haproxy-config/live/haproxy.cfg"},
			func(s *Settings) any { return s.OutputConfig }},
		{"MAP", "map", [4]string{"/f", "/e", "/d", ""},
			[4]any{"/f", "/e", "/d", "ROOT/var/lib/haproxy-config/live/hosts.map"},
			func(s *Settings) any { return s.OutputMap }},
		{"STATE", "state", [4]string{"/f", "/e", "/d", ""},
			[4]any{"/f", "/e", "/d", "ROOT/var/lib/haproxy-config"},
			func(s *Settings) any { return s.StateDir }},
		{"CERTS", "certs", [4]string{"/f", "/e", "/d", ""},
			[4]any{"/f", "/e", "/d", "ROOT/var/lib/haproxy-config/certs"},
			func(s *Settings) any { return s.CertsDir }},
		{"HAPROXY", "haproxy", [4]string{"/f/haproxy", "/e/haproxy", "/d/haproxy", ""},
			[4]any{"/f/haproxy", "/e/haproxy", "/d/haproxy", "haproxy"},
			func(s *Settings) any { return s.Haproxy }},
		{"RUNTIME_SOCKET", "runtime-socket", [4]string{"/f.sock", "/e.sock", "/d.sock", ""},
			[4]any{"/f.sock", "/e.sock", "/d.sock", "ROOT/run/haproxy-config/admin.sock"},
			func(s *Settings) any { return s.RuntimeSocket }},
		{"HTTP_ADDR", "http-addr", [4]string{":1", ":2", ":3", ""},
			[4]any{":1", ":2", ":3", ":80"},
			func(s *Settings) any { return s.HTTPAddr }},
		{"HTTPS_ADDR", "https-addr", [4]string{"[::1]:1", "[::1]:2", "[::1]:3", ""},
			[4]any{"[::1]:1", "[::1]:2", "[::1]:3", ":443"},
			func(s *Settings) any { return s.HTTPSAddr }},
		{"CHALLENGE_ADDR", "challenge-addr", [4]string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", ""},
			[4]any{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:8402"},
			func(s *Settings) any { return s.ChallengeAddr }},
		{"ALLOW_SECTIONS", "allow-sections", [4]string{"userlist", "cache, userlist", "userlist ,, cache", ""},
			[4]any{[]string{"userlist"}, []string{"cache", "userlist"}, []string{"userlist", "cache"}, []string(nil)},
			func(s *Settings) any { return s.AllowSections }},
		{"ALLOW_DIRECTIVES", "allow-directives", [4]string{"lua", "lua external-check", "external-check", ""},
			[4]any{[]string{"lua"}, []string{"lua", "external-check"}, []string{"external-check"}, []string(nil)},
			func(s *Settings) any { return s.AllowDirectives }},
		{"ALLOW_NETWORKS", "allow-networks", [4]string{"127.0.0.0/8", "10.1.2.3, ::1", "192.168.1.7/16", ""},
			[4]any{[]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, []netip.Prefix{netip.MustParsePrefix("10.1.2.3/32"), netip.MustParsePrefix("::1/128")},
				[]netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}, []netip.Prefix(nil)},
			func(s *Settings) any { return s.AllowNetworks }},
		{"EXPORTS", "exports", [4]string{"maint", "dns,staff", "a b", ""},
			[4]any{[]string{"maint"}, []string{"dns", "staff"}, []string{"a", "b"}, []string(nil)},
			func(s *Settings) any { return s.Exports }},
		{"CHECK_USER", "check-user", [4]string{"nobody", "root", "haproxy", ""},
			[4]any{"nobody", "root", "haproxy", "haproxy"},
			func(s *Settings) any { return s.CheckUser }},
		{"CHECK_TIMEOUT", "check-timeout", [4]string{"5s", "10s", "2m", ""},
			[4]any{5 * time.Second, 10 * time.Second, 2 * time.Minute, time.Minute},
			func(s *Settings) any { return s.CheckTimeout }},
		{"CROSS_REFS", "cross-refs", [4]string{"true", "false", "yes", ""},
			[4]any{true, false, true, false},
			func(s *Settings) any { return s.CrossRefs }},
		{"MAX_FRAGMENT_BYTES", "max-fragment-bytes", [4]string{"1", "2", "3", ""},
			[4]any{int64(1), int64(2), int64(3), int64(262144)},
			func(s *Settings) any { return s.MaxFragmentBytes }},
		{"KEEP_GENERATIONS", "keep-generations", [4]string{"1", "2", "3", ""},
			[4]any{1, 2, 3, 20},
			func(s *Settings) any { return s.KeepGenerations }},
	}
	layers := []struct {
		name       string
		flag, env  bool
		file       bool
		wantSource int // index into vals/want
	}{
		{"flag beats environment and file", true, true, true, 0},
		{"flag beats file", true, false, true, 0},
		{"flag alone", true, false, false, 0},
		{"environment beats file", false, true, true, 1},
		{"environment alone", false, true, false, 1},
		{"file alone", false, false, true, 2},
		{"built-in default", false, false, false, 3},
	}
	for _, k := range keys {
		for _, l := range layers {
			t.Run(k.key+"/"+l.name, func(t *testing.T) {
				root := t.TempDir()
				envVars := map[string]string{"HAPROXY_CONFIG_ROOT": root}
				flags := map[string]string{}
				content := "# test\n"
				if l.flag {
					flags[k.flag] = k.vals[0]
				}
				if l.env {
					envVars[EnvPrefix+k.key] = k.vals[1]
				}
				if l.file {
					content += EnvPrefix + k.key + "=" + k.vals[2] + "\n"
				}
				envVars["HAPROXY_CONFIG_DEFAULTS"] = writeFile(t, content)
				s, err := Load(Source{Flags: flags, Getenv: env(envVars)})
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				want := k.want[l.wantSource]
				if w, ok := want.(string); ok && strings.HasPrefix(w, "ROOT/") {
					want = filepath.Join(root, strings.TrimPrefix(w, "ROOT/"))
				}
				if got := k.field(s); !reflect.DeepEqual(got, want) {
					t.Errorf("got %#v, want %#v", got, want)
				}
				// Every other setting keeps its built-in default.
				def := builtIn(root, s.DefaultsFile)
				for _, other := range keys {
					if other.key == k.key {
						continue
					}
					if got, want := other.field(s), other.field(def); !reflect.DeepEqual(got, want) {
						t.Errorf("%s = %#v, want its default %#v", other.key, got, want)
					}
				}
			})
		}
	}
}

func TestLoadFlagGivenEmpty(t *testing.T) {
	// A flag given on the command line wins even when empty.
	root := t.TempDir()
	s, err := Load(Source{
		Flags:  map[string]string{"allow-sections": "", "haproxy": ""},
		Getenv: env(map[string]string{"HAPROXY_CONFIG_ROOT": root, "HAPROXY_CONFIG_ALLOW_SECTIONS": "userlist", "HAPROXY_CONFIG_HAPROXY": "/usr/sbin/haproxy"}),
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if s.AllowSections != nil || s.Haproxy != "" {
		t.Errorf("AllowSections = %q, Haproxy = %q; want both empty", s.AllowSections, s.Haproxy)
	}
}

func TestLoadUsesProcessEnvironment(t *testing.T) {
	root := t.TempDir()
	t.Setenv("HAPROXY_CONFIG_ROOT", root)
	t.Setenv("HAPROXY_CONFIG_KEEP_GENERATIONS", "7")
	s, err := Load(Source{})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if s.Root != root || s.KeepGenerations != 7 {
		t.Errorf("Root = %q, KeepGenerations = %d; want %q, 7", s.Root, s.KeepGenerations, root)
	}
}

func TestLoadBool(t *testing.T) {
	tests := []struct {
		v    string
		want bool
	}{
		{"1", true}, {"true", true}, {"TRUE", true}, {"yes", true}, {"On", true},
		{"0", false}, {"false", false}, {"False", false}, {"no", false}, {"OFF", false}, {"", false},
	}
	for _, tt := range tests {
		t.Run(tt.v, func(t *testing.T) {
			s, err := Load(Source{Getenv: env(map[string]string{"HAPROXY_CONFIG_ROOT": t.TempDir(), "HAPROXY_CONFIG_CROSS_REFS": tt.v})})
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if s.CrossRefs != tt.want {
				t.Errorf("CrossRefs = %v, want %v", s.CrossRefs, tt.want)
			}
		})
	}
}

func TestReadDefaultsFile(t *testing.T) {
	path := writeFile(t, strings.Join([]string{
		"# /etc/default/haproxy-config",
		"   # an indented comment",
		"",
		`export HAPROXY_CONFIG_HTTP_ADDR=":8080"`,
		`HAPROXY_CONFIG_HTTPS_ADDR=':8443'`,
		"  HAPROXY_CONFIG_STATE = /srv/state   ",
		"PATH=/usr/bin:/bin",
		`export OTHER_THING="x y"`,
		"GOMAXPROCS=2",
		`HAPROXY_CONFIG_ALLOW_SECTIONS="userlist, cache"`,
		`HAPROXY_CONFIG_HAPROXY="/usr/sbin/haproxy`,
		`HAPROXY_CONFIG_CERTS="/a'`,
		"HAPROXY_CONFIG_FRAGMENTS=",
		"HAPROXY_CONFIG_OUTPUT=/first",
		"HAPROXY_CONFIG_OUTPUT=/second",
		"HAPROXY_CONFIG_MAP=a=b",
		`HAPROXY_CONFIG_BASE=""`,
		"",
	}, "\n"))
	got, err := ReadDefaultsFile(path)
	if err != nil {
		t.Fatalf("ReadDefaultsFile: %v", err)
	}
	want := map[string]string{
		"HAPROXY_CONFIG_HTTP_ADDR":      ":8080",
		"HAPROXY_CONFIG_HTTPS_ADDR":     ":8443",
		"HAPROXY_CONFIG_STATE":          "/srv/state",
		"HAPROXY_CONFIG_ALLOW_SECTIONS": "userlist, cache",
		"HAPROXY_CONFIG_HAPROXY":        `"/usr/sbin/haproxy`, // unbalanced: kept
		"HAPROXY_CONFIG_CERTS":          `"/a'`,               // mismatched: kept
		"HAPROXY_CONFIG_FRAGMENTS":      "",
		"HAPROXY_CONFIG_OUTPUT":         "/second", // the last one wins
		"HAPROXY_CONFIG_MAP":            "a=b",     // split at the first '='
		"HAPROXY_CONFIG_BASE":           "",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ReadDefaultsFile:\n got %q\nwant %q", got, want)
	}

	// Load applies them below flags and environment.
	s, err := Load(Source{Getenv: env(map[string]string{"HAPROXY_CONFIG_DEFAULTS": path, "HAPROXY_CONFIG_HTTPS_ADDR": ":9443"})})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if s.HTTPAddr != ":8080" || s.HTTPSAddr != ":9443" || s.StateDir != "/srv/state" ||
		!reflect.DeepEqual(s.AllowSections, []string{"userlist", "cache"}) || s.OutputConfig != "/second" {
		t.Errorf("Load with the defaults file: %+v", s)
	}
	if s.BaseIsDefault || s.BaseConfig != "" {
		t.Errorf("BaseConfig = %q, BaseIsDefault = %v; want the file's empty value, not the default", s.BaseConfig, s.BaseIsDefault)
	}
}

func TestDefaultsFileErrors(t *testing.T) {
	tests := []struct {
		name    string
		content string
		line    int
		msg     string
	}{
		{"unknown setting", "# ok\nHAPROXY_CONFIG_HTTP_ADDR=:80\nHAPROXY_CONFIG_FOO=1\n", 3, "unknown setting HAPROXY_CONFIG_FOO"},
		{"unknown exported setting", "export HAPROXY_CONFIG_ROOT=/x\n", 1, "unknown setting HAPROXY_CONFIG_ROOT"},
		{"mistyped setting", "\n\nHAPROXY_CONFIG_KEEP_GENERATION=3\n", 3, "unknown setting HAPROXY_CONFIG_KEEP_GENERATION"},
		{"no equals sign", "HAPROXY_CONFIG_STATE=/s\nHAPROXY_CONFIG_HTTP_ADDR :80\n", 2, "expected KEY=VALUE"},
		{"no key", "# x\n=value\n", 2, "expected KEY=VALUE"},
		{"blank key", "  = value\n", 1, "expected KEY=VALUE"},
		{"bare word", "export\n", 1, "expected KEY=VALUE"},
		{"malformed line outside the prefix", "PATH /usr/bin\n", 1, "expected KEY=VALUE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, tt.content)
			want := fmt.Sprintf("%s:%d: %s", path, tt.line, tt.msg)
			_, err := ReadDefaultsFile(path)
			if err == nil || err.Error() != want {
				t.Errorf("ReadDefaultsFile: %v, want %q", err, want)
			}
			s, err := Load(Source{Getenv: env(map[string]string{"HAPROXY_CONFIG_DEFAULTS": path})})
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("Load = %+v, %v; want error containing %q", s, err, want)
			}
		})
	}
}

func TestDefaultsFileMissing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	for name, src := range map[string]Source{
		"environment": {Getenv: env(map[string]string{"HAPROXY_CONFIG_DEFAULTS": missing})},
		"flag":        {Flags: map[string]string{"defaults-file": missing}, Getenv: env(nil)},
		"under root":  {Getenv: env(map[string]string{"HAPROXY_CONFIG_ROOT": t.TempDir(), "HAPROXY_CONFIG_DEFAULTS": missing})},
	} {
		t.Run("named by "+name, func(t *testing.T) {
			s, err := Load(src)
			if err == nil {
				t.Fatalf("Load accepted a missing defaults file it was told to read: %+v", s)
			}
			if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
				t.Errorf("error %q, want a not-exist error naming %s", err, missing)
			}
		})
	}
	t.Run("default location", func(t *testing.T) {
		root := t.TempDir()
		s, err := Load(Source{Getenv: env(map[string]string{"HAPROXY_CONFIG_ROOT": root})})
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		if want := builtIn(root, filepath.Join(root, "etc/default/haproxy-config")); !reflect.DeepEqual(s, want) {
			t.Errorf("Load:\n got %+v\nwant %+v", s, want)
		}
	})
	t.Run("default location unreadable", func(t *testing.T) {
		// Only a missing file is fine: a directory in its place is not.
		root := t.TempDir()
		if err := os.MkdirAll(filepath.Join(root, "etc/default/haproxy-config"), 0o755); err != nil {
			t.Fatal(err)
		}
		if s, err := Load(Source{Getenv: env(map[string]string{"HAPROXY_CONFIG_ROOT": root})}); err == nil {
			t.Errorf("Load accepted a directory as defaults file: %+v", s)
		}
	})
}

func TestDomainOwnersFile(t *testing.T) {
	path := writeFile(t, "# who maps what\nshop=shop.example.com\nacme-*=acme.test\n")
	s, err := Load(Source{Getenv: env(map[string]string{"HAPROXY_CONFIG_ROOT": t.TempDir(), "HAPROXY_CONFIG_DOMAIN_OWNERS": path})})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.DomainOwners.String(); got != "acme-*=acme.test shop=shop.example.com" {
		t.Errorf("owners %q", got)
	}
}

func TestLoadBadValues(t *testing.T) {
	tests := []struct {
		name   string
		key    string // setting Name
		value  string
		origin string // "flag", "env" or "file"
		msg    string
	}{
		{"http addr without port", "HTTP_ADDR", "8080", "env", `"8080" is not HOST:PORT`},
		{"http addr host only", "HTTP_ADDR", "localhost", "flag", `"localhost" is not HOST:PORT`},
		{"https addr without port", "HTTPS_ADDR", "example.com", "file", `"example.com" is not HOST:PORT`},
		{"challenge addr ipv6 unbracketed", "CHALLENGE_ADDR", "::1:80", "env", `"::1:80" is not HOST:PORT`},
		{"cross refs maybe", "CROSS_REFS", "maybe", "env", `"maybe" is not a boolean`},
		{"cross refs maybe in the file", "CROSS_REFS", "maybe", "file", `"maybe" is not a boolean`},
		{"keep generations zero", "KEEP_GENERATIONS", "0", "env", "must be at least 1"},
		{"keep generations negative", "KEEP_GENERATIONS", "-3", "flag", "must be at least 1"},
		{"keep generations not a number", "KEEP_GENERATIONS", "ten", "file", `parsing "ten": invalid syntax`},
		{"max fragment bytes zero", "MAX_FRAGMENT_BYTES", "0", "env", "must be positive"},
		{"max fragment bytes with unit", "MAX_FRAGMENT_BYTES", "256k", "env", `parsing "256k": invalid syntax`},
		{"global section", "ALLOW_SECTIONS", "userlist,global", "env", `"global" is not a section kind fragments can be allowed`},
		{"listen section", "ALLOW_SECTIONS", "listen", "file", `use cache, userlist`},
		{"resolvers section", "ALLOW_SECTIONS", "resolvers", "env", `"resolvers" is not a section kind fragments can be allowed`},
		{"code directive of the old list", "ALLOW_DIRECTIVES", "lua-load", "env", `"lua-load" is not an allowlist extension: use external-check, lua`},
		{"network that is not one", "ALLOW_NETWORKS", "127.0.0.0/33", "env", `"127.0.0.0/33" is not a network`},
		{"network by name", "ALLOW_NETWORKS", "localhost", "flag", `"localhost" is not a network`},
		{"domain owner without suffix", "DOMAIN_OWNERS", "shop=", "env", `"shop=" is not NAME=SUFFIX`},
		{"domain owner with a wildcard", "DOMAIN_OWNERS", "shop=*.example.com", "file", "is not a domain suffix"},
		{"domain owners file missing", "DOMAIN_OWNERS", "/nonexistent/owners", "env", "domain owners file"},
		{"check timeout zero", "CHECK_TIMEOUT", "0s", "env", "is not a positive duration"},
		{"announce address by name", "ANNOUNCE_ADDRESSES", "192.0.2.1,lb.example.com", "env", `"lb.example.com" is not an IP address`},
		{"announce address with a zone", "ANNOUNCE_ADDRESSES", "fe80::1%eth0", "flag", `"fe80::1%eth0" is not an IP address`},
		{"announce check path relative", "ANNOUNCE_CHECK_PATH", "health", "file", `"health" is not a URL path`},
		{"announce check port zero", "ANNOUNCE_CHECK_PORT", "0", "env", `"0" is not a port`},
		{"announce rise zero", "ANNOUNCE_RISE", "0", "env", "is not a whole number of at least 1"},
		{"negative warning days", "HEALTH_CERT_WARNING_DAYS", "-1", "env", `"-1" is not a number of days`},
	}
	flagOf := map[string]string{}
	for _, k := range Keys {
		flagOf[k.Name] = k.Flag
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			envVars := map[string]string{"HAPROXY_CONFIG_ROOT": t.TempDir()}
			flags := map[string]string{}
			var origin string
			switch tt.origin {
			case "flag":
				flags[flagOf[tt.key]] = tt.value
				origin = "--" + flagOf[tt.key] + " / $HAPROXY_CONFIG_" + tt.key
			case "env":
				envVars["HAPROXY_CONFIG_"+tt.key] = tt.value
				origin = "--" + flagOf[tt.key] + " / $HAPROXY_CONFIG_" + tt.key
			case "file":
				path := writeFile(t, "HAPROXY_CONFIG_"+tt.key+"="+tt.value+"\n")
				envVars["HAPROXY_CONFIG_DEFAULTS"] = path
				origin = "HAPROXY_CONFIG_" + tt.key + " in " + path
			}
			s, err := Load(Source{Flags: flags, Getenv: env(envVars)})
			if err == nil {
				t.Fatalf("Load accepted %s=%q: %+v", tt.key, tt.value, s)
			}
			if s != nil {
				t.Errorf("Load returned settings with its error")
			}
			if want := "setting " + origin + ": "; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("error %q, want prefix %q", err, want)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q, want it to contain %q", err, tt.msg)
			}
		})
	}
}

func TestBaseIsDefault(t *testing.T) {
	tests := []struct {
		name  string
		flag  bool
		env   bool
		file  bool
		value string
		want  bool
	}{
		{"nobody sets it", false, false, false, "", true},
		{"flag", true, false, false, "/x/base.cfg", false},
		{"environment", false, true, false, "/x/base.cfg", false},
		{"defaults file", false, false, true, "/x/base.cfg", false},
		// Naming the default path is still the operator's choice.
		{"environment names the default path", false, true, false, "ROOT/etc/haproxy-config/base.cfg", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			value := strings.Replace(tt.value, "ROOT", root, 1)
			envVars := map[string]string{"HAPROXY_CONFIG_ROOT": root}
			flags := map[string]string{}
			content := "HAPROXY_CONFIG_STATE=/s\n"
			if tt.flag {
				flags["base"] = value
			}
			if tt.env {
				envVars["HAPROXY_CONFIG_BASE"] = value
			}
			if tt.file {
				content += "HAPROXY_CONFIG_BASE=" + value + "\n"
			}
			envVars["HAPROXY_CONFIG_DEFAULTS"] = writeFile(t, content)
			s, err := Load(Source{Flags: flags, Getenv: env(envVars)})
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if s.BaseIsDefault != tt.want {
				t.Errorf("BaseIsDefault = %v, want %v", s.BaseIsDefault, tt.want)
			}
			wantPath := value
			if !tt.flag && !tt.env && !tt.file {
				wantPath = filepath.Join(root, "etc/haproxy-config/base.cfg")
			}
			if s.BaseConfig != wantPath {
				t.Errorf("BaseConfig = %q, want %q", s.BaseConfig, wantPath)
			}
		})
	}
}

func TestVars(t *testing.T) {
	tests := []struct {
		httpsAddr string
		wantPort  string
	}{
		{":443", ""},
		{"0.0.0.0:443", ""},
		{"[::]:443", ""},
		{"127.0.0.1:8443", ":8443"},
		{"[::1]:8443", ":8443"},
		{":4430", ":4430"},
		{"not-an-address", ""},
	}
	for _, tt := range tests {
		t.Run(tt.httpsAddr, func(t *testing.T) {
			s := &Settings{
				HTTPAddr:      "127.0.0.1:8080",
				HTTPSAddr:     tt.httpsAddr,
				CertsDir:      "/srv/certs",
				RuntimeSocket: "/run/hc/admin.sock",
				ChallengeAddr: "127.0.0.1:8402",
				StatusAddr:    "127.0.0.1:8404",
			}
			got := s.Vars("../maps/hosts.map")
			want := assemble.Vars{
				HTTPAddr:      "127.0.0.1:8080",
				HTTPSAddr:     tt.httpsAddr,
				HTTPSPort:     tt.wantPort,
				MapFile:       "../maps/hosts.map",
				CrtList:       "/srv/certs/crt-list",
				FallbackCert:  "/srv/certs/fallback.pem",
				RuntimeSocket: "/run/hc/admin.sock",
				ChallengeAddr: "127.0.0.1:8402",
				StatusAddr:    "127.0.0.1:8404",
				Marker:        assemble.MarkerPlaceholder,
			}
			if got != want {
				t.Errorf("Vars:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestKeys(t *testing.T) {
	flags, names := map[string]bool{}, map[string]bool{}
	for _, k := range Keys {
		if flags[k.Flag] || names[k.Name] {
			t.Errorf("setting %s / --%s is listed twice", k.Name, k.Flag)
		}
		flags[k.Flag], names[k.Name] = true, true
		if got, want := k.Env(), "HAPROXY_CONFIG_"+k.Name; got != want {
			t.Errorf("Env() = %q, want %q", got, want)
		}
		if want := strings.ToLower(strings.ReplaceAll(k.Name, "_", "-")); k.Flag != want {
			t.Errorf("setting %s has flag --%s, want --%s", k.Name, k.Flag, want)
		}
	}
	// The root and the defaults file are resolved before the others and
	// cannot come from the defaults file.
	if names["ROOT"] || names["DEFAULTS"] {
		t.Error("ROOT or DEFAULTS is in Keys")
	}
}

func TestACMESettingsRejected(t *testing.T) {
	for _, kv := range []string{
		"HAPROXY_CONFIG_ACME_EXTRA_DOMAINS=ok.example.com,not_a_domain",
		"HAPROXY_CONFIG_ACME_EXTRA_DOMAINS=*.example.com",
		"HAPROXY_CONFIG_ACME_ADDRESSES=192.0.2.1,nowhere",
		"HAPROXY_CONFIG_ACME_KEY_TYPE=dsa",
		"HAPROXY_CONFIG_ACME_ORDERS=0",
	} {
		key, value, _ := strings.Cut(kv, "=")
		empty := writeFile(t, "")
		_, err := Load(Source{Getenv: env(map[string]string{"HAPROXY_CONFIG_DEFAULTS": empty, key: value})})
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%s: err %v, want an error naming the setting", kv, err)
		}
	}
}

// secretFile writes a TSIG secret with mode perm and returns its path.
func secretFile(t *testing.T, perm os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tsig.secret")
	if err := os.WriteFile(path, []byte("c2VjcmV0IG9mIHRoZSB0ZXN0\n"), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, perm); err != nil { // umask would not widen it, but could narrow it
		t.Fatal(err)
	}
	return path
}

func TestDNSSettings(t *testing.T) {
	secret := secretFile(t, 0o600)
	script := filepath.Join(t.TempDir(), "dns-hook")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	writable := filepath.Join(t.TempDir(), "dns-hook")
	if err := os.WriteFile(writable, []byte("#!/bin/sh\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(writable, 0o777); err != nil {
		t.Fatal(err)
	}
	load := func(vars map[string]string) (*Settings, error) {
		all := map[string]string{"HAPROXY_CONFIG_DEFAULTS": writeFile(t, "")}
		for k, v := range vars {
			all["HAPROXY_CONFIG_"+k] = v
		}
		return Load(Source{Getenv: env(all)})
	}
	s, err := load(map[string]string{"ACME_DNS_PROVIDER": "rfc2136", "ACME_DNS_NAMESERVER": "192.0.2.53",
		"ACME_DNS_TSIG_KEY": "hc-key", "ACME_DNS_TSIG_SECRET_FILE": secret, "ACME_DNS_TSIG_ALGORITHM": "hmac-sha512",
		"ACME_DNS_RESOLVERS": "127.0.0.1:5353, ::1", "ACME_DNS_SUFFIXES": "Internal.Example.com., lab.example.net",
		"ACME_DNS_PROPAGATION_TIMEOUT": "30s", "ACME_DNS_POLLING_INTERVAL": "250ms", "ACME_DNS_TTL": "5s"})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := DNS{Provider: "rfc2136", Nameserver: "192.0.2.53:53", TSIGKey: "hc-key", TSIGSecretFile: secret,
		TSIGAlgorithm: "hmac-sha512", Resolvers: []string{"127.0.0.1:5353", "[::1]:53"},
		Suffixes: []string{"internal.example.com", "lab.example.net"}, PropagationTimeout: 30 * time.Second,
		PollingInterval: 250 * time.Millisecond, TTL: 5 * time.Second}
	if !reflect.DeepEqual(s.ACME.DNS, want) {
		t.Errorf("DNS settings:\n got %+v\nwant %+v", s.ACME.DNS, want)
	}
	s, err = load(map[string]string{"ACME_DNS_PROVIDER": "exec", "ACME_DNS_EXEC": script})
	if err != nil || s.ACME.DNS.Exec != script {
		t.Errorf("exec provider: %v, program %q", err, s.ACME.DNS.Exec)
	}

	for _, tt := range []struct {
		name    string
		vars    map[string]string
		setting string // the one the error must name
		msg     string
	}{
		{"unknown provider", map[string]string{"ACME_DNS_PROVIDER": "route53"}, "ACME_DNS_PROVIDER", "use exec, rfc2136"},
		{"suffixes without provider", map[string]string{"ACME_DNS_SUFFIXES": "example.com"}, "ACME_DNS_SUFFIXES", "needs a DNS-01 provider"},
		{"wildcard suffix", map[string]string{"ACME_DNS_SUFFIXES": "*.example.com"}, "ACME_DNS_SUFFIXES", "not a domain suffix"},
		{"rfc2136 without nameserver", map[string]string{"ACME_DNS_PROVIDER": "rfc2136"}, "ACME_DNS_NAMESERVER", "needs the server"},
		{"nameserver with empty port", map[string]string{"ACME_DNS_PROVIDER": "rfc2136", "ACME_DNS_NAMESERVER": "ns.example.com:"}, "ACME_DNS_NAMESERVER", "names no port"},
		{"key without secret", map[string]string{"ACME_DNS_PROVIDER": "rfc2136", "ACME_DNS_NAMESERVER": "ns.example.com", "ACME_DNS_TSIG_KEY": "k"},
			"ACME_DNS_TSIG_SECRET_FILE", "needs the file with the key's secret"},
		// lego would send the updates unsigned
		{"rfc2136 unsigned", map[string]string{"ACME_DNS_PROVIDER": "rfc2136", "ACME_DNS_NAMESERVER": "ns.example.com"},
			"ACME_DNS_TSIG_SECRET_FILE", "signs its updates (TSIG)"},
		{"nameserver port not a number", map[string]string{"ACME_DNS_PROVIDER": "rfc2136", "ACME_DNS_NAMESERVER": "ns:abc"}, "ACME_DNS_NAMESERVER", "names no port (1-65535)"},
		{"nameserver port zero", map[string]string{"ACME_DNS_PROVIDER": "rfc2136", "ACME_DNS_NAMESERVER": "127.0.0.1:0"}, "ACME_DNS_NAMESERVER", "names no port"},
		{"resolver port out of range", map[string]string{"ACME_DNS_RESOLVERS": "127.0.0.1:99999"}, "ACME_DNS_RESOLVERS", "names no port"},
		{"polling every nanosecond", map[string]string{"ACME_DNS_POLLING_INTERVAL": "1ns"}, "ACME_DNS_POLLING_INTERVAL", "at least 100ms"},
		{"ttl of a year", map[string]string{"ACME_DNS_TTL": "8760h"}, "ACME_DNS_TTL", "from 1s to 10m"},
		{"exec program others may write", map[string]string{"ACME_DNS_PROVIDER": "exec", "ACME_DNS_EXEC": writable}, "ACME_DNS_EXEC", "may be written by its group or others (mode 0777)"},
		{"secret file missing", map[string]string{"ACME_DNS_PROVIDER": "rfc2136", "ACME_DNS_NAMESERVER": "ns.example.com", "ACME_DNS_TSIG_KEY": "k",
			"ACME_DNS_TSIG_SECRET_FILE": filepath.Join(t.TempDir(), "nope")}, "ACME_DNS_TSIG_SECRET_FILE", "no such file"},
		{"secret file group-readable", map[string]string{"ACME_DNS_PROVIDER": "rfc2136", "ACME_DNS_NAMESERVER": "ns.example.com", "ACME_DNS_TSIG_KEY": "k",
			"ACME_DNS_TSIG_SECRET_FILE": secretFile(t, 0o640)}, "ACME_DNS_TSIG_SECRET_FILE", "open to its group or others (mode 0640)"},
		{"secret file world-readable", map[string]string{"ACME_DNS_PROVIDER": "rfc2136", "ACME_DNS_NAMESERVER": "ns.example.com", "ACME_DNS_TSIG_KEY": "k",
			"ACME_DNS_TSIG_SECRET_FILE": secretFile(t, 0o604)}, "ACME_DNS_TSIG_SECRET_FILE", "mode 0604"},
		{"secret file relative", map[string]string{"ACME_DNS_TSIG_SECRET_FILE": "tsig.secret"}, "ACME_DNS_TSIG_SECRET_FILE", "not an absolute path"},
		{"unknown algorithm", map[string]string{"ACME_DNS_TSIG_ALGORITHM": "hmac-md5"}, "ACME_DNS_TSIG_ALGORITHM", "is not one of"},
		{"exec without program", map[string]string{"ACME_DNS_PROVIDER": "exec"}, "ACME_DNS_EXEC", "needs the program"},
		{"program not executable", map[string]string{"ACME_DNS_PROVIDER": "exec", "ACME_DNS_EXEC": secret}, "ACME_DNS_EXEC", "not an executable file"},
		{"nameserver for exec", map[string]string{"ACME_DNS_PROVIDER": "exec", "ACME_DNS_EXEC": script, "ACME_DNS_NAMESERVER": "ns.example.com"},
			"ACME_DNS_NAMESERVER", "is for the rfc2136 DNS-01 provider"},
		{"program without provider", map[string]string{"ACME_DNS_EXEC": script}, "ACME_DNS_EXEC", "is for the exec DNS-01 provider"},
		{"resolver that is not one", map[string]string{"ACME_DNS_RESOLVERS": "127.0.0.1:53,[::1"}, "ACME_DNS_RESOLVERS", "is not HOST or HOST:PORT"},
		{"ttl in fractions", map[string]string{"ACME_DNS_TTL": "1500ms"}, "ACME_DNS_TTL", "whole number of seconds"},
		{"polling longer than the timeout", map[string]string{"ACME_DNS_PROPAGATION_TIMEOUT": "1s", "ACME_DNS_POLLING_INTERVAL": "2s"},
			"ACME_DNS_POLLING_INTERVAL", "longer than ACME_DNS_PROPAGATION_TIMEOUT"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := load(tt.vars)
			if err == nil {
				t.Fatalf("accepted: %+v", s.ACME.DNS)
			}
			if want := "HAPROXY_CONFIG_" + tt.setting + ": "; !strings.HasPrefix(err.Error(), "setting ") || !strings.Contains(err.Error(), want) {
				t.Errorf("error %q, want it to name the setting (%q)", err, want)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q, want it to contain %q", err, tt.msg)
			}
		})
	}
}

func TestKeepRestartOnly(t *testing.T) {
	root := t.TempDir()
	load := func(vars map[string]string) *Settings {
		t.Helper()
		vars["HAPROXY_CONFIG_ROOT"] = root
		s, err := Load(Source{Getenv: env(vars)})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	prev := load(map[string]string{"HAPROXY_CONFIG_ACME_STAGING": "true", "HAPROXY_CONFIG_RESCAN": "1h"})
	t.Run("nothing that needs a restart changed", func(t *testing.T) {
		next := load(map[string]string{"HAPROXY_CONFIG_ACME_STAGING": "true", "HAPROXY_CONFIG_RESCAN": "5s"})
		if ig := next.KeepRestartOnly(prev); ig != nil {
			t.Errorf("ignored %v", ig)
		}
		if next.Rescan != 5*time.Second {
			t.Errorf("RESCAN = %v, want the new 5s", next.Rescan)
		}
	})
	t.Run("restart-only settings keep their values, the others change", func(t *testing.T) {
		next := load(map[string]string{"HAPROXY_CONFIG_OUTPUT": "/elsewhere/haproxy.cfg", "HAPROXY_CONFIG_RESCAN": "5s",
			"HAPROXY_CONFIG_ACME_STAGING": "false", "HAPROXY_CONFIG_WAIT_MIN": "1s"})
		var names []string
		for _, ig := range next.KeepRestartOnly(prev) {
			names = append(names, ig.Key.Name+"="+ig.Value)
		}
		if want := []string{"OUTPUT=/elsewhere/haproxy.cfg", "ACME_STAGING=false"}; !slices.Equal(names, want) {
			t.Errorf("ignored %v, want %v", names, want)
		}
		if next.OutputConfig != prev.OutputConfig || next.ACME.Directory != LetsEncryptStaging {
			t.Errorf("OUTPUT %s, ACME directory %s: want the previous %s and the staging directory", next.OutputConfig, next.ACME.Directory, prev.OutputConfig)
		}
		if next.Rescan != 5*time.Second || next.WaitMin != time.Second {
			t.Errorf("RESCAN %v, WAIT_MIN %v: want the new 5s and 1s", next.Rescan, next.WaitMin)
		}
	})
	if !slices.ContainsFunc(Keys, func(k Key) bool { return k.Secret() && k.NeedsRestart() }) {
		t.Error("no secret setting among those that need a restart: the daemon's log would not need to hide one")
	}
}

func TestFleetSettings(t *testing.T) {
	empty := writeFile(t, "")
	load := func(vars map[string]string) (*Settings, error) {
		vars["HAPROXY_CONFIG_DEFAULTS"] = empty
		return Load(Source{Getenv: env(vars)})
	}
	s, err := load(map[string]string{
		"HAPROXY_CONFIG_ETCD_ENDPOINTS":  "https://10.0.0.1:2379, https://10.0.0.2:2379",
		"HAPROXY_CONFIG_ETCD_PREFIX":     "/haproxy-config/edge-eu/",
		"HAPROXY_CONFIG_ETCD_CA_FILE":    "/etc/etcd/ca.pem",
		"HAPROXY_CONFIG_ETCD_CERT_FILE":  "/etc/etcd/lb1.pem",
		"HAPROXY_CONFIG_ETCD_KEY_FILE":   "/etc/etcd/lb1-key.pem",
		"HAPROXY_CONFIG_FLEET_KEY_FILE":  "/etc/haproxy-config/edge.key",
		"HAPROXY_CONFIG_NODE_NAME":       "lb-1.eu_west",
		"HAPROXY_CONFIG_ETCD_LOCK_TTL":   "30s",
		"HAPROXY_CONFIG_FLEET_HEARTBEAT": "5s",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Fleet{Endpoints: []string{"https://10.0.0.1:2379", "https://10.0.0.2:2379"}, Prefix: "/haproxy-config/edge-eu",
		CAFile: "/etc/etcd/ca.pem", CertFile: "/etc/etcd/lb1.pem", KeyFile: "/etc/etcd/lb1-key.pem", SealKey: "/etc/haproxy-config/edge.key",
		Node: "lb-1.eu_west", LockTTL: 30 * time.Second, Heartbeat: 5 * time.Second}
	if !reflect.DeepEqual(s.Fleet, want) || !s.Fleet.Enabled() {
		t.Errorf("fleet settings\n got %+v\nwant %+v", s.Fleet, want)
	}
	if s, err := load(map[string]string{"HAPROXY_CONFIG_ETCD_CA_FILE": "/etc/etcd/ca.pem"}); err != nil || s.Fleet.Enabled() {
		t.Errorf("a CA alone, no endpoints: err %v, fleet mode on %v; want no error and off", err, s != nil && s.Fleet.Enabled())
	}
	for _, key := range []string{"ETCD_ENDPOINTS", "ETCD_PREFIX", "ETCD_CERT_FILE", "ETCD_KEY_FILE", "FLEET_KEY_FILE", "NODE_NAME", "ETCD_LOCK_TTL", "FLEET_HEARTBEAT"} {
		if k := Keys[slices.IndexFunc(Keys, func(k Key) bool { return k.Name == key })]; !k.NeedsRestart() {
			t.Errorf("%s applies on SIGHUP: the daemon opened etcd with it", key)
		}
	}

	bad := []struct{ key, value, msg string }{
		{"ETCD_ENDPOINTS", "10.0.0.1:2379", "is not an etcd client URL"},
		{"ETCD_ENDPOINTS", "https://10.0.0.1:2379,unix:///run/etcd.sock", `"unix:///run/etcd.sock" is not an etcd client URL`},
		{"ETCD_ENDPOINTS", "https://10.0.0.1", "is not an etcd client URL"},
		{"ETCD_PREFIX", "haproxy-config", "is not a key prefix"},
		{"ETCD_PREFIX", "/", "is not a key prefix"},
		{"NODE_NAME", "lb 1", `"lb 1" is not a node name`},
		{"NODE_NAME", "lb/1", `"lb/1" is not a node name`},
		{"NODE_NAME", "..", `".." is not a node name`},
		{"NODE_NAME", "", `"" is not a node name`},
		{"ETCD_LOCK_TTL", "1s", "at least 2s"},
		{"FLEET_HEARTBEAT", "0s", "is not a duration from 1s to 1h"},
		{"FLEET_HEARTBEAT", "1ns", "is not a duration from 1s to 1h"},
	}
	for _, tt := range bad {
		// the node name is checked in fleet mode only
		_, err := load(map[string]string{"HAPROXY_CONFIG_ETCD_ENDPOINTS": "https://127.0.0.1:2379", "HAPROXY_CONFIG_" + tt.key: tt.value})
		if err == nil || !strings.Contains(err.Error(), "HAPROXY_CONFIG_"+tt.key) || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%s=%q: err %v, want one naming the setting and %q", tt.key, tt.value, err, tt.msg)
		}
	}
	// with fleet mode off, a name that names no node (a host name of the
	// system's, by default) is no error
	if _, err := load(map[string]string{"HAPROXY_CONFIG_NODE_NAME": "web+1"}); err != nil {
		t.Errorf("NODE_NAME=web+1 with fleet mode off: %v, want no error", err)
	}
	// a certificate and its key go together
	for key, missing := range map[string]string{"ETCD_CERT_FILE": "ETCD_KEY_FILE", "ETCD_KEY_FILE": "ETCD_CERT_FILE"} {
		_, err := load(map[string]string{"HAPROXY_CONFIG_ETCD_ENDPOINTS": "https://127.0.0.1:2379", "HAPROXY_CONFIG_" + key: "/etc/etcd/x.pem"})
		if err == nil || !strings.Contains(err.Error(), "HAPROXY_CONFIG_"+key) || !strings.Contains(err.Error(), "HAPROXY_CONFIG_"+missing) {
			t.Errorf("%s alone: err %v, want one naming it and %s", key, err, missing)
		}
	}
}

func TestValidNodeName(t *testing.T) {
	for name, want := range map[string]bool{"lb1": true, "lb-1.example.com": true, "LB_2": true, ".": false, "..": false, "": false,
		"lb 1": false, "lb/1": false, "lb:1": false, "lb1é": false, strings.Repeat("a", 254): false} {
		if got := ValidNodeName(name); got != want {
			t.Errorf("ValidNodeName(%q) = %v, want %v", name, got, want)
		}
	}
}
