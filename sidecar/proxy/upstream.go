package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sync"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
)

// UpstreamOptions describe one upstream for NewUpstream.
type UpstreamOptions struct {
	// Name is the upstream's service name, used in errors and logs.
	Name string
	// Picker chooses the endpoint of each try. Required.
	Picker balancer.Picker
	// Transport carries requests to endpoints. Required.
	Transport http.RoundTripper
	// UpgradeTransport carries requests that ask for a protocol upgrade
	// (WebSocket); it must speak HTTP/1.1. Nil means Transport.
	UpgradeTransport http.RoundTripper
	// Timeout bounds the wait for response headers. Once they arrive, the
	// body streams for as long as it takes. Zero means no limit.
	Timeout time.Duration
	// TrustedProxies are the peers whose X-Forwarded-* headers are kept.
	TrustedProxies []netip.Prefix
	// Logger receives proxy errors. Nil means slog.Default().
	Logger *slog.Logger
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
	timeout time.Duration
	trusted []netip.Prefix
	log     *slog.Logger
	proxy   *httputil.ReverseProxy
}

// NewUpstream returns an Upstream for o.
func NewUpstream(o UpstreamOptions) *Upstream {
	u := &Upstream{
		name:    o.Name,
		picker:  o.Picker,
		rt:      o.Transport,
		upgrade: o.UpgradeTransport,
		timeout: o.Timeout,
		trusted: o.TrustedProxies,
		log:     o.Logger,
	}
	if u.upgrade == nil {
		u.upgrade = u.rt
	}
	if u.log == nil {
		u.log = slog.Default()
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

// Name returns the upstream's service name.
func (u *Upstream) Name() string { return u.name }

// ServeHTTP proxies r to one of the upstream's endpoints.
func (u *Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 1 {
		// Let the body stream both ways at once (bidirectional streaming
		// over HTTP/1.1); the default would block reads after the first
		// write. Fails only for hijacked or HTTP/2 requests.
		_ = http.NewResponseController(w).EnableFullDuplex()
	}
	u.proxy.ServeHTTP(w, r)
}

// rewrite prepares the outbound request. The endpoint is chosen later, in
// RoundTrip, so that a retry can choose another; URL.Host is a placeholder
// until then. The Host header keeps the name the caller used.
func (u *Upstream) rewrite(pr *httputil.ProxyRequest) {
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = u.name
	pr.Out.Host = pr.In.Host
	setForwarded(pr, u.trusted)
	if pr.In.Header.Get(headerRequestID) == "" {
		pr.Out.Header[headerRequestID] = []string{newRequestID()}
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
	u.log.Warn("proxy error", "upstream", u.name, "endpoint", ue.Endpoint,
		"kind", string(ue.Kind), "method", r.Method, "path", r.URL.Path, "err", ue.Err)
	writeError(w, ue.Kind, ue.Error())
}

// upstreamTransport is the RoundTripper of an Upstream's ReverseProxy. It
// is a distinct type so Upstream does not expose RoundTrip.
type upstreamTransport Upstream

// RoundTrip picks an endpoint and sends req to it. req is the private
// clone httputil.ReverseProxy made for this call, so setting its URL.Host
// does not affect the caller.
func (t *upstreamTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	u := (*Upstream)(t)
	pick, err := u.picker.Pick(req)
	if err != nil {
		return nil, &UpstreamError{Kind: KindNoEndpoints, Upstream: u.name, Err: err}
	}
	ep := pick.Endpoint.Addr
	req.URL.Host = ep

	rt := u.rt
	if isUpgrade(req.Header) {
		rt = u.upgrade
	}
	ctx, cancel := context.WithCancelCause(req.Context())
	var timer *time.Timer
	if u.timeout > 0 {
		timer = time.AfterFunc(u.timeout, func() { cancel(errTimeout) })
	}
	start := time.Now()
	resp, err := rt.RoundTrip(req.WithContext(ctx))
	latency := time.Since(start)
	if timer != nil {
		timer.Stop()
	}
	if err != nil {
		kind := classify(ctx, err)
		cancel(nil)
		pick.Done(balancer.Result{Err: err, Latency: latency})
		return nil, &UpstreamError{Kind: kind, Upstream: u.name, Endpoint: ep, Err: err}
	}
	res := balancer.Result{Status: resp.StatusCode, Latency: latency}
	if rwc, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = &upgradedBody{ReadWriteCloser: rwc, done: pick.Done, res: res, cancel: cancel}
	} else {
		resp.Body = &trackedBody{ReadCloser: resp.Body, done: pick.Done, res: res, cancel: cancel}
	}
	return resp, nil
}

// trackedBody reports the end of an exchange to the balancer and releases
// the try's context once the proxy is done with the response body.
type trackedBody struct {
	io.ReadCloser
	once   sync.Once
	done   func(balancer.Result)
	res    balancer.Result
	cancel context.CancelCauseFunc
}

func (b *trackedBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(func() {
		b.cancel(nil)
		b.done(b.res)
	})
	return err
}

// upgradedBody is trackedBody for a 101 response, whose body is the raw
// two-way connection httputil.ReverseProxy splices to the client.
type upgradedBody struct {
	io.ReadWriteCloser
	once   sync.Once
	done   func(balancer.Result)
	res    balancer.Result
	cancel context.CancelCauseFunc
}

func (b *upgradedBody) Close() error {
	err := b.ReadWriteCloser.Close()
	b.once.Do(func() {
		b.cancel(nil)
		b.done(b.res)
	})
	return err
}
