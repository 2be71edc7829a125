// Package aggregate is the route backend that answers one request with
// the merged JSON responses of several calls to mesh services, its legs
// (config.Aggregate).
//
// A request flows like this (Handler.ServeHTTP):
//
//  1. Every leg gets a goroutine. A leg whose path uses other legs'
//     fields waits for them; one of them failing fails it at once.
//  2. A leg whose service has every endpoint behind an open circuit
//     breaker fails at once, without a request (but for one probe a
//     second after the first second, which lets the breakers see the
//     service recover).
//  3. Otherwise the leg's request is sent through its service's
//     pipeline.Handler (balancer, breakers, retries, mutual TLS, one
//     client span per try), under the leg's timeout, and its response is
//     recorded up to the route's max_leg_bytes.
//  4. Once every leg has ended, the bodies are merged in declaration
//     order, whatever order they arrived in, and the response says which
//     legs are missing.
package aggregate

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

// Response headers of an aggregate route.
const (
	// HeaderStatus is "complete" when every leg was merged, "partial"
	// when optional legs are missing.
	HeaderStatus = "X-Sidemesh-Aggregate"
	// HeaderMissing names the missing legs, in declaration order,
	// separated by ", ". Absent when none is.
	HeaderMissing = "X-Sidemesh-Aggregate-Missing"
)

// Error kinds of an aggregate route's own answers (pipeline.Error.Kind).
const (
	// KindLegFailed: a required leg, or every leg, failed (502).
	KindLegFailed pipeline.Kind = "aggregate_leg_failed"
	// KindConflict: two legs set different values under one key and the
	// route's on_conflict is error (502).
	KindConflict pipeline.Kind = "aggregate_conflict"
)

// probeInterval is how often a leg whose service has every breaker open
// is sent anyway, so that the breakers record an outcome after their
// open timeout and can close: a breaker changes state only on outcomes.
const probeInterval = time.Second

// Options configure New.
type Options struct {
	// Route is the route, with its Aggregate section set and validated.
	// Required.
	Route *config.Route
	// Backend returns the handler that sends a request of route to
	// service (edge.Backends.Handler). Required. It is called once per
	// leg, in New, with a copy of Route whose Timeout is the leg's and,
	// for a leg whose method is not idempotent, whose Retries are off.
	Backend func(route *config.Route, service string) pipeline.Handler
	// BreakerOpen reports whether every endpoint of service is behind an
	// open circuit breaker, for route. Nil: never; legs then wait for
	// their service's answer or their timeout. It must not block; it is
	// called once per leg per request.
	BreakerOpen func(route *config.Route, service string) bool
}

// Handler is an aggregate route's backend: a pipeline.Handler. Safe for
// concurrent use; its configuration is immutable once built.
type Handler struct {
	legs        []*leg
	timeout     time.Duration // the route's, over every leg; 0: none
	conflict    string
	concat      []string
	allowCookie bool
	maxBytes    int
}

// leg is one leg, compiled.
type leg struct {
	cfg     config.Leg
	key     string // merged under; "" at the top level
	parts   []config.PathPart
	deps    []int // indexes of the legs its path uses, each once
	timeout time.Duration
	handler pipeline.Handler
	open    func() bool // nil: breakers are not checked
	// probeAt is when (Unix nanoseconds) a leg refused for open breakers
	// may next be sent as a probe; 0 while they are not all open.
	probeAt atomic.Int64
}

// New compiles o.Route's aggregate. The route must have passed
// config validation: New does not check it again.
func New(o Options) *Handler {
	a := o.Route.Aggregate
	h := &Handler{
		timeout:     o.Route.Timeout,
		conflict:    a.OnConflict,
		concat:      a.Concat,
		allowCookie: a.AllowSetCookie,
		maxBytes:    a.MaxLegBytes,
	}
	index := map[string]int{}
	for i, lc := range a.Legs {
		parts, _ := lc.PathParts() // validated
		l := &leg{cfg: lc, key: lc.Key(), parts: parts, timeout: lc.Timeout}
		if l.timeout == 0 {
			l.timeout = o.Route.Timeout
		}
		for _, p := range parts {
			if j, ok := index[p.Leg]; ok && !slices.Contains(l.deps, j) {
				l.deps = append(l.deps, j)
			}
		}
		rc := *o.Route
		rc.Timeout = l.timeout
		if !idempotent(lc.Method) {
			rc.Retries = &config.Retries{} // no retries: RFC 9110 §9.2.2
		}
		l.handler = o.Backend(&rc, lc.Service)
		if o.BreakerOpen != nil {
			route, service := &rc, lc.Service
			l.open = func() bool { return o.BreakerOpen(route, service) }
		}
		index[lc.Name] = i
		h.legs = append(h.legs, l)
	}
	return h
}

