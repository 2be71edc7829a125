package edge_test

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/telemetry/otlptest"
)

// aggBackend is a test service for aggregation tests: handle answers
// each request, and every request is counted and its target and headers
// kept.
type aggBackend struct {
	addr   string
	hits   atomic.Int64
	mu     sync.Mutex
	seen   []*http.Request
	handle atomic.Pointer[http.HandlerFunc]
}

func startAggBackend(t testing.TB, h http.HandlerFunc) *aggBackend {
	t.Helper()
	b := &aggBackend{}
	b.set(h)
	ln := meshtest.Listen(t)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		b.mu.Lock()
		b.seen = append(b.seen, r.Clone(r.Context()))
		b.mu.Unlock()
		(*b.handle.Load())(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	b.addr = ln.Addr().String()
	return b
}

func (b *aggBackend) set(h http.HandlerFunc) { b.handle.Store(&h) }

func (b *aggBackend) last() *http.Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.seen) == 0 {
		return nil
	}
	return b.seen[len(b.seen)-1]
}

// jsonAnswer answers body after delay, with the headers hdr (name,
// value pairs).
func jsonAnswer(body string, delay time.Duration, hdr ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if delay > 0 {
			time.Sleep(delay)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			w.Header().Add(hdr[i], hdr[i+1])
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, body)
	}
}

func statusAnswer(code int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(code) }
}

// TestAggregateTwoLegs: two legs merged, one under its name and one at
// the top level; the most restrictive Cache-Control; Set-Cookie dropped;
// the request ID passed on.
func TestAggregateTwoLegs(t *testing.T) {
	users := startAggBackend(t, jsonAnswer(`{"id": 7, "name": "Ada"}`, 0, "Cache-Control", "max-age=60", "Set-Cookie", "track=1"))
	orders := startAggBackend(t, jsonAnswer(`{"orders": [{"id": 1}], "count": 1}`, 0, "Cache-Control", "private, max-age=30"))
	ln, adminLn := meshtest.Listen(t), meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
admin: { listen: %s }
edge:
  listeners: [{ listen: %s }]
  routes:
    - name: page
      aggregate:
        legs:
          - { name: user, service: users, path: /users/7 }
          - { name: orders, service: orders, path: "/orders?user=7", under: ., required: false }
upstreams:
  - { service: users, endpoints: [{ address: %s }] }
  - { service: orders, endpoints: [{ address: %s }] }
`, adminLn.Addr(), addr, users.addr, orders.addr), ln, adminLn)
	var routes struct {
		Routes []struct {
			Name string
			Legs []struct {
				Name, Service string
				Required      bool
			}
		}
	}
	adminJSON(t, adminLn.Addr().String(), "/routes", &routes)
	if r := routes.Routes; len(r) != 1 || len(r[0].Legs) != 2 || r[0].Legs[0].Service != "users" || !r[0].Legs[0].Required || r[0].Legs[1].Required {
		t.Errorf("/routes = %+v, want the route's two legs", routes)
	}
	code, body, hdr := send(t, newClient(t), "GET", addr, "shop.example.com", "/page", map[string]string{"X-Request-Id": "abc-123", "Cookie": "secret=1"})
	if want := `{"count":1,"orders":[{"id":1}],"user":{"id":7,"name":"Ada"}}`; code != 200 || body != want {
		t.Fatalf("%d %s, want 200 %s", code, body, want)
	}
	for k, want := range map[string]string{"X-Sidemesh-Aggregate": "complete", "X-Sidemesh-Aggregate-Missing": "",
		"Cache-Control": "private, max-age=30", "Set-Cookie": "", "Content-Type": "application/json"} {
		if got := hdr.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	r := orders.last()
	if r == nil || r.URL.RequestURI() != "/orders?user=7" || r.Header.Get("X-Request-Id") != "abc-123" || r.Header.Get("Cookie") != "" || r.Host != "orders" {
		t.Errorf("the orders leg's request: %+v", r)
	}
}

// TestAggregateCollisionDeterministic: three legs that set the same keys,
// answering after random delays, merge the same way in 100 runs.
func TestAggregateCollisionDeterministic(t *testing.T) {
	var bs []*aggBackend
	for i := range 3 {
		bs = append(bs, startAggBackend(t, func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(time.Duration(rand.IntN(8000)) * time.Microsecond)
			fmt.Fprintf(w, `{"winner": "leg%d", "items": [%d]}`, i, i)
		}))
	}
	ln := meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - name: page
      timeout: 5s
      aggregate:
        on_conflict: last
        concat: [items]
        legs:
          - { name: a, service: a, path: /, under: . }
          - { name: b, service: b, path: /, under: . }
          - { name: c, service: c, path: /, under: . }
upstreams:
  - { service: a, endpoints: [{ address: %s }] }
  - { service: b, endpoints: [{ address: %s }] }
  - { service: c, endpoints: [{ address: %s }] }
`, addr, bs[0].addr, bs[1].addr, bs[2].addr), ln)
	c := newClient(t)
	start := time.Now()
	for run := range 100 {
		code, body, _ := send(t, c, "GET", addr, "shop.example.com", "/", nil)
		if want := `{"items":[0,1,2],"winner":"leg2"}`; code != 200 || body != want {
			t.Fatalf("run %d: %d %s, want %s", run, code, body, want)
		}
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("100 runs took %v", took)
	}
}

