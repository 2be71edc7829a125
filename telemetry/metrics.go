package telemetry

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Attribute keys sidemesh puts on metrics and spans next to the semantic
// conventions' own.
const (
	// KeyListener is the listener a request came in on: inbound (from
	// the mesh to the local app) or outbound (from the local app).
	KeyListener = attribute.Key("sidemesh.listener")
	// KeyService is the service a server-side measurement is about: the
	// local service on inbound, the upstream called on outbound.
	KeyService = attribute.Key("sidemesh.service")
	// KeyUpstream is the upstream service of a client-side measurement.
	KeyUpstream = attribute.Key("sidemesh.upstream")
	// KeyEndpoint is an endpoint's "host:port".
	KeyEndpoint = attribute.Key("sidemesh.endpoint")
	// KeyBreakerState is a circuit breaker's state: closed, half-open or
	// open.
	KeyBreakerState = attribute.Key("sidemesh.breaker.state")
	// KeyPolicyRule names the authorization rule that decided.
	KeyPolicyRule = attribute.Key("sidemesh.policy.rule")
	// keyPolicyDecision is the authorization decision, allow or deny.
	keyPolicyDecision = attribute.Key("sidemesh.policy.decision")
	// keyPeerIdentity is the caller's verified SPIFFE ID.
	keyPeerIdentity = attribute.Key("sidemesh.peer.identity")
	// KeyBackend is a discovery backend: consul, gossip or static.
	KeyBackend = attribute.Key("sidemesh.discovery.backend")
)

// Semantic-convention attribute keys (OpenTelemetry semconv, HTTP and
// network), written out so the metric and span code read alike.
const (
	keyMethod      = attribute.Key("http.request.method")
	keyMethodOrig  = attribute.Key("http.request.method_original")
	keyStatus      = attribute.Key("http.response.status_code")
	keyErrorType   = attribute.Key("error.type")
	keyServerAddr  = attribute.Key("server.address")
	keyServerPort  = attribute.Key("server.port")
	keyResendCount = attribute.Key("http.request.resend_count")
	keyRoute       = attribute.Key("http.route")
	keySticky      = attribute.Key("sidemesh.sticky")
	// keyJWTProvider names an edge's JWT provider; keyResult what an
	// operation gave.
	keyJWTProvider = attribute.Key("sidemesh.jwt.provider")
	keyResult      = attribute.Key("sidemesh.result")
	// keyReason says why something was removed.
	keyReason = attribute.Key("sidemesh.reason")
	// keyLimit names a route's rate limit; keyDecision what it decided.
	keyLimit    = attribute.Key("sidemesh.ratelimit.name")
	keyDecision = attribute.Key("sidemesh.ratelimit.decision")
	// keyPrincipal is who an edge authenticated the caller as.
	keyPrincipal = attribute.Key("sidemesh.principal")
	// KeyRouteName is an edge route's name as a metric label (the
	// request metrics carry it as sidemesh.service).
	KeyRouteName     = attribute.Key("sidemesh.route")
	keyStickyOutcome = attribute.Key("sidemesh.sticky.outcome")
	// keyStickyOwnerResult is what an exchange with a session's owner
	// edge gave.
	keyStickyOwnerResult = attribute.Key("sidemesh.sticky.owner.result")
	keyPeerService       = attribute.Key("peer.service")
	keyURLPath           = attribute.Key("url.path")
	keyURLScheme         = attribute.Key("url.scheme")
	keyURLFull           = attribute.Key("url.full")
	keyClientAddr        = attribute.Key("client.address")
	keyUserAgent         = attribute.Key("user_agent.original")
	keyProtoVersion      = attribute.Key("network.protocol.version")
	keyIODirection       = attribute.Key("network.io.direction")
)

// durationBuckets are the semantic conventions' advisory boundaries for
// HTTP durations, in seconds, with 1 ms and 2.5 ms added below them: a
// mesh hop on one host takes well under 5 ms.
var durationBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// Metrics holds sidemesh's instruments. Its methods are safe for
// concurrent use and cheap enough for the request path: the attribute
// sets of each series are built once and cached. A nil *Metrics records
// nothing.
type Metrics struct {
	serverDuration metric.Float64Histogram
	clientDuration metric.Float64Histogram
	// serverActive and clientActive report the in-flight counts of
	// serverSeries and endpointSeries when metrics are collected, so
	// that the request path counts a request with an atomic add, not a
	// measurement through the SDK.
	serverActive metric.Int64ObservableUpDownCounter
	clientActive metric.Int64ObservableUpDownCounter
	transitions  metric.Int64Counter
	ejections    metric.Int64Counter
	denials      metric.Int64Counter
	tcpConns     metric.Int64Counter
	tcpActive    metric.Int64UpDownCounter
	tcpBytes     metric.Int64Counter

	// sets caches attribute sets by seriesKey: building one sorts and
	// allocates, which the request path should not pay every time. It
	// holds at most maxCachedSeries; past that (endpoints coming and
	// going for weeks), sets are built per measurement.
	sets   sync.Map // seriesKey -> *series
	cached atomic.Int64

	// servers holds the server side's series by listener and service
	// (serverKey -> *serverSeries): the requests in flight and the
	// counters the history samples.
	servers     sync.Map
	serverCount atomic.Int64
	// endpoints holds the tries in flight by upstream and endpoint
	// (endpointKey -> *endpointSeries), at most maxCachedSeries.
	endpoints     sync.Map
	endpointCount atomic.Int64
	// upstreams holds every upstream's retry counters, reported by an
	// observable counter (so that they start at 0) and sampled by the
	// history.
	upstreams upstreamMap
	// events is the event log RecordEvent writes to; nil records none.
	events *EventLog
}

