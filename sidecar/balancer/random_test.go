package balancer

import (
	"math"
	"testing"
)

func TestRandomFollowsWeights(t *testing.T) {
	for _, ws := range [][]int{{1, 1, 1, 1}, {1, 2, 3, 4}, {10, 1}, {3, 1, 1, 1, 1, 1, 1, 1}} {
		seedRand(t, 42)
		b := newBalancer(t, Random{}, weighted(ws...))
		const n = 100000
		counts := countPicks(t, b, n, Request{})
		total := 0
		for _, w := range ws {
			total += w
		}
		// Each count is binomial(n, p): allow 4.5 standard deviations
		// (the seed is fixed, so this is a check of the draw, not a
		// flaky test).
		chi2 := 0.0
		for i, w := range ws {
			id := snapshot(len(ws)).Endpoints[i].ID
			p := float64(w) / float64(total)
			want := n * p
			sd := math.Sqrt(n * p * (1 - p))
			got := float64(counts[id])
			if math.Abs(got-want) > 4.5*sd {
				t.Errorf("weights %v: %s got %.0f picks, want %.0f ± %.0f", ws, id, got, want, 4.5*sd)
			}
			chi2 += (got - want) * (got - want) / want
		}
		// 99.9th percentile of chi-square with up to 7 degrees of freedom.
		if chi2 > 24.3 {
			t.Errorf("weights %v: chi-square = %.1f over %d endpoints, want below 24.3", ws, chi2, len(ws))
		}
	}
}
