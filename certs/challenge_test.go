package certs

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestChallengesAnswerOnlyTokensInFlight(t *testing.T) {
	c := NewChallenges()
	if err := c.Present("Shop.Example.com", "tok1", "tok1.thumb"); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		method, host, path string
		code               int
		body               string
	}{
		{"GET", "shop.example.com", ChallengePath + "tok1", 200, "tok1.thumb"},
		{"GET", "shop.example.com:80", ChallengePath + "tok1", 200, "tok1.thumb"},
		{"HEAD", "shop.example.com", ChallengePath + "tok1", 200, ""},
		{"GET", "other.example.com", ChallengePath + "tok1", 404, ""},
		{"GET", "shop.example.com", ChallengePath + "tok2", 404, ""},
		{"GET", "shop.example.com", ChallengePath + "tok1/x", 404, ""},
		{"GET", "shop.example.com", "/tok1", 404, ""},
		{"POST", "shop.example.com", ChallengePath + "tok1", 404, ""},
	}
	for _, tc := range cases {
		req := httptest.NewRequest(tc.method, "http://"+tc.host+tc.path, nil)
		w := httptest.NewRecorder()
		c.ServeHTTP(w, req)
		if w.Code != tc.code || (tc.code == 200 && tc.method == "GET" && w.Body.String() != tc.body) {
			t.Errorf("%s %s%s: %d %q, want %d %q", tc.method, tc.host, tc.path, w.Code, w.Body.String(), tc.code, tc.body)
		}
	}
	if err := c.CleanUp("shop.example.com", "tok1", "tok1.thumb"); err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	c.ServeHTTP(w, httptest.NewRequest("GET", "http://shop.example.com"+ChallengePath+"tok1", nil))
	if w.Code != 404 {
		t.Errorf("after CleanUp: %d, want 404", w.Code)
	}
}

func TestChallengesServeOneListener(t *testing.T) {
	c := NewChallenges()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	stop, err := c.Serve(addr, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if _, err := c.Serve(addr, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
		t.Error("a second listener on the same address started")
	}
	for i, tok := range []string{"a", "b", "c"} {
		_ = c.Present("x.example.com", tok, tok+".k")
		req, _ := http.NewRequest("GET", "http://"+addr+ChallengePath+tok, nil)
		req.Host = "x.example.com"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != tok+".k" {
			t.Errorf("challenge %d: %d %q", i, resp.StatusCode, body)
		}
	}
}
