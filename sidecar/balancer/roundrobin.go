package balancer

import (
	"math/rand/v2"
	"net/http"
	"sync/atomic"
)

// randUint32 is the source of randomness for picker start offsets; tests
// replace it to make picks deterministic.
var randUint32 = rand.Uint32

// RoundRobin sends requests to each endpoint in turn, ignoring weights.
// Each new picker starts at a random offset so that many sidecars updated at
// once do not all send their next request to the same endpoint.
type RoundRobin struct{}

// Name returns "round_robin".
func (RoundRobin) Name() string { return "round_robin" }

// Build returns a round-robin picker over endpoints.
func (RoundRobin) Build(endpoints []*Endpoint) Picker {
	p := &roundRobinPicker{endpoints: endpoints}
	p.next.Store(randUint32())
	return p
}

type roundRobinPicker struct {
	endpoints []*Endpoint
	next      atomic.Uint32
}

func (p *roundRobinPicker) Pick(*http.Request) (Pick, error) {
	i := p.next.Add(1) - 1
	ep := p.endpoints[int(i%uint32(len(p.endpoints)))]
	return Pick{Endpoint: ep, Done: ep.state.done}, nil
}

var (
	_ Policy = RoundRobin{}
	_ Picker = (*roundRobinPicker)(nil)
)
