package balancer

import (
	"math"
	"sync/atomic"
	"time"
)

// epoch is the origin of peakEWMA's timestamps. It carries a monotonic
// clock reading, so stamps taken from time.Now are immune to wall-clock
// steps.
var epoch = time.Now()

// peakEWMA tracks an endpoint's response time as an exponentially weighted
// moving average that jumps up to a slower sample at once (the peak) and
// comes down gradually, with weights that depend on the time between
// observations rather than their number (as in Finagle's and Linkerd's
// peak EWMA). Between observations the estimate decays toward zero, so an
// endpoint that gets no traffic looks cheaper and cheaper until it is
// probed again: a slow endpoint is never starved for good, and one that
// became fast is found out (see traefik#12306 for what happens otherwise).
//
// The zero value has no observation and decays with DefaultDecay. It is
// safe for concurrent use and lock-free: the estimate and the time of the
// last observation live in two atomics updated with compare-and-swap. The
// pair is not updated as one, so a reader racing an observation may, for
// that one read, decay the new estimate from the old time (or the old one
// from the new time); that is harmless for a load-balancing heuristic.
type peakEWMA struct {
	bits  atomic.Uint64 // math.Float64bits of the estimate in nanoseconds, as of stamp
	stamp atomic.Int64  // when the last observation was made (see stampOf); 0: never
	decay atomic.Int64  // the decay time constant in nanoseconds; 0: DefaultDecay
}

// stampOf returns t as nanoseconds since epoch, never 0 (0 means "no
// observation").
func stampOf(t time.Time) int64 {
	if s := int64(t.Sub(epoch)); s != 0 {
		return s
	}
	return 1
}

// setDecay sets the decay time constant; d <= 0 means DefaultDecay.
func (e *peakEWMA) setDecay(d time.Duration) {
	if d <= 0 {
		d = 0
	}
	if e.decay.Load() != int64(d) {
		e.decay.Store(int64(d))
	}
}

func (e *peakEWMA) tau() float64 {
	if d := e.decay.Load(); d > 0 {
		return float64(d)
	}
	return float64(DefaultDecay)
}

// decayWeight returns exp(-dt/tau), the weight that what was known dt
// nanoseconds ago keeps now; 1 when dt <= 0.
func decayWeight(dt int64, tau float64) float64 {
	if dt <= 0 {
		return 1
	}
	return math.Exp(-float64(dt) / tau)
}

// observe records a response time rtt seen at t. The estimate first decays
// for the time since the last observation; a sample above the decayed
// estimate then replaces it, and a sample below it is averaged in with
// weight 1-w, where w = exp(-dt/decay) is what the estimate keeps, so a
// sample moves the estimate the more the longer it has been since the last
// one.
func (e *peakEWMA) observe(rtt time.Duration, t time.Time) {
	x := float64(max(rtt, 0))
	ts := stampOf(t)
	tau := e.tau()
	for {
		old := e.bits.Load()
		last := e.stamp.Load()
		next := x
		if last != 0 {
			w := decayWeight(ts-last, tau)
			if cur := math.Float64frombits(old) * w; x < cur {
				next = cur*w + x*(1-w)
			}
		}
		if e.bits.CompareAndSwap(old, math.Float64bits(next)) {
			break
		}
	}
	for { // the stamp only moves forward
		last := e.stamp.Load()
		if last != 0 && last >= ts || e.stamp.CompareAndSwap(last, ts) {
			return
		}
	}
}

// load returns the estimate in nanoseconds at t, decayed for the time
// since the last observation; false when there has been no observation.
func (e *peakEWMA) load(t time.Time) (float64, bool) {
	last := e.stamp.Load()
	if last == 0 {
		return 0, false
	}
	v := math.Float64frombits(e.bits.Load())
	return v * decayWeight(stampOf(t)-last, e.tau()), true
}

// estimate returns the estimate at t; 0 when there has been no
// observation.
func (e *peakEWMA) estimate(t time.Time) time.Duration {
	v, _ := e.load(t)
	return time.Duration(v)
}
