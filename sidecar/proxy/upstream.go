package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/telemetry"
)

// UpstreamOptions describe one upstream for NewUpstream.
type UpstreamOptions struct {
	// Name is the upstream's service name, used in errors and logs.
	Name string
	// Picker chooses the endpoint of each try. Required.
	Picker balancer.Picker
	// Transport carries requests to endpoints. Required. An
	// *http.Transport with a TLSClientConfig (NewTransport with
	// TransportOptions.TLS) is sent https requests, so it connects with
	// TLS; any other RoundTripper is sent http requests.
	Transport http.RoundTripper
	// UpgradeTransport carries requests that ask for a protocol upgrade
	// (WebSocket); it must speak HTTP/1.1. Nil means Transport. Its
	// scheme is chosen as for Transport.
	UpgradeTransport http.RoundTripper
	// Timeout bounds the wait for response headers, over all tries. Once
	// they arrive, the body streams for as long as it takes. Zero means no
	// limit.
	Timeout time.Duration
	// Retry says which failed tries are retried. The zero value retries
	// nothing.
	Retry RetryPolicy
	// TrustedProxies are the peers whose X-Forwarded-* headers are kept.
	TrustedProxies []netip.Prefix
	// Logger receives proxy errors. Nil means slog.Default().
	Logger *slog.Logger
	// Telemetry records a client span and metrics per try, and fills in
	// the request's telemetry.Exchange. Nil records nothing.
	Telemetry *telemetry.Client
}

// Upstream forwards HTTP requests to the endpoints of one service. It is an
// http.Handler; header hygiene, trailers, flushing and upgrades are
// httputil.ReverseProxy's, endpoint choice and timeouts are its own. Safe
// for concurrent use.
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
	retries       atomic.Int64
	trusted       []netip.Prefix
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
		trusted: o.TrustedProxies,
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
	if t, ok := rt.(*http.Transport); ok && t.TLSClientConfig != nil {
		return "https"
	}
	return "http"
}

// Name returns the upstream's service name.
func (u *Upstream) Name() string { return u.name }

// ServeHTTP proxies r to one of the upstream's endpoints.
func (u *Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
	u.proxy.ServeHTTP(w, r)
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
	setForwarded(pr, u.trusted)
	id := pr.In.Header.Get(headerRequestID)
	if id == "" {
		id = newRequestID()
		pr.Out.Header[headerRequestID] = []string{id}
	}
	if ex := telemetry.ExchangeFrom(pr.In.Context()); ex != nil {
		ex.RequestID = id
	}
}

func (u *Upstream) handleError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		// The client hung up: nobody is left to answer, and it is not the
		// upstream's fault.
		u.log.Debug("client went away", "upstream", u.name, "err", err)
		return
	}
	ue, ok := err.(*UpstreamError)
	if !ok {
		ue = &UpstreamError{Kind: classify(r.Context(), err), Upstream: u.name, Err: err}
	}
	if ex := telemetry.ExchangeFrom(r.Context()); ex != nil {
		ex.ErrorKind = string(ue.Kind)
	}
	u.log.Warn("proxy error", "upstream", u.name, "endpoint", ue.Endpoint,
		"kind", string(ue.Kind), "method", r.Method, "path", r.URL.Path, "err", ue.Err)
	writeError(w, ue.Kind, ue.Error())
}

// upstreamTransport is the RoundTripper of an Upstream's ReverseProxy. It
// is a distinct type so Upstream does not expose RoundTrip.
type upstreamTransport Upstream

