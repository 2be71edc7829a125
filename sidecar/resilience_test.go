package sidecar

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
)

// backendMode is how a controllable backend answers.
type backendMode int32

const (
	modeOK backendMode = iota
	mode500
	modeHang
)

// controlledBackend is an HTTP backend on a fixed loopback address whose
// behaviour a test switches: answer, fail with 500, hang, or refuse
// connections altogether (stop) and come back (restart).
type controlledBackend struct {
	t       *testing.T
	name    string
	addr    string
	mode    atomic.Int32
	latency atomic.Int64 // added per answer, in nanoseconds
	hits    atomic.Int64
	mu      sync.Mutex
	srv     *http.Server
}

func newControlledBackend(t *testing.T, name string) *controlledBackend {
	b := &controlledBackend{t: t, name: name}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	b.serve(ln)
	t.Cleanup(b.stop)
	return b
}

func (b *controlledBackend) serve(ln net.Listener) {
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		switch backendMode(b.mode.Load()) {
		case mode500:
			http.Error(w, "broken", http.StatusInternalServerError)
			return
		case modeHang:
			<-r.Context().Done()
			return
		}
		if d := time.Duration(b.latency.Load()); d > 0 {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		io.WriteString(w, b.name)
	})}
	b.mu.Lock()
	b.srv = srv
	b.mu.Unlock()
	go srv.Serve(ln)
}

// stop closes the listener and every connection: connections are refused.
func (b *controlledBackend) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.srv != nil {
		b.srv.Close()
		b.srv = nil
	}
}

