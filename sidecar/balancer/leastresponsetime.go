package balancer

import "time"

// Defaults of LeastResponseTime.
const (
	// DefaultDecay is the time constant of the latency estimates. Two
	// seconds is long enough to smooth over a burst of slow responses and
	// short enough that an endpoint left idle because it was slow is probed
	// again within a few seconds (its estimate falls by e every Decay: from
	// 4x the competition's to below it in under 3s) and that one which
	// became fast wins its share back within a few seconds of that probe.
	// Finagle and Linkerd use 10s, which leaves a recovered endpoint idle
	// for half a minute.
	DefaultDecay = 2 * time.Second
	// DefaultSlowStart is how long a new endpoint's weight takes to ramp
	// from slowStartFloor to full. It only needs to cover the time before
	// the endpoint's first responses tell its real latency, a few Decays.
	DefaultSlowStart = 5 * time.Second
)

const (
	// slowStartFloor is the share of its weight an endpoint starts with.
	slowStartFloor = 0.1
	// floodGuard bounds how much cheaper than its competitor an endpoint's
	// latency may make it look: an endpoint idle for many Decays, whose
	// estimate has fallen to almost nothing, still counts as
	// floodGuard times the other's, so that it is sent a few requests (in
	// proportion to in-flight ones), not every request, until its first
	// response tells its latency again.
	floodGuard = 0.1
	// minEstimate (1ns) keeps in-flight requests counting when estimates
	// are zero.
	minEstimate = 1.0
)

// LeastResponseTime sends each request to whichever of two distinct
// endpoints drawn at random in proportion to weight (the power of two
// choices) has the lower cost
//
//	latency estimate × (in-flight requests + 1) / weight
//
// where the latency estimate is a peak EWMA of response times that decays
// toward zero while the endpoint gets no response (see peakEWMA), so that
// no endpoint is starved for good. Ties are broken at random. In a
// comparison an estimate never counts for less than a tenth of the other
// endpoint's (floodGuard), so an endpoint idle long enough for its estimate
// to fall to nothing is sent a bounded number of requests before it
// answers one, however high the request rate, rather than every request.
//
// An endpoint with no response yet starts neutral: its estimate is the mean
// of the other endpoints' estimates when the picker is built (decaying
// from then on like any other), or, when none has one yet, that of the
// endpoint it is compared with, so that in-flight requests alone decide. A
// new endpoint's weight also ramps up linearly from 10% to 100% over
// SlowStart after it was first seen.
//
// A failure (a transport error or a 5xx) counts as a response time of at
// least one second (failurePenalty), so an endpoint that fails fast does
// not look fast and draw ever more traffic; the circuit breaker and
// outlier ejection keep it away altogether.
type LeastResponseTime struct {
	// Decay is the time constant of the latency estimate: what was
	// observed Decay ago counts for 1/e of what is observed now. Zero (or
	// negative) means DefaultDecay, 2s.
	Decay time.Duration
	// SlowStart is how long a new endpoint's weight takes to ramp up to
	// full. Zero means DefaultSlowStart, 5s; negative turns slow start off.
	SlowStart time.Duration
}

// Name returns "least_response_time".
func (LeastResponseTime) Name() string { return "least_response_time" }

// withDefaults returns p's settings with defaults applied; slowStart 0
// means off.
func (p LeastResponseTime) withDefaults() (decay, slowStart time.Duration) {
	decay, slowStart = p.Decay, p.SlowStart
	if decay <= 0 {
		decay = DefaultDecay
	}
	switch {
	case slowStart == 0:
		slowStart = DefaultSlowStart
	case slowStart < 0:
		slowStart = 0
	}
	return decay, slowStart
}

// Build returns a least-response-time picker over endpoints. It sets the
// endpoints' decay and takes the mean of their estimates for the
// endpoints that have none yet.
func (p LeastResponseTime) Build(endpoints []*Endpoint) Picker {
	decay, slowStart := p.withDefaults()
	t := now()
	var sum float64
	var n int
	for _, ep := range endpoints {
		ep.state.latency.setDecay(decay)
		if v, ok := ep.state.latency.load(t); ok {
			sum += v
			n++
		}
	}
	pk := &leastResponseTimePicker{endpoints: endpoints, sampler: newSampler(endpoints), built: stampOf(t), tau: float64(decay), slowStart: slowStart}
	if n > 0 {
		pk.prior = sum / float64(n)
	}
	return pk
}

type leastResponseTimePicker struct {
	endpoints []*Endpoint
	sampler   sampler
	// prior is the estimate, as of built, of endpoints without one: the
	// mean of the others' at Build time; 0 when none had one.
	prior     float64
	built     int64 // stampOf the Build time
	tau       float64
	slowStart time.Duration
}

func (p *leastResponseTimePicker) Pick(r Request) (Pick, error) {
	eps := p.endpoints
	t := now()
	if len(eps) == 1 {
		return choose(eps, 0, &r, t).pick(), nil
	}
	i, j := p.sampler.two()
	ci, cj := p.costs(eps[i], eps[j], t)
	if cj < ci || cj == ci && randUint64()&1 == 1 {
		i, j = j, i
	}
	return choose2(eps, i, j, &r, t).pick(), nil
}

// costs returns the costs of a and b at t, compared with each other.
func (p *leastResponseTimePicker) costs(a, b *Endpoint, t time.Time) (ca, cb float64) {
	ea, oka := p.estimate(a, t)
	eb, okb := p.estimate(b, t)
	switch {
	case !oka && !okb:
		ea, eb = minEstimate, minEstimate
	case !oka:
		ea = eb
	case !okb:
		eb = ea
	}
	ea = max(ea, eb*floodGuard, minEstimate)
	eb = max(eb, ea*floodGuard, minEstimate)
	ca = ea * float64(a.state.inflight.Load()+1) / p.weight(a, t)
	cb = eb * float64(b.state.inflight.Load()+1) / p.weight(b, t)
	return ca, cb
}

// estimate returns ep's latency estimate at t, or the neutral prior when it
// has none; false when it has neither.
func (p *leastResponseTimePicker) estimate(ep *Endpoint, t time.Time) (float64, bool) {
	if v, ok := ep.state.latency.load(t); ok {
		return v, true
	}
	if p.prior == 0 {
		return 0, false
	}
	return p.prior * decayWeight(stampOf(t)-p.built, p.tau), true
}

// weight returns ep's weight at t, ramped for slow start.
func (p *leastResponseTimePicker) weight(ep *Endpoint, t time.Time) float64 {
	w := float64(weight(ep))
	if p.slowStart <= 0 {
		return w
	}
	age := t.Sub(ep.state.added)
	if age >= p.slowStart {
		return w
	}
	f := slowStartFloor + (1-slowStartFloor)*float64(max(age, 0))/float64(p.slowStart)
	return w * f
}

var (
	_ Policy = LeastResponseTime{}
	_ Picker = (*leastResponseTimePicker)(nil)
)
