package tests

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"haproxy-config/internal/testkit"
	"haproxy-config/settings"
)

// The package tests build the .deb with packaging/build-deb.sh, check it
// with lintian and dpkg-deb, then install, upgrade, remove and purge it in
// a clean Debian 12 chroot made by mmdebstrap from the mirror this
// machine's apt uses. The chroot tarball is cached (see chrootCacheDir), so
// only the first run downloads packages.

// debTools are the commands the package tests need; tests/install-deps.sh
// installs them.
var debTools = []string{"dpkg-deb", "lintian", "mmdebstrap", "unshare", "git"}

func requireDebTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPING the Debian package tests: they need root (chroot, files owned by root); run make test as root")
	}
	for _, tool := range debTools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("SKIPPING the Debian package tests: %s is not installed; run tests/install-deps.sh (%v)", tool, err)
		}
	}
}

// repoRoot is the repository the tests run in.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// buildDeb runs the build script into a new directory and returns the
// .deb's path. version "" keeps the version derived from git.
func buildDeb(t *testing.T, version string) string {
	t.Helper()
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(repoRoot(t), "packaging/build-deb.sh"), out)
	cmd.Env = childEnv(nil)
	if version != "" {
		cmd.Env = append(cmd.Env, "DEB_VERSION="+version)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("build-deb.sh: %v\n%s", err, stderr.String())
	}
	return strings.TrimSpace(string(stdout))
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func output(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// packagedFiles are the paths the package must ship, and nothing else.
var packagedFiles = []string{
	"etc/default/haproxy-config",
	"etc/haproxy-config/base.cfg",
	"lib/systemd/system/haproxy-config.service",
	"lib/systemd/system/haproxy.service.d/haproxy-config.conf",
	"usr/lib/tmpfiles.d/haproxy-config.conf",
	"usr/sbin/haproxy-config",
	"usr/share/bash-completion/completions/haproxy-config",
	"usr/share/doc/haproxy-config/README.md.gz",
	"usr/share/doc/haproxy-config/changelog.Debian.gz",
	"usr/share/doc/haproxy-config/copyright",
	"usr/share/lintian/overrides/haproxy-config",
	"usr/share/man/man8/haproxy-config.8.gz",
}

func TestDebPackage(t *testing.T) {
	requireDebTools(t)
	testkit.RequireHaproxy(t)
	start := time.Now()
	deb := buildDeb(t, "")
	t.Logf("built %s (%d bytes) in %s", filepath.Base(deb), fileSize(t, deb), time.Since(start).Round(time.Millisecond))

	t.Run("reproducible", func(t *testing.T) {
		again := buildDeb(t, "")
		if filepath.Base(again) != filepath.Base(deb) {
			t.Fatalf("second build named %s, first %s", filepath.Base(again), filepath.Base(deb))
		}
		if a, b := sha256File(t, deb), sha256File(t, again); a != b {
			t.Fatalf("two builds of the same commit differ: sha256 %s and %s", a, b)
		}
	})

	t.Run("lintian", func(t *testing.T) {
		cmd := exec.Command("lintian", "--fail-on", "error,warning", deb)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("lintian --fail-on error,warning: %v\n%s", err, out)
		}
		t.Logf("lintian:\n%s", out)
	})

	t.Run("control", func(t *testing.T) {
		fields := map[string]string{
			"Package":      "haproxy-config",
			"Depends":      "haproxy (>= 2.6), adduser, procps",
			"Section":      "admin",
			"Architecture": strings.TrimSpace(output(t, "dpkg", "--print-architecture")),
		}
		for field, want := range fields {
			if got := strings.TrimSpace(output(t, "dpkg-deb", "-f", deb, field)); got != want {
				t.Errorf("control field %s = %q, want %q", field, got, want)
			}
		}
		version := strings.TrimSpace(output(t, "dpkg-deb", "-f", deb, "Version"))
		if err := exec.Command("dpkg", "--validate-version", version).Run(); err != nil {
			t.Errorf("Version %q is not a valid Debian version: %v", version, err)
		}
		conffiles := output(t, "sh", "-c", `dpkg-deb --ctrl-tarfile "$1" | tar -xOf - ./conffiles`, "sh", deb)
		if want := "/etc/default/haproxy-config\n/etc/haproxy-config/base.cfg\n"; conffiles != want {
			t.Errorf("conffiles = %q, want %q", conffiles, want)
		}
	})

	t.Run("files", func(t *testing.T) {
		var files []string
		sc := bufio.NewScanner(strings.NewReader(output(t, "dpkg-deb", "-c", deb)))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) < 6 || strings.HasPrefix(f[0], "d") {
				continue
			}
			if f[1] != "root/root" {
				t.Errorf("%s is owned by %s, want root/root", f[5], f[1])
			}
			files = append(files, strings.TrimPrefix(f[5], "./"))
		}
		slices.Sort(files)
		if !slices.Equal(files, packagedFiles) {
			t.Errorf("package files:\n%s\nwant:\n%s", strings.Join(files, "\n"), strings.Join(packagedFiles, "\n"))
		}
	})

	t.Run("defaults file names every setting", func(t *testing.T) {
		data, err := os.ReadFile(filepath.Join(repoRoot(t), "packaging/debian/default"))
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range settings.Keys {
			if !strings.Contains(string(data), k.Env()+"=") {
				t.Errorf("packaging/debian/default does not mention %s", k.Env())
			}
		}
	})

	t.Run("copyright names every module in the binary", func(t *testing.T) {
		copyright := output(t, "sh", "-c", `dpkg-deb --fsys-tarfile "$1" | tar -xOf - ./usr/share/doc/haproxy-config/copyright`, "sh", deb)
		globs := map[string]bool{}
		for _, para := range strings.Split(copyright, "\n\n") {
			if files, ok := strings.CutPrefix(para, "Files: "); ok {
				files, _, _ = strings.Cut(files, "\nCopyright:")
				for _, g := range strings.Fields(files) {
					globs[g] = true
				}
			}
		}
		deps := 0
		for _, line := range strings.Split(output(t, "go", "version", "-m", binary), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "dep" {
				deps++
				if !globs[f[1]+"/*"] {
					t.Errorf("the package's copyright file has no Files: paragraph for %s, built into the binary", f[1])
				}
			}
		}
		if deps < 10 {
			t.Fatalf("go version -m found %d modules in the binary", deps)
		}
	})
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// chrootCacheDir keeps the bookworm tarball between runs, outside the
// repository; HAPROXY_CONFIG_TEST_CACHE overrides it.
func chrootCacheDir() string {
	if d := os.Getenv("HAPROXY_CONFIG_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/haproxy-config-tests"
}

// chrootPackages are preinstalled in the cached tarball: the package's
// dependencies (so installing it needs no network),
// procps for the units' /bin/kill, systemd for systemd-analyze and
// systemd-tmpfiles, man-db for the Documentation= check.
var chrootPackages = []string{"haproxy", "adduser", "procps", "systemd", "man-db"}

// debianMirror returns the Debian mirror this machine's apt uses for
// bookworm, from the deb822 .sources files or one-line sources.list files.
func debianMirror(t *testing.T) string {
	t.Helper()
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	files = append([]string{"/etc/apt/sources.list"}, files...)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, stanza := range strings.Split(string(data), "\n\n") {
			var uris, suites []string
			for _, line := range strings.Split(stanza, "\n") {
				line = strings.TrimSpace(line)
				if v, ok := strings.CutPrefix(line, "URIs:"); ok {
					uris = strings.Fields(v)
				}
				if v, ok := strings.CutPrefix(line, "Suites:"); ok {
					suites = strings.Fields(v)
				}
				if fields := strings.Fields(line); len(fields) >= 3 && fields[0] == "deb" {
					rest := fields[1:]
					if strings.HasPrefix(rest[0], "[") {
						for len(rest) > 0 && !strings.HasSuffix(rest[0], "]") {
							rest = rest[1:]
						}
						rest = rest[1:]
					}
					if len(rest) >= 2 && rest[1] == "bookworm" {
						return rest[0]
					}
				}
			}
			if slices.Contains(suites, "bookworm") && len(uris) > 0 {
				return uris[0]
			}
		}
	}
	t.Fatal("no bookworm mirror found in /etc/apt/sources.list*: the package tests need Debian's mirror to build the chroot")
	return ""
}