// restart listens again on the same address.
func (b *controlledBackend) restart() {
	deadline := time.Now().Add(5 * time.Second)
	for {
		ln, err := net.Listen("tcp", b.addr)
		if err == nil {
			b.serve(ln)
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("relisten on %s: %v", b.addr, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// breakerUpstream is the YAML of upstream svc over good and bad, with one
// retry on 5xx, a breaker that opens and an ejection that starts after
// three failures, both lasting a minute: the scenario in which the admin
// API, the metrics and the dashboard must show a failing endpoint.
func breakerUpstream(good, bad *controlledBackend) string {
	return fmt.Sprintf(`
upstreams:
  - service: svc
    mtls: false
    endpoints: [{ address: %s }, { address: %s }]
    retries: { attempts: 1, on: [5xx] }
    circuit_breaker: { consecutive_failures: 3, open_timeout: 1m }
    outlier: { consecutive_5xx: 3, base_ejection: 1m }
`, good.addr, bad.addr)
}

// endpointOf returns the balancer endpoint for addr of upstream svc.
func endpointOf(t *testing.T, s *Sidecar, svc, addr string) *balancer.Endpoint {
	t.Helper()
	for _, ep := range s.routes.Load().byName[svc].bal.Endpoints() {
		if ep.Addr == addr {
			return ep
		}
	}
	t.Fatalf("no endpoint %s in upstream %s", addr, svc)
	return nil
}

// sendN sends n sequential GETs to the outbound listener with Host svc and
// returns the number that did not get a 200, per request index.
func sendN(c *http.Client, out, svc string, n int) (failed []int) {
	for i := range n {
		code, _, err := get(c, out, svc)
		if err != nil || code != 200 {
			failed = append(failed, i)
		}
	}
	return failed
}

// TestFailingEndpoint takes one of three backends through returning 500,
// refusing connections and hanging. With retries on, clients see no error
// after the first few requests of each phase; the bad endpoint's breaker
// opens and it is ejected; after it recovers, half-open lets it back in.
func TestFailingEndpoint(t *testing.T) {
	a, b, c := newControlledBackend(t, "a"), newControlledBackend(t, "b"), newControlledBackend(t, "c")
	out := listenAddr(t)
	s := start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams:
  - service: svc
    endpoints: [{ address: %s }, { address: %s }, { address: %s }]
    timeout: 5s
    retries: { attempts: 2, per_try_timeout: 300ms, on: [connect_failure, reset, timeout, 5xx], budget: 0.5, backoff: 1ms }
    circuit_breaker: { consecutive_failures: 3, open_timeout: 300ms }
    outlier: { consecutive_5xx: 3, base_ejection: 300ms, max_ejection: 1s, max_ejection_percent: 50 }
`, out, a.addr, b.addr, c.addr)))
	client := newClient(t)
	cEP := endpointOf(t, s, "svc", c.addr)

	// The breaker has opened, or the endpoint is ejected, or both.
	down := func() bool {
		return cEP.BreakerState() == breaker.Open || !cEP.EjectedUntil().IsZero()
	}

	healthy := func() { c.mode.Store(int32(modeOK)) }
	phases := []struct {
		name         string
		breakIt, fix func()
	}{
		{"500 for everything", func() { c.mode.Store(int32(mode500)) }, healthy},
		{"refuses connections", c.stop, c.restart},
		{"hangs", func() { c.mode.Store(int32(modeHang)) }, healthy},
	}
	for _, ph := range phases {
		t.Run(ph.name, func(t *testing.T) {
			ph.breakIt()
			const n, grace = 60, 5
			failed := sendN(client, out, "svc", n)
			for _, i := range failed {
				if i >= grace {
					t.Errorf("request %d of %d failed after the first %d", i, n, grace)
				}
			}
			if !down() {
				t.Errorf("after %d requests: breaker %s, ejected until %v; want it open or ejected",
					n, cEP.BreakerState(), cEP.EjectedUntil())
			}
			t.Logf("%s: %d of %d client-visible failures", ph.name, len(failed), n)
		})

		// Recovery: the endpoint answers again and gets its share back.
		ph.fix()
		before := c.hits.Load()
		deadline := time.Now().Add(10 * time.Second)
		for c.hits.Load()-before < 5 || cEP.BreakerState() != breaker.Closed {
			if time.Now().After(deadline) {
				t.Fatalf("after %q: endpoint never recovered: breaker %s, %d hits", ph.name, cEP.BreakerState(), c.hits.Load()-before)
			}
			if failed := sendN(client, out, "svc", 10); len(failed) > 0 {
				t.Fatalf("after %q: %d requests failed during recovery", ph.name, len(failed))
			}
		}
	}
}

// TestRetryBudgetCapsRetries makes every endpoint fail: retries are then
// capped by the budget instead of tripling the load.
func TestRetryBudgetCapsRetries(t *testing.T) {
	a, b := newControlledBackend(t, "a"), newControlledBackend(t, "b")
	a.mode.Store(int32(mode500))
	b.mode.Store(int32(mode500))
	out := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams:
  - service: svc
    endpoints: [{ address: %s }, { address: %s }]
    retries: { attempts: 2, on: [500], budget: 0.2, min_retries_per_second: 1, backoff: 0s }
    circuit_breaker: { enabled: false }
    outlier: { enabled: false }
`, out, a.addr, b.addr)))
	const n = 200
	failed := sendN(newClient(t), out, "svc", n)
	if len(failed) != n {
		t.Fatalf("%d of %d requests failed; every endpoint fails, want all", len(failed), n)
	}
	hits := a.hits.Load() + b.hits.Load()
	retries := hits - n
	// Budget: 20% of recent requests, or 1 per second over the window
	// (10), whichever is more. Without a budget there would be 2n.
	if retries < 10 || float64(retries) > 0.2*n+10 {
		t.Fatalf("%d retries for %d requests; want between 10 and %v", retries, n, 0.2*n+10)
	}
	t.Logf("%d requests, %d retries (%.0f%%)", n, retries, 100*float64(retries)/n)
}

// TestLeastResponseTime runs real backends of 5, 20 and 80 ms: the fastest
// gets most traffic, none starves, and when the slow one turns fast its
// share comes back within a bounded time.
func TestLeastResponseTime(t *testing.T) {
	backends := []*controlledBackend{
		newControlledBackend(t, "fast"), newControlledBackend(t, "medium"), newControlledBackend(t, "slow"),
	}
	for i, d := range []time.Duration{5 * time.Millisecond, 20 * time.Millisecond, 80 * time.Millisecond} {
		backends[i].latency.Store(int64(d))
	}
	out := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams:
  - service: svc
    balancer: least_response_time
    endpoints: [{ address: %s }, { address: %s }, { address: %s }]
`, out, backends[0].addr, backends[1].addr, backends[2].addr)))

	// run sends requests from 4 clients for d (at most 5000 requests) and
	// returns how many each backend answered.
	run := func(d time.Duration) map[string]int {
		var mu sync.Mutex
		counts := map[string]int{}
		var sent atomic.Int64
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := newClient(t)
				for ctx.Err() == nil && sent.Add(1) <= 5000 {
					code, body, err := get(c, out, "svc")
					if err != nil || code != 200 {
						t.Errorf("request failed: %d %v", code, err)
						return
					}
					mu.Lock()
					counts[body]++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return counts
	}

	counts := run(4 * time.Second)
	total := counts["fast"] + counts["medium"] + counts["slow"]
	t.Logf("5/20/80 ms: fast %d, medium %d, slow %d of %d", counts["fast"], counts["medium"], counts["slow"], total)
	if counts["fast"]*2 < total {
		t.Errorf("fastest backend got %d of %d requests, want most", counts["fast"], total)
	}
	for _, name := range []string{"medium", "slow"} {
		if counts[name] == 0 {
			t.Errorf("%s backend starved: no requests", name)
		}
	}
	if counts["slow"] >= counts["medium"] || counts["medium"] >= counts["fast"] {
		t.Errorf("shares not ordered by latency: %v", counts)
	}

	// The slow backend becomes as fast as the fastest: within 10 seconds,
	// one second of traffic gives it at least a fifth of the requests.
	backends[2].latency.Store(int64(5 * time.Millisecond))
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := run(time.Second)
		total := c["fast"] + c["medium"] + c["slow"]
		t.Logf("after the slow one turned fast: fast %d, medium %d, slow %d", c["fast"], c["medium"], c["slow"])
		if c["slow"]*5 >= total {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("recovered backend's share stayed at %d of %d", c["slow"], total)
		}
	}
}

// TestActiveHealthChecks: an endpoint that fails its health checks gets
// no traffic, and gets it back once it passes again.
func TestActiveHealthChecks(t *testing.T) {
	a, b := newControlledBackend(t, "a"), newControlledBackend(t, "b")
	out := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams:
  - service: svc
    endpoints: [{ address: %s }, { address: %s }]
    health_check: { path: /healthz, interval: 50ms, timeout: 1s, unhealthy_threshold: 2, healthy_threshold: 1 }
    circuit_breaker: { enabled: false }
    outlier: { enabled: false }
`, out, a.addr, b.addr)))
	c := newClient(t)
	// b answers its health checks (and everything else) with 500: after
	// two failed checks it gets no more requests, without any client
	// request having failed against it first.
	b.mode.Store(int32(mode500))
	waitFor := func(what string, cond func(map[string]int) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			seen := map[string]int{}
			for range 10 {
				if code, body, err := get(c, out, "svc"); err == nil && code == 200 {
					seen[body]++
				} else {
					seen["error"]++
				}
			}
			if cond(seen) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: last round %v", what, seen)
			}
		}
	}
	waitFor("b taken out by its health checks", func(s map[string]int) bool { return s["a"] == 10 })
	b.mode.Store(int32(modeOK))
	waitFor("b back after passing", func(s map[string]int) bool { return s["a"] > 0 && s["b"] > 0 })
}

