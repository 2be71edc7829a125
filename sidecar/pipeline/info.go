package pipeline

import (
	"context"
	"time"
)

// Info is what the steps of the request path learn about one request,
// resolved once and read by the rest: the observer's span, metrics and
// access log line, later filters, and the proxy. The listener puts one in
// every request's context (InfoFrom). It belongs to the request's handler
// goroutine: the proxy calls its transport synchronously, so every writer
// runs there.
type Info struct {
	// Listener names the listener the request arrived on: inbound,
	// outbound, or upstream/<name> for a dedicated listener.
	Listener string
	// Route is the name of the route the router chose; empty when none
	// matched.
	Route string
	// Service is the service the request is for, as a metric label: a
	// configured name, or "unknown" for a request that matched nothing, so
	// that no client can create series.
	Service string
	// Start is when the listener received the request.
	Start time.Time

	// RequestID is the X-Request-Id the request carried or was given.
	RequestID string
	// Peer is the caller's verified SPIFFE ID (mutual TLS).
	Peer string
	// PolicyRule names the authorization rule that decided, and
	// PolicyAllowed its decision; empty when no policy ran. The inbound
	// listener's policy and the edge's (edge.policy) set them.
	PolicyRule    string
	PolicyAllowed bool

	// Upstream is the service the request was proxied to.
	Upstream string
	// Endpoint is the "host:port" of the last try, and EndpointID its
	// discovery ID.
	Endpoint, EndpointID string

	// Affinity is what a sticky session asks of the balancer: the ID of
	// the endpoint the request should reach, whether it may go elsewhere
	// (AffinityStrict), and the key its replacement is chosen by
	// (RebindKey; see balancer.Request). Backend names the service the
	// session belongs to, for a route that splits between services.
	Affinity       string
	AffinityStrict bool
	RebindKey      uint64
	Backend        string
	// Principal is who an edge route's authentication found the caller
	// to be: "jwt:<provider>:<subject>" or "apikey:<set>:<id>"; empty
	// when the route has none.
	Principal string
	// Claims are the claims of the caller's verified JWT, as
	// encoding/json decodes them; non-nil exactly when an edge route's
	// auth.jwt verified a token. They are shared with the token cache:
	// read only.
	Claims map[string]any
	// APIKeySet and APIKeyID name the caller's verified API key (an
	// edge route's auth.api_key); empty without one.
	APIKeySet, APIKeyID string
	// Sticky says what the sticky session filter did, for telemetry:
	// "hit", "new", "rebind", "miss" (no usable session), or empty on a
	// route without sticky sessions.
	Sticky string
	// Tries counts the tries sent to endpoints.
	Tries int

	// Err is the error the request was answered with in place of an
	// upstream response; nil when there was none.
	Err *Error
	// BodyErr is set by the listener when the request body could not be
	// read to its end (malformed, stalled, cut off): a failure of the
	// client's, after which the connection is closed.
	BodyErr *BodyError

	// Status, BytesIn and BytesOut are set by the listener when the
	// exchange is over, for Observer.End: the final status (0 when
	// nothing was written) and the body bytes read and written.
	Status            int
	BytesIn, BytesOut int64
}

type infoKey struct{}

// InfoFrom returns the Info of the request ctx belongs to; nil for a
// request that did not come through a Listener.
func InfoFrom(ctx context.Context) *Info {
	info, _ := ctx.Value(infoKey{}).(*Info)
	return info
}

// WithInfo returns ctx carrying info. Listeners do this for every request;
// code that calls a Handler outside a listener (tests, a sub-request) may
// too.
func WithInfo(ctx context.Context, info *Info) context.Context {
	return context.WithValue(ctx, infoKey{}, info)
}
