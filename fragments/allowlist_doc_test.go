package fragments

import (
	"os"
	"strings"
	"testing"
)

// TestREADMEListsTheAllowlist: the README's allowlist is the one checked.
func TestREADMEListsTheAllowlist(t *testing.T) {
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok1 := strings.Cut(string(data), "<!-- allowlist:begin -->\n")
	block, _, ok2 := strings.Cut(rest, "<!-- allowlist:end -->")
	if !ok1 || !ok2 {
		t.Fatal("README.md has no allowlist block")
	}
	if block != AllowlistMarkdown() {
		t.Error("README.md's allowlist differs from the allowlist: paste the output of haproxy-config allowlist between its markers")
	}
}
