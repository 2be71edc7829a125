package sidecar

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/policy/identity"
)

// echoApp answers with the path it received and the caller identity the
// sidecar passed it.
func echoApp(t *testing.T) (port int, seen *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	seen = new(atomic.Int64)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.EscapedPath(), r.Header.Get("X-Sidemesh-Peer-Identity"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port, seen
}

// meshCA issues the certificates of the mTLS tests into a directory.
type meshCA struct {
	t   testing.TB
	ca  *identity.TestCA
	dir string
}

func newMeshCA(t testing.TB, trustDomain string) *meshCA {
	ca, err := identity.NewTestCA(trustDomain)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ca.WriteCA(filepath.Join(dir, "ca.pem")); err != nil {
		t.Fatal(err)
	}
	return &meshCA{t: t, ca: ca, dir: dir}
}

// leaf writes service's certificate and returns its tls config lines.
func (m *meshCA) leaf(service string) string {
	cert, key, err := m.ca.WriteLeaf(m.dir, service, time.Hour)
	if err != nil {
		m.t.Fatal(err)
	}
	return fmt.Sprintf("tls: { cert_file: %s, key_file: %s, ca_file: %s, trust_domain: mesh.local, reload_interval: 50ms }",
		cert, key, filepath.Join(m.dir, "ca.pem"))
}

// do sends method path through the outbound listener out with Host host.
func do(c *http.Client, out, host, method, path string, hdr map[string]string) (int, string, error) {
	req, _ := http.NewRequest(method, "http://"+out+path, nil)
	req.Host = host
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestMTLSAndPolicy runs web -> cart over mutual TLS with a policy on
// cart: identity reaches the app (a forged one does not), the policy
// decides on the normalized path, and refusals never reach the app.
func TestMTLSAndPolicy(t *testing.T) {
	ca := newMeshCA(t, "mesh.local")
	port, appHits := echoApp(t)
	cartIn, cartAdmin := listenAddr(t), listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
service: { name: cart, port: %d }
inbound: { listen: %s }
outbound: { listen: %s }
admin: { listen: %s }
%s
policy:
  rules:
    - { from: [web], methods: [GET], paths: [/api/], action: allow }
    - { from: [web], paths: [/api/private/], action: deny }
`, port, cartIn, listenAddr(t), cartAdmin, ca.leaf("cart"))))
	out := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
%s
upstreams:
  - { service: cart, endpoints: [{ address: %s }], retries: { attempts: 0 } }
`, out, ca.leaf("web"), cartIn)))
	c := newClient(t)

	tests := []struct {
		method, path string
		code         int
		body         string
	}{
		{"GET", "/api/items", 200, "GET /api/items spiffe://mesh.local/ns/default/svc/web"},
		{"GET", "/api/./items//x", 200, "GET /api/items/x spiffe://mesh.local/ns/default/svc/web"},
		{"POST", "/api/items", 403, ""},
		{"GET", "/admin", 403, ""},
		{"GET", "/api/../admin", 403, ""},
		{"GET", "/api/%2e%2e/admin", 403, ""},
		{"GET", "/api/private/x", 403, ""},
		{"GET", "/api%2Fx", 400, ""},
		{"GET", "/api/%5c..%5cadmin", 400, ""},
	}
	for _, tt := range tests {
		before := appHits.Load()
		code, body, err := do(c, out, "cart", tt.method, tt.path, map[string]string{
			"X-Sidemesh-Peer-Identity": "spiffe://mesh.local/ns/default/svc/admin", // forged
		})
		if err != nil {
			t.Fatalf("%s %s: %v", tt.method, tt.path, err)
		}
		if code != tt.code || (tt.body != "" && body != tt.body) {
			t.Errorf("%s %s = %d %q, want %d %q", tt.method, tt.path, code, body, tt.code, tt.body)
		}
		if tt.code != 200 && appHits.Load() != before {
			t.Errorf("%s %s: refused request reached the app", tt.method, tt.path)
		}
	}

	// Every refusal is counted by the rule, or the check, that decided.
	m := scrape(t, cartAdmin)
	for rule, want := range map[string]float64{"default": 4, "policy.rules[1]": 1, "bad_path": 2} {
		if got, _ := metricValue(m, "sidemesh_policy_denials_total", map[string]string{"sidemesh_policy_rule": rule}); got != want {
			t.Errorf("denials by %s = %v, want %v", rule, got, want)
		}
	}
	if exp, ok := metricValue(m, "sidemesh_tls_certificate_expiry_seconds", nil); !ok || exp < 3000 || exp > 3600 {
		t.Errorf("certificate expiry metric = %v (present %v), want about an hour", exp, ok)
	}
}

