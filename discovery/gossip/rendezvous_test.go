package gossip

import (
	"fmt"
	"testing"
)

// TestRendezvousSpreadsAndIsStable: owners spread evenly over the
// members, and when one goes, only the keys it owned change owner.
func TestRendezvousSpreadsAndIsStable(t *testing.T) {
	first := func(nodes []string, key string) string { return Rank(key, nodes)[0] }
	nodes := []string{"edge-a", "edge-b", "edge-c", "edge-d"}
	const keys = 20000
	count := map[string]int{}
	moved := 0
	for i := range keys {
		k := fmt.Sprintf("sticky/shop/%d", i)
		o := first(nodes, k)
		count[o]++
		if after := first(nodes[:3], k); after != o && o != "edge-d" {
			moved++
		}
	}
	for _, n := range nodes {
		if share := float64(count[n]) / keys; share < 0.22 || share > 0.28 {
			t.Errorf("%s owns %.3f of the sessions, want about 0.25 (%v)", n, share, count)
		}
	}
	if moved != 0 {
		t.Errorf("%d sessions of the remaining edges changed owner when edge-d went", moved)
	}
}
