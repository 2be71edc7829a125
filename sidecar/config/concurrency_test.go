package config

import "testing"

// TestConcurrencyDefaults: a sidecar runs on DefaultSidecarConcurrency
// CPUs unless the file or the GOMAXPROCS environment variable says
// otherwise; an edge gateway, and 0, are automatic.
func TestConcurrencyDefaults(t *testing.T) {
	const (
		sidecar = "upstreams: [{ service: shop, endpoints: [{ address: 127.0.0.1:9000 }] }]\n"
		edge    = sidecar + "edge: { listeners: [{ listen: 127.0.0.1:8080 }], routes: [{ name: shop, backends: [{ service: shop }] }] }\n"
	)
	for _, tc := range []struct {
		name, yaml, gomaxprocs string
		want                   int
	}{
		{"sidecar", sidecar, "", DefaultSidecarConcurrency},
		{"sidecar, GOMAXPROCS set", sidecar, "3", 0},
		{"sidecar, automatic", "concurrency: 0\n" + sidecar, "", 0},
		{"sidecar, four", "concurrency: 4\n" + sidecar, "3", 4},
		{"edge", edge, "", 0},
		{"edge, two", "concurrency: 2\n" + edge, "", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("GOMAXPROCS", tc.gomaxprocs)
			if c := mustParse(t, tc.yaml); c.Concurrency != tc.want {
				t.Errorf("concurrency %d, want %d", c.Concurrency, tc.want)
			}
		})
	}
}
