package proxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
	"github.com/sidemesh/sidemesh/telemetry"
)

// UpstreamOptions describe one upstream for NewUpstream.
type UpstreamOptions struct {
	// Name is the upstream's service name, used in errors and logs.
	Name string
	// Picker chooses the endpoint of each try. Required.
	Picker balancer.Picker
	// Transport carries requests to endpoints. Required. A Transport
	// built with TransportOptions.TLS, or an *http.Transport with a
	// TLSClientConfig, is sent https requests, so it connects with TLS;
	// any other RoundTripper is sent http requests.
	Transport http.RoundTripper
	// UpgradeTransport carries requests that ask for a protocol upgrade
	// (WebSocket); it must speak HTTP/1.1. Nil means Transport. Its
	// scheme is chosen as for Transport.
	UpgradeTransport http.RoundTripper
	// TryFilters wrap the transport for every try, TryFilters[0]
	// outermost: each sees one try's request, already addressed to its
	// endpoint, and its response or error. Nil means none.
	TryFilters []TryFilter
	// Timeout bounds the wait for response headers, over all tries. Once
	// they arrive, the body streams for as long as it takes. Zero means no
	// limit.
	Timeout time.Duration
	// Retry says which failed tries are retried. The zero value retries
	// nothing.
	Retry RetryPolicy
	// Logger receives proxy errors. Nil means slog.Default().
	Logger *slog.Logger
	// Telemetry records a client span and metrics per try. Nil records
	// nothing.
	Telemetry *telemetry.Client
}

// TryFilter wraps the transport of one try. Filters are composed once, in
// NewUpstream; the RoundTripper they return must be safe for concurrent
// use and keep http.RoundTripper's contract: a filter that changes the
// request changes a copy (r.Clone), since a retry sends the same request
// again. It passes on next's response or error (a filter that answers on
// its own bypasses the endpoint's accounting).
type TryFilter func(next http.RoundTripper) http.RoundTripper

// Upstream forwards HTTP requests to the endpoints of one service: a
// pipeline.Handler. Header copying, trailers, flushing and upgrades are
// httputil.ReverseProxy's; endpoint choice, retries and timeouts are its
// own. It sends the request's headers as the chain's filters left them
// (Hygiene, Forwarded, RequestID). Safe for concurrent use.
type Upstream struct {
	name    string
	picker  balancer.Picker
	rt      http.RoundTripper
	upgrade http.RoundTripper
	// scheme and upgradeScheme are the URL schemes rt and upgrade are
	// sent: "https" makes an http.Transport connect with TLS.
	scheme        string
	upgradeScheme string
	timeout       time.Duration
	retry         RetryPolicy
	log           *slog.Logger
	tel           *telemetry.Client
	proxy         *httputil.ReverseProxy
}

// NewUpstream returns an Upstream for o.
func NewUpstream(o UpstreamOptions) *Upstream {
	u := &Upstream{
		name:    o.Name,
		picker:  o.Picker,
		rt:      o.Transport,
		upgrade: o.UpgradeTransport,
		timeout: o.Timeout,
		retry:   o.Retry,
		log:     o.Logger,
		tel:     o.Telemetry,
	}
	if u.upgrade == nil {
		u.upgrade = u.rt
	}
	if u.log == nil {
		u.log = slog.Default()
	}
	u.scheme, u.upgradeScheme = schemeFor(u.rt), schemeFor(u.upgrade)
	for i := len(o.TryFilters) - 1; i >= 0; i-- {
		u.rt = o.TryFilters[i](u.rt)
		u.upgrade = o.TryFilters[i](u.upgrade)
	}
	u.proxy = &httputil.ReverseProxy{
		Rewrite:      u.rewrite,
		Transport:    (*upstreamTransport)(u),
		BufferPool:   sharedBuffers,
		ErrorHandler: u.handleError,
		ErrorLog:     slog.NewLogLogger(u.log.Handler(), slog.LevelDebug),
	}
	return u
}

// schemeFor returns the URL scheme requests sent through rt need: an
// http.Transport uses its TLSClientConfig only for https URLs.
func schemeFor(rt http.RoundTripper) string {
	if t, ok := rt.(*Transport); ok {
		rt = t.std
	}
	if t, ok := rt.(*http.Transport); ok && t.TLSClientConfig != nil {
		return "https"
	}
	return "http"
}

// Name returns the upstream's service name.
func (u *Upstream) Name() string { return u.name }

