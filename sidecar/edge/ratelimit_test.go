package edge_test

import (
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// TestRateLimitRoute: 500 concurrent requests against a limit of 100
// admit exactly 100, the rest get 429 with Retry-After, and every answer
// carries RateLimit-Policy and RateLimit; a header-keyed limit counts
// each header value apart; a limit in shadow mode refuses nothing and
// counts what it would have refused.
func TestRateLimitRoute(t *testing.T) {
	app := startEchoBackend(t)
	ln, adminLn := meshtest.Listen(t), meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - name: api
      matches: [{ path: { prefix: /api } }]
      rate_limits: [{ rate: 1/m, burst: 100 }]
      backends: [{ service: app }]
    - name: keyed
      matches: [{ path: { prefix: /keyed } }]
      rate_limits:
        - { name: per-key, key: "header:X-Api-Key", rate: 1/m, burst: 2 }
        - { name: trial, key: client_ip, rate: 1/m, burst: 3, enforce: false }
      backends: [{ service: app }]
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
admin: { listen: %s }
`, addr, app, adminLn.Addr()), ln, adminLn)

	c := newClient(t)
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 500 {
		wg.Go(func() {
			<-start
			resp, err := c.Get("http://" + addr + "/api/x")
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.Header.Get("RateLimit-Policy") != `"client_ip";q=100;w=6000` || !strings.HasPrefix(resp.Header.Get("RateLimit"), `"client_ip";r=`) {
				t.Errorf("headers: RateLimit-Policy %q, RateLimit %q", resp.Header.Get("RateLimit-Policy"), resp.Header.Get("RateLimit"))
			}
			if resp.StatusCode == 429 && resp.Header.Get("Retry-After") == "" {
				t.Error("429 without Retry-After")
			}
			mu.Lock()
			codes[resp.StatusCode]++
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	if codes[200] != 100 || codes[429] != 400 {
		t.Fatalf("500 concurrent requests: %v, want exactly 100 admitted and 400 refused", codes)
	}

	keyed := func(key string) int {
		code, _, _ := send(t, c, "GET", addr, "shop", "/keyed/1", map[string]string{"X-Api-Key": key})
		return code
	}
	var got []int
	for _, k := range []string{"a", "a", "a", "b", "b"} {
		got = append(got, keyed(k))
	}
	if fmt.Sprint(got) != "[200 200 429 200 200]" {
		t.Errorf("per-key limit of 2: %v, want [200 200 429 200 200]", got)
	}

	metrics := scrape(t, adminLn.Addr().String())
	for _, re := range []string{
		`sidemesh_ratelimit_requests_total\{[^}]*sidemesh_ratelimit_decision="allowed"[^}]*sidemesh_ratelimit_name="client_ip",sidemesh_route="api"[^}]*\} 100\n`,
		`sidemesh_ratelimit_requests_total\{[^}]*sidemesh_ratelimit_decision="refused"[^}]*sidemesh_ratelimit_name="client_ip",sidemesh_route="api"[^}]*\} 400\n`,
		// shadow: 5 requests from one address against a burst of 3
		`sidemesh_ratelimit_requests_total\{[^}]*sidemesh_ratelimit_decision="shadow_refused"[^}]*sidemesh_ratelimit_name="trial"[^}]*\} 2\n`,
		`sidemesh_ratelimit_keys\{[^}]*sidemesh_ratelimit_name="per-key"[^}]*\} 2\n`,
	} {
		if !regexp.MustCompile(re).Match(metrics) {
			t.Errorf("/metrics lacks %s:\n%s", re, regexp.MustCompile(`(?m)^sidemesh_ratelimit.*$`).FindAll(metrics, -1))
		}
	}
}