// TestMTLSRefusals checks that the inbound listener refuses every caller
// that cannot prove the right identity, and the outbound side refuses a
// server with the wrong one.
func TestMTLSRefusals(t *testing.T) {
	ca := newMeshCA(t, "mesh.local")
	port, appHits := echoApp(t)
	cartIn := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
service: { name: cart, port: %d }
inbound: { listen: %s }
outbound: { listen: %s }
%s
policy: { default: allow }
`, port, cartIn, listenAddr(t), ca.leaf("cart"))))

	// Plain HTTP to the inbound port.
	if resp, err := http.Get("http://" + cartIn + "/"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP to the mTLS inbound: %d, want 400", resp.StatusCode)
		}
	}
	handshake := func(cfg *tls.Config) error {
		d := tls.Dialer{Config: cfg}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := d.DialContext(ctx, "tcp", cartIn)
		if err != nil {
			return err
		}
		defer conn.Close()
		// TLS 1.3 reports a refused client certificate on the first read.
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprint(conn, "GET / HTTP/1.1\r\nHost: cart\r\n\r\n")
		_, err = conn.Read(make([]byte, 1))
		return err
	}
	good, err := ca.ca.Issue("web", "default", time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := identity.NewTestCA("mesh.local")
	foreign, _ := other.Issue("web", "default", time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	expired, _ := ca.ca.Issue("web", "default", time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))
	base := func(cert *tls.Certificate) *tls.Config {
		cfg := &tls.Config{RootCAs: ca.ca.Pool(), ServerName: "cart", MinVersion: tls.VersionTLS13}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		return cfg
	}
	if err := handshake(base(good)); err != nil {
		t.Fatalf("valid client certificate refused: %v", err)
	}
	for name, cfg := range map[string]*tls.Config{
		"no client certificate": base(nil),
		"unknown CA":            base(foreign),
		"expired certificate":   base(expired),
	} {
		if err := handshake(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}

	// A sidecar that dials cart but reaches a server proving another
	// identity gets no answer from it.
	impostorIn := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
service: { name: catalog, port: %d }
inbound: { listen: %s }
outbound: { listen: %s }
%s
policy: { default: allow }
`, port, impostorIn, listenAddr(t), ca.leaf("catalog"))))
	out := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
%s
upstreams:
  - { service: cart, endpoints: [{ address: %s }], retries: { attempts: 0 } }
`, out, ca.leaf("web"), impostorIn)))
	before := appHits.Load()
	code, body, err := do(newClient(t), out, "cart", "GET", "/", nil)
	if err != nil || code < 500 {
		t.Fatalf("request to a server with the wrong identity: %d %q %v, want a 5xx", code, body, err)
	}
	if appHits.Load() != before {
		t.Fatal("the impostor's app was reached")
	}
}

// TestMTLSRotationUnderLoad replaces cart's certificate on disk several
// times while requests flow from web: none fails.
func TestMTLSRotationUnderLoad(t *testing.T) {
	ca := newMeshCA(t, "mesh.local")
	port, _ := echoApp(t)
	cartIn := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
service: { name: cart, port: %d }
inbound: { listen: %s }
outbound: { listen: %s }
%s
policy: { rules: [{ from: [web], action: allow }] }
`, port, cartIn, listenAddr(t), ca.leaf("cart"))))
	out := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
%s
upstreams:
  - { service: cart, endpoints: [{ address: %s }], retries: { attempts: 0 } }
