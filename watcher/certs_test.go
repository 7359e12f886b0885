package watcher

import (
	"slices"
	"testing"
)

func TestMapKeys(t *testing.T) {
	got := mapKeys([]byte("# a comment\n\nShop.Example.COM shop_web\n  www.shop.example.com\tshop_web\r\nlonely\n#x y\nlast.example.com be"))
	want := []string{"shop.example.com", "www.shop.example.com", "lonely", "last.example.com"}
	if !slices.Equal(got, want) {
		t.Errorf("mapKeys = %q, want %q", got, want)
	}
}