// RoundTrip sends req to an endpoint, and retries on another endpoint as
// the retry policy allows. req is the private clone httputil.ReverseProxy
// made for this call, so setting its URL and Body does not affect the
// caller. The upstream's timeout bounds all tries until response headers
// arrive; a per-try timeout bounds each.
func (t *upstreamTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	u := (*Upstream)(t)
	p := &u.retry
	if p.Budget != nil {
		p.Budget.Request()
	}
	ctx, cancel := context.WithCancelCause(req.Context())
	var overall *time.Timer
	if u.timeout > 0 {
		overall = time.AfterFunc(u.timeout, func() { cancel(errTimeout) })
	}
	fail := func(err *UpstreamError) (*http.Response, error) {
		if overall != nil {
			overall.Stop()
		}
		cancel(nil)
		return nil, err
	}

	rt := u.rt
	req.URL.Scheme = u.scheme
	upgrade := isUpgrade(req.Header)
	if upgrade {
		rt = u.upgrade
		req.URL.Scheme = u.upgradeScheme
	}
	body, err := newReplayBody(req, p)
	if err != nil {
		return fail(&UpstreamError{Kind: KindProtocol, Upstream: u.name, Err: fmt.Errorf("reading request body: %w", err)})
	}

	ex := telemetry.ExchangeFrom(req.Context())
	if ex != nil {
		ex.Upstream = u.name
	}
	br := balancer.Request{HTTP: req}
	for attempt := 0; ; attempt++ {
		pick, err := u.picker.Pick(br)
		if err != nil {
			return fail(&UpstreamError{Kind: KindNoEndpoints, Upstream: u.name, Err: err})
		}
		br.MarkTried(pick.Endpoint)
		ep := pick.Endpoint.Addr
		if ex != nil {
			ex.Endpoint = ep
			ex.Tries++
		}

		out := req
		if attempt > 0 {
			out = new(http.Request)
			*out = *req
			url := *req.URL
			out.URL = &url
		}
		out.URL.Host = ep
		body.prepare(out)

		tctx, tcancel := ctx, context.CancelCauseFunc(nil)
		var perTry *time.Timer
		if p.PerTryTimeout > 0 {
			tctx, tcancel = context.WithCancelCause(ctx)
			perTry = time.AfterFunc(p.PerTryTimeout, func() { tcancel(errPerTryTimeout) })
		}
		endTry := func() {
			if perTry != nil {
				perTry.Stop()
				tcancel(nil)
			}
		}
		try := u.tel.StartTry(ctx, out, telemetry.TryInfo{
			Endpoint: ep, EndpointID: pick.Endpoint.ID, Attempt: attempt,
			Breaker: pick.Endpoint.BreakerState().String(), Scheme: out.URL.Scheme,
		})
		start := time.Now()
		resp, err := rt.RoundTrip(out.WithContext(tctx))
		latency := time.Since(start)
		if perTry != nil {
			perTry.Stop()
		}
		clientGone := req.Context().Err() != nil

		if err != nil {
			kind := classify(tctx, err)
			endTry()
			// A client that hung up abandoned the try: it says nothing
			// about the endpoint.
			pick.Done(balancer.Result{Err: err, Latency: latency, Local: clientGone})
			try.End(0, string(kind))
			if u.shouldRetry(ctx, req, body, attempt, kind, 0) {
				continue
			}
			return fail(&UpstreamError{Kind: kind, Upstream: u.name, Endpoint: ep, Err: err})
		}
		res := balancer.Result{Status: resp.StatusCode, Latency: latency}

		if resp.StatusCode == http.StatusSwitchingProtocols {
			rwc, ok := resp.Body.(io.ReadWriteCloser)
			want, got := upgradeType(req.Header), upgradeType(resp.Header)
			if !ok || want == "" || !strings.EqualFold(want, got) {
				// httputil.ReverseProxy refuses such a switch without
				// closing the body, which would leak the connection and
				// the pick.
				resp.Body.Close()
				endTry()
				err := fmt.Errorf("endpoint switched to protocol %q when %q was requested", got, want)
				pick.Done(balancer.Result{Err: err, Latency: latency})
				try.End(resp.StatusCode, string(KindProtocol))
				return fail(&UpstreamError{Kind: KindProtocol, Upstream: u.name, Endpoint: ep, Err: err})
			}
			if overall != nil {
				overall.Stop()
			}
			resp.Body = &upgradedBody{ReadWriteCloser: rwc, done: pick.Done, res: res, cancel: cancel, try: try}
			return resp, nil
		}
		if p.Statuses.Has(resp.StatusCode) && u.shouldRetry(ctx, req, body, attempt, "", resp.StatusCode) {
			// Read a little of the body so the connection can be reused,
			// then drop the response for the next try.
			io.CopyN(io.Discard, resp.Body, 4<<10)
			resp.Body.Close()
			endTry()
			pick.Done(res)
			try.End(resp.StatusCode, "")
			continue
		}
		if overall != nil {
			overall.Stop()
		}
		resp.Body = &trackedBody{ReadCloser: resp.Body, done: pick.Done, res: res, cancel: cancel, try: try}
		return resp, nil
	}
}

