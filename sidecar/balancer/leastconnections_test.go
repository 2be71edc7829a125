package balancer

import (
	"math"
	"testing"
)

func TestLeastConnectionsAvoidsTheLoaded(t *testing.T) {
	seedRand(t, 7)
	b := newBalancer(t, LeastConnections{}, snapshot(3))
	busy := byID(t, b, "e0")
	busy.state.inflight.Add(10) // ten long requests in flight on e0
	counts := countPicks(t, b, 3000, Request{})
	// Any pair drawn holds an idle endpoint, which wins.
	if counts["e0"] != 0 {
		t.Errorf("busy e0 got %d of 3000 picks, want 0", counts["e0"])
	}
	for _, id := range []string{"e1", "e2"} {
		if c := counts[id]; c < 1350 || c > 1650 {
			t.Errorf("%s got %d picks, want about 1500", id, c)
		}
	}

	// Once e0's requests end it is back in the rotation.
	busy.state.inflight.Add(-10)
	if counts := countPicks(t, b, 3000, Request{}); counts["e0"] < 700 {
		t.Errorf("idle e0 got %d of 3000 picks, want about 1000", counts["e0"])
	}
}

func TestLeastConnectionsRespectsWeights(t *testing.T) {
	for _, ws := range [][]int{{3, 1}, {3, 2, 1}, {1, 1, 1, 5}} {
		seedRand(t, 3)
		b := newBalancer(t, LeastConnections{}, weighted(ws...))
		// Requests that never end: in-flight counts settle in proportion
		// to weight.
		total := 0
		for _, w := range ws {
			total += w
		}
		n := 200 * total
		for range n {
			mustPick(t, b, Request{})
		}
		for i, w := range ws {
			id := snapshot(len(ws)).Endpoints[i].ID
			want := float64(n) * float64(w) / float64(total)
			got := float64(byID(t, b, id).InFlight())
			if math.Abs(got-want) > 0.05*want+2 {
				t.Errorf("weights %v: %s holds %.0f requests, want %.0f", ws, id, got, want)
			}
		}
	}
}

func TestLeastConnectionsTiesAreRandom(t *testing.T) {
	seedRand(t, 11)
	b := newBalancer(t, LeastConnections{}, snapshot(2))
	counts := countPicks(t, b, 2000, Request{})
	if c := counts["e0"]; c < 900 || c > 1100 {
		t.Errorf("e0 got %d of 2000 picks between idle equals, want about 1000", c)
	}
}