// maxCachedSeries bounds Metrics.sets. The SDK itself keeps at most 2000
// series per instrument (more go to an overflow series).
const maxCachedSeries = 20000

// seriesKey identifies the attribute set of one series. Only bounded
// values go in: methods outside the standard set become _OTHER, services
// come from the config, endpoints from discovery, statuses are 3 digits.
type seriesKey struct {
	kind     uint8
	a, b, c  string
	method   string
	status   int
	errorTyp string
}

// Kinds of seriesKey.
const (
	seriesServer uint8 = iota
	seriesServerActive
	seriesClient
	seriesClientActive
	seriesUpstream
	seriesEndpointState
	seriesEndpoint
	seriesRule
	seriesTCP
	seriesTCPIO
)

// newMetrics creates the instruments on m.
func newMetrics(m metric.Meter) (*Metrics, error) {
	var (
		x   Metrics
		err error
		e   []error
	)
	note := func(err error) {
		if err != nil {
			e = append(e, err)
		}
	}
	x.serverDuration, err = m.Float64Histogram("http.server.request.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of HTTP requests a sidemesh listener served, from the first header byte read to the last body byte written."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	note(err)
	x.serverActive, err = m.Int64ObservableUpDownCounter("http.server.active_requests", metric.WithUnit("{request}"),
		metric.WithDescription("HTTP requests a sidemesh listener is serving now."))
	note(err)
	x.clientDuration, err = m.Float64Histogram("http.client.request.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of each try sent to an upstream endpoint, until its response body ended."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	note(err)
	x.clientActive, err = m.Int64ObservableUpDownCounter("http.client.active_requests", metric.WithUnit("{request}"),
		metric.WithDescription("Tries in flight to an upstream endpoint."))
	note(err)
	if len(e) == 0 {
		_, err = m.RegisterCallback(x.observeActive, x.serverActive, x.clientActive)
		note(err)
	}
	x.transitions, err = m.Int64Counter("sidemesh.endpoint.breaker.transitions", metric.WithUnit("{transition}"),
		metric.WithDescription("Circuit breaker state changes, by the state entered."))
	note(err)
	x.ejections, err = m.Int64Counter("sidemesh.endpoint.ejections", metric.WithUnit("{ejection}"),
		metric.WithDescription("Outlier ejections of an endpoint."))
	note(err)
	x.denials, err = m.Int64Counter("sidemesh.policy.denials", metric.WithUnit("{request}"),
		metric.WithDescription("Requests and connections an authorization policy denied (the inbound listener's, or the edge's edge.policy), by the rule that decided."))
	note(err)
	x.tcpConns, err = m.Int64Counter("sidemesh.tcp.connections", metric.WithUnit("{connection}"),
		metric.WithDescription("TCP connections proxied to an upstream, by endpoint, counted when they end; error.type says why one failed."))
	note(err)
	x.tcpActive, err = m.Int64UpDownCounter("sidemesh.tcp.active_connections", metric.WithUnit("{connection}"),
		metric.WithDescription("TCP connections open to an upstream now."))
	note(err)
	x.tcpBytes, err = m.Int64Counter("sidemesh.tcp.io", metric.WithUnit("By"),
		metric.WithDescription("Bytes proxied over TCP connections to an upstream: transmit toward the endpoint, receive from it."))
	note(err)
	if len(e) > 0 {
		return nil, fmt.Errorf("telemetry: creating instruments: %v", e)
	}
	return &x, nil
}

// series is the attribute set of one series as the instruments take it:
// opt for any call, and add and rec, the same option as the one-element
// slices Add and Record are passed. A variadic call through an interface
// allocates its slice on every call; passing one built once allocates
// nothing. Immutable.
type series struct {
	opt metric.MeasurementOption
	add []metric.AddOption
	rec []metric.RecordOption
}

func newSeries(kv []attribute.KeyValue) *series {
	o := metric.WithAttributeSet(attribute.NewSet(kv...))
	return &series{opt: o, add: []metric.AddOption{o}, rec: []metric.RecordOption{o}}
}

// set returns the cached series of k, building its attributes with build
// the first time.
func (m *Metrics) set(k seriesKey, build func() []attribute.KeyValue) *series {
	if s, ok := m.sets.Load(k); ok {
		return s.(*series)
	}
	s := newSeries(build())
	if m.cached.Load() >= maxCachedSeries {
		return s
	}
	if prev, loaded := m.sets.LoadOrStore(k, s); loaded {
		return prev.(*series)
	}
	m.cached.Add(1)
	return s
}

// knownMethods are the methods the semantic conventions name; any other
// is recorded as _OTHER, so a client cannot create series at will.
var knownMethods = map[string]bool{
	"GET": true, "HEAD": true, "POST": true, "PUT": true, "DELETE": true,
	"CONNECT": true, "OPTIONS": true, "TRACE": true, "PATCH": true,
}

// methodName returns method, or _OTHER for a method outside the standard
// set.
func methodName(method string) string {
	if knownMethods[method] {
		return method
	}
	return "_OTHER"
}

// observeActive reports the requests and tries in flight.
func (m *Metrics) observeActive(_ context.Context, ob metric.Observer) error {
	m.servers.Range(func(_, v any) bool {
		s := v.(*serverSeries)
		ob.ObserveInt64(m.serverActive, s.inflight.Load(), s.active.opt)
		return true
	})
	m.endpoints.Range(func(_, v any) bool {
		s := v.(*endpointSeries)
		ob.ObserveInt64(m.clientActive, s.inflight.Load(), s.active.opt)
		return true
	})
	return nil
}

// serverStart counts a request a listener began serving; serverEnd
// records its end, with its status (0 when no response was written).
func (m *Metrics) serverStart(listener, service string) {
	if m == nil {
		return
	}
	m.server(listener, service).inflight.Add(1)
}

func (m *Metrics) serverActiveSeries(listener, service string) *series {
	return m.set(seriesKey{kind: seriesServerActive, a: listener, b: service}, func() []attribute.KeyValue {
		return []attribute.KeyValue{KeyListener.String(listener), KeyService.String(service)}
	})
}

func (m *Metrics) serverEnd(ctx context.Context, listener, service, method string, status int, d time.Duration) {
	if m == nil {
		return
	}
	srv := m.server(listener, service)
	srv.inflight.Add(-1)
	srv.stats.record(status, d)
	method = methodName(method)
	m.serverDuration.Record(ctx, d.Seconds(), m.set(seriesKey{kind: seriesServer, a: listener, b: service, method: method, status: status}, func() []attribute.KeyValue {
		kv := []attribute.KeyValue{KeyListener.String(listener), KeyService.String(service), keyMethod.String(method)}
		if status > 0 {
			kv = append(kv, keyStatus.Int(status))
		}
		if status >= 500 || status == 0 {
			kv = append(kv, keyErrorType.String(errorType(status)))
		}
		return kv
	}).rec...)
}

// errorType is error.type for a status: the status code as text, or
// _OTHER when no response was written.
func errorType(status int) string {
	if status == 0 {
		return "_OTHER"
	}
	return strconv.Itoa(status)
}

// endpointAttrs returns server.address and server.port of a "host:port".
func endpointAttrs(addr string) []attribute.KeyValue {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return []attribute.KeyValue{keyServerAddr.String(addr)}
	}
	p, _ := strconv.Atoi(port)
	return []attribute.KeyValue{keyServerAddr.String(host), keyServerPort.Int(p)}
}

// endpointKey identifies an endpointSeries.
type endpointKey struct{ upstream, endpoint string }

// endpointSeries counts the tries in flight to one endpoint of an
// upstream.
type endpointSeries struct {
	active   *series
	inflight atomic.Int64
}

// endpoint returns the series of upstream's endpoint, creating it the
// first time. Past maxCachedSeries (endpoints coming and going for
// weeks), a new endpoint's series is not kept, and its tries in flight
// are not reported.
func (m *Metrics) endpoint(upstream, endpoint string) *endpointSeries {
	k := endpointKey{upstream, endpoint}
	if s, ok := m.endpoints.Load(k); ok {
		return s.(*endpointSeries)
	}
	s := &endpointSeries{active: m.set(seriesKey{kind: seriesClientActive, a: upstream, b: endpoint}, func() []attribute.KeyValue {
		return append([]attribute.KeyValue{KeyUpstream.String(upstream)}, endpointAttrs(endpoint)...)
	})}
	if m.endpointCount.Load() >= maxCachedSeries {
		return s
	}
	if prev, loaded := m.endpoints.LoadOrStore(k, s); loaded {
		return prev.(*endpointSeries)
	}
	m.endpointCount.Add(1)
	return s
}

// clientStart counts a try to endpoint as in flight, in the series it
// returns; clientEnd records the try's end.
func (m *Metrics) clientStart(upstream, endpoint string) *endpointSeries {
	if m == nil {
		return nil
	}
	s := m.endpoint(upstream, endpoint)
	s.inflight.Add(1)
	return s
}

func (m *Metrics) clientEnd(ctx context.Context, es *endpointSeries, upstream, endpoint, method string, status int, errKind string, d time.Duration) {
	if m == nil {
		return
	}
	es.inflight.Add(-1)
	method = methodName(method)
	m.clientDuration.Record(ctx, d.Seconds(), m.set(seriesKey{kind: seriesClient, a: upstream, b: endpoint, method: method, status: status, errorTyp: errKind}, func() []attribute.KeyValue {
		kv := append([]attribute.KeyValue{KeyUpstream.String(upstream), keyMethod.String(method)}, endpointAttrs(endpoint)...)
		if status > 0 {
			kv = append(kv, keyStatus.Int(status))
		}
		switch {
		case errKind != "":
			kv = append(kv, keyErrorType.String(errKind))
		case status >= 400:
			kv = append(kv, keyErrorType.String(strconv.Itoa(status)))
		}
		return kv
	}).rec...)
}

func (m *Metrics) upstreamSeries(upstream string) *series {
	return m.set(seriesKey{kind: seriesUpstream, a: upstream}, func() []attribute.KeyValue {
		return []attribute.KeyValue{KeyUpstream.String(upstream)}
	})
}

// upstreamCounters returns the retry counters of upstream, creating them
// the first time; nil for a nil m.
func (m *Metrics) upstreamCounters(upstream string) *upstreamCounters {
	if m == nil {
		return nil
	}
	return m.upstreams.get(upstream, true)
}

// BreakerTransition counts an endpoint's breaker entering state (closed,
// half-open or open).
func (m *Metrics) BreakerTransition(upstream, endpoint, state string) {
	if m == nil {
		return
	}
	m.transitions.Add(context.Background(), 1, m.set(seriesKey{kind: seriesEndpointState, a: upstream, b: endpoint, c: state}, func() []attribute.KeyValue {
		return []attribute.KeyValue{KeyUpstream.String(upstream), KeyEndpoint.String(endpoint), KeyBreakerState.String(state)}
	}).add...)
}

// Ejection counts an outlier ejection of endpoint.
func (m *Metrics) Ejection(upstream, endpoint string) {
	if m == nil {
		return
	}
	m.ejections.Add(context.Background(), 1, m.set(seriesKey{kind: seriesEndpoint, a: upstream, b: endpoint}, func() []attribute.KeyValue {
		return []attribute.KeyValue{KeyUpstream.String(upstream), KeyEndpoint.String(endpoint)}
	}).add...)
}

// PolicyDenial counts a request or connection denied by rule (the rule's
// name, "default" for the default decision, or the check that failed
// before any rule: no_certificate, no_identity, bad_path).
func (m *Metrics) PolicyDenial(rule string) {
	if m == nil {
		return
	}
	m.denials.Add(context.Background(), 1, m.set(seriesKey{kind: seriesRule, a: rule}, func() []attribute.KeyValue {
		return []attribute.KeyValue{KeyPolicyRule.String(rule)}
	}).add...)
}

func (m *Metrics) tcpStart(upstream string) {
	if m != nil {
		m.tcpActive.Add(context.Background(), 1, m.upstreamSeries(upstream).add...)
	}
}

func (m *Metrics) tcpEnd(upstream, endpoint, errKind string, sent, received int64) {
	if m == nil {
		return
	}
	ctx := context.Background()
	m.tcpActive.Add(ctx, -1, m.upstreamSeries(upstream).add...)
	m.tcpConns.Add(ctx, 1, m.set(seriesKey{kind: seriesTCP, a: upstream, b: endpoint, errorTyp: errKind}, func() []attribute.KeyValue {
		kv := []attribute.KeyValue{KeyUpstream.String(upstream)}
		if endpoint != "" {
			kv = append(kv, KeyEndpoint.String(endpoint))
		}
		if errKind != "" {
			kv = append(kv, keyErrorType.String(errKind))
		}
		return kv
	}).add...)
	for _, d := range []struct {
		dir string
		n   int64
	}{{"transmit", sent}, {"receive", received}} {
		if d.n == 0 {
			continue
		}
		m.tcpBytes.Add(ctx, d.n, m.set(seriesKey{kind: seriesTCPIO, a: upstream, b: endpoint, c: d.dir}, func() []attribute.KeyValue {
			return []attribute.KeyValue{KeyUpstream.String(upstream), KeyEndpoint.String(endpoint), keyIODirection.String(d.dir)}
		}).add...)
	}
}
