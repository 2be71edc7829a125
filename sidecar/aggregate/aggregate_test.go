package aggregate

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeService answers a leg's request; it gets the route copy the leg's
// handler was built with and honours its timeout for the response
// headers, as the upstream proxy does.
type fakeService func(route *config.Route, w http.ResponseWriter, r *http.Request) error

// build returns the handler of a route with aggregate a, whose legs call
// services, and records the route copies each service's handler was
// built with.
func build(t testing.TB, a config.Aggregate, timeout time.Duration, services map[string]fakeService, open func(string) bool) (*Handler, map[string]*config.Route) {
	t.Helper()
	if a.OnConflict == "" {
		a.OnConflict = config.ConflictError
	}
	if a.MaxLegBytes == 0 {
		a.MaxLegBytes = config.DefaultMaxLegBytes
	}
	for i := range a.Legs {
		if a.Legs[i].Method == "" {
			a.Legs[i].Method = http.MethodGet
		}
	}
	built := map[string]*config.Route{}
	o := Options{
		Route: &config.Route{Name: "agg", Timeout: timeout, Aggregate: &a},
		Backend: func(route *config.Route, service string) pipeline.Handler {
			built[service] = route
			f := services[service]
			if f == nil {
				t.Fatalf("no fake service %q", service)
			}
			return pipeline.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				if route.Timeout > 0 {
					// The proxy's timeout: until the response headers.
					ctx, cancel := context.WithCancel(r.Context())
					defer cancel()
					hw := &headerWatch{ResponseWriter: w}
					timer := time.AfterFunc(route.Timeout, func() {
						if !hw.wrote.Load() {
							cancel()
						}
					})
					defer timer.Stop()
					w, r = hw, r.WithContext(ctx)
				}
				return f(route, w, r)
			})
		},
	}
	if open != nil {
		o.BreakerOpen = func(_ *config.Route, service string) bool { return open(service) }
	}
	return New(o), built
}

// headerWatch notes whether the response headers were written.
type headerWatch struct {
	http.ResponseWriter
	wrote atomic.Bool
}

func (w *headerWatch) WriteHeader(code int) {
	w.wrote.Store(true)
	w.ResponseWriter.WriteHeader(code)
}

func (w *headerWatch) Write(p []byte) (int, error) {
	w.wrote.Store(true)
	return w.ResponseWriter.Write(p)
}

// serve sends one request to h and returns the recorded response and
// the error h returned.
func serve(h *Handler) (*httptest.ResponseRecorder, error) {
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "/agg", nil)
	r.Header.Set("X-Request-Id", "req-1")
	r.Header.Set("Authorization", "Bearer t")
	r.Header.Set("Cookie", "a=b")
	err := h.ServeHTTP(w, r)
	return w, err
}

func jsonService(body string, hdr ...string) fakeService {
	return func(_ *config.Route, w http.ResponseWriter, r *http.Request) error {
		for i := 0; i+1 < len(hdr); i += 2 {
			w.Header().Add(hdr[i], hdr[i+1])
		}
		io.WriteString(w, body)
		return nil
	}
}

