package balancer

import "sync/atomic"

// RoundRobin sends requests to each endpoint in turn, ignoring weights
// (weighted_round_robin honours them). Each new picker starts at a random
// offset so that many sidecars updated at once do not all send their next
// request to the same endpoint.
type RoundRobin struct{}

// Name returns "round_robin".
func (RoundRobin) Name() string { return "round_robin" }

// Build returns a round-robin picker over endpoints.
func (RoundRobin) Build(endpoints []*Endpoint) Picker {
	p := &roundRobinPicker{endpoints: endpoints}
	p.next.Store(randUint64())
	return p
}

type roundRobinPicker struct {
	endpoints []*Endpoint
	next      atomic.Uint64
}

func (p *roundRobinPicker) Pick(r Request) (Pick, error) {
	i := p.next.Add(1) - 1
	return choose(p.endpoints, int(i%uint64(len(p.endpoints))), &r, now()).pick(), nil
}

var (
	_ Policy = RoundRobin{}
	_ Picker = (*roundRobinPicker)(nil)
)
