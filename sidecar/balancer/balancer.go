// Package balancer picks the endpoint each upstream request goes to.
//
// A Balancer receives full discovery snapshots (Update, called from one
// goroutine at a time) and publishes an immutable Picker through an atomic
// pointer, so Pick never blocks and never takes a lock. Per-endpoint state
// (in-flight requests today; latency, breaker and ejection state as policies
// grow) lives in *Endpoint values that survive new snapshots for as long as
// the endpoint's ID stays in them.
//
// Policies are small: a Policy turns the current endpoint list into a
// Picker. Feedback from each request flows back through Pick.Done.
package balancer

import (
	"errors"
	"maps"
	"net/http"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
)

// ErrNoEndpoints is returned by Pick when the upstream has no endpoint to
// send a request to. Callers answer 503: there is nothing to retry against
// until discovery delivers a new snapshot.
var ErrNoEndpoints = errors.New("no endpoints available")

// Result is what became of one request sent to a picked endpoint.
type Result struct {
	// Err is the transport error, nil when a response arrived.
	Err error
	// Status is the HTTP status of the response, 0 when Err is set.
	Status int
	// Latency is the time from pick to response headers (or error).
	Latency time.Duration
}

// Pick is the outcome of Picker.Pick.
type Pick struct {
	// Endpoint is where to send the request. Never nil when Pick's error is nil.
	Endpoint *Endpoint
	// Done must be called exactly once when the request to Endpoint has
	// finished (response headers received, or failed). It is never nil.
	Done func(Result)
}

// Picker chooses an endpoint for a request. Pickers are immutable
// snapshots; Pick must not block and is called from many goroutines.
type Picker interface {
	Pick(req *http.Request) (Pick, error)
}

// Policy builds pickers for one balancing algorithm. Build is called from
// the balancer's update goroutine with the current endpoints (never empty)
// in snapshot order; the slice must not be modified and may be retained.
type Policy interface {
	Name() string
	Build(endpoints []*Endpoint) Picker
}

// Endpoint is a balancer's view of one discovered endpoint: its address and
// the state that outlives snapshots. Its exported fields are set when the
// Endpoint is created and never change; when discovery changes them (a new
// weight, say), the balancer makes a new Endpoint that shares the old one's
// state. The state is safe for concurrent use.
type Endpoint struct {
	discovery.Endpoint
	// Addr is the endpoint's "host:port", computed once.
	Addr string

	state *endpointState
}

// endpointState is what a balancer learns about an endpoint from traffic.
type endpointState struct {
	inflight atomic.Int64
	// done is Pick.Done for this endpoint, built once so that Pick does not
	// allocate a closure per request.
	done func(Result)
}

func newEndpoint(e discovery.Endpoint, st *endpointState) *Endpoint {
	if e.Weight < 1 {
		e.Weight = 1
	}
	if st == nil {
		st = &endpointState{}
		st.done = st.finish
	}
	return &Endpoint{Endpoint: e, Addr: e.HostPort(), state: st}
}

// InFlight returns the number of requests picked for the endpoint whose
// Done has not been called yet.
func (e *Endpoint) InFlight() int64 { return e.state.inflight.Load() }

func (s *endpointState) finish(Result) { s.inflight.Add(-1) }

// Balancer holds the endpoints of one upstream service and the picker of
// its policy. Pick is safe for concurrent use and lock-free; Update must be
// called from one goroutine at a time (it serialises itself regardless).
type Balancer struct {
	service string
	policy  Policy

	picker atomic.Pointer[pickerBox]

	mu        sync.Mutex // serialises Update and guards endpoints
	endpoints map[string]*Endpoint
}

// pickerBox lets an interface value live behind an atomic.Pointer.
type pickerBox struct{ Picker }

// New returns a Balancer for service with no endpoints: Pick fails with
// ErrNoEndpoints until the first Update.
func New(service string, policy Policy) *Balancer {
	b := &Balancer{service: service, policy: policy, endpoints: map[string]*Endpoint{}}
	b.picker.Store(&pickerBox{errPicker{ErrNoEndpoints}})
	return b
}

// Service returns the upstream service name the balancer serves.
func (b *Balancer) Service() string { return b.service }

// Policy returns the balancing policy.
func (b *Balancer) Policy() Policy { return b.policy }

// Update replaces the endpoint set with s and publishes a new picker.
// Endpoints whose ID was already known keep their state; endpoints with an
// ID seen twice in s are used once.
func (b *Balancer) Update(s discovery.Snapshot) {
	b.mu.Lock()
	defer b.mu.Unlock()
	next := make(map[string]*Endpoint, len(s.Endpoints))
	list := make([]*Endpoint, 0, len(s.Endpoints))
	for _, de := range s.Endpoints {
		if _, dup := next[de.ID]; dup {
			continue
		}
		ep, ok := b.endpoints[de.ID]
		switch {
		case !ok:
			ep = newEndpoint(de, nil)
		case !sameEndpoint(ep.Endpoint, de):
			ep = newEndpoint(de, ep.state)
		}
		next[de.ID] = ep
		list = append(list, ep)
	}
	b.endpoints = next
	if len(list) == 0 {
		b.picker.Store(&pickerBox{errPicker{ErrNoEndpoints}})
		return
	}
	b.picker.Store(&pickerBox{b.policy.Build(list)})
}

// sameEndpoint reports whether the Endpoint value for a can be reused for b.
func sameEndpoint(a, b discovery.Endpoint) bool {
	return a.Address == b.Address && a.Port == b.Port && max(a.Weight, 1) == max(b.Weight, 1) &&
		a.Zone == b.Zone && slices.Equal(a.Tags, b.Tags) && maps.Equal(a.Meta, b.Meta)
}

// Pick chooses an endpoint for req with the current picker and counts the
// request as in flight until Pick.Done is called. It never blocks.
func (b *Balancer) Pick(req *http.Request) (Pick, error) {
	p, err := b.picker.Load().Pick(req)
	if err != nil {
		return Pick{}, err
	}
	p.Endpoint.state.inflight.Add(1)
	return p, nil
}

// Endpoints returns the current endpoints sorted by ID, for inspection.
func (b *Balancer) Endpoints() []*Endpoint {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]*Endpoint, 0, len(b.endpoints))
	for _, ep := range b.endpoints {
		out = append(out, ep)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// errPicker fails every pick with err; installed when there is nothing to
// pick from, so callers need no special case.
type errPicker struct{ err error }

func (p errPicker) Pick(*http.Request) (Pick, error) { return Pick{}, p.err }

var _ Picker = (*Balancer)(nil)
