package cache

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a settable clock the tests make the cache's.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func fakeClock(t *testing.T) *clock {
	c := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	old := now
	now = c.now
	t.Cleanup(func() { now = old })
	return c
}

// origin is a backend handler that counts its requests and records the
// last one's header.
type origin struct {
	n    atomic.Int32
	mu   sync.Mutex
	last http.Header
	h    func(w http.ResponseWriter, r *http.Request) error
}

func (o *origin) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	o.n.Add(1)
	o.mu.Lock()
	o.last = r.Header.Clone()
	o.mu.Unlock()
	return o.h(w, r)
}

func (o *origin) lastHeader() http.Header {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.last
}

// fixed answers every request with header hdr (pairs) and body.
func fixed(body string, hdr ...string) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		for i := 0; i < len(hdr); i += 2 {
			w.Header().Add(hdr[i], hdr[i+1])
		}
		w.Write([]byte(body))
		return nil
	}
}

func chain(s *Store, o RouteOptions, up *origin) pipeline.Handler {
	return pipeline.Chain(up, Filter(s, o))
}

func do(t *testing.T, h pipeline.Handler, method, target string, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, target, nil)
	for i := 0; i < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	if err := h.ServeHTTP(w, r); err != nil {
		e := pipeline.AsError(err)
		w.Code = e.Status
		w.Header().Set("X-Test-Error", e.Msg)
	}
	return w
}

func wantStatus(t *testing.T, w *httptest.ResponseRecorder, code int, cacheStatus string) {
	t.Helper()
	if w.Code != code || w.Header().Get("Cache-Status") != cacheStatus {
		t.Fatalf("got %d %q, want %d %q (body %q)", w.Code, w.Header().Get("Cache-Status"), code, cacheStatus, w.Body.String())
	}
}

func TestMissThenHitWithAge(t *testing.T) {
	c := fakeClock(t)
	up := &origin{h: fixed("hello", "Cache-Control", "max-age=60", "Content-Type", "text/plain")}
	h := chain(New(Options{}), RouteOptions{Route: "r"}, up)
	w := do(t, h, "GET", "/a?x=1")
	wantStatus(t, w, 200, "sidemesh; fwd=miss; stored")
	if w.Body.String() != "hello" || w.Header().Get("Age") != "0" {
		t.Fatalf("body %q age %q", w.Body.String(), w.Header().Get("Age"))
	}
	c.advance(10 * time.Second)
	w = do(t, h, "GET", "/a?x=1")
	wantStatus(t, w, 200, "sidemesh; hit")
	if w.Body.String() != "hello" || w.Header().Get("Age") != "10" || w.Header().Get("Content-Type") != "text/plain" {
		t.Fatalf("hit: body %q age %q header %v", w.Body.String(), w.Header().Get("Age"), w.Header())
	}
	if n := up.n.Load(); n != 1 {
		t.Fatalf("origin saw %d requests, want 1", n)
	}
	// Another query is another key; past max-age the response is stale.
	wantStatus(t, do(t, h, "GET", "/a?x=2"), 200, "sidemesh; fwd=miss; stored")
	c.advance(51 * time.Second)
	wantStatus(t, do(t, h, "GET", "/a?x=1"), 200, "sidemesh; fwd=stale; fwd-status=200; stored")
}

func TestAgeFromUpstream(t *testing.T) {
	c := fakeClock(t)
	up := &origin{h: fixed("x", "Cache-Control", "max-age=60", "Age", "50")}
	h := chain(New(Options{}), RouteOptions{Route: "r"}, up)
	do(t, h, "GET", "/")
	c.advance(5 * time.Second)
	w := do(t, h, "GET", "/")
	wantStatus(t, w, 200, "sidemesh; hit")
	if got := w.Header().Get("Age"); got != "55" {
		t.Fatalf("Age %q, want 55", got)
	}
	c.advance(6 * time.Second) // 61 s old
	wantStatus(t, do(t, h, "GET", "/"), 200, "sidemesh; fwd=stale; fwd-status=200; stored")
}

