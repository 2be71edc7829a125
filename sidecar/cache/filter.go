package cache

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

// MaxStale caps the stale-while-revalidate and stale-if-error windows a
// route honours when its options leave them at zero.
const MaxStale = 24 * time.Hour

// refreshTimeout bounds a background revalidation (stale-while-
// revalidate), which no client waits for.
const refreshTimeout = 30 * time.Second

// RouteOptions configure the Filter of one route.
type RouteOptions struct {
	// Route names the route: it is part of every key, and purges and
	// Retain name it.
	Route string
	// DefaultTTL is how long a response that says nothing of its
	// freshness (no max-age, s-maxage or Expires) is fresh. Zero stores
	// only responses that say.
	DefaultTTL time.Duration
	// StaleIfError and StaleWhileRevalidate cap the windows of the
	// response's stale-if-error and stale-while-revalidate directives
	// (RFC 5861): the edge honours what the response asks, up to these.
	// Zero means up to MaxStale. A response that asks for neither is
	// never served stale.
	StaleIfError, StaleWhileRevalidate time.Duration
	// TagsHeader names the response header whose space-separated values
	// tag the stored response for PurgeTag (Surrogate-Key); empty: no
	// tags.
	TagsHeader string
}

// window is the part of asked that a cap of limit allows (zero limit:
// MaxStale).
func window(asked, limit time.Duration) time.Duration {
	if limit <= 0 {
		limit = MaxStale
	}
	return min(asked, limit)
}

// filter is the cache of one route.
type filter struct {
	s *Store
	o RouteOptions
}

// Filter returns the cache filter of the route o describes, over s. It
// must run after every filter that decides whether the request is
// allowed (authentication, authorization, rate limits) and after those
// that change what is sent upstream (request headers, rewrite): the
// response stored is the one for the request as it leaves it.
//
// The filter serves GET and HEAD; every other method passes through.
// A fresh stored response is served with its Age; a stale one is
// revalidated with If-None-Match / If-Modified-Since (a 304 refreshes
// it), served while being revalidated in the background within its
// stale-while-revalidate window, or served when the backend fails
// (an error, a 5xx) within its stale-if-error window. Responses are
// stored when the status is 200, 203, 301, 404 or 410, Cache-Control
// has no no-store nor private, freshness is explicit (s-maxage, which
// wins, max-age, Expires) or the route's DefaultTTL is set, Vary is not
// "*", they are at most the store's MaxEntryBytes, are not event
// streams, and, when the request had Authorization or the response sets
// a cookie, Cache-Control says public. A no-cache response is stored
// when it has a validator, and revalidated on every use. The request's
// own Cache-Control is not honoured (a shared cache in front of its own
// backends). HEAD is answered from a stored GET; a HEAD miss passes
// through. A single "bytes=" Range is answered 206 (416 when it is
// outside the body) from a stored 200; a miss is fetched whole. A
// client's If-None-Match or If-Modified-Since is answered 304 from a
// stored 200 that matches. Requests with If-Match, If-Unmodified-Since
// or Upgrade pass through.
//
// Concurrent misses for one primary key make one request upstream; the
// other requests wait for it and are served what it stored. When it
// stored nothing (the response was not cacheable, too large, failed, or
// its Vary selects another variant than a waiter's), each waiter then
// makes its own request upstream, without waiting on one another. A
// waiter whose context ends stops waiting.
//
// Every response from the filter carries Cache-Status (RFC 9211):
// "sidemesh; hit", "sidemesh; hit; collapsed" (served from another
// request's fetch), "sidemesh; hit; fwd=stale; detail=revalidating"
// (stale-while-revalidate), "sidemesh; fwd=miss; stored",
// "sidemesh; fwd=miss" (not stored), "sidemesh; fwd=stale; fwd-status=304"
// (revalidated), "sidemesh; fwd=stale; fwd-status=503; detail=stale-if-error"
// (served stale on a failure: fwd-status is the backend's 5xx, or the
// status the edge would have answered, such as 503 for a refused
// connection), "sidemesh; fwd=miss; detail=too-large" (passed through
// over MaxEntryBytes), "sidemesh; fwd=bypass" (not a cacheable request).
func Filter(s *Store, o RouteOptions) pipeline.Filter { return &filter{s: s, o: o} }

