package edge_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/telemetry/otlptest"
)

// TestWeightedSplit: 1,000 requests over a 90/10 split land within
// statistical bounds (±4.5 standard deviations), and a backend of weight
// 0 gets none.
func TestWeightedSplit(t *testing.T) {
	stable, canary, off := startRecordingBackend(t, "stable"), startRecordingBackend(t, "canary"), startRecordingBackend(t, "off")
	ln := meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - name: cart
      backends: [{ service: stable, weight: 90 }, { service: canary, weight: 10 }, { service: off, weight: 0 }]
upstreams:
  - { service: stable, endpoints: [{ address: %s }] }
  - { service: canary, endpoints: [{ address: %s }] }
  - { service: off, endpoints: [{ address: %s }] }
`, addr, stable.addr, canary.addr, off.addr), ln)
	c := newClient(t)
	const n = 1000
	for range n {
		if code, body, _ := send(t, c, "GET", addr, "shop.example.com", "/", nil); code != 200 {
			t.Fatalf("%d %q", code, body)
		}
	}
	got := len(canary.take())
	// Binomial(1000, 0.1): mean 100, standard deviation about 9.5.
	if got < 57 || got > 143 {
		t.Errorf("canary got %d of %d, want about 100", got, n)
	}
	if s := len(stable.take()); s+got != n {
		t.Errorf("stable %d + canary %d != %d", s, got, n)
	}
	if o := len(off.take()); o != 0 {
		t.Errorf("the weight-0 backend got %d requests", o)
	}
}

// TestRouteFilters: a prefix rewrite (the query kept), a full-path
// rewrite, a host rewrite, request and response header changes, a body
// limit (413), a redirect, and an https redirect listener.
func TestRouteFilters(t *testing.T) {
	app := startEchoBackend(t)
	ln, plain := meshtest.Listen(t), meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }, { listen: %s, redirect_to_https: true, https_port: 8443 }]
  routes:
    - name: cart
      hostnames: [shop.example.com]
      matches: [{ path: { prefix: /api/cart } }]
      rewrite: { path: { prefix: /cart }, hostname: cart.internal }
      request_headers: { set: { X-Edge: "1" }, add: { X-Added: a }, remove: [X-Debug] }
      response_headers: { set: { X-Served-By: edge }, remove: [X-Internal] }
      max_body_bytes: 8
      backends: [{ service: app }]
    - name: health
      matches: [{ path: { exact: /healthz } }]
      rewrite: { path: { full: /internal/health } }
      backends: [{ service: app }]
    - name: old
      matches: [{ path: { prefix: /old } }]
      redirect: { path: { prefix: /new }, status: 301 }
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
`, addr, plain.Addr(), app), ln, plain)
	c := newClient(t)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	code, body, h := send(t, c, "GET", addr, "shop.example.com", "/api/cart/items?x=1", map[string]string{"X-Debug": "1"})
	if code != 200 || body != "GET cart.internal /cart/items?x=1 X-Edge=1 X-Added=a X-Debug=" {
		t.Errorf("prefix rewrite: %d %q", code, body)
	}
	if h.Get("X-Served-By") != "edge" || h.Get("X-Internal") != "" {
		t.Errorf("response headers: %v", h)
	}
	if code, body, _ := send(t, c, "GET", addr, "any", "/healthz?probe=1", nil); code != 200 || !strings.HasPrefix(body, "GET any /internal/health?probe=1") {
		t.Errorf("full rewrite: %d %q", code, body)
	}
	req, _ := http.NewRequest("POST", "http://"+addr+"/api/cart", strings.NewReader("far more than eight bytes"))
	req.Host = "shop.example.com"
	if resp, err := c.Do(req); err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("body over the limit: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	code, _, h = send(t, c, "GET", addr, "example.com:8080", "/old/page?q=2", nil)
	if code != 301 || h.Get("Location") != "http://example.com:8080/new/page?q=2" {
		t.Errorf("redirect: %d %q", code, h.Get("Location"))
	}
	code, _, h = send(t, c, "POST", plain.Addr().String(), "shop.example.com", "/pay?id=3", nil)
	if code != http.StatusPermanentRedirect || h.Get("Location") != "https://shop.example.com:8443/pay?id=3" {
		t.Errorf("https redirect: %d %q", code, h.Get("Location"))
	}
}