func TestNotStored(t *testing.T) {
	for _, tc := range []struct {
		name    string
		req     []string
		resp    []string
		status  int
		stored  bool
		comment string
	}{
		{name: "no-store", resp: []string{"Cache-Control", "max-age=60, no-store"}},
		{name: "private", resp: []string{"Cache-Control", "private, max-age=60"}},
		{name: "authorization", req: []string{"Authorization", "Bearer x"}, resp: []string{"Cache-Control", "max-age=60"}},
		{name: "authorization public", req: []string{"Authorization", "Bearer x"}, resp: []string{"Cache-Control", "public, max-age=60"}, stored: true},
		{name: "set-cookie", resp: []string{"Cache-Control", "max-age=60", "Set-Cookie", "a=b"}},
		{name: "set-cookie public", resp: []string{"Cache-Control", "public, max-age=60", "Set-Cookie", "a=b"}, stored: true},
		{name: "no freshness", resp: []string{"ETag", `"v1"`}},
		{name: "vary star", resp: []string{"Cache-Control", "max-age=60", "Vary", "*"}},
		{name: "status 500", resp: []string{"Cache-Control", "max-age=60"}, status: 500},
		{name: "status 204", resp: []string{"Cache-Control", "max-age=60"}, status: 204},
		{name: "status 404", resp: []string{"Cache-Control", "max-age=60"}, status: 404, stored: true},
		{name: "s-maxage", resp: []string{"Cache-Control", "s-maxage=60"}, stored: true},
		{name: "expires", resp: []string{"Expires", "Fri, 02 Jan 2026 03:05:05 GMT"}, stored: true},
		{name: "event stream", resp: []string{"Cache-Control", "max-age=60", "Content-Type", "text/event-stream"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fakeClock(t)
			up := &origin{h: func(w http.ResponseWriter, r *http.Request) error {
				for i := 0; i < len(tc.resp); i += 2 {
					w.Header().Add(tc.resp[i], tc.resp[i+1])
				}
				if tc.status != 0 {
					w.WriteHeader(tc.status)
				}
				w.Write([]byte("body"))
				return nil
			}}
			s := New(Options{})
			h := chain(s, RouteOptions{Route: "r"}, up)
			do(t, h, "GET", "/p", tc.req...)
			w := do(t, h, "GET", "/p", tc.req...)
			if got := up.n.Load() == 1; got != tc.stored {
				t.Fatalf("origin saw %d requests; stored: %v, want %v (Cache-Status %q)", up.n.Load(), got, tc.stored, w.Header().Get("Cache-Status"))
			}
			if !tc.stored && w.Header().Get("Cache-Status") != "sidemesh; fwd=miss" {
				t.Fatalf("Cache-Status %q", w.Header().Get("Cache-Status"))
			}
		})
	}
}

func TestDefaultTTL(t *testing.T) {
	c := fakeClock(t)
	up := &origin{h: fixed("x")}
	h := chain(New(Options{}), RouteOptions{Route: "r", DefaultTTL: 30 * time.Second}, up)
	do(t, h, "GET", "/")
	c.advance(29 * time.Second)
	wantStatus(t, do(t, h, "GET", "/"), 200, "sidemesh; hit")
	c.advance(time.Second)
	wantStatus(t, do(t, h, "GET", "/"), 200, "sidemesh; fwd=stale; fwd-status=200; stored")
}

func TestVaryVariants(t *testing.T) {
	fakeClock(t)
	up := &origin{h: func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Vary", "accept-language")
		fmt.Fprintf(w, "lang=%s", r.Header.Get("Accept-Language"))
		return nil
	}}
	s := New(Options{})
	h := chain(s, RouteOptions{Route: "r"}, up)
	for _, lang := range []string{"en", "fr", ""} {
		w := do(t, h, "GET", "/v", "Accept-Language", lang)
		wantStatus(t, w, 200, "sidemesh; fwd=miss; stored")
	}
	for _, lang := range []string{"fr", "en", ""} {
		w := do(t, h, "GET", "/v", "Accept-Language", lang)
		wantStatus(t, w, 200, "sidemesh; hit")
		if w.Body.String() != "lang="+lang {
			t.Fatalf("Accept-Language %q got %q", lang, w.Body.String())
		}
	}
	if n := up.n.Load(); n != 3 {
		t.Fatalf("origin saw %d requests, want 3", n)
	}
	if st := s.Stats(); st.Entries != 3 {
		t.Fatalf("%d entries, want 3", st.Entries)
	}
	// A purge of the URL takes every variant.
	if n := s.PurgeURL("", "/v", ""); n != 3 {
		t.Fatalf("purged %d, want 3", n)
	}
}

