// Package balancer picks the endpoint each upstream request goes to.
//
// A Balancer receives full discovery snapshots (Update) and publishes an
// immutable Picker through an atomic pointer, so Pick never blocks and
// never takes a lock. Per-endpoint state (in-flight requests, latency,
// circuit breaker, outlier ejection, active health) lives in *Endpoint
// values that survive new snapshots for as long as the endpoint's ID stays
// in them.
//
// Policies are small: a Policy turns the current endpoint list into a
// Picker. Feedback from each request flows back through Pick.Done, which
// updates every piece of endpoint state at once. Every policy skips
// endpoints that are unhealthy, ejected or behind an open breaker, and
// endpoints a retry already tried; when no endpoint is left it falls back
// to all of them (panic mode) rather than failing every request.
package balancer

import (
	"errors"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
)

// ErrNoEndpoints is returned by Pick when the upstream has no endpoint to
// send a request to. Callers answer 503: there is nothing to retry against
// until discovery delivers a new snapshot.
var ErrNoEndpoints = errors.New("no endpoints available")

// ErrAffinityUnavailable is returned by Pick for a Request with Strict
// set when the endpoint its Affinity names cannot take the request.
var ErrAffinityUnavailable = errors.New("the session's endpoint is unavailable")

// now is the clock of pickers and feedback; tests replace it.
var now = time.Now

// failurePenalty is the response time recorded for a failed request (a
// transport error or a 5xx) that failed faster than this.
const failurePenalty = time.Second

// Result is what became of one request sent to a picked endpoint.
type Result struct {
	// Err is the transport error (connect failure, timeout, reset); nil
	// when a response arrived.
	Err error
	// Status is the HTTP status of the response, 0 when Err is set.
	Status int
	// Latency is the time from sending to response headers (or error).
	Latency time.Duration
	// Local marks a request that ended for a reason that says nothing about
	// the endpoint, such as the client hanging up. It is not counted
	// against the endpoint.
	Local bool
}

// outcome converts r for the breaker and outlier detection.
func (r Result) outcome() breaker.Outcome {
	return breaker.Outcome{Status: r.Status, Transport: r.Err != nil && !r.Local, Local: r.Local}
}

// Pick is the outcome of Picker.Pick.
type Pick struct {
	// Endpoint is where to send the request. Never nil when Pick's error is nil.
	Endpoint *Endpoint
	// Done must be called exactly once when the exchange with Endpoint has
	// ended. It is never nil, and safe to call from any goroutine.
	Done func(Result)
	// Header, when not nil, holds headers for the response to the client,
	// as grpc-go's PickResult.Metadata does: what a picker needs the client
	// to send back on its next request (a session cookie). The proxy adds
	// them to the endpoint's response. The built-in policies leave it nil.
	Header http.Header
}

// MaxTried is how many endpoints a Request remembers as already tried.
const MaxTried = 4

// Request is what a policy may look at to choose an endpoint. It is passed
// by value so that picking does not allocate.
type Request struct {
	// HTTP is the request being routed; nil for a TCP connection.
	HTTP *http.Request
	// Client is the address of the client, for source-IP hashing. When it
	// is not set, HTTP's first X-Forwarded-For address is used (the proxy
	// has already made that header trustworthy), else its RemoteAddr.
	Client netip.Addr
	// Affinity, when set, is the ID of the endpoint the request should
	// go to (a sticky session's pin). Balancer.Pick honours it when that
	// endpoint is in the current set, admitted now (healthy, not ejected,
	// its breaker letting requests through) and not already tried by this
	// request; otherwise the policy picks as if it were not set. A caller
	// tells which happened by comparing the picked endpoint's ID.
	Affinity string
	// Strict, with Affinity, makes Pick fail with ErrAffinityUnavailable
	// rather than choose another endpoint when that one cannot take the
	// request (a sticky session that must not move).
	Strict bool
	// RebindKey, with Affinity and not Strict, chooses the replacement of
	// an endpoint that cannot take the request by rendezvous hashing of
	// the key over the endpoints that can, rather than by the policy: the
	// balancers of several edges that see the same session replace its
	// endpoint with the same one, without talking to each other. Zero
	// leaves the choice to the policy.
	RebindKey uint64

	tried  [MaxTried]*Endpoint
	ntried int
}

// MarkTried records ep as tried, so that a retry avoids it while another
// endpoint can take the request. Beyond MaxTried, the oldest are forgotten.
func (r *Request) MarkTried(ep *Endpoint) {
	r.tried[r.ntried%MaxTried] = ep
	r.ntried++
}

