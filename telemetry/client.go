package telemetry

import (
	"context"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Span attributes of client tries, next to the semantic conventions'.
const (
	keyBalancer   = attribute.Key("sidemesh.balancer.policy")
	keyEndpointID = attribute.Key("sidemesh.endpoint.id")
)

// Client is the telemetry of one upstream's outbound tries. Safe for
// concurrent use; a nil *Client records nothing.
type Client struct {
	t        *Telemetry
	upstream string
	policy   string
	counters *upstreamCounters // shared by every Client of the upstream
}

// Client returns the telemetry of the tries sent to upstream, balanced
// by policy. Clients of one upstream name share its retry counters, so
// they keep counting across reloads. Nil for a nil t.
func (t *Telemetry) Client(upstream, policy string) *Client {
	if t == nil {
		return nil
	}
	return &Client{t: t, upstream: upstream, policy: policy, counters: t.metrics.upstreamCounters(upstream)}
}

// TryInfo describes one try.
type TryInfo struct {
	// Endpoint is the endpoint's "host:port", EndpointID its ID.
	Endpoint, EndpointID string
	// Attempt is 0 for the first try, 1 for the first retry, and so on.
	Attempt int
	// Breaker is the endpoint's breaker state when it was picked.
	Breaker string
	// Scheme is the URL scheme the try is sent with: http or https.
	Scheme string
}

// Try is one outbound try in progress. The zero Try (from a nil Client)
// records nothing. End it exactly once.
type Try struct {
	c        *Client
	ctx      context.Context
	span     trace.Span
	start    time.Time
	endpoint string
	method   string
	series   *endpointSeries // nil without metrics
}

// StartTry starts a try of req to an endpoint: a client span, child of
// the server span in ctx, whose context is injected into req's headers
// (W3C traceparent, tracestate and baggage) for the next hop, and the
// in-flight count of the endpoint.
func (c *Client) StartTry(ctx context.Context, req *http.Request, info TryInfo) Try {
	if c == nil {
		return Try{}
	}
	t := c.t
	try := Try{c: c, ctx: ctx, start: time.Now(), endpoint: info.Endpoint, method: req.Method}
	if t.tracer != nil {
		var sctx context.Context
		sctx, try.span = t.tracer.Start(ctx, spanName(req.Method), trace.WithSpanKind(trace.SpanKindClient), trace.WithTimestamp(try.start))
		t.propagator.Inject(sctx, propagation.HeaderCarrier(req.Header))
	}
	if try.span != nil && try.span.IsRecording() {
		// Attributes are built only for sampled spans.
		attrs := append(endpointAttrs(info.Endpoint),
			keyMethod.String(methodName(req.Method)),
			keyURLFull.String(info.Scheme+"://"+info.Endpoint+req.URL.EscapedPath()),
			keyPeerService.String(c.upstream),
			keyBalancer.String(c.policy),
			keyEndpointID.String(info.EndpointID),
			KeyBreakerState.String(info.Breaker),
		)
		if info.Attempt > 0 {
			attrs = append(attrs, keyResendCount.Int(info.Attempt))
		}
		try.span.SetAttributes(attrs...)
	}
	try.series = t.metrics.clientStart(c.upstream, info.Endpoint)
	return try
}

// End records the try's outcome: the response status, or errKind (the
// proxy's failure classification) when there was no response. A client
// span is an error for a failure and for any 4xx or 5xx.
func (tr Try) End(status int, errKind string) {
	if tr.c == nil {
		return
	}
	tr.c.t.metrics.clientEnd(tr.ctx, tr.series, tr.c.upstream, tr.endpoint, tr.method, status, errKind, time.Since(tr.start))
	if tr.span == nil {
		return
	}
	if !tr.span.IsRecording() {
		tr.span.End()
		return
	}
	if status > 0 {
		tr.span.SetAttributes(keyStatus.Int(status))
	}
	switch {
	case errKind != "":
		tr.span.SetAttributes(keyErrorType.String(errKind))
		tr.span.SetStatus(codes.Error, errKind)
	case status >= 400:
		tr.span.SetAttributes(keyErrorType.String(errorType(status)))
		tr.span.SetStatus(codes.Error, "")
	}
	tr.span.End()
}

// Retry counts a retry of the upstream. It does not allocate.
func (c *Client) Retry() {
	if c != nil {
		c.counters.retries.Add(1)
	}
}

// RetryBudgetExhausted counts a retry the upstream's budget refused. It
// does not allocate.
func (c *Client) RetryBudgetExhausted() {
	if c != nil {
		c.counters.budgetOut.Add(1)
	}
}

// Conn is one proxied TCP connection in progress. The zero Conn (from a
// nil Client) records nothing. End it exactly once.
type Conn struct{ c *Client }

// StartConn counts a TCP connection to the upstream as open.
func (c *Client) StartConn() Conn {
	if c == nil {
		return Conn{}
	}
	c.t.metrics.tcpStart(c.upstream)
	return Conn{c: c}
}

// End counts the connection as ended: to endpoint ("" when none could be
// picked), failed with errKind ("" for a connection that ran its course),
// after sent bytes toward the endpoint and received bytes from it.
func (cn Conn) End(endpoint, errKind string, sent, received int64) {
	if cn.c != nil {
		cn.c.t.metrics.tcpEnd(cn.c.upstream, endpoint, errKind, sent, received)
	}
}