func TestRevalidationWith304(t *testing.T) {
	c := fakeClock(t)
	up := &origin{h: func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("ETag", `"v1"`)
		w.Header().Set("Cache-Control", "max-age=10")
		if r.Header.Get("If-None-Match") == `"v1"` {
			w.Header().Set("Cache-Control", "max-age=20")
			w.WriteHeader(http.StatusNotModified)
			return nil
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("version 1"))
		return nil
	}}
	h := chain(New(Options{}), RouteOptions{Route: "r"}, up)
	do(t, h, "GET", "/doc")
	c.advance(11 * time.Second)
	w := do(t, h, "GET", "/doc")
	wantStatus(t, w, 200, "sidemesh; fwd=stale; fwd-status=304")
	if w.Body.String() != "version 1" || w.Header().Get("Content-Type") != "text/plain" || w.Header().Get("Cache-Control") != "max-age=20" {
		t.Fatalf("revalidated: %q %v", w.Body.String(), w.Header())
	}
	if got := up.lastHeader().Get("If-None-Match"); got != `"v1"` {
		t.Fatalf("upstream If-None-Match %q", got)
	}
	c.advance(19 * time.Second) // the 304 gave 20 s more
	wantStatus(t, do(t, h, "GET", "/doc"), 200, "sidemesh; hit")
	// The client's own conditional request is answered from the cache.
	w = do(t, h, "GET", "/doc", "If-None-Match", `W/"v1", "other"`)
	wantStatus(t, w, 304, "sidemesh; hit")
	if w.Body.Len() != 0 || up.n.Load() != 2 {
		t.Fatalf("304 body %q, origin requests %d", w.Body.String(), up.n.Load())
	}
	wantStatus(t, do(t, h, "GET", "/doc", "If-None-Match", `"v0"`), 200, "sidemesh; hit")
}

func TestNoCacheRevalidatesEveryTime(t *testing.T) {
	fakeClock(t)
	up := &origin{h: func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("Last-Modified", "Thu, 01 Jan 2026 00:00:00 GMT")
		if r.Header.Get("If-Modified-Since") != "" {
			w.WriteHeader(http.StatusNotModified)
			return nil
		}
		w.Write([]byte("body"))
		return nil
	}}
	h := chain(New(Options{}), RouteOptions{Route: "r"}, up)
	wantStatus(t, do(t, h, "GET", "/"), 200, "sidemesh; fwd=miss; stored")
	for range 2 {
		w := do(t, h, "GET", "/")
		wantStatus(t, w, 200, "sidemesh; fwd=stale; fwd-status=304")
		if w.Body.String() != "body" {
			t.Fatalf("body %q", w.Body.String())
		}
	}
	if up.n.Load() != 3 {
		t.Fatalf("origin saw %d requests, want 3", up.n.Load())
	}
}

func TestStaleIfError(t *testing.T) {
	c := fakeClock(t)
	var down atomic.Int32 // 0 up, 1 answers 503, 2 unreachable
	up := &origin{h: func(w http.ResponseWriter, r *http.Request) error {
		switch down.Load() {
		case 1:
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("down"))
			return nil
		case 2:
			return pipeline.Errorf(http.StatusServiceUnavailable, pipeline.KindConnectFailure, "connection refused")
		}
		w.Header().Set("Cache-Control", "max-age=1, stale-if-error=60")
		w.Write([]byte("good"))
		return nil
	}}
	h := chain(New(Options{}), RouteOptions{Route: "r", StaleIfError: 30 * time.Second}, up)
	do(t, h, "GET", "/")
	c.advance(5 * time.Second)
	down.Store(1)
	w := do(t, h, "GET", "/")
	wantStatus(t, w, 200, "sidemesh; fwd=stale; fwd-status=503; detail=stale-if-error")
	if w.Body.String() != "good" || w.Header().Get("Age") != "5" {
		t.Fatalf("stale: %q age %q", w.Body.String(), w.Header().Get("Age"))
	}
	down.Store(2)
	w = do(t, h, "GET", "/")
	wantStatus(t, w, 200, "sidemesh; fwd=stale; fwd-status=503; detail=stale-if-error")
	// The route caps the response's 60 s at 30 s.
	c.advance(30 * time.Second)
	w = do(t, h, "GET", "/")
	if w.Code != 503 {
		t.Fatalf("past the window: %d %q", w.Code, w.Body.String())
	}
	down.Store(1)
	wantStatus(t, do(t, h, "GET", "/"), 503, "sidemesh; fwd=stale; fwd-status=503")
}