// Tried reports whether ep was marked as tried.
func (r *Request) Tried(ep *Endpoint) bool {
	for _, t := range r.tried {
		if t == ep {
			return t != nil
		}
	}
	return false
}

// ClientAddr returns the client address used for source-IP hashing; the
// zero Addr when nothing tells it.
func (r *Request) ClientAddr() netip.Addr {
	if r.Client.IsValid() || r.HTTP == nil {
		return r.Client
	}
	if xff := r.HTTP.Header["X-Forwarded-For"]; len(xff) > 0 {
		first := xff[0]
		if i := strings.IndexByte(first, ','); i >= 0 {
			first = first[:i]
		}
		if a, err := netip.ParseAddr(strings.TrimSpace(first)); err == nil {
			return a.Unmap()
		}
	}
	if ap, err := netip.ParseAddrPort(r.HTTP.RemoteAddr); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// Picker chooses an endpoint for a request. Pickers are immutable
// snapshots; Pick must not block and is called from many goroutines.
type Picker interface {
	Pick(r Request) (Pick, error)
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

// endpointState is what a balancer learns about an endpoint from traffic
// and health checks.
type endpointState struct {
	id       string
	inflight atomic.Int64
	// requests and failures count finished exchanges (failures: transport
	// errors and 5xx), abandoned ones not included.
	requests atomic.Uint64
	failures atomic.Uint64
	latency  peakEWMA
	added    time.Time // when the endpoint first appeared, for slow start

	breaker  *breaker.Breaker // nil when breakers are off
	outlier  *breaker.Outlier // the upstream's; nil when ejection is off
	host     breaker.Host
	degraded atomic.Bool // failed active health checks
	drained  *Drained    // the balancer's Options.Drained; nil: none

	// done is Pick.Done for this endpoint, built once so that Pick does not
	// allocate a closure per request.
	done func(Result)
}

func (s *endpointState) finish(r Result) {
	s.inflight.Add(-1)
	if r.Local {
		return
	}
	t := now()
	oc := r.outcome()
	lat := r.Latency
	s.requests.Add(1)
	if oc.Transport || oc.Status >= 500 {
		s.failures.Add(1)
		// A failure must not look fast: an endpoint that answers 503 at
		// once would otherwise draw ever more traffic under
		// least_response_time.
		lat = max(lat, failurePenalty)
	}
	s.latency.observe(lat, t)
	if s.breaker != nil {
		s.breaker.Record(oc)
	}
	if s.outlier != nil {
		s.outlier.Record(s.id, &s.host, oc, t)
	}
}

// admit reports whether the endpoint may take a request now: healthy, not
// ejected, and admitted by its breaker. It may consume one of a half-open
// breaker's probes, so policies call it only for the endpoint they are
// about to return.
func (e *Endpoint) admit(t time.Time) bool {
	s := e.state
	if s.degraded.Load() || s.host.Ejected(t) {
		return false
	}
	return s.breaker == nil || s.breaker.Allow(t)
}

// pick wraps e as a Pick.
func (e *Endpoint) pick() Pick { return Pick{Endpoint: e, Done: e.state.done} }

// InFlight returns the number of requests picked for the endpoint whose
// Done has not been called yet.
func (e *Endpoint) InFlight() int64 { return e.state.inflight.Load() }

// Requests returns how many exchanges with the endpoint have finished,
// not counting those the client abandoned.
func (e *Endpoint) Requests() uint64 { return e.state.requests.Load() }

// Failures returns how many of Requests failed: transport errors and 5xx.
func (e *Endpoint) Failures() uint64 { return e.state.failures.Load() }

// Latency returns the endpoint's current peak-EWMA response time, decayed
// for the time since its last response; 0 before the first response.
func (e *Endpoint) Latency() time.Duration { return e.state.latency.estimate(now()) }

// BreakerState returns the state of the endpoint's circuit breaker
// (Closed when breakers are off).
func (e *Endpoint) BreakerState() breaker.State {
	if e.state.breaker == nil {
		return breaker.Closed
	}
	return e.state.breaker.State()
}

// EjectedUntil returns when the endpoint's current outlier ejection ends;
// the zero Time when it is not ejected.
func (e *Endpoint) EjectedUntil() time.Time {
	if u := e.state.host.EjectedUntil(); u.After(now()) {
		return u
	}
	return time.Time{}
}

// Healthy reports whether the endpoint passes its active health checks
// (true when there are none).
func (e *Endpoint) Healthy() bool { return !e.state.degraded.Load() }

// EventKind names a change in an endpoint's availability.
type EventKind string

// Event kinds.
const (
	BreakerOpened   EventKind = "breaker_opened"
	BreakerHalfOpen EventKind = "breaker_half_open"
	BreakerClosed   EventKind = "breaker_closed"
	Ejected         EventKind = "ejected"
	Restored        EventKind = "restored"
	Unhealthy       EventKind = "unhealthy"
	Healthy         EventKind = "healthy"
)

// Event reports a change in an endpoint's availability.
type Event struct {
	Service  string
	Endpoint string // the endpoint's ID
	// Addr is the endpoint's "host:port"; empty when the endpoint has
	// already left the balancer.
	Addr string
	Kind EventKind
	// Until is when an ejection ends (Ejected only).
	Until time.Time
}

// Options configure a Balancer. The zero value turns every resilience
// feature off.
type Options struct {
	// Breaker, when set, gives every endpoint a circuit breaker.
	Breaker *breaker.Settings
	// Outlier, when set, ejects endpoints that keep failing.
	Outlier *breaker.OutlierSettings
	// OnEvent receives availability changes. It is called synchronously
	// from request paths and must not block. Nil discards them.
	OnEvent func(Event)
	// Drained, when set, names endpoints that take no new work (see
	// Drained); nil drains nothing.
	Drained *Drained
}

// Balancer holds the endpoints of one upstream service and the picker of
// its policy. Pick is safe for concurrent use and lock-free; Update and
// SetHealthy may be called from any goroutine (they serialise).
type Balancer struct {
	service string
	policy  Policy
	opts    Options
	outlier *breaker.Outlier

	picker atomic.Pointer[pickerBox]

	mu        sync.Mutex // serialises Update and guards endpoints
	endpoints map[string]*Endpoint
}

// pickerBox is what a Balancer publishes: the policy's picker, and the
// same endpoints by ID for affinity hints.
type pickerBox struct {
	Picker
	byID map[string]*Endpoint
}

// rendezvous returns, of the endpoints that can take r now and that r
// has not tried, the one with the highest rendezvous score for
// r.RebindKey, or nil when there is none. The score depends only on the
// key and the endpoint's ID, so every process with the same endpoints
// agrees on it. Endpoints are asked to admit the request in score order,
// one at a time, since admitting takes a half-open breaker's probe: it
// costs a pass over the endpoints per endpoint that refuses, on a path
// taken only when a session's endpoint is gone.
func (box *pickerBox) rendezvous(r Request, t time.Time) *Endpoint {
	below, bounded := uint64(0), false
	for {
		var best *Endpoint
		var bestScore uint64
		for id, ep := range box.byID {
			if r.Tried(ep) {
				continue
			}
			score := rendezvousScore(r.RebindKey, id)
			if bounded && score >= below {
				continue // asked already
			}
			if best == nil || score > bestScore {
				best, bestScore = ep, score
			}
		}
		if best == nil || best.admitNew(t) {
			return best
		}
		below, bounded = bestScore, true
	}
}

// rendezvousScore mixes key and id with FNV-1a and a final avalanche
// (splitmix64), so that scores of one key over IDs that differ in a byte
// are unrelated.
func rendezvousScore(key uint64, id string) uint64 {
	h := uint64(14695981039346656037) ^ key
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= 1099511628211
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	return h ^ h>>31
}

// New returns a Balancer for service with no endpoints: Pick fails with
// ErrNoEndpoints until the first Update.
func New(service string, policy Policy, opts Options) *Balancer {
	b := &Balancer{service: service, policy: policy, opts: opts, endpoints: map[string]*Endpoint{}}
	if opts.Outlier != nil {
		b.outlier = breaker.NewOutlier(*opts.Outlier, func(id string, ejected bool, until time.Time) {
			kind := Restored
			if ejected {
				kind = Ejected
			}
			b.emit(Event{Service: service, Endpoint: id, Kind: kind, Until: until})
		})
	}
	b.picker.Store(&pickerBox{Picker: errPicker{ErrNoEndpoints}})
	return b
}

// emit fills in ev's address and hands it to OnEvent. It takes b.mu, so
// it must not be called with b.mu held.
func (b *Balancer) emit(ev Event) {
	if b.opts.OnEvent == nil {
		return
	}
	b.mu.Lock()
	if ep := b.endpoints[ev.Endpoint]; ep != nil {
		ev.Addr = ep.Addr
	}
	b.mu.Unlock()
	b.opts.OnEvent(ev)
}

// Service returns the upstream service name the balancer serves.
func (b *Balancer) Service() string { return b.service }

// Policy returns the balancing policy.
func (b *Balancer) Policy() Policy { return b.policy }

func (b *Balancer) newState(id string) *endpointState {
	s := &endpointState{id: id, added: now(), outlier: b.outlier, drained: b.opts.Drained}
	if b.opts.Breaker != nil {
		s.breaker = breaker.New(b.service+"/"+id, *b.opts.Breaker, func(from, to breaker.State) {
			kind := BreakerClosed
			switch to {
			case breaker.Open:
				kind = BreakerOpened
			case breaker.HalfOpen:
				kind = BreakerHalfOpen
			}
			b.emit(Event{Service: b.service, Endpoint: id, Kind: kind})
		})
	}
	s.done = s.finish
	return s
}

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
		if de.Weight < 1 {
			de.Weight = 1
		}
		ep, ok := b.endpoints[de.ID]
		switch {
		case !ok:
			ep = &Endpoint{Endpoint: de, Addr: de.HostPort(), state: b.newState(de.ID)}
		case !sameEndpoint(ep.Endpoint, de):
			ep = &Endpoint{Endpoint: de, Addr: de.HostPort(), state: ep.state}
		}
		next[de.ID] = ep
		list = append(list, ep)
	}
	b.endpoints = next
	if b.outlier != nil {
		b.outlier.SetSize(len(list))
	}
	if len(list) == 0 {
		b.picker.Store(&pickerBox{Picker: errPicker{ErrNoEndpoints}})
		return
	}
	b.picker.Store(&pickerBox{Picker: b.policy.Build(list), byID: next})
}

