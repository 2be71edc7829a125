package balancer

import (
	"math"
	"sync"
	"testing"
	"time"
)

// near reports whether got is within 0.1% of want.
func near(got, want time.Duration) bool {
	return math.Abs(float64(got-want)) <= 0.001*math.Abs(float64(want))+1
}

func TestPeakEWMA(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := func(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }

	t.Run("no observation", func(t *testing.T) {
		var e peakEWMA
		if got := e.estimate(t0); got != 0 {
			t.Errorf("estimate = %v, want 0", got)
		}
		if _, ok := e.load(t0); ok {
			t.Error("load reports an observation")
		}
	})
	t.Run("first sample is the estimate", func(t *testing.T) {
		var e peakEWMA
		e.observe(100*time.Millisecond, t0)
		if got := e.estimate(t0); got != 100*time.Millisecond {
			t.Errorf("estimate = %v, want 100ms", got)
		}
	})
	t.Run("decays toward zero without observations", func(t *testing.T) {
		var e peakEWMA
		e.observe(100*time.Millisecond, t0)
		for _, k := range []float64{0.5, 1, 3, 10} {
			at := t0.Add(time.Duration(k * float64(DefaultDecay)))
			if got, want := e.estimate(at), ms(100*math.Exp(-k)); !near(got, want) {
				t.Errorf("after %.1f decays: estimate = %v, want %v", k, got, want)
			}
		}
		// A clock that goes backwards does not inflate the estimate.
		if got := e.estimate(t0.Add(-time.Hour)); got != 100*time.Millisecond {
			t.Errorf("estimate before the observation = %v, want 100ms", got)
		}
	})
	t.Run("a higher sample replaces the estimate", func(t *testing.T) {
		var e peakEWMA
		e.observe(20*time.Millisecond, t0)
		e.observe(300*time.Millisecond, t0.Add(time.Millisecond))
		if got := e.estimate(t0.Add(time.Millisecond)); got != 300*time.Millisecond {
			t.Errorf("estimate = %v, want the peak 300ms", got)
		}
		// Above the decayed estimate counts as higher too.
		e.observe(150*time.Millisecond, t0.Add(time.Millisecond+DefaultDecay))
		if got := e.estimate(t0.Add(time.Millisecond + DefaultDecay)); got != 150*time.Millisecond {
			t.Errorf("estimate = %v, want 150ms (above 300ms/e)", got)
		}
	})
	t.Run("a lower sample is averaged in by elapsed time", func(t *testing.T) {
		var e peakEWMA
		e.observe(100*time.Millisecond, t0)
		// One Decay later: the estimate has decayed to 100/e and keeps
		// w = 1/e of it.
		e.observe(10*time.Millisecond, t0.Add(DefaultDecay))
		w := math.Exp(-1)
		if got, want := e.estimate(t0.Add(DefaultDecay)), ms(100*w*w+10*(1-w)); !near(got, want) {
			t.Errorf("estimate = %v, want %v", got, want)
		}
		// A sample soon after barely moves it.
		var f peakEWMA
		f.observe(100*time.Millisecond, t0)
		f.observe(10*time.Millisecond, t0.Add(time.Millisecond))
		if got := f.estimate(t0.Add(time.Millisecond)); got < 99*time.Millisecond {
			t.Errorf("estimate 1ms after = %v, want still about 100ms", got)
		}
		// Many fast samples bring a slow estimate down within a few Decays.
		var g peakEWMA
		g.observe(80*time.Millisecond, t0)
		at := t0
		for range 400 {
			at = at.Add(10 * time.Millisecond)
			g.observe(5*time.Millisecond, at)
		}
		if got := g.estimate(at); got > 6*time.Millisecond {
			t.Errorf("after 4s of 5ms samples the estimate is %v, want about 5ms", got)
		}
	})
	t.Run("decay is configurable", func(t *testing.T) {
		var e peakEWMA
		e.setDecay(10 * time.Second)
		e.observe(100*time.Millisecond, t0)
		if got, want := e.estimate(t0.Add(10*time.Second)), ms(100*math.Exp(-1)); !near(got, want) {
			t.Errorf("estimate = %v, want %v", got, want)
		}
	})
	t.Run("late observation does not move the clock back", func(t *testing.T) {
		var e peakEWMA
		e.observe(10*time.Millisecond, t0.Add(time.Second))
		e.observe(5*time.Millisecond, t0) // finished earlier, reported later
		if got := e.stamp.Load(); got != stampOf(t0.Add(time.Second)) {
			t.Errorf("stamp moved back")
		}
	})
}

func TestPeakEWMAConcurrent(t *testing.T) {
	var e peakEWMA
	t0 := time.Now()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				e.observe(time.Duration(10+g)*time.Millisecond, t0.Add(time.Duration(i)*time.Microsecond))
				_ = e.estimate(t0.Add(time.Duration(i) * time.Microsecond))
			}
		}()
	}
	wg.Wait()
	if got := e.estimate(t0.Add(2 * time.Millisecond)); got < 9*time.Millisecond || got > 17*time.Millisecond {
		t.Errorf("estimate = %v, want within the samples (10ms to 17ms)", got)
	}
}
