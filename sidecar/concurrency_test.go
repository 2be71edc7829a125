package sidecar

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"github.com/sidemesh/sidemesh/sidecar/config"
)

// TestConcurrency: the config's concurrency sets GOMAXPROCS at start and
// on reload, a sidecar's default is config.DefaultSidecarConcurrency, and
// going back to automatic gives the runtime its own choice back.
func TestConcurrency(t *testing.T) {
	// A GOMAXPROCS in the environment would decide instead of the
	// sidecar's default: the test runs as if it were unset, and gives
	// the process back the value it had.
	t.Setenv("GOMAXPROCS", "")
	before := runtime.GOMAXPROCS(0)
	t.Cleanup(func() {
		applyConcurrency(0, quietLogger())
		runtime.GOMAXPROCS(before)
	})
	applyConcurrency(1, quietLogger()) // then automatic: the runtime's own choice,
	applyConcurrency(0, quietLogger()) // whatever earlier sidecars of this binary set
	auto := runtime.GOMAXPROCS(0)
	out, backend := listenAddr(t), namedBackend(t, "ok")
	cfg := func(concurrency string) *config.Config {
		return parse(t, fmt.Sprintf(`
%s
outbound: { listen: %s }
upstreams: [{ service: svc, endpoints: [{ address: %s }] }]
`, concurrency, out, backend))
	}
	explicit := auto + 1
	s := start(t, cfg(""))
	for _, step := range []struct {
		concurrency string
		want        int
	}{
		{"", config.DefaultSidecarConcurrency}, // as started
		{fmt.Sprintf("concurrency: %d", explicit), explicit},
		{"concurrency: 0", auto},
	} {
		if step.concurrency != "" {
			if err := s.Reload(context.Background(), cfg(step.concurrency)); err != nil {
				t.Fatal(err)
			}
		}
		if got := runtime.GOMAXPROCS(0); got != step.want {
			t.Errorf("%q: GOMAXPROCS %d, want %d", step.concurrency, got, step.want)
		}
		if got := s.Config().Effective()["concurrency"]; got != step.want {
			t.Errorf("%q: effective concurrency %v, want %d", step.concurrency, got, step.want)
		}
	}
}
