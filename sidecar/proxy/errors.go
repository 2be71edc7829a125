package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
)

// ErrorKind classifies why a proxied request got no response from its
// upstream. It is sent to the client in the X-Sidemesh-Error header, so a
// caller can tell a proxy error from an application error.
type ErrorKind string

// Error kinds and the statuses they map to.
const (
	KindNoRoute        ErrorKind = "no_route"        // 502: no upstream matches
	KindNoEndpoints    ErrorKind = "no_endpoints"    // 503: upstream has no endpoint
	KindConnectFailure ErrorKind = "connect_failure" // 503: dialing the endpoint failed
	KindTimeout        ErrorKind = "timeout"         // 504: no response headers in time
	KindReset          ErrorKind = "reset"           // 502: connection broke mid-exchange
	KindProtocol       ErrorKind = "protocol_error"  // 502: anything else from the transport
)

// headerProxyError names the response header carrying an ErrorKind.
const headerProxyError = "X-Sidemesh-Error"

// Status returns the HTTP status a client gets for the kind.
func (k ErrorKind) Status() int {
	switch k {
	case KindNoEndpoints, KindConnectFailure:
		return http.StatusServiceUnavailable
	case KindTimeout:
		return http.StatusGatewayTimeout
	default:
		return http.StatusBadGateway
	}
}

// UpstreamError is the error a proxied request fails with when it got no
// response from its upstream.
type UpstreamError struct {
	Kind     ErrorKind
	Upstream string
	// Endpoint is the "host:port" tried, empty when none was picked.
	Endpoint string
	Err      error
}

func (e *UpstreamError) Error() string {
	if e.Endpoint == "" {
		return fmt.Sprintf("upstream %q: %v", e.Upstream, e.Err)
	}
	return fmt.Sprintf("upstream %q endpoint %s: %v", e.Upstream, e.Endpoint, e.Err)
}

func (e *UpstreamError) Unwrap() error { return e.Err }

// errTimeout is the cancellation cause when an upstream's timeout expires.
var errTimeout = errors.New("no response headers within the upstream timeout")

// classify maps a transport error to an ErrorKind. ctx is the request's
// context, whose cause tells our timeout from a client that hung up.
func classify(ctx context.Context, err error) ErrorKind {
	if errors.Is(err, balancer.ErrNoEndpoints) {
		return KindNoEndpoints
	}
	if cause := context.Cause(ctx); errors.Is(cause, errTimeout) || errors.Is(cause, errPerTryTimeout) {
		return KindTimeout
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return KindConnectFailure
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return KindConnectFailure
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return KindTimeout
	}
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return KindReset
	}
	return KindProtocol
}

// writeError answers a request that could not be proxied. The body is one
// line of plain text meant for a human reading a curl output or a log.
func writeError(w http.ResponseWriter, kind ErrorKind, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(headerProxyError, string(kind))
	w.WriteHeader(kind.Status())
	fmt.Fprintf(w, "sidemesh: %s\n", msg)
}