// sameEndpoint reports whether the Endpoint value for a can be reused for b.
func sameEndpoint(a, b discovery.Endpoint) bool {
	return a.Address == b.Address && a.Port == b.Port && a.Weight == b.Weight &&
		a.Zone == b.Zone && slices.Equal(a.Tags, b.Tags) && maps.Equal(a.Meta, b.Meta)
}

// SetHealthy records the verdict of an active health check for the
// endpoint with the given ID; unknown IDs are ignored.
func (b *Balancer) SetHealthy(id string, healthy bool) {
	b.mu.Lock()
	ep := b.endpoints[id]
	b.mu.Unlock()
	if ep == nil {
		return
	}
	if ep.state.degraded.Swap(!healthy) == !healthy {
		return // no change
	}
	kind := Healthy
	if !healthy {
		kind = Unhealthy
	}
	b.emit(Event{Service: b.service, Endpoint: id, Kind: kind})
}

// Pick chooses an endpoint for r — the one r.Affinity names when it can
// take the request, else (unless r.Strict) its rendezvous replacement
// for r.RebindKey, else the one the policy's current picker chooses —
// and counts the request as in flight until Pick.Done is called. It never
// blocks and never allocates.
func (b *Balancer) Pick(r Request) (Pick, error) {
	box := b.picker.Load()
	if r.Affinity != "" {
		t := now()
		if ep := box.byID[r.Affinity]; ep != nil && !r.Tried(ep) && ep.admit(t) {
			ep.state.inflight.Add(1)
			return ep.pick(), nil
		}
		if r.Strict {
			return Pick{}, ErrAffinityUnavailable
		}
		if r.RebindKey != 0 {
			if ep := box.rendezvous(r, t); ep != nil {
				ep.state.inflight.Add(1)
				return ep.pick(), nil
			}
		}
	}
	p, err := box.Pick(r)
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

// choose returns the first endpoint of eps, starting at index start and
// wrapping around, that r has not tried, is not drained and is admitted
// now; else a drained one that is admitted. When none is (every endpoint
// is down, or tried), it falls back to panic mode: the first endpoint
// from start that r has not tried, else eps[start]. Policies call it with
// the index their algorithm prefers.
func choose(eps []*Endpoint, start int, r *Request, t time.Time) *Endpoint {
	n := len(eps)
	for i := range n {
		ep := eps[(start+i)%n]
		if !r.Tried(ep) && ep.admitNew(t) {
			return ep
		}
	}
	for i := range n {
		ep := eps[(start+i)%n]
		if !r.Tried(ep) && ep.Draining() && ep.admit(t) {
			return ep
		}
	}
	for i := range n {
		if ep := eps[(start+i)%n]; !r.Tried(ep) {
			return ep
		}
	}
	return eps[start]
}

// errPicker fails every pick with err; installed when there is nothing to
// pick from, so callers need no special case.
type errPicker struct{ err error }

func (p errPicker) Pick(Request) (Pick, error) { return Pick{}, p.err }

var _ Picker = (*Balancer)(nil)
