package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
	"github.com/sidemesh/sidemesh/telemetry"
)

// tries is the state one request's tries share: the request, the
// deadline of the upstream's timeout, the body a retry may send again, and
// the endpoints tried so far.
type tries struct {
	u    *Upstream
	req  *http.Request
	rt   http.RoundTripper
	body *replayBody
	br   balancer.Request
	info *pipeline.Info
	// attempts is how many retries this request may have: the policy's,
	// or none for a request a retrying sidecar forwarded.
	attempts int
	// deadline is when the upstream's timeout ends the wait for response
	// headers, over all tries; zero without one.
	deadline time.Time
}

// expired reports whether the upstream's timeout has passed.
func (x *tries) expired() bool {
	return !x.deadline.IsZero() && !time.Now().Before(x.deadline)
}

// startTimer arms the timeout of a try: the per-try timeout or what is
// left of the upstream's, whichever ends first, cancelling the try with
// that timeout's cause. Nil when neither is set.
func (x *tries) startTimer(cancel context.CancelCauseFunc) *time.Timer {
	d, cause := x.u.retry.PerTryTimeout, errPerTryTimeout
	switch {
	case !x.deadline.IsZero():
		if left := time.Until(x.deadline); d <= 0 || left <= d {
			d, cause = left, errTimeout
		}
	case d <= 0:
		return nil
	}
	return time.AfterFunc(d, func() { cancel(cause) })
}

// errPerTryTimeout is the cancellation cause when a try's own timeout
// expires.
var errPerTryTimeout = errors.New("no response headers within the per-try timeout")

// try sends attempt number attempt (0 for the first) to an endpoint the
// picker chooses. It returns the response to pass on; or retry, when the
// try failed in a way the policy retries (and the backoff was waited);
// or the error that ends the request. Every exit accounts for the try:
// the picked endpoint's Done, the try's span and metrics. A response's
// accounting ends when its body is closed.
func (x *tries) try(attempt int) (resp *http.Response, retry bool, err error) {
	u := x.u
	p := &u.retry
	pick, err := u.picker.Pick(x.br)
	if err != nil {
		return nil, false, upstreamError(pipeline.KindNoEndpoints, u.name, "", err)
	}
	x.br.MarkTried(pick.Endpoint)
	ep := pick.Endpoint.Addr
	x.info.Endpoint, x.info.EndpointID = ep, pick.Endpoint.ID
	x.info.Tries++

	out := x.req
	if attempt > 0 {
		out = new(http.Request)
		*out = *x.req
		url := *x.req.URL
		out.URL = &url
	}
	out.URL.Host = ep
	if x.attempts > 0 {
		out.Header[headerAttempt] = attemptValues[min(attempt, maxAttempts)]
	}
	x.body.prepare(out)

	// The try's context ends with the try, or, for a response passed on,
	// when the proxy is done with its body (exchangeEnd). Until response
	// headers arrive, the timer ends it at the try's deadline.
	tctx, cancel := context.WithCancelCause(x.req.Context())
	timer := x.startTimer(cancel)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
		if resp == nil {
			cancel(nil)
		}
	}()
	try := u.tel.StartTry(x.req.Context(), out, telemetry.TryInfo{
		Endpoint: ep, EndpointID: pick.Endpoint.ID, Attempt: attempt,
		Breaker: pick.Endpoint.BreakerState().String(), Scheme: out.URL.Scheme,
	})
	start := time.Now()
	resp, err = x.rt.RoundTrip(out.WithContext(tctx))
	latency := time.Since(start)

	if err != nil {
		if be := x.info.BodyErr; be != nil {
			// The client's body failed (malformed, stalled, cut off): its
			// failure, not the endpoint's, and nothing to retry.
			pick.Done(balancer.Result{Err: err, Latency: latency, Local: true})
			try.End(0, string(pipeline.KindBadRequest))
			return nil, false, be.Answer()
		}
		kind := classify(tctx, err)
		// A client that hung up abandoned the try: it says nothing about
		// the endpoint.
		clientGone := x.req.Context().Err() != nil
		pick.Done(balancer.Result{Err: err, Latency: latency, Local: clientGone})
		try.End(0, string(kind))
		if x.shouldRetry(attempt, kind, 0) {
			return nil, true, nil
		}
		return nil, false, upstreamError(kind, u.name, ep, err)
	}
	res := balancer.Result{Status: resp.StatusCode, Latency: latency}
	for k, v := range pick.Header {
		resp.Header[k] = append(resp.Header[k], v...)
	}

	if resp.StatusCode == http.StatusSwitchingProtocols {
		rwc, ok := resp.Body.(io.ReadWriteCloser)
		want, got := upgradeType(x.req.Header), upgradeType(resp.Header)
		if !ok || want == "" || !strings.EqualFold(want, got) {
			// httputil.ReverseProxy refuses such a switch without
			// closing the body, which would leak the connection and
			// the pick.
			resp.Body.Close()
			err := fmt.Errorf("endpoint switched to protocol %q when %q was requested", got, want)
			pick.Done(balancer.Result{Err: err, Latency: latency})
			try.End(resp.StatusCode, string(pipeline.KindProtocol))
			return nil, false, upstreamError(pipeline.KindProtocol, u.name, ep, err)
		}
		resp.Body = &upgradedBody{ReadWriteCloser: rwc, end: exchangeEnd{done: pick.Done, res: res, cancel: cancel, try: try}}
		return resp, false, nil
	}
	if p.Statuses.Has(resp.StatusCode) && x.shouldRetry(attempt, "", resp.StatusCode) {
		// Read a little of the body so the connection can be reused,
		// then drop the response for the next try.
		io.CopyN(io.Discard, resp.Body, 4<<10)
		resp.Body.Close()
		pick.Done(res)
		try.End(resp.StatusCode, "")
		return nil, true, nil
	}
	resp.Body = &trackedBody{ReadCloser: resp.Body, end: exchangeEnd{done: pick.Done, res: res, cancel: cancel, try: try}}
	return resp, false, nil
}

