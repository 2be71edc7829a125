package cache

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// directives are the Cache-Control response directives the cache acts
// on (RFC 9111 section 5.2.2, RFC 5861). Unknown directives are ignored.
type directives struct {
	noStore, noCache, private, public bool
	// mustRevalidate is must-revalidate or proxy-revalidate: a stale
	// response is never served without a successful revalidation.
	mustRevalidate bool
	// maxAge and sMaxAge are set when has*: a malformed value is 0
	// (stale at once), as RFC 9111 section 4.2.1 asks.
	maxAge, sMaxAge       time.Duration
	hasMaxAge, hasSMaxAge bool
	// staleWhileRevalidate and staleIfError are the windows past
	// freshness the response allows (RFC 5861); 0 when absent.
	staleWhileRevalidate, staleIfError time.Duration
}

// parseCacheControl reads the Cache-Control field lines values. A
// directive with a field-name list (no-cache="Set-Cookie",
// private="X") is taken as the unqualified directive: stricter, never
// wrong.
func parseCacheControl(values []string) directives {
	var d directives
	for _, line := range values {
		for part := range strings.SplitSeq(line, ",") {
			name, value, _ := strings.Cut(strings.TrimSpace(part), "=")
			name = strings.ToLower(strings.TrimSpace(name))
			value = strings.Trim(strings.TrimSpace(value), `"`)
			switch name {
			case "no-store":
				d.noStore = true
			case "no-cache":
				d.noCache = true
			case "private":
				d.private = true
			case "public":
				d.public = true
			case "must-revalidate", "proxy-revalidate":
				d.mustRevalidate = true
			case "max-age":
				d.maxAge, d.hasMaxAge = deltaSeconds(value), true
			case "s-maxage":
				d.sMaxAge, d.hasSMaxAge = deltaSeconds(value), true
			case "stale-while-revalidate":
				d.staleWhileRevalidate = deltaSeconds(value)
			case "stale-if-error":
				d.staleIfError = deltaSeconds(value)
			}
		}
	}
	return d
}

// maxDelta is the largest delta-seconds the cache keeps: 2^31 seconds,
// as RFC 9111 section 1.2.2 allows for larger ones.
const maxDelta = time.Duration(math.MaxInt32) * time.Second

// deltaSeconds parses a delta-seconds value: 0 when malformed, maxDelta
// when larger.
func deltaSeconds(s string) time.Duration {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n > math.MaxInt32 {
		return maxDelta
	}
	return time.Duration(n) * time.Second
}

// freshness returns how long a response with header h and directives d
// is fresh for a shared cache, and whether the response said (s-maxage,
// then max-age, then Expires against Date). An unparsable Expires is in
// the past (RFC 9111 section 5.3). date is the response's Date, or when
// it was received.
func freshness(h http.Header, d directives, date time.Time) (time.Duration, bool) {
	switch {
	case d.hasSMaxAge:
		return d.sMaxAge, true
	case d.hasMaxAge:
		return d.maxAge, true
	}
	if v := h.Get("Expires"); v != "" {
		exp, err := http.ParseTime(v)
		if err != nil {
			return 0, true
		}
		return max(exp.Sub(date), 0), true
	}
	return 0, false
}

// initialAge is the corrected initial age of a response (RFC 9111
// section 4.2.3): what it was when received, from its Date and Age and
// the time the request took.
func initialAge(h http.Header, requestTime, responseTime time.Time) time.Duration {
	apparent := time.Duration(0)
	if date, err := http.ParseTime(h.Get("Date")); err == nil {
		apparent = max(responseTime.Sub(date), 0)
	}
	corrected := deltaSeconds(h.Get("Age")) + responseTime.Sub(requestTime)
	return max(apparent, corrected)
}

// etagMatch reports whether the If-None-Match list list names etag, by
// weak comparison (RFC 9110 section 13.1.2), or is "*".
func etagMatch(list, etag string) bool {
	if strings.TrimSpace(list) == "*" {
		return etag != ""
	}
	if etag == "" {
		return false
	}
	want := strings.TrimPrefix(etag, "W/")
	for tag := range strings.SplitSeq(list, ",") {
		if strings.TrimPrefix(strings.TrimSpace(tag), "W/") == want {
			return true
		}
	}
	return false
}

// byteRange is a satisfiable single byte range: its first and last
// byte, inclusive.
type byteRange struct{ first, last int64 }

// parseRange reads a Range field for a representation of size bytes. It
// knows one range of bytes ("bytes=a-b", "bytes=a-", "bytes=-n"): ok is
// false for anything else (several ranges, other units, bad syntax), and
// the Range is then ignored, as RFC 9110 section 14.2 allows. For a
// single range that does not overlap the representation, ok is true and
// satisfiable false: a 416.
func parseRange(s string, size int64) (r byteRange, ok, satisfiable bool) {
	spec, found := strings.CutPrefix(strings.TrimSpace(s), "bytes=")
	if !found || strings.Contains(spec, ",") {
		return byteRange{}, false, false
	}
	a, b, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return byteRange{}, false, false
	}
	num := func(s string) (int64, bool) {
		if s == "" || strings.TrimLeft(s, "0123456789") != "" {
			return 0, false
		}
		n, err := strconv.ParseInt(s, 10, 64)
		return n, err == nil
	}
	switch {
	case a == "": // the last n bytes
		n, ok := num(b)
		if !ok {
			return byteRange{}, false, false
		}
		if n == 0 || size == 0 {
			return byteRange{}, true, false
		}
		return byteRange{max(size-n, 0), size - 1}, true, true
	default:
		first, ok := num(a)
		if !ok {
			return byteRange{}, false, false
		}
		last := size - 1
		if b != "" {
			if last, ok = num(b); !ok || last < first {
				return byteRange{}, false, false
			}
		}
		if first >= size {
			return byteRange{}, true, false
		}
		return byteRange{first, min(last, size-1)}, true, true
	}
}
