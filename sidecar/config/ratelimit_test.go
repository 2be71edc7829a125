package config

import (
	"strings"
	"testing"
	"time"
)

// TestClusterLimitBoundWarning: the loader computes a cluster limit's
// overshoot bound, (expected_edges - 1) × ⌈rate × (interval + delay)⌉,
// and warns when it is more than a tenth of the burst.
func TestClusterLimitBoundWarning(t *testing.T) {
	const yaml = `
edge:
  listeners: [{ listen: 127.0.0.1:8080 }]
  rate_limit_sync: { expected_edges: %EDGES% }
  routes:
    - name: api
      rate_limits:
        - { name: big, rate: 1000/s, scope: cluster }
        - { name: small, rate: 100/s, scope: cluster, on_partition: fail_closed }
      backends: [{ service: cart }]
upstreams: [{ service: cart, endpoints: [{ address: 127.0.0.1:9000 }] }]
discovery: { gossip: { insecure: true } }
`
	c := mustParse(t, strings.Replace(yaml, "%EDGES%", "3", 1))
	s := c.Edge.RateLimitSync
	if s.Interval != 100*time.Millisecond || s.Delay != 50*time.Millisecond || s.Pace(100) != 15 {
		t.Fatalf("rate_limit_sync defaults %+v, pace at 100/s %d, want 100ms + 50ms, 15", s, s.Pace(100))
	}
	w := c.Warnings().Error()
	// big: 2 × 150 = 300 of 1000 (30%); small: 2 × 15 = 30 of 100 (30%).
	for _, want := range []string{"rate_limits[0]: with 3 edges syncing every 100ms (+50ms delay), this cluster limit of 1000 per 1s may admit up to 300 more per window (30%)",
		"rate_limits[1]: with 3 edges syncing every 100ms (+50ms delay), this cluster limit of 100 per 1s may admit up to 30 more per window (30%)"} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings %q lack %q", w, want)
		}
	}
	if c := mustParse(t, strings.Replace(yaml, "%EDGES%", "1", 1)); len(c.Warnings()) != 0 {
		t.Errorf("one edge cannot overshoot, yet: %v", c.Warnings())
	}
	if r := c.Edge.Routes[0].RateLimits[1]; r.OnPartition != PartitionClosed || r.Scope != RateLimitCluster {
		t.Errorf("limit %+v", r)
	}
}