// shouldRetry reports whether a failed try (by transport error kind, or by
// status) may be retried, and waits the backoff if so. A retry needs: an
// attempt left, a condition the policy retries, a method that may be
// repeated (any method after a connect failure: nothing was sent), a body
// that can be sent again, time left, and the budget's consent.
func (u *Upstream) shouldRetry(ctx context.Context, req *http.Request, body *replayBody, attempt int, kind ErrorKind, status int) bool {
	p := &u.retry
	if attempt >= p.Attempts || ctx.Err() != nil {
		return false
	}
	switch {
	case status != 0:
		// p.Statuses.Has(status) was checked by the caller.
	case kind == KindConnectFailure:
		if !p.OnConnectFailure {
			return false
		}
	case kind == KindReset:
		if !p.OnReset {
			return false
		}
	case kind == KindTimeout:
		if !p.OnTimeout {
			return false
		}
	default:
		return false
	}
	if kind != KindConnectFailure && !p.NonIdempotent && !idempotent(req.Method) {
		return false
	}
	if !body.replayable() {
		return false
	}
	if p.Budget != nil && !p.Budget.Withdraw() {
		u.log.Debug("retry budget exhausted", "upstream", u.name)
		u.tel.RetryBudgetExhausted()
		return false
	}
	u.retries.Add(1)
	u.tel.Retry()
	return p.backoff(ctx, attempt+1)
}

// Retries returns how many retries the upstream has made.
func (u *Upstream) Retries() int64 { return u.retries.Load() }

// errPerTryTimeout is the cancellation cause when a try's own timeout
// expires.
var errPerTryTimeout = errors.New("no response headers within the per-try timeout")

// trackedBody reports the end of an exchange to the balancer and releases
// the try's context once the proxy is done with the response body.
type trackedBody struct {
	io.ReadCloser
	once   sync.Once
	done   func(balancer.Result)
	res    balancer.Result
	cancel context.CancelCauseFunc
	try    telemetry.Try
}

func (b *trackedBody) Close() error {
	// Cancel before closing: an HTTP/2 response body's Close waits until
	// the request body has been sent as well, which never happens when the
	// endpoint ended the exchange while the client was still sending (a
	// gRPC server failing a bidirectional stream early). Cancelling
	// abandons the rest of the request, as the endpoint asked. Once the
	// body was read to its end, cancelling costs nothing: an HTTP/1.1
	// connection is back in the pool by then, and an HTTP/2 stream done.
	b.once.Do(func() {
		b.cancel(nil)
		b.done(b.res)
		b.try.End(b.res.Status, "")
	})
	return b.ReadCloser.Close()
}

// upgradedBody is trackedBody for a 101 response, whose body is the raw
// two-way connection httputil.ReverseProxy splices to the client.
type upgradedBody struct {
	io.ReadWriteCloser
	once   sync.Once
	done   func(balancer.Result)
	res    balancer.Result
	cancel context.CancelCauseFunc
	try    telemetry.Try
}

func (b *upgradedBody) Close() error {
	err := b.ReadWriteCloser.Close()
	b.once.Do(func() {
		b.cancel(nil)
		b.done(b.res)
		b.try.End(b.res.Status, "")
	})
	return err
}
