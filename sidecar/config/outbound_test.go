package config

import (
	"slices"
	"testing"
	"time"
)

// TestOutboundDetection: detect_timeout and opaque_ports default to
// DefaultDetectTimeout and DefaultOpaquePorts; a list written in the file
// replaces the default, [] included; the keys belong to the outbound
// listener only (testdata/invalid/bad_detection.yaml has the errors).
func TestOutboundDetection(t *testing.T) {
	const base = "service: { name: a, port: 8080 }\nupstreams: [{ service: b, endpoints: [{ address: 127.0.0.1:1 }] }]\n"
	for _, tc := range []struct {
		outbound string
		timeout  time.Duration
		ports    []int
	}{
		{"", DefaultDetectTimeout, DefaultOpaquePorts},
		{"outbound: { detect_timeout: 250ms }", 250 * time.Millisecond, DefaultOpaquePorts},
		{"outbound: { opaque_ports: [9000, 3307] }", DefaultDetectTimeout, []int{9000, 3307}},
		{"outbound: { opaque_ports: [] }", DefaultDetectTimeout, []int{}},
	} {
		c := mustParse(t, base+tc.outbound)
		if c.Outbound.DetectTimeout != tc.timeout || !slices.Equal(c.Outbound.OpaquePorts, tc.ports) {
			t.Errorf("%q: detect_timeout %v, opaque_ports %v; want %v, %v",
				tc.outbound, c.Outbound.DetectTimeout, c.Outbound.OpaquePorts, tc.timeout, tc.ports)
		}
		// The effective config shows them beside the listener's keys (an
		// empty list is pruned, as every empty list is).
		if eff := c.Effective()["outbound"].(map[string]any); eff["detect_timeout"] != tc.timeout.String() ||
			(eff["opaque_ports"] == nil) != (len(tc.ports) == 0) || eff["listen"] == nil {
			t.Errorf("%q: the effective config's outbound section: %v", tc.outbound, eff)
		}
	}
	// Parse's default list is a copy: changing one config's list does not
	// change the next.
	c := mustParse(t, base)
	c.Outbound.OpaquePorts[0] = 1
	if DefaultOpaquePorts[0] == 1 || mustParse(t, base).Outbound.OpaquePorts[0] == 1 {
		t.Error("configs share DefaultOpaquePorts")
	}
}
