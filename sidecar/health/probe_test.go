package health

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// checkOnce runs one check of addr with s, as a round would.
func checkOnce(t *testing.T, s Settings, addr string) error {
	t.Helper()
	c := New(s, nil, nil, nil)
	defer c.prober.close()
	return c.checkOnce(context.Background(), addr)
}

func TestHTTPStatus(t *testing.T) {
	tests := []struct {
		status int
		pass   bool
	}{
		{200, true},
		{204, true},
		{301, true},
		{302, true},
		{304, true},
		{307, true},
		{400, false},
		{404, false},
		{500, false},
		{503, false},
	}
	for _, tt := range tests {
		t.Run(http.StatusText(tt.status), func(t *testing.T) {
			u := newUpstream(t, tt.status)
			err := checkOnce(t, Settings{Path: "/healthz"}, u.addr())
			if pass := err == nil; pass != tt.pass {
				t.Fatalf("status %d: check error %v, want pass %v", tt.status, err, tt.pass)
			}
			if n := u.count(); n != 1 {
				t.Errorf("upstream served %d requests, want 1 (redirects are not followed)", n)
			}
			if err != nil && !strings.Contains(err.Error(), "status") {
				t.Errorf("error %q does not name the status", err)
			}
		})
	}
}

func TestHTTPRequest(t *testing.T) {
	tests := []struct {
		name     string
		s        Settings
		wantURI  string
		wantHost func(addr string) string
	}{
		{
			"path and host",
			Settings{Path: "/healthz?deep=1", Host: "orders"},
			"/healthz?deep=1",
			func(string) string { return "orders" },
		},
		{
			"no leading slash, no host",
			Settings{Path: "ready"},
			"/ready",
			func(addr string) string { return addr },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpstream(t, 200)
			if err := checkOnce(t, tt.s, u.addr()); err != nil {
				t.Fatalf("check: %v", err)
			}
			h := u.lastHit(t)
			if h.uri != tt.wantURI {
				t.Errorf("request URI %q, want %q", h.uri, tt.wantURI)
			}
			if want := tt.wantHost(u.addr()); h.host != want {
				t.Errorf("Host %q, want %q", h.host, want)
			}
			if h.ua != UserAgent {
				t.Errorf("User-Agent %q, want %q", h.ua, UserAgent)
			}
			if h.proto != 1 {
				t.Errorf("HTTP/%d, want HTTP/1", h.proto)
			}
		})
	}
}

func TestHTTPTimeout(t *testing.T) {
	u := newUpstream(t, 0) // hangs
	const timeout = 100 * time.Millisecond
	begin := time.Now()
	err := checkOnce(t, Settings{Path: "/", Timeout: timeout}, u.addr())
	elapsed := time.Since(begin)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("check of a hanging endpoint: %v, want a deadline error", err)
	}
	if elapsed < timeout || elapsed > timeout+time.Second {
		t.Errorf("check failed after %v, want about %v", elapsed, timeout)
	}
}

func TestHTTPBodyLimit(t *testing.T) {
	// A body beyond what a check reads is not a failure.
	big := strings.Repeat("x", 1<<20)
	ln := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(big))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	if err := checkOnce(t, Settings{Path: "/"}, ln.Addr().String()); err != nil {
		t.Fatalf("check: %v", err)
	}
}

func TestH2C(t *testing.T) {
	u := startUpstream(t, 200, true)
	if err := checkOnce(t, Settings{Path: "/grpc.health.v1.Health/Check", HTTP2: true, Host: "orders"}, u.addr()); err != nil {
		t.Fatalf("h2c check: %v", err)
	}
	h := u.lastHit(t)
	if h.proto != 2 || h.host != "orders" || h.ua != UserAgent {
		t.Errorf("served HTTP/%d Host %q User-Agent %q, want HTTP/2, orders, %s", h.proto, h.host, h.ua, UserAgent)
	}
	// The same server refuses HTTP/1.1, so the check above really used h2c.
	if err := checkOnce(t, Settings{Path: "/", Timeout: time.Second}, u.addr()); err == nil {
		t.Error("HTTP/1.1 check of an h2c-only server passed")
	}
}

// Keep-alives are off: each check dials, so it tests that the endpoint
// still accepts connections.
func TestHTTPNewConnectionPerCheck(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(map[bool]string{false: "http1", true: "h2c"}[h2], func(t *testing.T) {
			u := startUpstream(t, 200, h2)
			c := New(Settings{Path: "/", HTTP2: h2}, nil, nil, nil)
			defer c.prober.close()
			for range 3 {
				if err := c.checkOnce(context.Background(), u.addr()); err != nil {
					t.Fatalf("check: %v", err)
				}
			}
			if n := u.conns.Load(); n != 3 {
				t.Errorf("3 checks opened %d connections, want 3", n)
			}
		})
	}
}

func TestTCP(t *testing.T) {
	ln := listen(t)
	addr := ln.Addr().String()
	if err := checkOnce(t, Settings{TCP: true}, addr); err != nil {
		t.Fatalf("TCP check of a listening port: %v", err)
	}
	ln.Close()
	if err := checkOnce(t, Settings{TCP: true}, addr); err == nil {
		t.Fatal("TCP check of a closed port passed")
	}
}

// listen listens on a free port of 127.0.0.1 until the test ends.
func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}
