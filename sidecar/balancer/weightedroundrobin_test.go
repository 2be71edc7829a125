package balancer

import (
	"math"
	"slices"
	"strings"
	"testing"
)

// picksOf makes n picks and returns the IDs in order.
func picksOf(t *testing.T, b *Balancer, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		p := mustPick(t, b, Request{})
		ids[i] = p.Endpoint.ID
		p.Done(Result{Status: 200})
	}
	return ids
}

// longestRuns returns, for each ID, its longest run of consecutive picks.
func longestRuns(ids []string) map[string]int {
	runs := map[string]int{}
	n := 0
	for i, id := range ids {
		if i > 0 && ids[i-1] == id {
			n++
		} else {
			n = 1
		}
		runs[id] = max(runs[id], n)
	}
	return runs
}

func TestWeightedRoundRobinIsSmooth(t *testing.T) {
	fixedStart(t)
	b := newBalancer(t, WeightedRoundRobin{}, weighted(5, 1, 1))

	// nginx's smooth sequence for 5:1:1, not e0 five times in a row.
	period := picksOf(t, b, 7)
	if got, want := strings.Join(period, ","), "e0,e0,e1,e0,e2,e0,e0"; got != want {
		t.Fatalf("one period = %s, want %s", got, want)
	}
	// Within a period the two light picks split e0's five into three runs,
	// so no run is longer than ceil(5/3) = 2, the ideal.
	if got := longestRuns(period)["e0"]; got != 2 {
		t.Errorf("longest run of e0 within a period = %d, want 2", got)
	}
	// The period repeats exactly. Where it wraps, its last two e0 meet the
	// next period's first two: nginx's algorithm gives runs of 4 there (a
	// cyclic optimum would be 3), still short of plain weighted round
	// robin's 5 and never two light picks in a row.
	walk := picksOf(t, b, 7000)
	for i := 7; i < len(walk); i++ {
		if walk[i] != walk[i-7] {
			t.Fatalf("pick %d = %s, want %s: the schedule is not periodic", i, walk[i], walk[i-7])
		}
	}
	runs := longestRuns(walk)
	if runs["e0"] > 4 || runs["e1"] != 1 || runs["e2"] != 1 {
		t.Errorf("longest runs = %v, want e0 <= 4, e1 = e2 = 1", runs)
	}
}

func TestWeightedRoundRobinSharesMatchWeights(t *testing.T) {
	for _, ws := range [][]int{{5, 1, 1}, {1, 2, 3, 4}, {7, 3}, {1, 1, 1}, {100, 1, 30, 7, 62}} {
		seedRand(t, 1) // a random start
		b := newBalancer(t, WeightedRoundRobin{}, weighted(ws...))
		const n = 10000
		counts := countPicks(t, b, n, Request{})
		total := 0
		for _, w := range ws {
			total += w
		}
		for i, w := range ws {
			id := snapshot(len(ws)).Endpoints[i].ID
			want := float64(n) * float64(w) / float64(total)
			if got := float64(counts[id]); math.Abs(got-want) > 0.02*want {
				t.Errorf("weights %v: %s got %.0f picks, want %.0f ± 2%%", ws, id, got, want)
			}
		}
	}
}

func TestWeightedRoundRobinSchedule(t *testing.T) {
	t.Run("reduced by GCD", func(t *testing.T) {
		b := newBalancer(t, WeightedRoundRobin{}, weighted(10, 20, 30))
		p := b.picker.Load().Picker.(*weightedRoundRobinPicker)
		if got := len(p.schedule); got != 6 {
			t.Errorf("schedule length = %d, want 6 (10:20:30 is 1:2:3)", got)
		}
	})
	t.Run("capped", func(t *testing.T) {
		b := newBalancer(t, WeightedRoundRobin{}, weighted(1_000_000, 3, 1, 250_000))
		p := b.picker.Load().Picker.(*weightedRoundRobinPicker)
		if got := len(p.schedule); got > MaxSchedule+4 {
			t.Fatalf("schedule length = %d, want at most %d", got, MaxSchedule+4)
		}
		counts := make([]int, 4)
		for _, i := range p.schedule {
			counts[i]++
		}
		if counts[1] < 1 || counts[2] < 1 {
			t.Errorf("light endpoints have %d and %d turns, want at least 1 each", counts[1], counts[2])
		}
		if r := float64(counts[0]) / float64(counts[3]); math.Abs(r-4) > 0.01 {
			t.Errorf("ratio of the heavy endpoints = %.3f, want 4", r)
		}
	})
	t.Run("equal weights are plain round robin", func(t *testing.T) {
		got := smoothSchedule([]int64{1, 1, 1, 1})
		if !slices.Equal(got, []uint32{0, 1, 2, 3}) {
			t.Errorf("schedule = %v, want [0 1 2 3]", got)
		}
	})
}
