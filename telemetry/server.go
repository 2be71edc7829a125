package telemetry

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// ServerRecord is what the server side of telemetry records about one
// served request when it ends: its span's last attributes, its metrics and
// its access log line.
type ServerRecord struct {
	// Listener and Service are the labels BeginServer was given.
	Listener, Service string
	// Route names the route that served the request (the span's
	// http.route); empty when none did.
	Route string
	// Start is when the request arrived.
	Start time.Time
	// Status is the response status; 0 when nothing was written (the
	// client went away, or the handler panicked).
	Status int
	// BytesIn and BytesOut count the request and response body bytes.
	BytesIn, BytesOut int64
	// Upstream is the service the request was proxied to, Endpoint the
	// "host:port" of its last try, Tries how many tries were sent.
	Upstream, Endpoint string
	Tries              int
	// ErrorKind classifies the failure the request was answered with
	// (connect_failure, timeout, denied...); empty on success.
	ErrorKind string
	// Peer is the caller's verified SPIFFE ID.
	Peer string
	// PolicyRule names the authorization rule that decided, and
	// PolicyAllowed its decision.
	PolicyRule    string
	PolicyAllowed bool
	// RequestID is the request's X-Request-Id.
	RequestID string
	// Sticky is what the route's sticky sessions did: hit, new, rebind,
	// miss; empty on a route without them.
	Sticky string
	// Principal is who an edge route authenticated the caller as
	// ("jwt:<provider>:<subject>"); empty when none.
	Principal string
}

// BeginServer starts the server side of one request: it continues the
// caller's W3C trace (or starts one) in a server span carried by the
// returned context, and counts the request in flight under listener and
// service. service must be a configured name (or "unknown"): each one
// becomes a metric series. With tracing off the trace headers are left as
// they are, for the next hop. End it with EndServer, exactly once. A nil
// t returns ctx.
func (t *Telemetry) BeginServer(ctx context.Context, r *http.Request, listener, service string, start time.Time) context.Context {
	if t == nil {
		return ctx
	}
	var span trace.Span
	if t.tracer != nil {
		ctx = t.propagator.Extract(ctx, propagation.HeaderCarrier(r.Header))
		ctx, span = t.tracer.Start(ctx, spanName(r.Method), trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(start))
	}
	if span != nil && span.IsRecording() {
		// Attributes are built only for sampled spans: the sampler
		// (parent-based ratio) does not look at them.
		span.SetAttributes(
			keyMethod.String(methodName(r.Method)),
			keyURLPath.String(r.URL.Path),
			keyURLScheme.String(scheme(r)),
			keyServerAddr.String(r.Host),
			keyClientAddr.String(remoteHost(r.RemoteAddr)),
			keyProtoVersion.String(protoVersion(r)),
			keyUserAgent.String(r.UserAgent()),
			KeyListener.String(listener),
			KeyService.String(service),
		)
		if methodName(r.Method) != r.Method {
			span.SetAttributes(keyMethodOrig.String(r.Method))
		}
	}
	t.metrics.serverStart(listener, service)
	return ctx
}

// EndServer ends what BeginServer began, with ctx the context it returned:
// the request's duration and status in metrics, the span's outcome, and
// the access log line.
func (t *Telemetry) EndServer(ctx context.Context, r *http.Request, rec ServerRecord) {
	if t == nil {
		return
	}
	d := time.Since(rec.Start)
	t.metrics.serverEnd(ctx, rec.Listener, rec.Service, r.Method, rec.Status, d)
	if t.tracer != nil {
		endServerSpan(trace.SpanFromContext(ctx), &rec)
	}
	if t.access != nil {
		sc := trace.SpanContextFromContext(ctx)
		if t.tracer == nil {
			// Tracing is off: log the caller's trace, if any, which
			// passes through to the next hop as it came.
			sc = trace.SpanContextFromContext(t.propagator.Extract(context.Background(), propagation.HeaderCarrier(r.Header)))
		}
		t.logAccess(ctx, r, &rec, d, sc)
	}
}

// endServerSpan sets the span's outcome and ends it. A server span is an
// error only for 5xx (semantic conventions: 4xx are the client's).
func endServerSpan(span trace.Span, rec *ServerRecord) {
	if !span.IsRecording() {
		span.End()
		return
	}
	status := rec.Status
	if status > 0 {
		span.SetAttributes(keyStatus.Int(status))
	}
	if rec.Route != "" {
		span.SetAttributes(keyRoute.String(rec.Route))
	}
	if rec.Principal != "" {
		span.SetAttributes(keyPrincipal.String(rec.Principal))
	}
	if rec.Sticky != "" {
		span.SetAttributes(keySticky.String(rec.Sticky))
	}
	if rec.Upstream != "" {
		span.SetAttributes(KeyUpstream.String(rec.Upstream))
	}
	if rec.Tries > 1 {
		span.SetAttributes(keyResendCount.Int(rec.Tries - 1))
	}
	if rec.PolicyRule != "" {
		decision := "deny"
		if rec.PolicyAllowed {
			decision = "allow"
		}
		span.SetAttributes(KeyPolicyRule.String(rec.PolicyRule), keyPolicyDecision.String(decision))
	}
	if rec.Peer != "" {
		span.SetAttributes(keyPeerIdentity.String(rec.Peer))
	}
	switch {
	case rec.ErrorKind != "" && (status >= 500 || status == 0):
		span.SetAttributes(keyErrorType.String(rec.ErrorKind))
		span.SetStatus(codes.Error, rec.ErrorKind)
	case rec.ErrorKind != "":
		// A refusal (403, 400) is the client's error, not the server's.
		span.SetAttributes(keyErrorType.String(rec.ErrorKind))
	case status >= 500 || status == 0:
		span.SetAttributes(keyErrorType.String(errorType(status)))
		span.SetStatus(codes.Error, "")
	}
	span.End()
}

// spanName is the semantic conventions' span name without a route: the
// method, or HTTP for one outside the standard set.
func spanName(method string) string {
	if m := methodName(method); m != "_OTHER" {
		return m
	}
	return "HTTP"
}

func scheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	return "http"
}

func protoVersion(r *http.Request) string {
	switch r.ProtoMajor {
	case 2:
		return "2"
	case 3:
		return "3"
	}
	return "1." + strconv.Itoa(r.ProtoMinor)
}

// remoteHost returns the host of a "host:port" remote address.
func remoteHost(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}
