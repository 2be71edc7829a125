package telemetry

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Exchange collects what the layers of the request path learn about one
// request, for its server span, metrics and access log line. The server
// handler (Handler) puts one in the request's context; the proxy and the
// policy check fill it in. It belongs to the request's goroutine, except
// for fields the proxy sets before the response is written.
type Exchange struct {
	// Upstream is the service the request was proxied to.
	Upstream string
	// Endpoint is the "host:port" of the last try.
	Endpoint string
	// Tries counts the tries sent to endpoints.
	Tries int
	// ErrorKind is the proxy's classification of a failure
	// (connect_failure, timeout, no_endpoints...); empty on success.
	ErrorKind string
	// Peer is the caller's verified SPIFFE ID, with mutual TLS.
	Peer string
	// PolicyRule names the authorization rule that decided, and
	// PolicyAllowed its decision.
	PolicyRule    string
	PolicyAllowed bool
	// RequestID is the X-Request-Id the request carried or was given.
	RequestID string
}

type exchangeKey struct{}

// ExchangeFrom returns the Exchange of the request ctx belongs to, or nil
// when the request did not come through Handler.
func ExchangeFrom(ctx context.Context) *Exchange {
	ex, _ := ctx.Value(exchangeKey{}).(*Exchange)
	return ex
}

// ServerOptions describe a listener for Handler.
type ServerOptions struct {
	// Listener names the listener: inbound or outbound.
	Listener string
	// Service returns the service a request is for: the local service on
	// inbound, the upstream the Host header names on outbound. It must
	// return only names from the config (or "unknown"), since each one
	// becomes a metric series.
	Service func(*http.Request) string
}

// Handler wraps next with the server side of telemetry: it continues the
// caller's W3C trace (or starts one) in a server span, counts the request
// in flight and records its duration, and writes its access log line.
// With tracing off the trace headers are left as they are, for the next
// hop. A nil t returns next unchanged.
func (t *Telemetry) Handler(next http.Handler, o ServerOptions) http.Handler {
	if t == nil {
		return next
	}
	return &serverHandler{t: t, next: next, o: o}
}

type serverHandler struct {
	t    *Telemetry
	next http.Handler
	o    ServerOptions
}

// served is the per-request state of serverHandler, allocated once.
type served struct {
	ex   Exchange
	sw   statusWriter
	body countingBody
}

func (h *serverHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t := h.t
	start := time.Now()
	service := h.o.Service(r)
	st := &served{sw: statusWriter{ResponseWriter: w}}
	ex, sw := &st.ex, &st.sw
	ctx := context.WithValue(r.Context(), exchangeKey{}, ex)

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
			KeyListener.String(h.o.Listener),
			KeyService.String(service),
		)
		if methodName(r.Method) != r.Method {
			span.SetAttributes(keyMethodOrig.String(r.Method))
		}
	}
	t.metrics.serverStart(ctx, h.o.Listener, service)
	if t.access != nil && r.Body != nil && r.Body != http.NoBody {
		st.body.ReadCloser = r.Body
		r.Body = &st.body
	}
	defer func() {
		// A panic in next (http.ErrAbortHandler from the reverse proxy
		// when the client goes away mid-body) still ends the span and
		// counts the request; the server handles the panic itself.
		d := time.Since(start)
		t.metrics.serverEnd(ctx, h.o.Listener, service, r.Method, sw.status, d)
		if span != nil {
			endServerSpan(span, sw.status, ex)
		}
		if t.access != nil {
			sc := trace.SpanContextFromContext(ctx)
			if span == nil {
				// Tracing is off: log the caller's trace, if any, which
				// passes through to the next hop as it came.
				sc = trace.SpanContextFromContext(t.propagator.Extract(context.Background(), propagation.HeaderCarrier(r.Header)))
			}
			t.logAccess(ctx, accessEntry{
				listener: h.o.Listener, service: service, r: r, status: sw.status,
				bytesIn: st.body.n, bytesOut: sw.bytes, duration: d, ex: ex, span: sc,
			})
		}
	}()
	h.next.ServeHTTP(sw, r.WithContext(ctx))
}

// endServerSpan sets the span's outcome and ends it. A server span is an
// error only for 5xx (semantic conventions: 4xx are the client's).
func endServerSpan(span trace.Span, status int, ex *Exchange) {
	if !span.IsRecording() {
		span.End()
		return
	}
	if status > 0 {
		span.SetAttributes(keyStatus.Int(status))
	}
	if ex.Upstream != "" {
		span.SetAttributes(KeyUpstream.String(ex.Upstream))
	}
	if ex.Tries > 1 {
		span.SetAttributes(keyResendCount.Int(ex.Tries - 1))
	}
	if ex.PolicyRule != "" {
		decision := "deny"
		if ex.PolicyAllowed {
			decision = "allow"
		}
		span.SetAttributes(KeyPolicyRule.String(ex.PolicyRule), keyPolicyDecision.String(decision))
	}
	if ex.Peer != "" {
		span.SetAttributes(keyPeerIdentity.String(ex.Peer))
	}
	switch {
	case ex.ErrorKind != "":
		span.SetAttributes(keyErrorType.String(ex.ErrorKind))
		span.SetStatus(codes.Error, ex.ErrorKind)
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

// statusWriter records the status and body size of a response. It
// unwraps for http.ResponseController, so flushing, hijacking and
// full-duplex reach the server's writer.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	// The first final status counts: 1xx interim responses (100
	// Continue, 103 Early Hints) are not, except 101, which is final for
	// an upgrade.
	if w.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

// Flush is here as well as through Unwrap because httputil.ReverseProxy
// and others test for http.Flusher directly.
func (w *statusWriter) Flush() {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack takes over the connection, for a protocol upgrade: the reverse
// proxy hijacks to write the endpoint's 101 itself, so the status is
// recorded as 101 (Switching Protocols) here.
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil && w.status == 0 {
		w.status = http.StatusSwitchingProtocols
	}
	return conn, brw, err
}

// Unwrap returns the server's writer, for http.ResponseController.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// remoteHost returns the host of a "host:port" remote address.
func remoteHost(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// countingBody counts the request body bytes read.
type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}
