package balancer

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
)

// seedRand makes policies draw from a generator seeded with seed for the
// duration of the test. The generator is not safe for concurrent use.
func seedRand(t testing.TB, seed uint64) *rand.Rand {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	old := randUint64
	randUint64 = rng.Uint64
	t.Cleanup(func() { randUint64 = old })
	return rng
}

// fakeClock is a clock tests move by hand.
type fakeClock struct{ ns atomic.Int64 }

// useFakeClock makes now read a fake clock, starting at an arbitrary fixed
// time, for the duration of the test.
func useFakeClock(t testing.TB) *fakeClock {
	t.Helper()
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	old := now
	now = c.now
	t.Cleanup(func() { now = old })
	return c
}

func (c *fakeClock) now() time.Time                  { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration)         { c.ns.Add(int64(d)) }
func (c *fakeClock) set(t time.Time)                 { c.ns.Store(t.UnixNano()) }
func (c *fakeClock) since(t time.Time) time.Duration { return c.now().Sub(t) }

// weighted builds a snapshot of endpoints e0, e1, ... with the given
// weights.
func weighted(ws ...int) discovery.Snapshot {
	s := snapshot(len(ws))
	for i, w := range ws {
		s.Endpoints[i].Weight = w
	}
	return s
}

// bigSnapshot is snapshot with IDs that sort in snapshot order (e0000...).
func bigSnapshot(n int) discovery.Snapshot {
	s := discovery.Snapshot{Service: "svc"}
	for i := range n {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			ID: fmt.Sprintf("e%04d", i), Service: "svc",
			Address: fmt.Sprintf("10.%d.%d.%d", i>>16&0xff, i>>8&0xff, i&0xff), Port: 80, Weight: 1,
		})
	}
	return s
}

// newBalancer returns a balancer with policy p over s and no resilience
// options.
func newBalancer(t testing.TB, p Policy, s discovery.Snapshot) *Balancer {
	t.Helper()
	b := New("svc", p, Options{})
	b.Update(s)
	return b
}

// byID returns b's endpoint with the given ID.
func byID(t testing.TB, b *Balancer, id string) *Endpoint {
	t.Helper()
	for _, ep := range b.Endpoints() {
		if ep.ID == id {
			return ep
		}
	}
	t.Fatalf("no endpoint %s", id)
	return nil
}

// mustPick picks for r and fails the test on error.
func mustPick(t testing.TB, b *Balancer, r Request) Pick {
	t.Helper()
	p, err := b.Pick(r)
	if err != nil {
		t.Fatalf("Pick: %v", err)
	}
	return p
}

// countPicks makes n picks for r, each done at once, and counts them by
// endpoint ID.
func countPicks(t testing.TB, b *Balancer, n int, r Request) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for range n {
		p := mustPick(t, b, r)
		counts[p.Endpoint.ID]++
		p.Done(Result{Status: 200})
	}
	return counts
}
