package tests

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"haproxy-config/internal/testkit"
)

// The Ansible tests run packaging/ansible's playbooks with Debian's
// ansible-core against two "balancers": host aliases on this machine
// (connection: local), each with its own private installation and running
// watcher with a managed HAProxy on loopback ports.

func requireAnsible(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("ansible-playbook")
	if err != nil {
		t.Skipf("SKIPPING the Ansible tests: ansible-playbook is not installed; run tests/install-deps.sh (%v)", err)
	}
	return p
}

// balancers starts two installations with their daemons and writes an
// inventory naming them lb1 and lb2.
func balancers(t *testing.T) (inventory string, lbs []*install) {
	t.Helper()
	var b strings.Builder
	b.WriteString("balancers:\n  hosts:\n")
	for _, name := range []string{"lb1", "lb2"} {
		in := newInstall(t)
		in.startDaemon(t)
		lbs = append(lbs, in)
		b.WriteString("    " + name + ":\n")
		b.WriteString("      ansible_connection: local\n")
		b.WriteString("      ansible_python_interpreter: /usr/bin/python3\n")
		b.WriteString("      haproxy_config_become: false\n")
		b.WriteString("      haproxy_config_bin: " + binary + "\n")
		b.WriteString("      haproxy_config_wait_timeout: 30s\n")
		b.WriteString("      haproxy_config_fragments_dir: " + in.fragmentsDir() + "\n")
		b.WriteString("      haproxy_config_env:\n")
		for _, kv := range in.env {
			k, v, _ := strings.Cut(kv, "=")
			b.WriteString("        " + k + ": \"" + v + "\"\n")
		}
	}
	inventory = writeFile(t, filepath.Join(t.TempDir(), "inventory.yml"), b.String())
	return inventory, lbs
}

// playbook runs one of packaging/ansible's playbooks and returns its
// output, exit code and run time. Ansible's own files go to a temp dir.
func playbook(t *testing.T, inventory, name string, fragments ...[3]string) (string, int, time.Duration) {
	t.Helper()
	dir := t.TempDir()
	var vars strings.Builder
	vars.WriteString("haproxy_config_fragments:\n")
	for _, f := range fragments {
		vars.WriteString("  - {name: " + f[0] + ", conf: " + f[1] + ", map: " + f[2] + "}\n")
	}
	varsFile := writeFile(t, filepath.Join(dir, "vars.yml"), vars.String())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, requireAnsible(t), "-i", inventory, "-e", "@"+varsFile,
		filepath.Join(repoRoot(t), "packaging/ansible", name))
	cmd.Env = childEnv([]string{
		"HOME=" + dir,
		"ANSIBLE_LOCAL_TEMP=" + filepath.Join(dir, "tmp"),
		"ANSIBLE_REMOTE_TEMP=" + filepath.Join(dir, "remote-tmp"),
		"ANSIBLE_NOCOLOR=1",
		"ANSIBLE_RETRY_FILES_ENABLED=0",
		"ANSIBLE_CONFIG=" + filepath.Join(dir, "none.cfg"),
	})
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	elapsed := time.Since(start)
	if ctx.Err() != nil {
		t.Fatalf("ansible-playbook %s timed out:\n%s", name, out)
	}
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("ansible-playbook %s: %v", name, err)
	}
	return string(out), cmd.ProcessState.ExitCode(), elapsed
}

func example(t *testing.T, file string) string {
	return filepath.Join(repoRoot(t), "packaging/examples/fragments", file)
}

func TestAnsibleApplyRollout(t *testing.T) {
	requireAnsible(t)
	testkit.RequireHaproxy(t)
	inventory, lbs := balancers(t)
	shop := [3]string{"shop", example(t, "shop.cfg"), example(t, "shop.map")}
	blog := [3]string{"blog", example(t, "blog.cfg"), example(t, "blog.map")}

	out, code, elapsed := playbook(t, inventory, "apply.yml", shop, blog)
	if code != 0 {
		t.Fatalf("apply.yml: exit %d\n%s", code, out)
	}
	t.Logf("apply.yml, 2 fragments on 2 balancers one at a time: %s", elapsed.Round(time.Millisecond))
	// serial: 1 runs one play batch per host, lb1 first
	if first, second := strings.Index(out, "ok: [lb1]"), strings.Index(out, "ok: [lb2]"); first < 0 || second < first {
		t.Errorf("the balancers were not updated one after the other:\n%s", out)
	}
	// --wait returned: both serve the domains now
	for _, in := range lbs {
		in.expectBody(t, "shop.example.com", "Hello from the shop backend\n")
		in.expectBody(t, "x.blog.example.org", "Hello from the blog backend\n")
	}

	// A rejected fragment fails the play on lb1; lb2 never gets it.
	dir := t.TempDir()
	bad := [3]string{"news",
		writeFile(t, filepath.Join(dir, "news.cfg"), "backend news_web\n    server s1 10.0.0.1:abc\n"),
		writeFile(t, filepath.Join(dir, "news.map"), "news.example.com news_web\n")}
	out, code, elapsed = playbook(t, inventory, "apply.yml", bad)
	t.Logf("apply.yml with a rejected fragment: exit %d in %s", code, elapsed.Round(time.Millisecond))
	if code == 0 {
		t.Fatalf("apply.yml with a rejected fragment succeeded:\n%s", out)
	}
	if !strings.Contains(out, "news.cfg:2") {
		t.Errorf("the play's failure does not name the fragment's file and line:\n%s", out)
	}
	if strings.Contains(out, "[lb2]") {
		t.Errorf("the rollout reached lb2 after lb1 rejected the fragment:\n%s", out)
	}
	for i, in := range lbs {
		if _, err := os.Stat(filepath.Join(in.fragmentsDir(), "news.cfg")); err == nil {
			t.Errorf("lb%d stored the rejected fragment", i+1)
		}
		in.expectUnknown(t, "news.example.com")
		in.expectBody(t, "shop.example.com", "Hello from the shop backend\n")
	}
}

func TestAnsibleCopyIntoWatchedDirectory(t *testing.T) {
	requireAnsible(t)
	testkit.RequireHaproxy(t)
	inventory, lbs := balancers(t)
	out, code, elapsed := playbook(t, inventory, "copy.yml", [3]string{"blog", example(t, "blog.cfg"), example(t, "blog.map")})
	if code != 0 {
		t.Fatalf("copy.yml: exit %d\n%s", code, out)
	}
	t.Logf("copy.yml, 1 fragment on 2 balancers: %s", elapsed.Round(time.Millisecond))
	// The daemons pick the files up on their own (after WAIT_MIN of quiet).
	for i, in := range lbs {
		deadline := time.Now().Add(30 * time.Second)
		for {
			code, body, err := in.get("blog.example.org", "/")
			if err == nil && code == 200 && body == "Hello from the blog backend\n" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("lb%d does not serve blog.example.org 30s after the copy: %d %q (%v)", i+1, code, body, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}