// Serve implements pipeline.Filter.
func (f *filter) Serve(w http.ResponseWriter, r *http.Request, next pipeline.Handler) error {
	if (r.Method != http.MethodGet && r.Method != http.MethodHead) ||
		r.Header.Get("If-Match") != "" || r.Header.Get("If-Unmodified-Since") != "" || r.Header.Get("Upgrade") != "" {
		w.Header().Add("Cache-Status", "sidemesh; fwd=bypass")
		return next.ServeHTTP(w, r)
	}
	host, path, query := keyParts(r)
	pk := f.o.Route + "\x00" + host + "\x00" + path + "?" + query
	t := now()
	e := f.usable(pk, r)
	if e != nil {
		age := e.age(t)
		switch {
		case !e.dirs.noCache && age < e.lifetime:
			f.s.hits.Add(1)
			return serve(w, r, e, t, "hit")
		case r.Method == http.MethodGet && f.mayServeStale(e, age, e.dirs.staleWhileRevalidate, f.o.StaleWhileRevalidate):
			f.s.hits.Add(1)
			f.refresh(r, next, pk, e)
			return serve(w, r, e, t, "hit; fwd=stale; detail=revalidating")
		}
	}
	if r.Method == http.MethodHead {
		f.s.misses.Add(1)
		w.Header().Add("Cache-Status", "sidemesh; fwd=miss")
		return next.ServeHTTP(w, r)
	}
	fl, leader := f.s.join(pk)
	if !leader {
		f.s.waiting.Add(1)
		select {
		case <-fl.done:
			f.s.waiting.Add(-1)
		case <-r.Context().Done():
			f.s.waiting.Add(-1)
			return nil // the client went away: nobody to answer
		}
		// A response the flight fetched or validated while this request
		// waited answers it, even one that is stale at once (max-age=0,
		// no-cache): it is as new as a fetch of its own would be.
		if e := f.usable(pk, r); e != nil && (!e.dirs.noCache && e.age(now()) < e.lifetime || !e.responseTime.Before(t)) {
			t = now()
			f.s.hits.Add(1)
			return serve(w, r, e, t, "hit; collapsed")
		}
		return f.forward(w, r, next, pk, f.usable(pk, r))
	}
	defer f.s.land(pk, fl)
	return f.forward(w, r, next, pk, e)
}

// usable returns the stored entry of pk that r selects and may be
// served: a request with Authorization only gets a public one.
func (f *filter) usable(pk string, r *http.Request) *entry {
	e := f.s.lookup(pk, r.Header)
	if e != nil && !e.dirs.public && r.Header.Get("Authorization") != "" {
		return nil
	}
	return e
}

// mayServeStale reports whether e, of age age, is within a stale window
// of asked seconds the route caps at limit.
func (f *filter) mayServeStale(e *entry, age, asked, limit time.Duration) bool {
	if e.dirs.mustRevalidate || e.dirs.noCache || asked <= 0 {
		return false
	}
	return age < e.lifetime+window(asked, limit)
}

// keyParts are the host (lower case, without port), escaped path and
// query of r.
func keyParts(r *http.Request) (host, path, query string) {
	host = r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.ToLower(host), r.URL.EscapedPath(), r.URL.RawQuery
}

// headersNotForwarded are the request headers a fetch for the cache
// leaves out: the cache fetches the whole, unconditional response, and
// answers the client's range and conditions from it.
var headersNotForwarded = []string{"Range", "If-Range", "If-None-Match", "If-Modified-Since"}

// forward sends r upstream through next, with stale's validators when
// there is one to revalidate, stores what may be, and answers w.
func (f *filter) forward(w http.ResponseWriter, r *http.Request, next pipeline.Handler, pk string, stale *entry) error {
	f.s.misses.Add(1)
	return f.fetch(w, r, next, pk, stale)
}

