package health

import (
	"math/rand/v2"
	"time"
)

// Time and randomness are package variables so that tests can replace them
// (restoring them with t.Cleanup), as grpc-go does. Tests that replace them
// must not run in parallel with tests that run a Checker.
var (
	// timeAfter is time.After. Its timers need no Stop: since Go 1.23 a
	// timer nothing refers to is collected even if it has not fired.
	timeAfter = time.After
	// randDuration returns a uniformly random duration in [0, n); n > 0.
	randDuration = rand.N[time.Duration]
)

// spread returns how long a check waits after the start of its round: a
// random part of a tenth of interval. Rounds start interval apart, so the
// time between two checks of one endpoint is interval ±10%, and the checks
// of different endpoints do not fire at the same instant.
func spread(interval time.Duration) time.Duration {
	if n := interval / 10; n > 0 {
		return randDuration(n)
	}
	return 0
}
