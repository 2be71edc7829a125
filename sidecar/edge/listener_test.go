package edge_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// TestPrecedenceThroughListener: every precedence case, through a real
// edge listener to a backend that says which route the request took; no
// route is a 404 with a JSON problem body.
func TestPrecedenceThroughListener(t *testing.T) {
	backend := startRecordingBackend(t, "app")
	ln := meshtest.Listen(t)
	startEdge(t, precedenceConfig(precedenceRoutes, ln.Addr().String(), backend.addr), ln)
	c := newClient(t)
	for _, tc := range precedenceCases {
		code, body, h := send(t, c, cmp(tc.method, "GET"), ln.Addr().String(), tc.host, tc.target, tc.header)
		switch {
		case tc.want == "":
			if code != http.StatusNotFound || h.Get("Content-Type") != "application/problem+json" || !strings.Contains(body, `"kind":"no_route"`) {
				t.Errorf("%s%s: %d %s %q, want a 404 problem", tc.host, tc.target, code, h.Get("Content-Type"), body)
			}
		case code != 200 || body != "app "+tc.want:
			t.Errorf("%s %s%s %v: %d %q, want route %s", cmp(tc.method, "GET"), tc.host, tc.target, tc.header, code, body, tc.want)
		}
	}
}

// TestTraversalStaysInRoute: a route /public without checks and a route
// /admin that marks its requests: every trick to reach /admin through
// /public is refused (400) or lands on the /admin route; the public
// backend never receives a path outside /public.
func TestTraversalStaysInRoute(t *testing.T) {
	public, admin := startRecordingBackend(t, "public"), startRecordingBackend(t, "admin")
	ln := meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - { name: public, matches: [{ path: { prefix: /public } }], backends: [{ service: public }] }
    - { name: admin, matches: [{ path: { prefix: /admin } }], request_headers: { set: { X-Route: admin } }, backends: [{ service: admin }] }
upstreams:
  - { service: public, endpoints: [{ address: %s }] }
  - { service: admin, endpoints: [{ address: %s }] }
`, addr, public.addr, admin.addr), ln)
	for _, target := range []string{
		"/public/../admin", "/public/%2e%2e/admin", "/public%2F..%2Fadmin", "/public/..%2fadmin",
		`/public\..\admin`, "/public;/../admin", "/public/./../admin", "/public/%2e%2e%2fadmin", "/public//../admin",
	} {
		resp := rawGet(t, addr, target)
		switch {
		case resp.status == 400:
		case resp.status == 200 && resp.body == "admin admin":
		default:
			t.Errorf("GET %s: %d %q, want 400 or the admin route", target, resp.status, resp.body)
		}
	}
	for _, r := range public.take() {
		if !strings.HasPrefix(r.Target, "/public") || strings.Contains(r.Target, "..") {
			t.Errorf("the public backend received %q", r.Target)
		}
	}
	for _, r := range admin.take() {
		if r.Route != "admin" {
			t.Errorf("the admin backend received %q without its route's mark", r.Target)
		}
	}
}
