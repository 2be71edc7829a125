package pipeline

import (
	"errors"
	"fmt"
	"net/http"
)

// Kind classifies why sidemesh answered a request itself instead of
// passing on a response from upstream. It is sent to the client in the
// X-Sidemesh-Error header (and to gRPC callers in grpc-message), so a
// caller can tell a proxy's answer from the application's, and it is the
// error.type of metrics and spans.
type Kind string

// Error kinds. The status each one is answered with is set where the error
// is made; the comments give the usual one.
const (
	KindNoRoute         Kind = "no_route"        // 502: nothing is configured for the request
	KindNoEndpoints     Kind = "no_endpoints"    // 503: the upstream has no endpoint right now
	KindConnectFailure  Kind = "connect_failure" // 503: connecting to the chosen endpoint failed
	KindTimeout         Kind = "timeout"         // 504: no response headers in time
	KindReset           Kind = "reset"           // 502: the connection broke before the response headers
	KindProtocol        Kind = "protocol_error"  // 502: anything else the transport reported
	KindDenied          Kind = "denied"          // 403: the authorization policy refused the caller
	KindBadPath         Kind = "bad_path"        // 400: a path that could be read more than one way
	KindBadRequest      Kind = "bad_request"     // 400: a request sidemesh refuses to pass on
	KindMisdirected     Kind = "misdirected"     // 421: a Host another certificate serves than the connection's
	KindUnauthenticated Kind = "unauthenticated" // 401: a route needs a credential the request lacks or that does not verify
	KindRateLimited     Kind = "rate_limited"    // 429: a rate limit of the route refused the request
)

// HeaderError names the response header that carries a Kind.
const HeaderError = "X-Sidemesh-Error"

// Error is an answer sidemesh gives in place of the upstream's: the status,
// the kind, and a one-line message meant for the person reading a curl
// output or a log. Err, when set, is the underlying cause.
type Error struct {
	Status int
	Kind   Kind
	Msg    string
	Err    error
}

// Errorf returns an *Error with a formatted message.
func Errorf(status int, kind Kind, format string, args ...any) *Error {
	return &Error{Status: status, Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	if e.Err != nil && e.Msg == "" {
		return e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// AsError returns err as an *Error; an error of another type becomes a 502
// protocol_error carrying it. Nil stays nil.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Status: http.StatusBadGateway, Kind: KindProtocol, Msg: err.Error(), Err: err}
}