// startEcho serves "<method> <host> <target> X-Edge=.. X-Added=..
// X-Debug=.." and sets X-Internal on its responses.
func startEchoBackend(t *testing.T) string {
	t.Helper()
	ln := meshtest.Listen(t)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Internal", "secret")
		fmt.Fprintf(w, "%s %s %s X-Edge=%s X-Added=%s X-Debug=%s", r.Method, r.Host, r.RequestURI,
			r.Header.Get("X-Edge"), r.Header.Get("X-Added"), r.Header.Get("X-Debug"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// TestGRPCAndWebSocket: a gRPC service and a WebSocket endpoint behind
// edge routes, through one plain (h2c) listener.
func TestGRPCAndWebSocket(t *testing.T) {
	grpcLn := meshtest.Listen(t)
	gs := grpc.NewServer()
	testpb.RegisterTestServiceServer(gs, echoService{})
	go gs.Serve(grpcLn)
	t.Cleanup(gs.Stop)
	wsLn := meshtest.Listen(t)
	ws := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, data, err := c.Read(r.Context())
			if err != nil {
				return
			}
			c.Write(r.Context(), typ, append([]byte("echo:"), data...))
		}
	})}
	go ws.Serve(wsLn)
	t.Cleanup(func() { ws.Close() })

	ln := meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - { name: grpc, matches: [{ path: { prefix: /grpc.testing.TestService } }], backends: [{ service: echo }] }
    - { name: ws, matches: [{ path: { prefix: /chat } }], backends: [{ service: chat }] }
upstreams:
  - { service: echo, protocol: grpc, endpoints: [{ address: %s }] }
  - { service: chat, endpoints: [{ address: %s }] }
`, addr, grpcLn.Addr(), wsLn.Addr()), ln)

	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	resp, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("ping")}})
	if err != nil || string(resp.GetPayload().GetBody()) != "ping" {
		t.Fatalf("gRPC through the edge: %v %v", resp, err)
	}

	c, _, err := websocket.Dial(ctx, "ws://"+addr+"/chat", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, got, err := c.Read(ctx); err != nil || string(got) != "echo:hi" {
		t.Fatalf("WebSocket through the edge: %q %v", got, err)
	}
	c.Close(websocket.StatusNormalClosure, "")
}

type echoService struct {
	testpb.UnimplementedTestServiceServer
}

func (echoService) UnaryCall(_ context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Payload: req.GetPayload()}, nil
}

// TestReloadRoutesUnderLoad: routes change on reload ten times while
// clients send a bounded number of requests: none fails, and each answer
// comes from one of the two configs' routes.
func TestReloadRoutesUnderLoad(t *testing.T) {
	a, b := startRecordingBackend(t, "a"), startRecordingBackend(t, "b")
	ln := meshtest.Listen(t)
	addr := ln.Addr().String()
	cfgFor := func(i int) string {
		service := []string{"a", "b"}[i%2]
		return fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes: [{ name: r%d, request_headers: { set: { X-Route: r%d } }, backends: [{ service: %s }] }]
upstreams:
  - { service: a, endpoints: [{ address: %s }] }
  - { service: b, endpoints: [{ address: %s }] }
`, addr, i, i, service, a.addr, b.addr)
	}
	s := startEdge(t, cfgFor(0), ln)
	var failed atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 2}}
			defer c.CloseIdleConnections()
			for range 200 {
				resp, err := c.Get("http://" + addr + "/x")
				if err != nil {
					failed.Add(1)
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || !(strings.HasPrefix(string(body), "a r") || strings.HasPrefix(string(body), "b r")) {
					failed.Add(1)
				}
			}
		})
	}
	for i := 1; i <= 10; i++ {
		if err := s.Reload(t.Context(), parseEdge(t, cfgFor(i))); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of 800 requests failed across ten route reloads", n)
	}
	c := newClient(t)
	if code, body, _ := send(t, c, "GET", addr, "x", "/", nil); code != 200 || body != "a r10" {
		t.Errorf("after the reloads: %d %q, want the last config's route", code, body)
	}
}

var _ = net.Dial

