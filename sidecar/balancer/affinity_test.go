package balancer

import (
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/breaker"
)

// TestAffinityHint: every policy sends a request to the endpoint its
// Affinity names while that endpoint can take it, and picks as usual when
// it is gone, unavailable or already tried.
func TestAffinityHint(t *testing.T) {
	for _, tp := range allPolicies(t) {
		t.Run(tp.name, func(t *testing.T) {
			b := New("svc", tp.p, Options{Breaker: &breaker.Settings{ConsecutiveFailures: 1, OpenTimeout: time.Hour}})
			b.Update(snapshot(4))
			for i := range 50 {
				r := keyedRequest(i)
				r.Affinity = "e2"
				p := mustPick(t, b, r)
				if p.Endpoint.ID != "e2" {
					t.Fatalf("request %d went to %s, not the e2 its affinity names", i, p.Endpoint.ID)
				}
				p.Done(Result{Status: 200})
			}

			r := keyedRequest(1)
			r.Affinity = "gone"
			mustPick(t, b, r).Done(Result{Status: 200}) // an unknown ID is no hint

			r = keyedRequest(1)
			r.Affinity = "e2"
			r.MarkTried(b.Endpoints()[2])
			if p := mustPick(t, b, r); p.Endpoint.ID == "e2" {
				t.Errorf("a retry went back to the tried e2")
			} else {
				p.Done(Result{Status: 200})
			}

			fail(b, "e2") // opens e2's breaker
			for i := range 20 {
				r := keyedRequest(i)
				r.Affinity = "e2"
				p := mustPick(t, b, r)
				if p.Endpoint.ID == "e2" {
					t.Fatalf("request %d went to e2 behind an open breaker", i)
				}
				p.Done(Result{Status: 200})
			}
		})
	}
}
