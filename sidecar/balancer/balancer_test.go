package balancer

import (
	"errors"
	"fmt"
	"testing"

	"github.com/sidemesh/sidemesh/discovery"
)

// snapshot builds a snapshot of n endpoints 10.0.0.1:80 ... with IDs e0...
// (addresses are never dialled).
func snapshot(n int) discovery.Snapshot {
	s := discovery.Snapshot{Service: "svc"}
	for i := range n {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			ID: fmt.Sprintf("e%d", i), Service: "svc", Address: fmt.Sprintf("10.0.0.%d", i+1), Port: 80, Weight: 1,
		})
	}
	return s
}

// fixedStart makes pickers start at offset 0 for the duration of the test.
func fixedStart(t *testing.T) {
	old := randUint64
	randUint64 = func() uint64 { return 0 }
	t.Cleanup(func() { randUint64 = old })
}

func TestEmptyBalancerFailsWithErrNoEndpoints(t *testing.T) {
	b := New("svc", RoundRobin{}, Options{})
	if _, err := b.Pick(Request{}); !errors.Is(err, ErrNoEndpoints) {
		t.Fatalf("Pick on new balancer: err = %v, want ErrNoEndpoints", err)
	}
	b.Update(snapshot(2))
	if _, err := b.Pick(Request{}); err != nil {
		t.Fatalf("Pick after update: %v", err)
	}
	b.Update(discovery.Snapshot{Service: "svc"})
	if _, err := b.Pick(Request{}); !errors.Is(err, ErrNoEndpoints) {
		t.Fatalf("Pick after empty snapshot: err = %v, want ErrNoEndpoints", err)
	}
}

func TestRoundRobinIsExact(t *testing.T) {
	fixedStart(t)
	b := New("svc", RoundRobin{}, Options{})
	b.Update(snapshot(3))
	counts := map[string]int{}
	var order []string
	for i := range 300 {
		p, err := b.Pick(Request{})
		if err != nil {
			t.Fatal(err)
		}
		if i < 6 {
			order = append(order, p.Endpoint.ID)
		}
		counts[p.Endpoint.ID]++
		p.Done(Result{Status: 200})
	}
	if got, want := fmt.Sprint(order), "[e0 e1 e2 e0 e1 e2]"; got != want {
		t.Errorf("order = %s, want %s", got, want)
	}
	for id, n := range counts {
		if n != 100 {
			t.Errorf("%s got %d picks, want exactly 100", id, n)
		}
	}
}

func TestInFlightCountsUntilDone(t *testing.T) {
	b := New("svc", RoundRobin{}, Options{})
	b.Update(snapshot(1))
	p1, _ := b.Pick(Request{})
	p2, _ := b.Pick(Request{})
	if got := p1.Endpoint.InFlight(); got != 2 {
		t.Fatalf("in flight = %d, want 2", got)
	}
	p1.Done(Result{Status: 200})
	p2.Done(Result{Err: errors.New("boom")})
	if got := p1.Endpoint.InFlight(); got != 0 {
		t.Fatalf("in flight after Done = %d, want 0", got)
	}
}

func TestStateSurvivesSnapshotsByID(t *testing.T) {
	b := New("svc", RoundRobin{}, Options{})
	b.Update(snapshot(2))
	p, _ := b.Pick(Request{}) // in flight across the update
	id := p.Endpoint.ID

	// Same endpoints with a new weight for the picked one, plus a new one.
	s := snapshot(3)
	for i := range s.Endpoints {
		if s.Endpoints[i].ID == id {
			s.Endpoints[i].Weight = 5
		}
	}
	b.Update(s)
	var now *Endpoint
	for _, ep := range b.Endpoints() {
		if ep.ID == id {
			now = ep
		}
	}
	if now == nil {
		t.Fatalf("endpoint %s vanished", id)
	}
	if now.Weight != 5 {
		t.Errorf("weight = %d, want the new snapshot's 5", now.Weight)
	}
	if got := now.InFlight(); got != 1 {
		t.Errorf("in flight carried over = %d, want 1", got)
	}
	p.Done(Result{Status: 200}) // Done of a pick made before the update
	if got := now.InFlight(); got != 0 {
		t.Errorf("in flight after old pick's Done = %d, want 0", got)
	}

	// Removed and re-added: fresh state.
	b.Update(discovery.Snapshot{Service: "svc"})
	b.Update(snapshot(3))
	if len(b.Endpoints()) != 3 {
		t.Fatalf("endpoints = %d, want 3", len(b.Endpoints()))
	}
}

func TestDuplicateIDsUsedOnce(t *testing.T) {
	s := snapshot(2)
	s.Endpoints = append(s.Endpoints, s.Endpoints[0])
	b := New("svc", RoundRobin{}, Options{})
	b.Update(s)
	if n := len(b.Endpoints()); n != 2 {
		t.Fatalf("endpoints = %d, want 2", n)
	}
}

func TestLookup(t *testing.T) {
	if _, ok := Lookup(DefaultPolicy); !ok {
		t.Fatalf("default policy %q is not registered", DefaultPolicy)
	}
	if _, ok := Lookup("nope"); ok {
		t.Fatal("Lookup(nope) succeeded")
	}
	for _, n := range Names() {
		p, _ := Lookup(n)
		if p.Name() != n {
			t.Errorf("policy registered as %q names itself %q", n, p.Name())
		}
	}
}

// TestEventsNameTheAddress: an availability event carries the endpoint's
// ID and its address.
func TestEventsNameTheAddress(t *testing.T) {
	var got []Event
	b := New("svc", RoundRobin{}, Options{OnEvent: func(ev Event) { got = append(got, ev) }})
	b.Update(snapshot(2))
	b.SetHealthy("e1", false)
	want := Event{Service: "svc", Endpoint: "e1", Addr: "10.0.0.2:80", Kind: Unhealthy}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("events = %+v, want [%+v]", got, want)
	}
}