// TestAggregateLegTimeout: optional legs slower than their timeout are
// left out: one that sends no headers, one whose body stalls after them.
// The answer comes at their timeout (plus scheduling), and both services
// see their request cancelled.
func TestAggregateLegTimeout(t *testing.T) {
	cancelled := make(chan string, 2)
	hang := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if name == "stall" {
				io.WriteString(w, `{"partial": `)
				http.NewResponseController(w).Flush()
			}
			select {
			case <-r.Context().Done():
				cancelled <- name
			case <-time.After(10 * time.Second):
			}
		}
	}
	fast := startAggBackend(t, jsonAnswer(`{"ok": true}`, 0))
	slow, stall := startAggBackend(t, hang("slow")), startAggBackend(t, hang("stall"))
	ln := meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - name: page
      timeout: 5s
      aggregate:
        legs:
          - { name: fast, service: fast, path: / }
          - { name: slow, service: slow, path: /, timeout: 300ms, required: false }
          - { name: stall, service: stall, path: /, timeout: 300ms, required: false }
upstreams:
  - { service: fast, endpoints: [{ address: %s }] }
  - { service: slow, endpoints: [{ address: %s }] }
  - { service: stall, endpoints: [{ address: %s }] }
`, addr, fast.addr, slow.addr, stall.addr), ln)
	start := time.Now()
	code, body, hdr := send(t, newClient(t), "GET", addr, "shop.example.com", "/", nil)
	took := time.Since(start)
	t.Logf("answered in %v with the slow legs' timeout at 300ms", took)
	if code != 200 || body != `{"fast":{"ok":true}}` || hdr.Get("X-Sidemesh-Aggregate") != "partial" || hdr.Get("X-Sidemesh-Aggregate-Missing") != "slow, stall" {
		t.Fatalf("%d %s %v", code, body, hdr)
	}
	if took < 300*time.Millisecond || took > 800*time.Millisecond {
		t.Errorf("answered after %v, want just after the legs' 300ms timeout", took)
	}
	var seen []string
	for range 2 {
		select {
		case name := <-cancelled:
			seen = append(seen, name)
		case <-time.After(2 * time.Second):
			t.Fatalf("only %v saw their request cancelled", seen)
		}
	}
}

// TestAggregateLegBodyBound: a leg whose body is over max_leg_bytes is
// cut off and left out.
func TestAggregateLegBodyBound(t *testing.T) {
	small := startAggBackend(t, jsonAnswer(`{"ok": true}`, 0))
	big := startAggBackend(t, jsonAnswer(`{"pad": "`+strings.Repeat("x", 64<<10)+`"}`, 0))
	ln := meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - name: page
      aggregate:
        max_leg_bytes: 1024
        legs:
          - { name: small, service: small, path: / }
          - { name: big, service: big, path: /, required: false }
upstreams:
  - { service: small, endpoints: [{ address: %s }] }
  - { service: big, endpoints: [{ address: %s }] }
`, addr, small.addr, big.addr), ln)
	c := newClient(t)
	for range 2 { // and the edge is still there
		code, body, hdr := send(t, c, "GET", addr, "shop.example.com", "/", nil)
		if code != 200 || body != `{"small":{"ok":true}}` || hdr.Get("X-Sidemesh-Aggregate-Missing") != "big" {
			t.Fatalf("%d %s %v", code, body, hdr)
		}
	}
}