// chrootTarball returns the cached bookworm tarball, creating it with
// mmdebstrap first when it is missing.
func chrootTarball(t *testing.T) string {
	t.Helper()
	mirror := debianMirror(t)
	key := sha256.Sum256([]byte(mirror + " " + strings.Join(chrootPackages, ",")))
	path := filepath.Join(chrootCacheDir(), "bookworm-"+hex.EncodeToString(key[:6])+".tar")
	if _, err := os.Stat(path); err == nil {
		t.Logf("chroot tarball cached: %s", path)
		return path
	}
	if err := os.MkdirAll(chrootCacheDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp := path + ".tmp"
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "mmdebstrap", "--variant=minbase", "--include="+strings.Join(chrootPackages, ","),
		"--format=tar", "bookworm", tmp, mirror)
	cmd.Env = childEnv(nil)
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		t.Fatalf("mmdebstrap bookworm from %s failed (the package tests need Debian's mirror once; the tarball is cached after): %v\n%s", mirror, err, out)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	t.Logf("created chroot tarball %s from %s in %s", path, mirror, time.Since(start).Round(time.Millisecond))
	return path
}

// chroot is an extracted bookworm tree.
type chroot struct {
	root string
}

func newChroot(t *testing.T) *chroot {
	t.Helper()
	tarball := chrootTarball(t)
	c := &chroot{root: t.TempDir()}
	start := time.Now()
	output(t, "tar", "-xf", tarball, "-C", c.root)
	// Nothing started from maintainer scripts, as on a build machine.
	writeFile(t, filepath.Join(c.root, "usr/sbin/policy-rc.d"), "#!/bin/sh\nexit 101\n")
	if err := os.Chmod(filepath.Join(c.root, "usr/sbin/policy-rc.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("chroot extracted in %s", time.Since(start).Round(time.Millisecond))
	return c
}

// run runs a shell script inside the chroot, in a private mount namespace
// with its own /proc (gone when the command ends), with a clean
// environment. It returns the combined output and the exit code.
func (c *chroot) run(t *testing.T, script string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "--fork", "sh", "-c",
		`mount -t proc proc "$1/proc" && mount -t devpts -o newinstance,ptmxmode=0666 devpts "$1/dev/pts" && exec chroot "$1" /bin/sh -c "$2"`, "sh", c.root, script)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive", "HOME=/root"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("chroot %q timed out:\n%s", script, out)
	}
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("chroot %q: %v", script, err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// must runs a script in the chroot and fails the test unless it exits 0.
func (c *chroot) must(t *testing.T, script string) string {
	t.Helper()
	out, code := c.run(t, script)
	if code != 0 {
		t.Fatalf("chroot %q: exit %d\n%s", script, code, out)
	}
	return out
}

func (c *chroot) path(p string) string { return filepath.Join(c.root, p) }

// expectMode checks a path's type, permission bits and owner in the chroot.
func (c *chroot) expectMode(t *testing.T, path, want string) {
	t.Helper()
	got := strings.TrimSpace(c.must(t, "stat -c '%A %U:%G' "+path))
	if got != want {
		t.Errorf("%s: %s, want %s", path, got, want)
	}
}

// tree lists the paths under the chroot, leaving out what changes on its
// own (apt and dpkg bookkeeping, logs, caches, /tmp, /proc, /run).
func (c *chroot) tree(t *testing.T) map[string]bool {
	t.Helper()
	skip := []string{"proc", "tmp", "run", "var/lib/dpkg", "var/lib/apt", "var/cache", "var/log", "var/lib/systemd/deb-systemd-helper-enabled", "var/lib/systemd/deb-systemd-helper-masked"}
	paths := map[string]bool{}
	err := filepath.WalkDir(c.root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(c.root, p)
		for _, s := range skip {
			if rel == s {
				return filepath.SkipDir
			}
		}
		paths[rel] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return paths
}

func TestDebInstallUpgradeRemovePurge(t *testing.T) {
	requireDebTools(t)
	testkit.RequireHaproxy(t)
	v1 := buildDeb(t, "1.0.0-1")
	v2 := buildDeb(t, "1.0.1-1")
	c := newChroot(t)
	for _, f := range []string{v1, v2} {
		output(t, "cp", f, c.path("tmp"))
	}
	examples := filepath.Join(repoRoot(t), "packaging/examples/fragments")
	output(t, "cp", filepath.Join(examples, "shop.cfg"), filepath.Join(examples, "shop.map"), c.path("tmp"))
	before := c.tree(t)

	start := time.Now()
	out := c.must(t, "apt-get install -y /tmp/"+filepath.Base(v1))
	t.Logf("installed %s in %s", filepath.Base(v1), time.Since(start).Round(time.Millisecond))

	t.Run("installed", func(t *testing.T) {
		if got := c.must(t, "dpkg-query -W -f '${Status} ${Version}' haproxy-config"); got != "install ok installed 1.0.0-1" {
			t.Fatalf("dpkg-query: %q\napt output:\n%s", got, out)
		}
		c.must(t, "getent group haproxy-config")
		c.must(t, "getent passwd haproxy")
		c.expectMode(t, "/usr/sbin/haproxy-config", "-rwxr-xr-x root:root")
		c.expectMode(t, "/etc/haproxy-config/fragments", "drwxr-x--- root:root")
		c.expectMode(t, "/var/lib/haproxy-config", "drwxr-x--- root:haproxy-config")
		c.expectMode(t, "/var/lib/haproxy-config/certs", "drwxr-s--- root:haproxy")
		c.expectMode(t, "/var/lib/haproxy-config/certs/fallback.pem", "-rw-r----- root:haproxy")
		c.expectMode(t, "/run/haproxy-config", "drwxr-x--- root:haproxy")
		c.expectMode(t, "/var/lib/haproxy-config/live/haproxy.cfg", "-rw-r----- root:root")
		conffiles := c.must(t, "dpkg-query -W -f '${Conffiles}' haproxy-config")
		for _, f := range []string{"/etc/default/haproxy-config", "/etc/haproxy-config/base.cfg"} {
			if !strings.Contains(conffiles, f) {
				t.Errorf("conffiles do not list %s:\n%s", f, conffiles)
			}
		}
		if _, err := os.Lstat(c.path("etc/systemd/system/multi-user.target.wants/haproxy-config.service")); err != nil {
			t.Errorf("haproxy-config.service is not enabled: %v", err)
		}
	})

	t.Run("systemd-analyze verify", func(t *testing.T) {
		out, code := c.run(t, "systemd-analyze verify haproxy-config.service haproxy.service 2>&1")
		if code != 0 || strings.TrimSpace(out) != "" {
			t.Fatalf("systemd-analyze verify: exit %d\n%s", code, out)
		}
		delta := c.must(t, "systemd-delta --no-pager --type=extended")
		if !strings.Contains(delta, "/lib/systemd/system/haproxy.service.d/haproxy-config.conf") {
			t.Errorf("haproxy.service is not extended by the drop-in:\n%s", delta)
		}
	})

	t.Run("check and apply with the packaged haproxy", func(t *testing.T) {
		if got := c.must(t, "haproxy-config check"); !strings.Contains(got, "0 fragments valid, 0 rejected") {
			t.Errorf("check: %q", got)
		}
		got := c.must(t, "haproxy-config apply shop /tmp/shop.cfg /tmp/shop.map")
		if !strings.Contains(got, `added fragment "shop"`) {
			t.Errorf("apply: %q", got)
		}
		c.must(t, "haproxy-config assemble")
		live, err := os.ReadFile(c.path("var/lib/haproxy-config/live/haproxy.cfg"))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"backend shop_web", "    user haproxy\n"} {
			if !strings.Contains(string(live), want) {
				t.Errorf("live haproxy.cfg lacks %q", want)
			}
		}
		// exactly what haproxy.service runs before a reload
		c.must(t, "haproxy -Ws -f /var/lib/haproxy-config/live/haproxy.cfg -c -q")
		// a rejected fragment changes nothing and says where
		out, code := c.run(t, "printf 'backend bad\\n    server s1 10.0.0.1:abc\\n' > /tmp/bad.cfg && : > /tmp/bad.map && haproxy-config apply bad /tmp/bad.cfg /tmp/bad.map")
		if code != 4 || !strings.Contains(out, "bad.cfg:2") {
			t.Errorf("bad fragment: exit %d, want 4 naming bad.cfg:2\n%s", code, out)
		}
	})

	certBefore, err := os.ReadFile(c.path("var/lib/haproxy-config/certs/fallback.pem"))
	if err != nil {
		t.Fatal(err)
	}
	c.must(t, "echo HAPROXY_CONFIG_KEEP_GENERATIONS=5 >> /etc/default/haproxy-config")

	t.Run("upgrade keeps conffile edits, fragments, state and certificates", func(t *testing.T) {
		start := time.Now()
		c.must(t, "apt-get install -y /tmp/"+filepath.Base(v2))
		t.Logf("upgraded to %s in %s", filepath.Base(v2), time.Since(start).Round(time.Millisecond))
		if got := c.must(t, "dpkg-query -W -f '${Version}' haproxy-config"); got != "1.0.1-1" {
			t.Fatalf("version after upgrade: %q", got)
		}
		if got := c.must(t, "grep -c '^HAPROXY_CONFIG_KEEP_GENERATIONS=5$' /etc/default/haproxy-config"); strings.TrimSpace(got) != "1" {
			t.Errorf("the edited conffile lost its edit")
		}
		certAfter, err := os.ReadFile(c.path("var/lib/haproxy-config/certs/fallback.pem"))
		if err != nil || string(certAfter) != string(certBefore) {
			t.Errorf("the fallback certificate changed on upgrade (%v)", err)
		}
		if got := c.must(t, "haproxy-config list"); !strings.Contains(got, "shop.example.com") {
			t.Errorf("list after upgrade: %q", got)
		}
		c.must(t, "test -s /var/lib/haproxy-config/history.jsonl")
	})

	t.Run("remove keeps fragments, state and conffiles", func(t *testing.T) {
		out := c.must(t, "apt-get remove -y haproxy-config 2>&1")
		for _, p := range []string{"etc/haproxy-config/fragments/shop.cfg", "var/lib/haproxy-config/history.jsonl",
			"var/lib/haproxy-config/certs/fallback.pem", "etc/default/haproxy-config", "etc/haproxy-config/base.cfg"} {
			if _, err := os.Stat(c.path(p)); err != nil {
				t.Errorf("remove deleted /%s: %v", p, err)
			}
		}
		if _, err := os.Stat(c.path("usr/sbin/haproxy-config")); err == nil {
			t.Errorf("remove left /usr/sbin/haproxy-config")
		}
		if !strings.Contains(out, "kept /etc/haproxy-config/fragments") {
			t.Errorf("remove did not say what it kept:\n%s", out)
		}
	})

	t.Run("purge deletes the state but keeps the tenants' fragments", func(t *testing.T) {
		out := c.must(t, "dpkg --purge haproxy-config 2>&1")
		if !strings.Contains(out, "fragments are NOT deleted: 2 files kept in /etc/haproxy-config/fragments") {
			t.Errorf("purge did not say clearly that the fragments are kept:\n%s", out)
		}
		after := c.tree(t)
		var left []string
		for p := range after {
			if !before[p] {
				left = append(left, p)
			}
		}
		slices.Sort(left)
		want := []string{"etc/haproxy-config", "etc/haproxy-config/fragments",
			"etc/haproxy-config/fragments/shop.cfg", "etc/haproxy-config/fragments/shop.map"}
		if !slices.Equal(left, want) {
			t.Errorf("after purge, new paths are:\n%s\nwant only the tenants' fragments:\n%s", strings.Join(left, "\n"), strings.Join(want, "\n"))
		}
		var gone []string
		for p := range before {
			if !after[p] {
				gone = append(gone, p)
			}
		}
		if len(gone) > 0 {
			t.Errorf("install and purge deleted paths that were there before: %s", strings.Join(gone, ", "))
		}
	})
}
