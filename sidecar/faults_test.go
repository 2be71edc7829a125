package sidecar

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
)

// TestRetriesDoNotMultiplyAcrossHops: client -> sidecar A -> sidecar B ->
// an app that always fails with 503, both sidecars retrying twice. A
// retries; B sees A's X-Sidemesh-Attempt and tries once, so each request
// costs the app three tries, not nine.
func TestRetriesDoNotMultiplyAcrossHops(t *testing.T) {
	var hits atomic.Int64
	failing := httpBackend(t, func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "down", http.StatusServiceUnavailable)
	})
	outA, viaB := listenAddr(t), listenAddr(t)
	retries := "retries: { attempts: 2, on: [503], backoff: 1ms, min_retries_per_second: 100 }"
	breakerOff := "circuit_breaker: { enabled: false }, outlier: { enabled: false }"
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams: [{ service: app, listen: %s, mtls: false, endpoints: [{ address: %s }], %s, %s }]
`, listenAddr(t), viaB, failing, retries, breakerOff)))
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams: [{ service: app, mtls: false, endpoints: [{ address: %s }], %s, %s }]
`, outA, viaB, retries, breakerOff)))

	c := newClient(t)
	const requests = 10
	for range requests {
		if code, _, err := get(c, outA, "app"); err != nil || code != http.StatusServiceUnavailable {
			t.Fatalf("got %d %v, want the app's 503", code, err)
		}
	}
	if n := hits.Load(); n != 3*requests {
		t.Errorf("the app got %d tries for %d requests, want %d (A's three, B trying each once)", n, requests, 3*requests)
	}
}

// TestClientErrorsSpareEndpoints: malformed request bodies are the
// client's failure: answered 400, never counted against the endpoints
// (their breakers stay closed, none is ejected), never retried.
func TestClientErrorsSpareEndpoints(t *testing.T) {
	a, b, c := newControlledBackend(t, "a"), newControlledBackend(t, "b"), newControlledBackend(t, "c")
	out := listenAddr(t)
	s := start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams:
  - service: svc
    mtls: false
    endpoints: [{ address: %s }, { address: %s }, { address: %s }]
    circuit_breaker: { consecutive_failures: 3 }
    outlier: { consecutive_gateway_errors: 3 }
`, out, a.addr, b.addr, c.addr)))
	for i := range 15 {
		conn, err := net.DialTimeout("tcp", out, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		// A chunked body cut by a malformed chunk line.
		fmt.Fprintf(conn, "POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\nzz\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		conn.Close()
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("X-Sidemesh-Error") != "bad_request" {
			t.Fatalf("request %d: %d %q, want 400 bad_request", i, resp.StatusCode, resp.Header.Get("X-Sidemesh-Error"))
		}
	}
	for _, be := range []*controlledBackend{a, b, c} {
		ep := endpointOf(t, s, "svc", be.addr)
		if st := ep.BreakerState(); st != breaker.Closed {
			t.Errorf("endpoint %s: breaker %s after client errors", be.name, st)
		}
		if !ep.EjectedUntil().IsZero() {
			t.Errorf("endpoint %s ejected after client errors", be.name)
		}
		if f := ep.Failures(); f != 0 {
			t.Errorf("endpoint %s: %d failures counted", be.name, f)
		}
	}
	if code, body, err := get(newClient(t), out, "svc"); err != nil || code != 200 {
		t.Fatalf("a good request after them: %d %q %v", code, body, err)
	}
}

// TestTLSModeOff: a tls section written out with mode off starts a
// sidecar without mutual TLS (it once failed at start, as "the tls
// section changed").
func TestTLSModeOff(t *testing.T) {
	backend := namedBackend(t, "a")
	out := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
tls: { mode: off }
upstreams: [{ service: svc, endpoints: [{ address: %s }] }]
`, out, backend)))
	if code, body, err := get(newClient(t), out, "svc"); err != nil || code != 200 || body != "a" {
		t.Fatalf("got %d %q %v", code, body, err)
	}
}

