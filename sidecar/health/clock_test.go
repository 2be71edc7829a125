package health

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// fakeClock replaces timeAfter: waits of a round's length block until the
// test calls tick; shorter waits (a check's spread) end at once. Every wait
// is recorded.
type fakeClock struct {
	interval time.Duration
	rounds   chan time.Time

	mu    sync.Mutex
	waits []time.Duration
}

func (f *fakeClock) after(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	f.waits = append(f.waits, d)
	f.mu.Unlock()
	if d == f.interval {
		return f.rounds
	}
	ch := make(chan time.Time, 1)
	ch <- time.Time{}
	return ch
}

func (f *fakeClock) recorded() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.waits)
}

func TestSchedule(t *testing.T) {
	const interval = time.Hour
	clock := &fakeClock{interval: interval, rounds: make(chan time.Time)}
	var spreadOf atomic.Int64 // the n randDuration was last asked for
	oldAfter, oldRand := timeAfter, randDuration
	timeAfter = clock.after
	randDuration = func(n time.Duration) time.Duration {
		spreadOf.Store(int64(n))
		return n - 1 // the latest a check may start
	}
	t.Cleanup(func() { timeAfter, randDuration = oldAfter, oldRand })

	a, b := newUpstream(t, 200), newUpstream(t, 200)
	targets := newTargetList(Target{"a", a.addr()}, Target{"b", b.addr()})
	c := New(Settings{Path: "/", Interval: interval}, targets.get, func(string, bool) {}, nil)
	start(t, c)

	// The first round starts at once; each check waits its spread, drawn
	// from a tenth of the interval.
	meshtest.WaitFor(t, waitTimeout, "the first round's checks", func() bool { return a.count() == 1 && b.count() == 1 && idle(c) })
	if got, want := time.Duration(spreadOf.Load()), interval/10; got != want {
		t.Errorf("spread drawn from [0, %v), want [0, %v)", got, want)
	}
	meshtest.WaitFor(t, waitTimeout, "the wait for the next round", func() bool { return slices.Contains(clock.recorded(), interval) })
	waits := clock.recorded()
	slices.Sort(waits)
	if want := []time.Duration{interval/10 - 1, interval/10 - 1, interval}; !slices.Equal(waits, want) {
		t.Errorf("waits %v, want %v", waits, want)
	}
	if n := targets.calls.Load(); n != 1 {
		t.Fatalf("targets called %d times before the round timer fired, want 1", n)
	}

	// The next round starts when the interval has passed.
	clock.rounds <- time.Now()
	meshtest.WaitFor(t, waitTimeout, "the second round's checks", func() bool { return a.count() == 2 && b.count() == 2 })
	if n := targets.calls.Load(); n != 2 {
		t.Errorf("targets called %d times after one round timer, want 2", n)
	}
}

// idle reports whether c has no check scheduled or in flight.
func idle(c *Checker) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.state {
		if t.busy {
			return false
		}
	}
	return true
}

func TestSpread(t *testing.T) {
	if d := spread(9 * time.Nanosecond); d != 0 {
		t.Errorf("spread of a tiny interval = %v, want 0", d)
	}
	for range 1000 {
		if d := spread(time.Second); d < 0 || d >= 100*time.Millisecond {
			t.Fatalf("spread(1s) = %v, want within [0, 100ms)", d)
		}
	}
}