// TestHashingThroughTheProxy: consistent_hash and ip_hash place requests
// by their key end to end, through the outbound listener: every request
// of a key reaches one endpoint, and the keys spread over all of them.
func TestHashingThroughTheProxy(t *testing.T) {
	backends := []string{namedBackend(t, "a"), namedBackend(t, "b"), namedBackend(t, "c")}
	out := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
trusted_proxies: [127.0.0.1]
upstreams:
  - { service: by-user, balancer: consistent_hash, hash_on: "header:X-User", endpoints: [{ address: %s }, { address: %s }, { address: %s }] }
  - { service: by-ip, balancer: ip_hash, endpoints: [{ address: %s }, { address: %s }, { address: %s }] }
`, out, backends[0], backends[1], backends[2], backends[0], backends[1], backends[2])))
	c := newClient(t)
	send := func(service, header, value string) string {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+out+"/", nil)
		req.Host = service
		req.Header.Set(header, value)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", service, resp.StatusCode, b)
		}
		return string(b)
	}
	for _, tc := range []struct{ service, header, prefix string }{
		{"by-user", "X-User", "user-"},
		{"by-ip", "X-Forwarded-For", "10.0.0."}, // the client address, from a trusted proxy
	} {
		reached := map[string]bool{}
		for k := range 30 {
			key := fmt.Sprintf("%s%d", tc.prefix, k)
			first := send(tc.service, tc.header, key)
			reached[first] = true
			for range 5 {
				if got := send(tc.service, tc.header, key); got != first {
					t.Fatalf("%s: %s %s went to %s, then to %s", tc.service, tc.header, key, first, got)
				}
			}
		}
		if len(reached) != 3 {
			t.Errorf("%s: 30 keys reached %v, want all three endpoints", tc.service, reached)
		}
	}
}