// TestHangingEndpointWithDefaults: one endpoint of three accepts
// connections and never answers. With the default settings (no retry or
// timeout written), a request that lands on it is cut after the per-try
// timeout, a third of the upstream's 15s, and retried elsewhere: every
// request succeeds, none waits the full 15s, and after a few the
// endpoint's breaker opens and nobody waits at all.
func TestHangingEndpointWithDefaults(t *testing.T) {
	a, b, hang := newControlledBackend(t, "a"), newControlledBackend(t, "b"), newControlledBackend(t, "hang")
	hang.mode.Store(int32(modeHang))
	out := listenAddr(t)
	s := start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams: [{ service: svc, mtls: false, endpoints: [{ address: %s }, { address: %s }, { address: %s }] }]
`, out, a.addr, b.addr, hang.addr)))

	const workers, perWorker = 6, 5
	var mu sync.Mutex
	var slow, failed int
	var longest time.Duration
	var wg sync.WaitGroup
	begin := time.Now()
	for range workers {
		wg.Go(func() {
			c := newClient(t)
			for range perWorker {
				start := time.Now()
				code, _, err := get(c, out, "svc")
				d := time.Since(start)
				mu.Lock()
				if err != nil || code != 200 {
					failed++
				}
				if d > time.Second {
					slow++
				}
				longest = max(longest, d)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	t.Logf("%d requests in %v: %d failed, %d waited for the per-try timeout, the longest %v",
		workers*perWorker, time.Since(begin).Round(time.Millisecond), failed, slow, longest.Round(time.Millisecond))
	if failed != 0 {
		t.Errorf("%d requests failed", failed)
	}
	if longest >= 10*time.Second {
		t.Errorf("a request waited %v: the hanging endpoint held it beyond one per-try timeout", longest)
	}
	if st := endpointOf(t, s, "svc", hang.addr).BreakerState(); st != breaker.Open {
		t.Errorf("the hanging endpoint's breaker is %s, want open", st)
	}
	// The breaker opens at the fifth failure; until that one is counted,
	// each of the other workers may have sent one request there too.
	if slow > 5+workers-1 {
		t.Errorf("%d requests waited on the hanging endpoint; its breaker opens at the fifth failure, so at most %d may", slow, 5+workers-1)
	}
}

// TestReloadUnderPOSTLoad: POSTs on kept-alive connections while the
// server behind the socket is replaced ten times. A replaced server
// answers the next request on each connection with "Connection: close"
// instead of closing it under the client, so no POST (which a client does
// not resend) is lost.
func TestReloadUnderPOSTLoad(t *testing.T) {
	backend := httpBackend(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})
	out := listenAddr(t)
	cfgFor := func(i int) string {
		return fmt.Sprintf(`
outbound: { listen: %s, idle_timeout: %ds }
upstreams: [{ service: svc, mtls: false, endpoints: [{ address: %s }] }]
`, out, 30+i, backend)
	}
	s := start(t, parse(t, cfgFor(0)))
	const workers, perWorker = 4, 400
	var failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			c := newClient(t)
			for i := range perWorker {
				body := fmt.Sprintf("post %d-%d", w, i)
				req, _ := http.NewRequest("POST", "http://"+out+"/", strings.NewReader(body))
				req.Host = "svc"
				req.GetBody = nil // as a client that cannot resend it
				resp, err := c.Do(req)
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 || string(b) != body {
						err = fmt.Errorf("%d %q", resp.StatusCode, b)
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
			}
		})
	}
	for i := 1; i <= 10; i++ {
		if err := s.Reload(t.Context(), parse(t, cfgFor(i))); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // spread the reloads over the load: the scenario, not a wait
	}
	wg.Wait()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d POSTs failed across ten reloads; first: %v", n, workers*perWorker, firstErr.Load())
	}
}

// httpBackend serves h on loopback and returns its address.
func httpBackend(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	ln := meshtest.Listen(t)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}