// idempotent reports whether RFC 9110 calls method idempotent.
func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// outcome is what became of one leg.
type outcome struct {
	header http.Header
	body   []byte
	err    error // nil: the leg succeeded
	// panicked holds a panic of the leg's handler other than
	// http.ErrAbortHandler, re-raised on the request's goroutine.
	panicked any
}

// ServeHTTP runs every leg and answers with their merge: 200 with
// X-Sidemesh-Aggregate complete or partial, or a 502 *pipeline.Error when
// a required leg failed, every leg failed, or legs conflict.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	if h.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, h.timeout, errRouteTimeout)
		defer cancel()
	}
	parent := pipeline.InfoFrom(r.Context())
	out := make([]outcome, len(h.legs))
	done := make([]chan struct{}, len(h.legs))
	for i := range done {
		done[i] = make(chan struct{})
	}
	for i, l := range h.legs {
		go func() {
			defer close(done[i])
			out[i] = h.runLeg(ctx, r, parent, l, out, done)
		}()
	}
	for _, d := range done {
		<-d
	}
	for _, o := range out {
		if o.panicked != nil {
			panic(o.panicked)
		}
	}
	return h.respond(w, r, out)
}

// errRouteTimeout is the cause of the aggregate's context when the
// route's timeout passes.
var errRouteTimeout = errors.New("the route's timeout passed")

// runLeg waits for the legs l depends on, then calls l. It runs on its
// own goroutine; out[j] may be read once done[j] is closed.
func (h *Handler) runLeg(ctx context.Context, r *http.Request, parent *pipeline.Info, l *leg, out []outcome, done []chan struct{}) outcome {
	for _, j := range l.deps {
		select {
		case <-done[j]:
		case <-ctx.Done():
			return outcome{err: fmt.Errorf("waiting for leg %q: %w", h.legs[j].cfg.Name, context.Cause(ctx))}
		}
		if out[j].err != nil {
			return outcome{err: fmt.Errorf("needs leg %q, which failed", h.legs[j].cfg.Name)}
		}
	}
	path, err := l.path(func(name string) []byte {
		for j, dl := range h.legs {
			if dl.cfg.Name == name {
				return out[j].body
			}
		}
		return nil
	})
	if err != nil {
		return outcome{err: err}
	}
	if l.open != nil && !l.admit(l.open(), time.Now()) {
		return outcome{err: fmt.Errorf("service %q: every endpoint's circuit breaker is open", l.cfg.Service)}
	}
	return h.call(ctx, r, parent, l, path)
}

// admit reports whether l may be sent at now, given whether its
// service's breakers are all open: always when they are not; when they
// are, once every probeInterval (not at once: the breakers have just
// seen failures), to let them record an outcome after their open
// timeout.
func (l *leg) admit(open bool, now time.Time) bool {
	at := l.probeAt.Load()
	if !open {
		if at != 0 {
			l.probeAt.Store(0)
		}
		return true
	}
	next := now.Add(probeInterval).UnixNano()
	if at == 0 {
		l.probeAt.CompareAndSwap(0, next)
		return false
	}
	return now.UnixNano() >= at && l.probeAt.CompareAndSwap(at, next)
}