// TestAggregateEveryLegFails: 502 with a JSON problem naming the legs.
func TestAggregateEveryLegFails(t *testing.T) {
	a, b := startAggBackend(t, statusAnswer(500)), startAggBackend(t, statusAnswer(404))
	ln := meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - name: page
      aggregate:
        legs:
          - { name: a, service: a, path: /, required: false }
          - { name: b, service: b, path: /, required: false }
upstreams:
  - { service: a, endpoints: [{ address: %s }] }
  - { service: b, endpoints: [{ address: %s }] }
`, addr, a.addr, b.addr), ln)
	code, body, hdr := send(t, newClient(t), "GET", addr, "shop.example.com", "/", nil)
	if code != 502 || hdr.Get("Content-Type") != "application/problem+json" || hdr.Get("X-Sidemesh-Error") != "aggregate_leg_failed" ||
		hdr.Get("X-Sidemesh-Aggregate-Missing") != "a, b" || !strings.Contains(body, `every leg failed: a: service \"a\" answered 500`) {
		t.Fatalf("%d %s %v", code, body, hdr)
	}
}

// TestAggregateSequential: a leg's path uses a field of an earlier leg's
// response, escaped; it starts once that leg answered.
func TestAggregateSequential(t *testing.T) {
	orders := startAggBackend(t, jsonAnswer(`{"id": 1, "customer": {"id": "c 7/x"}}`, 50*time.Millisecond))
	users := startAggBackend(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"path": %q}`, r.URL.EscapedPath())
	})
	ln := meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - name: page
      aggregate:
        legs:
          - { name: order, service: orders, path: /orders/1 }
          - { name: customer, service: users, path: "/users/{order.customer.id}" }
upstreams:
  - { service: orders, endpoints: [{ address: %s }] }
  - { service: users, endpoints: [{ address: %s }] }
`, addr, orders.addr, users.addr), ln)
	code, body, _ := send(t, newClient(t), "GET", addr, "shop.example.com", "/", nil)
	if want := `{"customer":{"path":"/users/c%207%2Fx"},"order":{"id":1,"customer":{"id":"c 7/x"}}}`; code != 200 || body != want {
		t.Fatalf("%d %s, want %s", code, body, want)
	}
}

// TestAggregateBreakerOpen: once a leg's service has its breaker open, the
// leg is reported missing at once, without a request, instead of waiting
// for its timeout.
func TestAggregateBreakerOpen(t *testing.T) {
	ok := startAggBackend(t, jsonAnswer(`{"ok": 1}`, 0))
	flaky := startAggBackend(t, statusAnswer(500))
	ln := meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - name: page
      timeout: 5s
      aggregate:
        legs:
          - { name: ok, service: ok, path: / }
          - { name: flaky, service: flaky, path: /, timeout: 3s, required: false }
upstreams:
  - { service: ok, endpoints: [{ address: %s }] }
  - service: flaky
    endpoints: [{ address: %s }]
    circuit_breaker: { consecutive_failures: 3, open_timeout: 1m }
`, addr, ok.addr, flaky.addr), ln)
	c := newClient(t)
	for range 3 {
		if code, _, hdr := send(t, c, "GET", addr, "shop.example.com", "/", nil); code != 200 || hdr.Get("X-Sidemesh-Aggregate-Missing") != "flaky" {
			t.Fatalf("%d %v", code, hdr)
		}
	}
	// The breaker is open; the service now hangs. Without the breaker
	// check the leg would wait for its 3s timeout.
	flaky.set(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	before := flaky.hits.Load()
	start := time.Now()
	code, body, hdr := send(t, c, "GET", addr, "shop.example.com", "/", nil)
	took := time.Since(start)
	t.Logf("answered in %v with the flaky leg's breaker open", took)
	if code != 200 || body != `{"ok":{"ok":1}}` || hdr.Get("X-Sidemesh-Aggregate") != "partial" || hdr.Get("X-Sidemesh-Aggregate-Missing") != "flaky" {
		t.Fatalf("%d %s %v", code, body, hdr)
	}
	if took > time.Second {
		t.Errorf("answered after %v, want at once", took)
	}
	if n := flaky.hits.Load() - before; n != 0 {
		t.Errorf("the service behind an open breaker got %d requests", n)
	}
}

// TestAggregateNonIdempotentNotRetried: the upstream retries 503s of
// every method, but a POST leg is sent once; a GET leg to the same
// service is retried.
func TestAggregateNonIdempotentNotRetried(t *testing.T) {
	svc := startAggBackend(t, statusAnswer(503))
	ln := meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - name: post
      matches: [{ path: { prefix: /post } }]
      aggregate: { legs: [{ name: a, service: svc, path: /, method: POST }] }
    - name: get
      matches: [{ path: { prefix: /get } }]
      aggregate: { legs: [{ name: a, service: svc, path: / }] }
upstreams:
  - service: svc
    endpoints: [{ address: %s }]
    retries: { attempts: 2, on: [503], non_idempotent: true, backoff: 1ms }
    circuit_breaker: { enabled: false }
    outlier: { enabled: false }
`, addr, svc.addr), ln)
	c := newClient(t)
	if code, _, _ := send(t, c, "GET", addr, "shop.example.com", "/post", nil); code != 502 {
		t.Fatalf("POST leg: %d", code)
	}
	if n := svc.hits.Swap(0); n != 1 {
		t.Errorf("the POST leg was sent %d times, want once", n)
	}
	if code, _, _ := send(t, c, "GET", addr, "shop.example.com", "/get", nil); code != 502 {
		t.Fatalf("GET leg: %d", code)
	}
	if n := svc.hits.Swap(0); n != 3 {
		t.Errorf("the GET leg was sent %d times, want 3 (1 + 2 retries)", n)
	}
}