`, out, ca.leaf("web"), cartIn)))

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var sent, failed atomic.Int64
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := newClient(t)
			for ctx.Err() == nil && sent.Add(1) < 4000 {
				if w%2 == 1 {
					c = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
				}
				if code, body, err := do(c, out, "cart", "GET", "/x", nil); err != nil || code != 200 {
					failed.Add(1)
					t.Errorf("request during rotation: %d %q %v", code, body, err)
				}
			}
		}()
	}
	rotate := time.NewTicker(300 * time.Millisecond) // the pace of the rotations under test
	defer rotate.Stop()
	for range 5 {
		<-rotate.C
		ca.leaf("cart")
		ca.leaf("web")
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d of %d requests failed during rotation", failed.Load(), sent.Load())
	}
	t.Logf("%d requests, 10 certificate rotations, none failed", sent.Load())
}

// TestPolicyReload changes the rules with a reload: the new ones decide
// the next request, on the connection already open.
func TestPolicyReload(t *testing.T) {
	ca := newMeshCA(t, "mesh.local")
	port, _ := echoApp(t)
	cartIn := listenAddr(t)
	cartCfg := func(rules string) string {
		return fmt.Sprintf(`
service: { name: cart, port: %d }
inbound: { listen: %s }
outbound: { listen: %s }
%s
policy: { rules: [%s] }
`, port, cartIn, "127.0.0.1:1", ca.leaf("cart"), rules)
	}
	cartOut := listenAddr(t)
	first := strings.Replace(cartCfg(`{ from: [web], action: allow }`), "127.0.0.1:1", cartOut, 1)
	cart := start(t, parse(t, first))
	out := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
%s
upstreams:
  - { service: cart, endpoints: [{ address: %s }], retries: { attempts: 0 } }
`, out, ca.leaf("web"), cartIn)))
	c := newClient(t)
	if code, body, err := do(c, out, "cart", "GET", "/x", nil); err != nil || code != 200 {
		t.Fatalf("before reload: %d %q %v", code, body, err)
	}
	next := strings.Replace(cartCfg(`{ from: [web], action: deny }`), "127.0.0.1:1", cartOut, 1)
	if err := cart.Reload(context.Background(), parse(t, next)); err != nil {
		t.Fatal(err)
	}
	if code, body, err := do(c, out, "cart", "GET", "/x", nil); err != nil || code != 403 || !strings.Contains(body, "policy.rules[0]") {
		t.Fatalf("after reload: %d %q %v, want 403 naming policy.rules[0]", code, body, err)
	}
}

// TestMTLSTCPInbound runs raw TCP over mutual TLS: an allowed caller's
// bytes reach the app; a denied caller's connection is closed after the
// handshake, before anything reaches the app.
func TestMTLSTCPInbound(t *testing.T) {
	ca := newMeshCA(t, "mesh.local")
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	var accepted atomic.Int64
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	dbIn := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
service: { name: db, port: %d, protocol: tcp }
inbound: { listen: %s }
outbound: { listen: %s }
%s
policy: { rules: [{ from: [web], action: allow }] }
`, echo.Addr().(*net.TCPAddr).Port, dbIn, listenAddr(t), ca.leaf("db"))))

	caller := func(name string) string {
		listen := listenAddr(t)
		start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
%s
upstreams:
  - { service: db, protocol: tcp, listen: %s, endpoints: [{ address: %s }] }
`, listenAddr(t), ca.leaf(name), listen, dbIn)))
		return listen
	}
	roundTrip := func(addr string) error {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "ping\n"); err != nil {
			return err
		}
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if string(buf) != "ping\n" {
			return fmt.Errorf("echo %q", buf)
		}
		return nil
	}
	if err := roundTrip(caller("web")); err != nil {
		t.Fatalf("allowed caller: %v", err)
	}
	before := accepted.Load()
	if err := roundTrip(caller("evil")); err == nil {
		t.Fatal("denied caller got an echo")
	}
	if accepted.Load() != before {
		t.Fatal("denied caller's connection reached the app")
	}
}