// call sends l's request and records its response.
func (h *Handler) call(ctx context.Context, r *http.Request, parent *pipeline.Info, l *leg, path string) (o outcome) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	start := time.Now()
	rec := &recorder{header: http.Header{}, max: h.maxBytes}
	if l.timeout > 0 {
		// The upstream's own timeout (the leg's, see New) bounds the wait
		// for response headers, and counts a miss against the endpoint;
		// this bounds the body that follows.
		rec.onHeader = func() {
			t := time.AfterFunc(time.Until(start.Add(l.timeout)), func() { cancel(errLegTimeout) })
			context.AfterFunc(ctx, func() { t.Stop() })
		}
	}
	req, err := http.NewRequestWithContext(pipeline.WithInfo(ctx, legInfo(parent)), l.cfg.Method, "http://"+l.cfg.Service+path, nil)
	if err != nil {
		return outcome{err: fmt.Errorf("path %q: %w", path, err)}
	}
	req.Host = l.cfg.Service
	copyHeaders(req.Header, r.Header, l.cfg.Headers)
	defer func() {
		if p := recover(); p != nil {
			// httputil.ReverseProxy aborts a response whose body it
			// could not copy (too large, or cancelled) with
			// http.ErrAbortHandler; anything else is a bug, re-raised
			// where the listener recovers it.
			o = outcome{err: legError(ctx, rec, l, fmt.Errorf("the response body was cut short"))}
			if p != http.ErrAbortHandler {
				o.panicked = p
			}
		}
	}()
	err = l.handler.ServeHTTP(rec, req)
	switch {
	case err != nil, rec.over, ctx.Err() != nil:
		// A context that ended may have cut the body short without an
		// error, when the proxy does not abort.
		return outcome{err: legError(ctx, rec, l, err)}
	case rec.status == 0:
		// The proxy answers nothing when the request's context ended
		// first (it takes that for a client that went away).
		return outcome{err: legError(ctx, rec, l, errors.New("no response"))}
	case rec.status < 200 || rec.status > 299:
		return outcome{err: fmt.Errorf("service %q answered %d", l.cfg.Service, rec.status)}
	}
	return outcome{header: rec.header, body: rec.body.Bytes()}
}

// errLegTimeout is the cause of a leg's context when its timeout passes
// while the body is read.
var errLegTimeout = errors.New("the leg's timeout passed")

// legError explains why leg l failed with err, preferring what ended its
// context (the leg's or the route's timeout) or the body bound.
func legError(ctx context.Context, rec *recorder, l *leg, err error) error {
	switch cause := context.Cause(ctx); {
	case rec.over:
		return fmt.Errorf("service %q: the response body is over %d bytes", l.cfg.Service, rec.max)
	case errors.Is(cause, errLegTimeout):
		return fmt.Errorf("service %q: no complete response within %v", l.cfg.Service, l.timeout)
	case cause != nil:
		return fmt.Errorf("service %q: %w", l.cfg.Service, cause)
	}
	var pe *pipeline.Error
	if errors.As(err, &pe) {
		return pe // the proxy's message names the service
	}
	return fmt.Errorf("service %q: %w", l.cfg.Service, err)
}

// legInfo is the Info of one leg's request: who the caller is, from the
// client request's, and nothing of its routing (a sticky session's
// affinity is for the route's own backends). Each leg needs its own: the
// proxy writes to it.
func legInfo(parent *pipeline.Info) *pipeline.Info {
	if parent == nil {
		return new(pipeline.Info)
	}
	return &pipeline.Info{
		Listener: parent.Listener, Route: parent.Route, Service: parent.Service, Start: time.Now(),
		RequestID: parent.RequestID, Peer: parent.Peer, Principal: parent.Principal, Claims: parent.Claims,
		APIKeySet: parent.APIKeySet, APIKeyID: parent.APIKeyID,
	}
}

// forwarded are the client request's headers every leg sends on, as the
// edge's filters left them. The trace context is the leg's client span's.
var forwarded = []string{"X-Request-Id", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"}

// copyHeaders sets a leg request's headers: the forwarded ones and those
// the leg names, from the client's request, and Accept.
func copyHeaders(dst, src http.Header, names []string) {
	for _, k := range forwarded {
		if v := src.Values(k); len(v) > 0 {
			dst[k] = slices.Clone(v)
		}
	}
	for _, k := range names {
		if v := src.Values(k); len(v) > 0 {
			dst[http.CanonicalHeaderKey(k)] = slices.Clone(v)
		}
	}
	dst.Set("Accept", "application/json")
}

// path fills l's path template with the fields of the responses body
// returns by leg name, path-escaped.
func (l *leg) path(body func(leg string) []byte) (string, error) {
	var b strings.Builder
	for _, p := range l.parts {
		if p.Leg == "" {
			b.WriteString(p.Literal)
			continue
		}
		v, err := field(body(p.Leg), p.Field)
		if err != nil {
			return "", fmt.Errorf("path {%s.%s}: leg %q: %w", p.Leg, strings.Join(p.Field, "."), p.Leg, err)
		}
		b.WriteString(url.PathEscape(v))
	}
	return b.String(), nil
}

var _ pipeline.Handler = (*Handler)(nil)