func TestStaleWhileRevalidate(t *testing.T) {
	c := fakeClock(t)
	var version atomic.Int32
	release := make(chan struct{})
	up := &origin{h: func(w http.ResponseWriter, r *http.Request) error {
		v := version.Add(1)
		if v > 1 {
			<-release
		}
		w.Header().Set("Cache-Control", "max-age=10, stale-while-revalidate=60")
		fmt.Fprintf(w, "v%d", v)
		return nil
	}}
	s := New(Options{})
	h := chain(s, RouteOptions{Route: "r"}, up)
	do(t, h, "GET", "/")
	c.advance(15 * time.Second)
	for range 3 { // stale, served at once; one refresh only
		w := do(t, h, "GET", "/")
		wantStatus(t, w, 200, "sidemesh; hit; fwd=stale; detail=revalidating")
		if w.Body.String() != "v1" {
			t.Fatalf("body %q", w.Body.String())
		}
	}
	close(release)
	meshtest.WaitFor(t, 5*time.Second, "the background refresh", func() bool {
		w := do(t, h, "GET", "/")
		return w.Body.String() == "v2" && w.Header().Get("Cache-Status") == "sidemesh; hit"
	})
	if n := up.n.Load(); n != 2 {
		t.Fatalf("origin saw %d requests, want 2", n)
	}
}

func TestMustRevalidateIsNeverStale(t *testing.T) {
	c := fakeClock(t)
	var fail atomic.Bool
	up := &origin{h: func(w http.ResponseWriter, r *http.Request) error {
		if fail.Load() {
			return pipeline.Errorf(502, pipeline.KindReset, "reset")
		}
		w.Header().Set("Cache-Control", "max-age=1, must-revalidate, stale-if-error=60, stale-while-revalidate=60")
		w.Write([]byte("x"))
		return nil
	}}
	h := chain(New(Options{}), RouteOptions{Route: "r"}, up)
	do(t, h, "GET", "/")
	c.advance(2 * time.Second)
	fail.Store(true)
	if w := do(t, h, "GET", "/"); w.Code != 502 {
		t.Fatalf("got %d, want the backend's failure", w.Code)
	}
}

func TestConcurrentColdMissesMakeOneRequest(t *testing.T) {
	fakeClock(t)
	release := make(chan struct{})
	up := &origin{h: func(w http.ResponseWriter, r *http.Request) error {
		<-release
		w.Header().Set("Cache-Control", "max-age=60")
		w.Write([]byte("shared"))
		return nil
	}}
	s := New(Options{})
	h := chain(s, RouteOptions{Route: "r"}, up)
	const n = 200
	var wg sync.WaitGroup
	results := make(chan *httptest.ResponseRecorder, n)
	for range n {
		wg.Go(func() { results <- do(t, h, "GET", "/cold") })
	}
	meshtest.WaitFor(t, 10*time.Second, "199 requests waiting on the first", func() bool { return s.Stats().Waiting == n-1 })
	close(release)
	wg.Wait()
	close(results)
	statuses := map[string]int{}
	for w := range results {
		if w.Code != 200 || w.Body.String() != "shared" {
			t.Fatalf("got %d %q", w.Code, w.Body.String())
		}
		statuses[w.Header().Get("Cache-Status")]++
	}
	if got := up.n.Load(); got != 1 {
		t.Fatalf("origin saw %d requests, want 1", got)
	}
	if statuses["sidemesh; hit; collapsed"] != n-1 || statuses["sidemesh; fwd=miss; stored"] != 1 {
		t.Fatalf("Cache-Status counts %v", statuses)
	}
}