// fetch is forward without the count: a background refresh is not a
// miss.
func (f *filter) fetch(w http.ResponseWriter, r *http.Request, next pipeline.Handler, pk string, stale *entry) error {
	up := r.WithContext(r.Context())
	up.Header = r.Header.Clone()
	for _, h := range headersNotForwarded {
		up.Header.Del(h)
	}
	if stale != nil {
		if stale.etag != "" {
			up.Header.Set("If-None-Match", stale.etag)
		}
		if stale.lastModified != "" {
			up.Header.Set("If-Modified-Since", stale.lastModified)
		}
	}
	c := &capture{f: f, client: w, req: r.Header, stale: stale, header: http.Header{}, max: f.s.maxEntry()}
	requestTime := now()
	err := next.ServeHTTP(c, up)
	t := now()
	fwd := "fwd=miss"
	if stale != nil {
		fwd = "fwd=stale"
	}
	switch c.mode {
	case modePass:
		return err
	case modeNone:
		if err == nil {
			return nil // nothing written: the client went away
		}
		if stale != nil && f.mayServeStale(stale, stale.age(t), stale.dirs.staleIfError, f.o.StaleIfError) {
			return serve(w, r, stale, t, fwd+"; fwd-status="+strconv.Itoa(pipeline.AsError(err).Status)+"; detail=stale-if-error")
		}
		return err
	case modeStaleIfError:
		return serve(w, r, stale, t, fwd+"; fwd-status="+strconv.Itoa(c.status)+"; detail=stale-if-error")
	case modeNotModified:
		e := f.refreshed(stale, c.header, requestTime, c.responseTime)
		f.s.put(e)
		return serve(w, r, e, t, fwd+"; fwd-status=304")
	}
	// modeBuffer: the whole response is here, unless the body broke.
	if err != nil {
		if stale != nil && f.mayServeStale(stale, stale.age(t), stale.dirs.staleIfError, f.o.StaleIfError) {
			return serve(w, r, stale, t, fwd+"; fwd-status=502; detail=stale-if-error")
		}
		return err
	}
	host, path, query := keyParts(r)
	body := c.body.Bytes()
	if cap(body)-len(body) > len(body)/8 {
		body = bytes.Clone(body) // the store counts len: keep cap near it
	}
	e := f.newEntry(pk, host, path, query, r.Header, c.status, c.header, body, requestTime, c.responseTime)
	if stale != nil {
		fwd += "; fwd-status=" + strconv.Itoa(c.status)
	}
	if f.s.put(e) {
		fwd += "; stored"
	}
	return serve(w, r, e, t, fwd)
}

// refresh revalidates stale in the background, unless a request for pk
// is upstream already. The refresh runs without r's deadline, bounded
// by refreshTimeout, with its own copy of r's Info.
func (f *filter) refresh(r *http.Request, next pipeline.Handler, pk string, stale *entry) {
	fl, leader := f.s.join(pk)
	if !leader {
		return
	}
	ctx := context.WithoutCancel(r.Context())
	if info := pipeline.InfoFrom(ctx); info != nil {
		own := *info
		own.Err, own.Tries = nil, 0
		ctx = pipeline.WithInfo(ctx, &own)
	}
	ctx, cancel := context.WithTimeout(ctx, refreshTimeout)
	up := r.Clone(ctx)
	up.Body = http.NoBody
	go func() {
		defer cancel()
		defer f.s.land(pk, fl)
		_ = f.fetch(discard{}, up, next, pk, stale) // nobody to tell; a failure leaves the entry as it is
	}()
}

