package cache

import (
	"net/http"
	"slices"
	"strings"
	"time"
)

// entry is one stored response. It is never modified once stored: a
// revalidation stores a new entry (sharing the body), so a request that
// holds one can serve it without a lock.
type entry struct {
	// route, host, path and query are the parts of the primary key, for
	// purges.
	route, host, path, query string
	primary, key             string
	vary                     []string
	status                   int
	// header is the response's, without Age (computed when served); each
	// value slice is full, so an append by a later writer copies it.
	header http.Header
	body   []byte
	tags   []string
	dirs   directives
	// lifetime is how long the response is fresh, initialAge its
	// corrected initial age and responseTime when it arrived.
	lifetime     time.Duration
	initialAge   time.Duration
	responseTime time.Time
	etag         string
	lastModified string
	size         int64
}

// entryOverhead estimates what an entry costs beyond its body, header
// and keys: the struct, its list element, and the map slots.
const entryOverhead = 512

// age is the entry's current age at t.
func (e *entry) age(t time.Time) time.Duration { return e.initialAge + max(t.Sub(e.responseTime), 0) }

// cacheableStatus reports whether a response of status may be stored:
// the heuristically cacheable statuses of RFC 9110 section 15.1 the
// cache keeps (not 204, 206, 300, 308, 405, 414, 501).
func cacheableStatus(status int) bool {
	switch status {
	case http.StatusOK, http.StatusNonAuthoritativeInfo, http.StatusMovedPermanently, http.StatusNotFound, http.StatusGone:
		return true
	}
	return false
}

// parseVary returns the header names h's Vary lists, canonical, sorted
// and once each; star reports "*" among them.
func parseVary(h http.Header) (names []string, star bool) {
	for _, line := range h.Values("Vary") {
		for name := range strings.SplitSeq(line, ",") {
			name = strings.TrimSpace(name)
			switch name {
			case "":
			case "*":
				star = true
			default:
				names = append(names, http.CanonicalHeaderKey(name))
			}
		}
	}
	slices.Sort(names)
	return slices.Compact(names), star
}

// storable reports whether the response of status with header h to a
// GET request with header req may be stored by a route with options o,
// whose per-entry bound is maxEntry.
func (o *RouteOptions) storable(req http.Header, status int, h http.Header, maxEntry int64) bool {
	if !cacheableStatus(status) {
		return false
	}
	d := parseCacheControl(h.Values("Cache-Control"))
	if d.noStore || d.private {
		return false
	}
	if _, star := parseVary(h); star {
		return false
	}
	if !d.public && (h.Get("Set-Cookie") != "" || req.Get("Authorization") != "") {
		return false
	}
	if ct := h.Get("Content-Type"); strings.HasPrefix(strings.ToLower(strings.TrimSpace(ct)), "text/event-stream") {
		return false
	}
	if h.Get("Trailer") != "" || h.Get("Content-Range") != "" {
		return false
	}
	if cl := h.Get("Content-Length"); cl != "" {
		if n, ok := contentLength(cl); !ok || n > maxEntry {
			return false
		}
	}
	if _, explicit := freshness(h, d, time.Time{}); explicit || o.DefaultTTL > 0 {
		return true
	}
	// No freshness, but a validator: stored to be revalidated each time.
	return d.noCache && (h.Get("ETag") != "" || h.Get("Last-Modified") != "")
}

// contentLength parses a Content-Length value.
func contentLength(s string) (int64, bool) {
	n := int64(0)
	if s == "" {
		return 0, false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' || n > (1<<62)/10 {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// newEntry builds the entry of a response of status with header h and
// body to a request with header req for primary key pk (host, path and
// query its parts), requested at requestTime and received at
// responseTime.
func (f *filter) newEntry(pk, host, path, query string, req http.Header, status int, h http.Header, body []byte, requestTime, responseTime time.Time) *entry {
	e := &entry{
		route: f.o.Route, host: host, path: path, query: query, primary: pk,
		status: status, body: body, responseTime: responseTime,
		dirs:       parseCacheControl(h.Values("Cache-Control")),
		initialAge: initialAge(h, requestTime, responseTime),
		etag:       h.Get("ETag"), lastModified: h.Get("Last-Modified"),
	}
	e.vary, _ = parseVary(h)
	e.key = variantKey(pk, e.vary, req)
	date, err := http.ParseTime(h.Get("Date"))
	if err != nil {
		date = responseTime
	}
	var explicit bool
	if e.lifetime, explicit = freshness(h, e.dirs, date); !explicit {
		e.lifetime = f.o.DefaultTTL
	}
	if f.o.TagsHeader != "" {
		for _, v := range h.Values(f.o.TagsHeader) {
			e.tags = append(e.tags, strings.Fields(v)...)
		}
	}
	e.header = make(http.Header, len(h))
	size := int64(len(body)+len(e.key)+len(pk)) + entryOverhead
	for k, vs := range h {
		if k == "Age" {
			continue
		}
		vs = slices.Clip(slices.Clone(vs))
		e.header[k] = vs
		size += int64(len(k))
		for _, v := range vs {
			size += int64(len(v)) + 16
		}
	}
	for _, t := range e.tags {
		size += int64(len(t)) + 16
	}
	e.size = size
	return e
}

// refreshed returns a copy of e updated by a 304 with header h
// (RFC 9111 section 4.3.4): its header fields replace e's, and its
// freshness and age start again.
func (f *filter) refreshed(e *entry, h http.Header, requestTime, responseTime time.Time) *entry {
	merged := e.header.Clone()
	for k, vs := range h {
		switch k {
		case "Content-Length", "Content-Encoding", "Transfer-Encoding", "Content-Range":
			continue // describe the 304's (empty) body, not the stored one
		}
		merged[k] = vs
	}
	n := f.newEntry(e.primary, e.host, e.path, e.query, nil, e.status, merged, e.body, requestTime, responseTime)
	n.vary, n.key = e.vary, e.key // the variant is the one revalidated
	return n
}