func TestUncacheableLeaderLetsWaitersGo(t *testing.T) {
	fakeClock(t)
	release := make(chan struct{})
	up := &origin{h: func(w http.ResponseWriter, r *http.Request) error {
		<-release
		w.Header().Set("Cache-Control", "no-store")
		w.Write([]byte("own"))
		return nil
	}}
	s := New(Options{})
	h := chain(s, RouteOptions{Route: "r"}, up)
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			if w := do(t, h, "GET", "/u"); w.Body.String() != "own" {
				t.Errorf("body %q", w.Body.String())
			}
		})
	}
	meshtest.WaitFor(t, 10*time.Second, "4 requests waiting", func() bool { return s.Stats().Waiting == 4 })
	close(release)
	wg.Wait()
	if n := up.n.Load(); n != 5 {
		t.Fatalf("origin saw %d requests, want 5", n)
	}
}

func TestHeadAndRangeFromStoredResponse(t *testing.T) {
	fakeClock(t)
	up := &origin{h: fixed("0123456789", "Cache-Control", "max-age=60", "ETag", `"e"`, "Last-Modified", "Thu, 01 Jan 2026 00:00:00 GMT")}
	h := chain(New(Options{}), RouteOptions{Route: "r"}, up)
	// A ranged miss fetches the whole response, stores it, and answers
	// the range.
	w := do(t, h, "GET", "/f", "Range", "bytes=2-4")
	wantStatus(t, w, 206, "sidemesh; fwd=miss; stored")
	if w.Body.String() != "234" || w.Header().Get("Content-Range") != "bytes 2-4/10" {
		t.Fatalf("range miss: %q %v", w.Body.String(), w.Header())
	}
	if got := up.lastHeader().Get("Range"); got != "" {
		t.Fatalf("the fetch sent Range %q", got)
	}
	for _, tc := range []struct {
		method, rng, ifRange string
		code                 int
		body, contentRange   string
	}{
		{"HEAD", "", "", 200, "", ""},
		{"GET", "bytes=-3", "", 206, "789", "bytes 7-9/10"},
		{"GET", "bytes=5-", "", 206, "56789", "bytes 5-9/10"},
		{"GET", "bytes=8-100", "", 206, "89", "bytes 8-9/10"},
		{"GET", "bytes=10-", "", 416, "", "bytes */10"},
		{"GET", "bytes=0-1,3-4", "", 200, "0123456789", ""},
		{"GET", "bytes=1-2", `"e"`, 206, "12", "bytes 1-2/10"},
		{"GET", "bytes=1-2", `"other"`, 200, "0123456789", ""},
		{"GET", "bytes=1-2", "Thu, 01 Jan 2026 00:00:00 GMT", 206, "12", "bytes 1-2/10"},
		{"HEAD", "bytes=1-2", "", 206, "", "bytes 1-2/10"},
	} {
		var hdr []string
		if tc.rng != "" {
			hdr = append(hdr, "Range", tc.rng)
		}
		if tc.ifRange != "" {
			hdr = append(hdr, "If-Range", tc.ifRange)
		}
		w := do(t, h, tc.method, "/f", hdr...)
		if w.Code != tc.code || w.Body.String() != tc.body || w.Header().Get("Content-Range") != tc.contentRange || w.Header().Get("Cache-Status") != "sidemesh; hit" {
			t.Errorf("%s %s (If-Range %s): %d %q %q %q", tc.method, tc.rng, tc.ifRange, w.Code, w.Body.String(), w.Header().Get("Content-Range"), w.Header().Get("Cache-Status"))
		}
		if tc.method == "HEAD" && tc.code == 200 && w.Header().Get("Content-Length") != "10" {
			t.Errorf("HEAD Content-Length %q", w.Header().Get("Content-Length"))
		}
	}
	if up.n.Load() != 1 {
		t.Fatalf("origin saw %d requests, want 1", up.n.Load())
	}
}