// ServeHTTP proxies r to one of the upstream's endpoints. It returns the
// error that kept the request from getting an upstream response, for the
// listener to render; nil once a response was passed on, or when the
// client went away (nobody is left to answer).
func (u *Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	info := pipeline.InfoFrom(r.Context())
	if info == nil {
		info = new(pipeline.Info)
		r = r.WithContext(pipeline.WithInfo(r.Context(), info))
	}
	info.Upstream = u.name
	if r.ProtoMajor == 1 && !isUpgrade(r.Header) {
		// Let the body stream both ways at once (bidirectional streaming
		// over HTTP/1.1); the default would block reads after the first
		// write. Fails only for hijacked or HTTP/2 requests. Upgrades do
		// not need it: a 101 hijacks the connection.
		if http.NewResponseController(w).EnableFullDuplex() == nil {
			// In full-duplex mode, a body left unread when the handler
			// returns (an upstream that failed or answered early) makes
			// the server panic on the connection's next request with
			// "invalid concurrent Body.Read call" and drop it
			// (golang.org/issue/68560). Closing the body here, before
			// the server finishes the response, avoids that.
			defer r.Body.Close()
		}
	}
	info.Err = nil
	u.proxy.ServeHTTP(w, r)
	if info.Err != nil {
		return info.Err
	}
	return nil
}

// rewrite prepares the outbound request. The endpoint and transport are
// chosen later, in RoundTrip, so that a retry can choose another; URL.Host
// and URL.Scheme are placeholders until then. The Host header keeps the
// name the caller used.
func (u *Upstream) rewrite(pr *httputil.ProxyRequest) {
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = u.name
	pr.Out.Host = pr.In.Host
	// Request.Clone gave pr.Out a copy of the trailer map, taken before
	// the body was read, so it holds the declared keys without values.
	// The server fills pr.In.Trailer in place when the body ends, which
	// is when the transport reads the trailers it sends: share the map.
	pr.Out.Trailer = pr.In.Trailer
	// httputil.ReverseProxy dropped the X-Forwarded-* headers from
	// pr.Out; send them as the Forwarded filter left them.
	for _, k := range forwardedHeaders {
		if v := pr.In.Header[k]; v != nil {
			pr.Out.Header[k] = v
		}
	}
}

// handleError records why the request got no upstream response, for
// ServeHTTP to return. httputil.ReverseProxy calls it synchronously.
func (u *Upstream) handleError(w http.ResponseWriter, r *http.Request, err error) {
	info := pipeline.InfoFrom(r.Context())
	if info != nil && info.BodyErr != nil {
		// The client's body failed; net/http may have cancelled the
		// request's context for it, but the client is still there.
		u.log.Debug("request body failed", "upstream", u.name, "err", info.BodyErr)
		info.Err = info.BodyErr.Answer()
		return
	}
	if r.Context().Err() != nil {
		// The client hung up: nobody is left to answer, and it is not the
		// upstream's fault.
		u.log.Debug("client went away", "upstream", u.name, "err", err)
		return
	}
	var e *pipeline.Error
	if !errors.As(err, &e) {
		// Not from RoundTrip: an upgrade the proxy could not complete.
		e = upstreamError(classify(r.Context(), err), u.name, "", err)
	}
	u.log.Warn("proxy error", "upstream", u.name, "kind", string(e.Kind), "method", r.Method, "path", r.URL.Path, "err", e.Msg)
	if info != nil {
		info.Err = e
	}
}

// upstreamTransport is the RoundTripper of an Upstream's ReverseProxy. It
// is a distinct type so Upstream does not expose RoundTrip.
type upstreamTransport Upstream

// RoundTrip sends req to an endpoint, and retries on another endpoint as
// the retry policy allows: one call of try per attempt. req is the
// private clone httputil.ReverseProxy made for this call, so setting its
// URL and Body does not affect the caller. The upstream's timeout bounds
// all tries until response headers arrive; a per-try timeout bounds each.
// Both are enforced by the one timer of each try (see tries.startTimer), so a
// request allocates a single context and timer, not one per timeout.
func (t *upstreamTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	u := (*Upstream)(t)
	if u.retry.Budget != nil {
		u.retry.Budget.Request()
	}
	x := tries{u: u, req: req, rt: u.rt, info: pipeline.InfoFrom(req.Context()), br: balancer.Request{HTTP: req}}
	if x.info == nil {
		x.info = new(pipeline.Info)
	}
	x.br.Affinity, x.br.Strict, x.br.RebindKey = x.info.Affinity, x.info.AffinityStrict, x.info.RebindKey
	x.info.Upstream = u.name
	if u.timeout > 0 {
		x.deadline = time.Now().Add(u.timeout)
	}

	req.URL.Scheme = u.scheme
	if isUpgrade(req.Header) {
		x.rt = u.upgrade
		req.URL.Scheme = u.upgradeScheme
	}
	x.attempts = u.retry.Attempts
	if x.attempts > 0 && !u.retry.RetryForwarded && req.Header[headerAttempt] != nil {
		x.attempts = 0 // a sidecar before this one retries already
	}
	body, err := newReplayBody(req, &u.retry)
	if err != nil {
		if be := x.info.BodyErr; be != nil {
			return nil, be.Answer()
		}
		return nil, upstreamError(pipeline.KindProtocol, u.name, "", fmt.Errorf("reading request body: %w", err))
	}
	x.body = body
	for attempt := 0; ; attempt++ {
		resp, retry, err := x.try(attempt)
		if retry {
			continue
		}
		if err != nil {
			return nil, err
		}
		return resp, nil
	}
}
