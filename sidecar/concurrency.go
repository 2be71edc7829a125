package sidecar

import (
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"sync"
)

// concurrency is the process's share of config.Config.Concurrency: which
// value was applied last. GOMAXPROCS belongs to the process, so it is
// shared by every Sidecar in it (tests run several).
var concurrency struct {
	mu sync.Mutex
	// custom reports that a config set GOMAXPROCS, so that a config
	// that goes back to automatic hands it back to the runtime.
	custom bool
}

// applyConcurrency makes n CPUs run Go code at once: n > 0 sets
// GOMAXPROCS; 0 (automatic) leaves it to the runtime, which then follows
// the container's CPU limit, or to the GOMAXPROCS environment variable
// when it is set. A process that never set it is left alone, so the
// common case changes nothing. Changing it stops the world for a moment;
// setting the value in force does not.
func applyConcurrency(n int, log *slog.Logger) {
	concurrency.mu.Lock()
	defer concurrency.mu.Unlock()
	before := runtime.GOMAXPROCS(0)
	switch {
	case n > 0:
		runtime.GOMAXPROCS(n)
		concurrency.custom = true
	case !concurrency.custom:
		return
	default:
		concurrency.custom = false
		if env, err := strconv.Atoi(os.Getenv("GOMAXPROCS")); err == nil && env > 0 {
			runtime.GOMAXPROCS(env)
		} else {
			runtime.SetDefaultGOMAXPROCS()
		}
	}
	if after := runtime.GOMAXPROCS(0); after != before {
		log.Info("concurrency changed", "cpus", after, "was", before, "automatic", n == 0)
	}
}