// TestAdminRoutesAndDigest: /routes shows an edge's routes and compiled
// table; /members shows every edge's route digest, equal for edges that
// serve the same routes and different after one is reloaded with others.
func TestAdminRoutesAndDigest(t *testing.T) {
	backend := startRecordingBackend(t, "app")
	edgeLn, adminLn := meshtest.Listen(t), meshtest.Listen(t)
	gossipAddr := meshtest.FreeAddr(t)
	cfgFor := func(routes string) string {
		return fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes: [%s]
admin: { listen: %s }
discovery: { gossip: { bind: %s, insecure: true, profile: local } }
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
`, edgeLn.Addr(), routes, adminLn.Addr(), gossipAddr, backend.addr)
	}
	s := startEdge(t, cfgFor(`{ name: shop, hostnames: [shop.example.com], backends: [{ service: app }] }`), edgeLn, adminLn)
	var routes struct {
		Routes []struct {
			Name      string
			Hostnames []string
			Matches   []string
		}
		Table, Digest string
	}
	adminJSON(t, adminLn.Addr().String(), "/routes", &routes)
	if len(routes.Routes) != 1 || routes.Routes[0].Name != "shop" || routes.Routes[0].Matches[0] != "prefix /" ||
		!strings.Contains(routes.Table, "shop.example.com") || len(routes.Digest) != 12 {
		t.Fatalf("/routes = %+v", routes)
	}
	digest := func() string {
		var members []struct {
			Name        string `json:"name"`
			RouteDigest string `json:"route_digest"`
		}
		adminJSON(t, adminLn.Addr().String(), "/members", &members)
		if len(members) != 1 {
			t.Fatalf("/members = %+v", members)
		}
		return members[0].RouteDigest
	}
	meshtest.WaitFor(t, 5*time.Second, "the digest on /members", func() bool { return digest() == routes.Digest })
	if err := s.Reload(t.Context(), parseEdge(t, cfgFor(`{ name: shop, hostnames: [www.example.com], backends: [{ service: app }] }`))); err != nil {
		t.Fatal(err)
	}
	meshtest.WaitFor(t, 5*time.Second, "a new digest after the reload", func() bool { d := digest(); return d != "" && d != routes.Digest })
}

func adminJSON(t *testing.T, addr, path string, v any) {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestRouteInSpanAndAccessLog: the route a request matched names its
// server span's http.route and its access log line's "route"; a request
// no route matches has neither.
func TestRouteInSpanAndAccessLog(t *testing.T) {
	rcv := otlptest.Start(t)
	app := startEchoBackend(t)
	logPath := filepath.Join(t.TempDir(), "access.log")
	ln := meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - { name: cart-api, hostnames: [shop.example.com], matches: [{ path: { prefix: /api/cart } }], backends: [{ service: cart }] }
upstreams: [{ service: cart, endpoints: [{ address: %s }] }]
telemetry:
  access_log: %s
  tracing: { otlp_endpoint: %s, sample_ratio: 1 }
`, addr, app, logPath, rcv.GRPCAddr()), ln)
	c := newClient(t)
	if code, body, _ := send(t, c, "GET", addr, "shop.example.com", "/api/cart/7", nil); code != 200 {
		t.Fatalf("routed request: %d %q", code, body)
	}
	if code, body, _ := send(t, c, "GET", addr, "shop.example.com", "/nowhere", nil); code != 404 {
		t.Fatalf("unrouted request: %d %q", code, body)
	}

	servers := func(spans []otlptest.Span) (out []otlptest.Span) {
		for _, s := range spans {
			if s.Kind == tracepb.Span_SPAN_KIND_SERVER {
				out = append(out, s)
			}
		}
		return out
	}
	spans := servers(rcv.WaitSpans(t, 15*time.Second, func(s []otlptest.Span) bool { return len(servers(s)) >= 2 }))
	byPath := map[string]otlptest.Span{}
	for _, s := range spans {
		byPath[fmt.Sprint(s.Attributes["url.path"])] = s
	}
	if got := byPath["/api/cart/7"].Attributes["http.route"]; got != "cart-api" {
		t.Errorf("routed server span: http.route = %v, want cart-api (%v)", got, byPath["/api/cart/7"].Attributes)
	}
	if got, ok := byPath["/nowhere"].Attributes["http.route"]; ok {
		t.Errorf("unrouted server span has http.route = %v", got)
	}

	var lines []map[string]any
	meshtest.Eventually(t, 5*time.Second, "two access log lines", func() error {
		lines = nil
		data, _ := os.ReadFile(logPath)
		for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil {
				lines = append(lines, m)
			}
		}
		if len(lines) < 2 {
			return fmt.Errorf("%d lines", len(lines))
		}
		return nil
	})
	for _, l := range lines {
		switch l["path"] {
		case "/api/cart/7":
			if l["route"] != "cart-api" || l["listener"] != "edge" || l["status"] != 200.0 {
				t.Errorf("routed access line = %v, want route cart-api, listener edge, status 200", l)
			}
		case "/nowhere":
			if _, ok := l["route"]; ok || l["status"] != 404.0 {
				t.Errorf("unrouted access line = %v, want no route and status 404", l)
			}
		default:
			t.Errorf("unexpected access line %v", l)
		}
	}
}