func TestTwoLegsMerged(t *testing.T) {
	h, _ := build(t, config.Aggregate{Legs: []config.Leg{
		{Name: "user", Service: "users", Path: "/users/1", Required: true},
		{Name: "stats", Service: "stats", Path: "/stats", Required: true, Under: config.UnderTop},
	}}, 0, map[string]fakeService{
		"users": jsonService(`{"id": 1}`, "Cache-Control", "max-age=60", "Set-Cookie", "s=1"),
		"stats": jsonService(`{"visits": 3}`, "Cache-Control", "private, max-age=10"),
	}, nil)
	w, err := serve(h)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := w.Body.String(), `{"user":{"id":1},"visits":3}`; got != want {
		t.Errorf("body %s, want %s", got, want)
	}
	for k, want := range map[string]string{HeaderStatus: "complete", HeaderMissing: "", "Cache-Control": "private, max-age=10",
		"Set-Cookie": "", "Content-Type": "application/json"} {
		if got := w.Header().Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
}

// TestLegRequest: what a leg sends: its method and path, with the
// earlier leg's field escaped, and of the client's headers only the
// request ID and those it names.
func TestLegRequest(t *testing.T) {
	var mu sync.Mutex
	var got []*http.Request
	record := func(_ *config.Route, w http.ResponseWriter, r *http.Request) error {
		mu.Lock()
		got = append(got, r)
		mu.Unlock()
		io.WriteString(w, `{}`)
		return nil
	}
	h, _ := build(t, config.Aggregate{Legs: []config.Leg{
		{Name: "order", Service: "orders", Path: "/orders/1", Required: true},
		{Name: "user", Service: "users", Path: "/users/{order.user.id}?full=1", Method: http.MethodPost, Required: true, Headers: []string{"authorization"}},
	}}, 0, map[string]fakeService{
		"orders": jsonService(`{"user": {"id": "a/b c"}}`),
		"users":  record,
	}, nil)
	if _, err := serve(h); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("%d requests", len(got))
	}
	r := got[0]
	if r.Method != http.MethodPost || r.URL.RequestURI() != "/users/a%2Fb%20c?full=1" || r.Host != "users" {
		t.Errorf("request %s %s (Host %s)", r.Method, r.URL.RequestURI(), r.Host)
	}
	if r.Header.Get("Authorization") != "Bearer t" || r.Header.Get("X-Request-Id") != "req-1" || r.Header.Get("Cookie") != "" || r.Header.Get("Accept") != "application/json" {
		t.Errorf("headers %v", r.Header)
	}
}

// TestNonIdempotentLegNotRetried: a POST leg's handler is built with
// retries off; a GET leg's with the route's.
func TestNonIdempotentLegNotRetried(t *testing.T) {
	a := config.Aggregate{Legs: []config.Leg{
		{Name: "get", Service: "g", Path: "/", Required: true},
		{Name: "post", Service: "p", Path: "/", Method: http.MethodPost, Required: true},
	}}
	_, built := build(t, a, time.Second, map[string]fakeService{"g": jsonService(`{}`), "p": jsonService(`{}`)}, nil)
	if r := built["g"]; r.Retries != nil || r.Timeout != time.Second {
		t.Errorf("GET leg: retries %+v, timeout %v; want the route's", r.Retries, r.Timeout)
	}
	if r := built["p"]; r.Retries == nil || r.Retries.Attempts != 0 {
		t.Errorf("POST leg: retries %+v, want none", r.Retries)
	}
}

// TestMergeIndependentOfArrival: legs that collide, answering after
// random delays, merge the same way in 100 runs.
func TestMergeIndependentOfArrival(t *testing.T) {
	services := map[string]fakeService{}
	var legs []config.Leg
	for i := range 4 {
		name := fmt.Sprintf("s%d", i)
		legs = append(legs, config.Leg{Name: name, Service: name, Path: "/", Required: true, Under: config.UnderTop})
		services[name] = func(_ *config.Route, w http.ResponseWriter, r *http.Request) error {
			time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
			fmt.Fprintf(w, `{"winner": %q, "items": [%d], "%s": true}`, name, i, name)
			return nil
		}
	}
	for _, policy := range []string{config.ConflictFirst, config.ConflictLast} {
		h, _ := build(t, config.Aggregate{Legs: legs, OnConflict: policy, Concat: []string{"items"}}, 0, services, nil)
		var first string
		for run := range 100 {
			w, err := serve(h)
			if err != nil {
				t.Fatal(err)
			}
			if run == 0 {
				first = w.Body.String()
			} else if w.Body.String() != first {
				t.Fatalf("%s, run %d: %s, want %s", policy, run, w.Body, first)
			}
		}
		want := `{"items":[0,1,2,3],"s0":true,"s1":true,"s2":true,"s3":true,"winner":"s0"}`
		if policy == config.ConflictLast {
			want = strings.Replace(want, `"winner":"s0"`, `"winner":"s3"`, 1)
		}
		if first != want {
			t.Errorf("%s: %s, want %s", policy, first, want)
		}
	}
}