// shouldRetry reports whether a failed try (by transport error kind, or by
// status) may be retried, and waits the backoff if so. A retry needs: an
// attempt left, a client still waiting, a condition the policy retries, a
// method that may be repeated (any method after a connect failure:
// nothing was sent), a body that can be sent again, time left, and the
// budget's consent.
func (x *tries) shouldRetry(attempt int, kind pipeline.Kind, status int) bool {
	u, req := x.u, x.req
	p := &u.retry
	if attempt >= x.attempts || req.Context().Err() != nil || x.expired() {
		return false
	}
	switch {
	case status != 0:
		// p.Statuses.Has(status) was checked by the caller.
	case kind == pipeline.KindConnectFailure:
		if !p.OnConnectFailure {
			return false
		}
	case kind == pipeline.KindReset:
		if !p.OnReset {
			return false
		}
	case kind == pipeline.KindTimeout:
		if !p.OnTimeout {
			return false
		}
	default:
		return false
	}
	if kind != pipeline.KindConnectFailure && !p.NonIdempotent && !idempotent(req.Method) {
		return false
	}
	if !x.body.replayable() {
		return false
	}
	if p.Budget != nil && !p.Budget.Withdraw() {
		u.log.Debug("retry budget exhausted", "upstream", u.name)
		u.tel.RetryBudgetExhausted()
		return false
	}
	u.tel.Retry()
	return p.backoff(req.Context(), attempt+1, x.deadline)
}

// exchangeEnd is what ends when the proxy is done with a response: the
// pick's Done, the try's telemetry and the request's context.
type exchangeEnd struct {
	once   sync.Once
	done   func(balancer.Result)
	res    balancer.Result
	cancel context.CancelCauseFunc
	try    telemetry.Try
}

func (e *exchangeEnd) run() {
	e.once.Do(func() {
		e.cancel(nil)
		e.done(e.res)
		e.try.End(e.res.Status, "")
	})
}

// trackedBody ends the exchange once the proxy is done with the response
// body.
type trackedBody struct {
	io.ReadCloser
	end exchangeEnd
}

func (b *trackedBody) Close() error {
	// Cancel before closing: an HTTP/2 response body's Close waits until
	// the request body has been sent as well, which never happens when the
	// endpoint ended the exchange while the client was still sending (a
	// gRPC server failing a bidirectional stream early). Cancelling
	// abandons the rest of the request, as the endpoint asked. Once the
	// body was read to its end, cancelling costs nothing: an HTTP/1.1
	// connection is back in the pool by then, and an HTTP/2 stream done.
	b.end.run()
	return b.ReadCloser.Close()
}

// upgradedBody is trackedBody for a 101 response, whose body is the raw
// two-way connection httputil.ReverseProxy splices to the client.
type upgradedBody struct {
	io.ReadWriteCloser
	end exchangeEnd
}

func (b *upgradedBody) Close() error {
	err := b.ReadWriteCloser.Close()
	b.end.run()
	return err
}
