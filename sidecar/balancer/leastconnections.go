package balancer

import "time"

// LeastConnections sends each request to the less loaded of two distinct
// endpoints drawn at random in proportion to weight (the power of two
// choices), load being (in-flight requests + 1) / weight. Ties are broken
// at random. Unlike a scan for the global minimum, two random choices
// cannot herd every sidecar onto the same idle endpoint, and picking costs
// O(1) (O(log n) with unequal weights).
//
// Under load, in-flight requests settle in proportion to weight. With one
// request at a time the heavier of two idle endpoints always wins. When the
// preferred endpoint is unavailable or already tried, the other one is
// used, then the rest as by every policy.
type LeastConnections struct{}

// Name returns "least_connections".
func (LeastConnections) Name() string { return "least_connections" }

// Build returns a power-of-two-choices least-connections picker.
func (LeastConnections) Build(endpoints []*Endpoint) Picker {
	return &leastConnectionsPicker{endpoints: endpoints, sampler: newSampler(endpoints)}
}

type leastConnectionsPicker struct {
	endpoints []*Endpoint
	sampler   sampler
}

func (p *leastConnectionsPicker) Pick(r Request) (Pick, error) {
	eps := p.endpoints
	t := now()
	if len(eps) == 1 {
		return choose(eps, 0, &r, t).pick(), nil
	}
	i, j := p.sampler.two()
	a, b := eps[i], eps[j]
	// (in_a+1)/w_a against (in_b+1)/w_b, cross-multiplied in float64 so
	// that large weights cannot overflow.
	ca := float64(a.state.inflight.Load()+1) * float64(weight(b))
	cb := float64(b.state.inflight.Load()+1) * float64(weight(a))
	if cb < ca || cb == ca && randUint64()&1 == 1 {
		i, j = j, i
	}
	return choose2(eps, i, j, &r, t).pick(), nil
}

// choose2 is choose for policies that rank two candidates: it returns
// eps[first] if r has not tried it and it is admitted now, else eps[second]
// likewise, else whatever choose returns starting from first. Like
// choose, it admits (and so may consume a breaker probe of) only the
// endpoint it returns.
func choose2(eps []*Endpoint, first, second int, r *Request, t time.Time) *Endpoint {
	if ep := eps[first]; !r.Tried(ep) && ep.admitNew(t) {
		return ep
	}
	if ep := eps[second]; !r.Tried(ep) && ep.admitNew(t) {
		return ep
	}
	return choose(eps, first, r, t)
}

var (
	_ Policy = LeastConnections{}
	_ Picker = (*leastConnectionsPicker)(nil)
)