func TestHeadMissPassesThrough(t *testing.T) {
	fakeClock(t)
	up := &origin{h: fixed("", "Cache-Control", "max-age=60")}
	h := chain(New(Options{}), RouteOptions{Route: "r"}, up)
	wantStatus(t, do(t, h, "HEAD", "/"), 200, "sidemesh; fwd=miss")
	wantStatus(t, do(t, h, "HEAD", "/"), 200, "sidemesh; fwd=miss")
	wantStatus(t, do(t, h, "POST", "/"), 200, "sidemesh; fwd=bypass")
}

func TestLargeResponsePassesThrough(t *testing.T) {
	fakeClock(t)
	big := strings.Repeat("b", 3000)
	up := &origin{h: func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Cache-Control", "max-age=60")
		for i := 0; i < len(big); i += 1000 { // no Content-Length: found too large while buffering
			w.Write([]byte(big[i : i+1000]))
		}
		return nil
	}}
	s := New(Options{MaxBytes: 1 << 20, MaxEntryBytes: 2048})
	h := chain(s, RouteOptions{Route: "r"}, up)
	for range 2 {
		w := do(t, h, "GET", "/big")
		wantStatus(t, w, 200, "sidemesh; fwd=miss; detail=too-large")
		if w.Body.String() != big {
			t.Fatalf("body of %d bytes, want %d", w.Body.Len(), len(big))
		}
	}
	if st := s.Stats(); st.Entries != 0 || up.n.Load() != 2 {
		t.Fatalf("stats %+v, origin requests %d", st, up.n.Load())
	}
}

func TestEventStreamIsNotBuffered(t *testing.T) {
	fakeClock(t)
	flushed := make(chan struct{})
	up := &origin{h: func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "max-age=60")
		w.Write([]byte("data: 1\n\n"))
		http.NewResponseController(w).Flush()
		<-flushed
		return nil
	}}
	h := chain(New(Options{}), RouteOptions{Route: "r"}, up)
	w := &flushRecorder{ResponseRecorder: httptest.NewRecorder(), flushed: flushed}
	if err := h.ServeHTTP(w, httptest.NewRequest("GET", "/events", nil)); err != nil {
		t.Fatal(err)
	}
	if w.Body.String() != "data: 1\n\n" {
		t.Fatalf("body %q", w.Body.String())
	}
}

// flushRecorder closes flushed when it is flushed with a body.
type flushRecorder struct {
	*httptest.ResponseRecorder
	flushed chan struct{}
}

func (f *flushRecorder) Flush() {
	if f.Body.Len() > 0 {
		close(f.flushed)
	}
}

func TestPurgeByURLAndTag(t *testing.T) {
	fakeClock(t)
	up := &origin{h: func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Surrogate-Key", "all "+strings.TrimPrefix(r.URL.Path, "/"))
		w.Write([]byte(r.URL.Path))
		return nil
	}}
	s := New(Options{})
	h := chain(s, RouteOptions{Route: "r", TagsHeader: "Surrogate-Key"}, up)
	for _, p := range []string{"/a", "/b", "/c", "/c?q=1"} {
		do(t, h, "GET", p)
	}
	if n := s.PurgeURL("other.example", "/a", ""); n != 0 {
		t.Fatalf("purged %d for another host", n)
	}
	if n := s.PurgeURL("EXAMPLE.com", "/a", ""); n != 1 {
		t.Fatalf("purged %d, want 1", n)
	}
	wantStatus(t, do(t, h, "GET", "/a"), 200, "sidemesh; fwd=miss; stored")
	wantStatus(t, do(t, h, "GET", "/c?q=1"), 200, "sidemesh; hit")
	if n := s.PurgeTag("c"); n != 2 {
		t.Fatalf("purged %d tagged c, want 2", n)
	}
	if n := s.PurgeTag("all"); n != 2 {
		t.Fatalf("purged %d tagged all, want 2", n)
	}
	if st := s.Stats(); st.Entries != 0 || st.Bytes != 0 || st.Purged != 5 {
		t.Fatalf("stats %+v", st)
	}
}