// serve answers r from e at t, with Cache-Status status: a 304 when r's
// conditions match, a 206 or 416 for a Range, the whole response
// otherwise (without a body for HEAD).
func serve(w http.ResponseWriter, r *http.Request, e *entry, t time.Time, status string) error {
	h := w.Header()
	for k, vs := range e.header {
		h[k] = vs
	}
	h.Set("Age", strconv.FormatInt(int64(e.age(t)/time.Second), 10))
	h.Add("Cache-Status", "sidemesh; "+status)
	if e.status == http.StatusOK && notModified(r, e) {
		for _, k := range []string{"Content-Type", "Content-Length", "Content-Encoding", "Accept-Ranges"} {
			delete(h, k)
		}
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	body := e.body
	size := int64(len(body))
	status200 := e.status
	if e.status == http.StatusOK {
		h.Set("Accept-Ranges", "bytes")
		if rg := r.Header.Get("Range"); rg != "" && ifRange(r, e) {
			if br, ok, satisfiable := parseRange(rg, size); ok {
				if !satisfiable {
					delete(h, "Content-Length")
					h.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
					w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
					return nil
				}
				h.Set("Content-Range", "bytes "+strconv.FormatInt(br.first, 10)+"-"+strconv.FormatInt(br.last, 10)+"/"+strconv.FormatInt(size, 10))
				body, status200 = body[br.first:br.last+1], http.StatusPartialContent
			}
		}
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status200)
	if r.Method == http.MethodHead {
		return nil
	}
	_, err := w.Write(body)
	return err
}

// notModified reports whether r's own If-None-Match (or, without one,
// If-Modified-Since) is met by e.
func notModified(r *http.Request, e *entry) bool {
	if inm := r.Header.Get("If-None-Match"); inm != "" {
		return etagMatch(inm, e.etag)
	}
	ims := r.Header.Get("If-Modified-Since")
	if ims == "" || e.lastModified == "" {
		return false
	}
	since, err1 := http.ParseTime(ims)
	lm, err2 := http.ParseTime(e.lastModified)
	return err1 == nil && err2 == nil && !lm.After(since)
}

// ifRange reports whether r's If-Range, if any, lets its Range apply to
// e: a strong ETag equal to e's, or e's exact Last-Modified.
func ifRange(r *http.Request, e *entry) bool {
	ir := r.Header.Get("If-Range")
	switch {
	case ir == "":
		return true
	case strings.HasPrefix(ir, `"`):
		return e.etag == ir
	default:
		return ir == e.lastModified
	}
}

// capture modes: what capture does with the response it is given.
const (
	modeNone         = iota // nothing written yet
	modeBuffer              // kept to be stored, then served from the entry
	modePass                // passed to the client as it comes
	modeNotModified         // a 304 to a revalidation: refresh the entry
	modeStaleIfError        // a 5xx that a stale entry answers instead
)

// capture is the ResponseWriter the upstream handler writes a fetch's
// response to. It decides, when the status is written, whether to keep
// the response (buffered, up to max bytes, then passed on when larger),
// pass it to the client, or drop it for the stale entry. It unwraps to
// the client's writer, for http.ResponseController.
type capture struct {
	f      *filter
	client http.ResponseWriter
	req    http.Header // the client's request header
	stale  *entry
	max    int64

	mode         int
	status       int
	header       http.Header
	body         bytes.Buffer
	responseTime time.Time
}

func (c *capture) Header() http.Header {
	if c.mode == modePass {
		return c.client.Header()
	}
	return c.header
}

func (c *capture) WriteHeader(code int) {
	if c.mode != modeNone || (code < 200 && code != http.StatusSwitchingProtocols) {
		return // a second status, or an interim one: not passed on
	}
	c.status, c.responseTime = code, now()
	switch {
	case c.stale != nil && code == http.StatusNotModified:
		c.mode = modeNotModified
	case c.stale != nil && code >= 500 && c.f.mayServeStale(c.stale, c.stale.age(c.responseTime), c.stale.dirs.staleIfError, c.f.o.StaleIfError):
		c.mode = modeStaleIfError
	case c.f.o.storable(c.req, code, c.header, c.max):
		c.mode = modeBuffer
		if n, ok := contentLength(c.header.Get("Content-Length")); ok {
			c.body.Grow(int(n)) // storable checked n <= max
		}
	default:
		fwd := "fwd=miss"
		if c.stale != nil {
			fwd = "fwd=stale; fwd-status=" + strconv.Itoa(code)
		}
		c.pass(fwd)
	}
}

// pass starts passing the response to the client.
func (c *capture) pass(status string) {
	h := c.client.Header()
	for k, vs := range c.header {
		h[k] = vs
	}
	h.Add("Cache-Status", "sidemesh; "+status)
	c.mode = modePass
	c.client.WriteHeader(c.status)
}

func (c *capture) Write(p []byte) (int, error) {
	if c.mode == modeNone {
		c.WriteHeader(http.StatusOK)
	}
	switch c.mode {
	case modePass:
		return c.client.Write(p)
	case modeBuffer:
		if int64(c.body.Len()+len(p)) <= c.max {
			return c.body.Write(p)
		}
		c.pass("fwd=miss; detail=too-large")
		if _, err := c.client.Write(c.body.Bytes()); err != nil {
			return 0, err
		}
		c.body = bytes.Buffer{}
		return c.client.Write(p)
	}
	return len(p), nil // a body the stale entry replaces
}

// Flush passes on a flush of a passed response; a buffered one is sent
// whole at the end.
func (c *capture) Flush() {
	if c.mode == modePass {
		http.NewResponseController(c.client).Flush()
	}
}

func (c *capture) Unwrap() http.ResponseWriter { return c.client }

// discard is the client of a background refresh.
type discard struct{}

func (discard) Header() http.Header         { return http.Header{} }
func (discard) WriteHeader(int)             {}
func (discard) Write(p []byte) (int, error) { return len(p), nil }

var (
	_ pipeline.Filter     = (*filter)(nil)
	_ http.ResponseWriter = (*capture)(nil)
	_ http.Flusher        = (*capture)(nil)
)