// BenchmarkAggregateLatency: an aggregate of three legs of 20, 40 and
// 60ms (sub-benchmark aggregate) against a plain route to the 60ms
// service alone (slowest), in one run: their ns/op differ by what the
// aggregation costs.
func BenchmarkAggregateLatency(b *testing.B) {
	t := b
	var bs []*aggBackend
	for _, d := range []time.Duration{20, 40, 60} {
		bs = append(bs, startAggBackend(t, jsonAnswer(`{"x": 1}`, d*time.Millisecond)))
	}
	ln := meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - name: agg
      matches: [{ path: { prefix: /agg } }]
      aggregate:
        legs:
          - { name: a, service: a, path: / }
          - { name: b, service: b, path: / }
          - { name: c, service: c, path: / }
    - name: slowest
      matches: [{ path: { prefix: /slowest } }]
      backends: [{ service: c }]
upstreams:
  - { service: a, endpoints: [{ address: %s }] }
  - { service: b, endpoints: [{ address: %s }] }
  - { service: c, endpoints: [{ address: %s }] }
`, addr, bs[0].addr, bs[1].addr, bs[2].addr), ln)
	c := newClient(t)
	for _, path := range []string{"/agg", "/slowest"} {
		b.Run(strings.TrimPrefix(path, "/"), func(b *testing.B) {
			for b.Loop() {
				if code, body, _ := send(b, c, "GET", addr, "shop.example.com", path, nil); code != 200 {
					b.Fatalf("%s: %d %s", path, code, body)
				}
			}
		})
	}
}

// TestAggregateSpanPerLeg: each leg gets a client span, a child of the
// request's server span, whose context the leg's service receives.
func TestAggregateSpanPerLeg(t *testing.T) {
	rcv := otlptest.Start(t)
	a, b := startAggBackend(t, jsonAnswer(`{}`, 0)), startAggBackend(t, jsonAnswer(`{}`, 0))
	ln := meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - name: page
      aggregate: { legs: [{ name: a, service: a, path: / }, { name: b, service: b, path: / }] }
upstreams:
  - { service: a, endpoints: [{ address: %s }] }
  - { service: b, endpoints: [{ address: %s }] }
telemetry:
  tracing: { otlp_endpoint: %s, sample_ratio: 1 }
`, addr, a.addr, b.addr, rcv.GRPCAddr()), ln)
	if code, body, _ := send(t, newClient(t), "GET", addr, "shop.example.com", "/", nil); code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	spans := rcv.WaitSpans(t, 15*time.Second, func(s []otlptest.Span) bool { return len(s) >= 3 })
	var server *otlptest.Span
	clients := map[string]otlptest.Span{}
	for _, s := range spans {
		switch s.Kind {
		case tracepb.Span_SPAN_KIND_SERVER:
			server = &s
		case tracepb.Span_SPAN_KIND_CLIENT:
			clients[fmt.Sprint(s.Attributes["peer.service"])] = s
		}
	}
	if server == nil || len(clients) != 2 {
		t.Fatalf("spans: %+v", spans)
	}
	for svc, be := range map[string]*aggBackend{"a": a, "b": b} {
		c, ok := clients[svc]
		if !ok || c.ParentSpanID != server.SpanID || c.TraceID != server.TraceID {
			t.Errorf("leg %s: client span %+v, want a child of server span %s", svc, c, server.SpanID)
			continue
		}
		if tp := be.last().Header.Get("Traceparent"); !strings.Contains(tp, c.TraceID+"-"+c.SpanID) {
			t.Errorf("leg %s: the service got traceparent %q, want its client span %s", svc, tp, c.SpanID)
		}
	}
}
