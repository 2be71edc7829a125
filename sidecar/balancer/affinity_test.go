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

// TestAffinityStrict: a strict affinity fails the pick when its endpoint
// cannot take the request, rather than moving the request elsewhere.
func TestAffinityStrict(t *testing.T) {
	b := New("svc", RoundRobin{}, Options{Breaker: &breaker.Settings{ConsecutiveFailures: 1, OpenTimeout: time.Hour}})
	b.Update(snapshot(4))
	r := Request{Affinity: "e1", Strict: true}
	mustPick(t, b, r).Done(Result{Status: 200})
	fail(b, "e1")
	if p, err := b.Pick(r); err != ErrAffinityUnavailable {
		t.Fatalf("strict pick of an open e1 = %v, %v; want ErrAffinityUnavailable", p.Endpoint, err)
	}
	r = Request{Affinity: "gone", Strict: true}
	if _, err := b.Pick(r); err != ErrAffinityUnavailable {
		t.Fatalf("strict pick of an unknown endpoint: %v", err)
	}
}

// TestAffinityRebind: when a session's endpoint is unavailable, two
// balancers of the same endpoints (two edges) replace it with the same
// one for a key, different keys spread over the others, and a retry
// moves to the next in the key's order.
func TestAffinityRebind(t *testing.T) {
	opts := Options{Breaker: &breaker.Settings{ConsecutiveFailures: 1, OpenTimeout: time.Hour}}
	b1, b2 := New("svc", RoundRobin{}, opts), New("svc", LeastConnections{}, opts) // policies play no part
	b1.Update(snapshot(5))
	b2.Update(snapshot(5))
	fail(b1, "e0")
	fail(b2, "e0")
	reached := map[string]int{}
	for key := uint64(1); key <= 400; key++ {
		r := Request{Affinity: "e0", RebindKey: key}
		p1, p2 := mustPick(t, b1, r), mustPick(t, b2, r)
		p1.Done(Result{Status: 200})
		p2.Done(Result{Status: 200})
		if p1.Endpoint.ID != p2.Endpoint.ID || p1.Endpoint.ID == "e0" {
			t.Fatalf("key %d rebound to %s on one balancer and %s on the other", key, p1.Endpoint.ID, p2.Endpoint.ID)
		}
		reached[p1.Endpoint.ID]++
		r.MarkTried(p1.Endpoint)
		p3 := mustPick(t, b1, r)
		p3.Done(Result{Status: 200})
		if p3.Endpoint == p1.Endpoint || p3.Endpoint.ID == "e0" {
			t.Fatalf("key %d: the retry went to %s again", key, p3.Endpoint.ID)
		}
	}
	// 400 keys over 4 endpoints: about 100 each.
	for _, id := range []string{"e1", "e2", "e3", "e4"} {
		if n := reached[id]; n < 50 || n > 150 {
			t.Errorf("rebinds per endpoint %v: want about 100 each", reached)
			break
		}
	}
}

func BenchmarkPickAffinity(b *testing.B) {
	p, _ := Lookup("least_response_time")
	bal := New("svc", p, Options{})
	bal.Update(snapshot(20))
	r := Request{Affinity: "e7"}
	b.ReportAllocs()
	for b.Loop() {
		p, _ := bal.Pick(r)
		p.Done(Result{Status: 200, Latency: time.Millisecond})
	}
}