// TestLegTimeout: an optional leg slower than its timeout is cancelled
// and left out; the answer comes at its timeout.
func TestLegTimeout(t *testing.T) {
	cancelled := make(chan struct{})
	h, _ := build(t, config.Aggregate{Legs: []config.Leg{
		{Name: "fast", Service: "fast", Path: "/", Required: true},
		{Name: "slow", Service: "slow", Path: "/", Timeout: 50 * time.Millisecond},
	}}, time.Second, map[string]fakeService{
		"fast": jsonService(`{"ok": 1}`),
		"slow": func(_ *config.Route, w http.ResponseWriter, r *http.Request) error {
			<-r.Context().Done()
			close(cancelled)
			return pipeline.Errorf(http.StatusGatewayTimeout, pipeline.KindTimeout, "upstream %q: no response headers within the upstream timeout", "slow")
		},
	}, nil)
	start := time.Now()
	w, err := serve(h)
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-cancelled:
	default:
		t.Error("the slow leg's request was not cancelled")
	}
	if took > 500*time.Millisecond {
		t.Errorf("answered after %v, want about 50ms", took)
	}
	if w.Header().Get(HeaderStatus) != "partial" || w.Header().Get(HeaderMissing) != "slow" || w.Header().Get("Cache-Control") != "no-store" {
		t.Errorf("headers %v", w.Header())
	}
	if w.Body.String() != `{"fast":{"ok":1}}` {
		t.Errorf("body %s", w.Body)
	}
}

// TestBodyTimeout: a leg whose headers arrive in time but whose body
// does not is cancelled at its timeout, whether its handler then aborts
// (as httputil.ReverseProxy does under a server) or returns.
func TestBodyTimeout(t *testing.T) {
	for _, abort := range []bool{true, false} {
		h, _ := build(t, config.Aggregate{Legs: []config.Leg{
			{Name: "a", Service: "a", Path: "/", Timeout: 50 * time.Millisecond},
			{Name: "b", Service: "b", Path: "/"},
		}}, 0, map[string]fakeService{
			"a": func(_ *config.Route, w http.ResponseWriter, r *http.Request) error {
				w.WriteHeader(http.StatusOK)
				io.WriteString(w, `{"x":`)
				<-r.Context().Done()
				if abort {
					panic(http.ErrAbortHandler)
				}
				return nil
			},
			"b": jsonService(`{}`),
		}, nil)
		start := time.Now()
		w, err := serve(h)
		if err != nil || w.Header().Get(HeaderMissing) != "a" || time.Since(start) > 500*time.Millisecond {
			t.Fatalf("abort %v: %v, headers %v, after %v", abort, err, w.Header(), time.Since(start))
		}
	}
}

