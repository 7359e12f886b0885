package assemble

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

func TestHostMapKeys(t *testing.T) {
	got := HostMapKeys([]byte("# a comment\n\nShop.Example.COM shop_web\n  www.shop.example.com\tshop_web\r\nlonely\n#x y\nlast.example.com be"))
	want := []string{"shop.example.com", "www.shop.example.com", "lonely", "last.example.com"}
	if !slices.Equal(got, want) {
		t.Errorf("HostMapKeys = %q, want %q", got, want)
	}
}

func TestParseHostMap(t *testing.T) {
	got, err := ParseHostMap("hosts.map", []byte("# header\n\n  a.example.com be_a\r\nb.example.com\tbe_b\na.example.com be_later\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"a.example.com": "be_a", "b.example.com": "be_b"}; !maps.Equal(got, want) {
		t.Errorf("ParseHostMap = %v, want %v (the first of a key wins)", got, want)
	}
	_, err = ParseHostMap("/live/hosts.map", []byte("a.example.com be_a\n\nlonely\n"))
	if err == nil || !strings.Contains(err.Error(), "/live/hosts.map:3:") {
		t.Errorf("a one-word line: %v, want an error naming /live/hosts.map:3", err)
	}
}

// TestHostMapRoundTrip: what the writer puts in an assembled map, the
// readers give back, per fragment and as a whole.
func TestHostMapRoundTrip(t *testing.T) {
	frags := []*Fragment{
		{Name: "shop", Map: []MapEntry{{Domain: "shop.example.com", Backend: "shop_web"}, {Domain: "www.shop.example.com", Backend: "shop_web"}}},
		{Name: "blog", Map: []MapEntry{{Domain: "blog.example.com", Backend: "blog_web"}}},
		{Name: "empty"},
	}
	out := Build(&Base{File: "base.cfg", Text: []byte("global\n")}, frags)
	entries, err := ParseHostMap("hosts.map", out.Map)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"shop.example.com": "shop_web", "www.shop.example.com": "shop_web", "blog.example.com": "blog_web"}
	if !maps.Equal(entries, want) {
		t.Errorf("entries %v, want %v", entries, want)
	}
	byFrag := HostMapFragments(out.Map)
	if len(byFrag) != 2 || !slices.Equal(byFrag["shop"], []string{"shop.example.com", "www.shop.example.com"}) || !slices.Equal(byFrag["blog"], []string{"blog.example.com"}) {
		t.Errorf("HostMapFragments = %v", byFrag)
	}
	if got := string(AppendHostMapLine([]byte("x"), "k", "v")); got != "xk v\n" {
		t.Errorf("AppendHostMapLine = %q", got)
	}
}
