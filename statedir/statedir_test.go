package statedir

import "testing"

func TestGenerationNamesRoundTrip(t *testing.T) {
	l := Layout("/state")
	if got, want := l.Generation(42), "/state/generations/000042"; got != want {
		t.Errorf("Generation(42) = %q, want %q", got, want)
	}
	if got, want := l.GenerationMeta(7), "/state/generations/000007/meta.json"; got != want {
		t.Errorf("GenerationMeta(7) = %q, want %q", got, want)
	}
	for _, tc := range []struct {
		name string
		n    int
		ok   bool
	}{{"000042", 42, true}, {"1234567", 1234567, true}, {PartialPrefix + "123", 0, false}, {"x", 0, false}} {
		if n, ok := ParseGeneration(tc.name); n != tc.n || ok != tc.ok {
			t.Errorf("ParseGeneration(%q) = %d, %v; want %d, %v", tc.name, n, ok, tc.n, tc.ok)
		}
	}
}