func TestFailures(t *testing.T) {
	failing := func(_ *config.Route, w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusInternalServerError)
		return nil
	}
	big := func(_ *config.Route, w http.ResponseWriter, r *http.Request) error {
		_, err := w.Write(make([]byte, 2048))
		if err == nil {
			t.Error("a write over the bound succeeded")
		}
		return nil
	}
	services := map[string]fakeService{"ok": jsonService(`{"a": 1}`), "bad": failing, "big": big}
	tests := []struct {
		name      string
		legs      []config.Leg
		status    int // 0: an error
		missing   string
		errSubstr string
	}{
		{"required leg fails", []config.Leg{{Name: "a", Service: "ok", Path: "/", Required: true}, {Name: "b", Service: "bad", Path: "/", Required: true}},
			0, "b", `required leg b failed: leg "b": service "bad" answered 500`},
		{"every leg fails", []config.Leg{{Name: "a", Service: "bad", Path: "/"}, {Name: "b", Service: "bad", Path: "/"}},
			0, "a, b", `every leg failed`},
		{"optional leg fails", []config.Leg{{Name: "a", Service: "ok", Path: "/", Required: true}, {Name: "b", Service: "bad", Path: "/"}},
			200, "b", ""},
		{"body over the bound", []config.Leg{{Name: "a", Service: "ok", Path: "/", Required: true}, {Name: "b", Service: "big", Path: "/"}},
			200, "b", ""},
		{"dependent of a failed leg", []config.Leg{{Name: "a", Service: "bad", Path: "/"}, {Name: "b", Service: "ok", Path: "/{a.id}", Required: true}},
			0, "a, b", `leg "b": needs leg "a", which failed`},
		{"missing field", []config.Leg{{Name: "a", Service: "ok", Path: "/", Required: true}, {Name: "b", Service: "ok", Path: "/{a.id}"}},
			200, "b", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, _ := build(t, config.Aggregate{Legs: tt.legs, MaxLegBytes: 1024}, 0, services, nil)
			w, err := serve(h)
			if got := w.Header().Get(HeaderMissing); got != tt.missing {
				t.Errorf("missing %q, want %q", got, tt.missing)
			}
			if tt.status != 0 {
				if err != nil || w.Code != tt.status {
					t.Fatalf("%d, %v", w.Code, err)
				}
				return
			}
			pe := pipeline.AsError(err)
			if pe == nil || pe.Status != http.StatusBadGateway || pe.Kind != KindLegFailed || !strings.Contains(pe.Msg, tt.errSubstr) {
				t.Fatalf("error %#v, want a 502 containing %q", pe, tt.errSubstr)
			}
		})
	}
}

// TestBreakerOpen: a leg whose service's breakers are all open fails
// without a request, until a probe a second later.
func TestBreakerOpen(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	h, _ := build(t, config.Aggregate{Legs: []config.Leg{
		{Name: "a", Service: "ok", Path: "/", Required: true},
		{Name: "b", Service: "down", Path: "/"},
	}}, 0, map[string]fakeService{
		"ok": jsonService(`{}`),
		"down": func(_ *config.Route, w http.ResponseWriter, r *http.Request) error {
			mu.Lock()
			calls++
			mu.Unlock()
			io.WriteString(w, `{}`)
			return nil
		},
	}, func(service string) bool { return service == "down" })
	for range 3 {
		if w, err := serve(h); err != nil || w.Header().Get(HeaderMissing) != "b" {
			t.Fatalf("%v %v", err, w.Header())
		}
	}
	if calls != 0 {
		t.Fatalf("%d calls to a service whose breakers are open", calls)
	}
	l := h.legs[1]
	now := time.Now()
	if l.admit(true, now) || !l.admit(true, now.Add(probeInterval)) || l.admit(true, now.Add(probeInterval)) {
		t.Error("want one probe per interval")
	}
	if !l.admit(false, now) || l.probeAt.Load() != 0 {
		t.Error("a closed breaker resets the probe clock")
	}
}

// TestLegPanicReraised: a leg's handler panicking with anything but
// http.ErrAbortHandler panics on the request's goroutine, where the
// listener recovers it, not on the leg's, which would end the process.
func TestLegPanicReraised(t *testing.T) {
	h, _ := build(t, config.Aggregate{Legs: []config.Leg{{Name: "a", Service: "a", Path: "/"}}}, 0, map[string]fakeService{
		"a": func(*config.Route, http.ResponseWriter, *http.Request) error { panic("boom") },
	}, nil)
	defer func() {
		if p := recover(); p != "boom" {
			t.Errorf("recovered %v, want boom", p)
		}
	}()
	serve(h)
	t.Error("no panic")
}