func TestMemoryStaysWithinByteBound(t *testing.T) {
	fakeClock(t)
	const maxBytes = 1 << 20
	body := strings.Repeat("m", 10<<10)
	up := &origin{h: fixed(body, "Cache-Control", "max-age=600")}
	s := New(Options{MaxBytes: maxBytes})
	h := chain(s, RouteOptions{Route: "r"}, up)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 2000 { // 20 MiB of responses through a 1 MiB cache
		do(t, h, "GET", fmt.Sprintf("/m/%d", i))
		if st := s.Stats(); st.Bytes > maxBytes {
			t.Fatalf("after %d responses the store holds %d bytes, over %d", i+1, st.Bytes, maxBytes)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	st := s.Stats()
	if st.Evictions == 0 || st.Entries > maxBytes/len(body) {
		t.Fatalf("stats %+v", st)
	}
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 3*maxBytes {
		t.Fatalf("the heap grew by %d bytes for a %d-byte cache", grew, maxBytes)
	}
	// A lower bound evicts at once.
	s.SetOptions(Options{MaxBytes: maxBytes / 4})
	if st := s.Stats(); st.Bytes > maxBytes/4 {
		t.Fatalf("after SetOptions: %+v", st)
	}
}

func TestUpstreamErrorWithoutStaleIsReturned(t *testing.T) {
	fakeClock(t)
	want := errors.New("boom")
	up := &origin{h: func(w http.ResponseWriter, r *http.Request) error { return want }}
	h := chain(New(Options{}), RouteOptions{Route: "r"}, up)
	r := httptest.NewRequest("GET", "/", nil)
	if err := h.ServeHTTP(httptest.NewRecorder(), r); !errors.Is(err, want) {
		t.Fatalf("got %v", err)
	}
}

// TestCollapsedRevalidation: requests that wait on another's
// revalidation of a no-cache response are answered with its result.
func TestCollapsedRevalidation(t *testing.T) {
	fakeClock(t)
	var block atomic.Bool
	release := make(chan struct{})
	up := &origin{h: func(w http.ResponseWriter, r *http.Request) error {
		if block.Load() {
			<-release
		}
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("ETag", `"a"`)
		if r.Header.Get("If-None-Match") == `"a"` {
			w.WriteHeader(http.StatusNotModified)
			return nil
		}
		w.Write([]byte("a"))
		return nil
	}}
	s := New(Options{})
	h := chain(s, RouteOptions{Route: "r"}, up)
	do(t, h, "GET", "/")
	block.Store(true)
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			if w := do(t, h, "GET", "/"); w.Code != 200 || w.Body.String() != "a" {
				t.Errorf("%d %q", w.Code, w.Body.String())
			}
		})
	}
	meshtest.WaitFor(t, 10*time.Second, "9 requests waiting", func() bool { return s.Stats().Waiting == 9 })
	close(release)
	wg.Wait()
	if n := up.n.Load(); n != 2 {
		t.Fatalf("origin saw %d requests, want 2", n)
	}
}

// TestWaiterStopsWhenItsClientLeaves: a request waiting on another's
// fetch returns when its own context ends; the fetch goes on.
func TestWaiterStopsWhenItsClientLeaves(t *testing.T) {
	fakeClock(t)
	release := make(chan struct{})
	up := &origin{h: func(w http.ResponseWriter, r *http.Request) error {
		<-release
		w.Header().Set("Cache-Control", "max-age=60")
		w.Write([]byte("late"))
		return nil
	}}
	s := New(Options{})
	h := chain(s, RouteOptions{Route: "r"}, up)
	var leader sync.WaitGroup
	leader.Go(func() { do(t, h, "GET", "/slow") })
	meshtest.WaitFor(t, 5*time.Second, "the first request at the origin", func() bool { return up.n.Load() == 1 })
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequestWithContext(ctx, "GET", "/slow", nil))
	}()
	meshtest.WaitFor(t, 5*time.Second, "the second request waiting", func() bool { return s.Stats().Waiting == 1 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("the waiter returned %v", err)
	}
	if w := s.Stats().Waiting; w != 0 {
		t.Fatalf("%d still waiting", w)
	}
	close(release)
	leader.Wait()
	wantStatus(t, do(t, h, "GET", "/slow"), 200, "sidemesh; hit")
}
