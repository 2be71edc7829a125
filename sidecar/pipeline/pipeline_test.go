package pipeline

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// tag is a filter that appends its name to X-Order on the way in and to
// the response's X-Order on the way out.
type tag string

func (t tag) Serve(w http.ResponseWriter, r *http.Request, next Handler) error {
	r.Header.Add("X-Order", string(t))
	err := next.ServeHTTP(w, r)
	w.Header().Add("X-Out", string(t))
	return err
}

// route is a router that sends everything to one route.
type route struct{ r *Route }

func (rt route) Route(*http.Request) *Route { return rt.r }

func serve(t *testing.T, l http.Handler, r *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	l.ServeHTTP(rec, r)
	return rec
}

// TestChainOrder: fs[0] sees the request first and the response last;
// nil filters are skipped.
func TestChainOrder(t *testing.T) {
	var seen []string
	h := Chain(HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		seen = r.Header.Values("X-Order")
		return nil
	}), tag("a"), nil, tag("b"), tag("c"))
	rec := httptest.NewRecorder()
	if err := h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil)); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(seen, ","); got != "a,b,c" {
		t.Errorf("request order %s, want a,b,c", got)
	}
	if got := strings.Join(rec.Header().Values("X-Out"), ","); got != "c,b,a" {
		t.Errorf("response order %s, want c,b,a", got)
	}
}

// recordingObserver keeps what End saw.
type recordingObserver struct {
	began int
	ended []Info
	key   any
}

type obsKey struct{}

func (o *recordingObserver) Begin(ctx context.Context, r *http.Request, info *Info) context.Context {
	o.began++
	return context.WithValue(ctx, obsKey{}, "began")
}

func (o *recordingObserver) End(ctx context.Context, r *http.Request, info *Info) {
	o.key = ctx.Value(obsKey{})
	o.ended = append(o.ended, *info)
}

// TestListenerRendersErrorsOnce: a handler's error is rendered by the
// listener's renderer (status, body, X-Sidemesh-Error), recorded in Info,
// and the observer sees the final status and bytes, in the context its
// Begin returned.
func TestListenerRendersErrorsOnce(t *testing.T) {
	obs := &recordingObserver{}
	var fromHandler *Info
	l := NewListener(ListenerOptions{Name: "outbound", Observer: obs, Router: route{&Route{
		Name: "cart", Service: "cart",
		Handler: HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			fromHandler = InfoFrom(r.Context())
			io.ReadAll(r.Body)
			return Errorf(http.StatusServiceUnavailable, KindNoEndpoints, "upstream %q: nothing", "cart")
		}),
	}}})
	rec := serve(t, l, httptest.NewRequest("POST", "/x", strings.NewReader("12345")))
	if rec.Code != 503 || rec.Header().Get(HeaderError) != "no_endpoints" ||
		rec.Body.String() != "sidemesh: upstream \"cart\": nothing\n" {
		t.Fatalf("got %d %q %q", rec.Code, rec.Header().Get(HeaderError), rec.Body.String())
	}
	if fromHandler == nil || fromHandler.Service != "cart" || fromHandler.Listener != "outbound" {
		t.Fatalf("handler saw Info %+v", fromHandler)
	}
	if obs.began != 1 || len(obs.ended) != 1 || obs.key != "began" {
		t.Fatalf("observer began %d, ended %d, end context %v", obs.began, len(obs.ended), obs.key)
	}
	got := obs.ended[0]
	if got.Status != 503 || got.BytesIn != 5 || got.BytesOut != int64(rec.Body.Len()) || got.Err == nil || got.Err.Kind != KindNoEndpoints {
		t.Errorf("observer saw status %d, in %d, out %d, err %v", got.Status, got.BytesIn, got.BytesOut, got.Err)
	}
}

// TestListenerKeepsAnswerAfterError: an error returned after the handler
// wrote its response is recorded, not rendered over it.
func TestListenerKeepsAnswerAfterError(t *testing.T) {
	obs := &recordingObserver{}
	l := NewListener(ListenerOptions{Observer: obs, Router: route{&Route{Service: "s",
		Handler: HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			w.WriteHeader(http.StatusTeapot)
			io.WriteString(w, "tea")
			return errors.New("body cut short")
		}),
	}}})
	rec := serve(t, l, httptest.NewRequest("GET", "/", nil))
	if rec.Code != http.StatusTeapot || rec.Body.String() != "tea" || rec.Header().Get(HeaderError) != "" {
		t.Fatalf("got %d %q %q", rec.Code, rec.Body.String(), rec.Header().Get(HeaderError))
	}
	if e := obs.ended[0].Err; e == nil || e.Kind != KindProtocol {
		t.Errorf("recorded error %v, want a protocol_error", e)
	}
}

// TestListenerWithoutRoute: a router that returns nil gets a 502
// no_route, counted under the "unknown" service.
func TestListenerWithoutRoute(t *testing.T) {
	obs := &recordingObserver{}
	l := NewListener(ListenerOptions{Observer: obs, Router: route{nil}})
	rec := serve(t, l, httptest.NewRequest("GET", "/", nil))
	if rec.Code != http.StatusBadGateway || rec.Header().Get(HeaderError) != "no_route" {
		t.Fatalf("got %d %q", rec.Code, rec.Header().Get(HeaderError))
	}
	if obs.ended[0].Service != "unknown" {
		t.Errorf("service label %q, want unknown", obs.ended[0].Service)
	}
}

// TestListenerCountsPanics: a handler that panics (the reverse proxy
// aborting a broken response) still ends its observation.
func TestListenerCountsPanics(t *testing.T) {
	obs := &recordingObserver{}
	l := NewListener(ListenerOptions{Observer: obs, Router: route{&Route{Service: "s",
		Handler: HandlerFunc(func(w http.ResponseWriter, r *http.Request) error { panic(http.ErrAbortHandler) }),
	}}})
	func() {
		defer func() { recover() }()
		serve(t, l, httptest.NewRequest("GET", "/", nil))
	}()
	if len(obs.ended) != 1 || obs.ended[0].Status != 0 {
		t.Fatalf("ended %+v", obs.ended)
	}
}

// TestTextRendererForGRPC: a gRPC caller gets a trailers-only gRPC error
// its library can read; others get text. HEAD gets no body.
func TestTextRendererForGRPC(t *testing.T) {
	e := &Error{Status: 504, Kind: KindTimeout, Msg: "upstream \"echo\": no response headers in 2s, 100%"}
	r := httptest.NewRequest("POST", "/echo.Echo/Say", nil)
	r.ProtoMajor = 2
	r.Header.Set("Content-Type", "application/grpc+proto")
	rec := httptest.NewRecorder()
	Text.Render(rec, r, e)
	if rec.Code != 200 || rec.Header().Get("Grpc-Status") != "4" || rec.Body.Len() != 0 {
		t.Fatalf("gRPC caller got %d grpc-status %q body %q", rec.Code, rec.Header().Get("Grpc-Status"), rec.Body.String())
	}
	if got, want := rec.Header().Get("Grpc-Message"), `sidemesh: upstream "echo": no response headers in 2s, 100%25`; got != want {
		t.Errorf("grpc-message %q, want %q", got, want)
	}
	for ct, want := range map[string]bool{"application/grpc": true, "application/grpc;charset=utf-8": true, "application/grpcx": false, "application/json": false} {
		r.Header.Set("Content-Type", ct)
		if IsGRPC(r) != want {
			t.Errorf("IsGRPC(%q) = %v", ct, !want)
		}
	}
	head := httptest.NewRequest("HEAD", "/", nil)
	rec = httptest.NewRecorder()
	Text.Render(rec, head, e)
	if rec.Code != 504 || rec.Body.Len() != 0 {
		t.Errorf("HEAD got %d with body %q", rec.Code, rec.Body.String())
	}
}

// TestGRPCCodes: the kinds map to the codes gRPC clients act on.
func TestGRPCCodes(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want int
	}{
		{Error{Status: 503, Kind: KindNoEndpoints}, 14},
		{Error{Status: 503, Kind: KindConnectFailure}, 14},
		{Error{Status: 502, Kind: KindReset}, 14},
		{Error{Status: 504, Kind: KindTimeout}, 4},
		{Error{Status: 403, Kind: KindDenied}, 7},
		{Error{Status: 400, Kind: KindBadPath}, 3},
		{Error{Status: 502, Kind: KindNoRoute}, 12},
		{Error{Status: 401, Kind: "unauthenticated"}, 16},
		{Error{Status: 429, Kind: "rate_limited"}, 14},
		{Error{Status: 500, Kind: "other"}, 13},
	} {
		if got := GRPCCode(&tc.e); got != tc.want {
			t.Errorf("GRPCCode(%s %d) = %d, want %d", tc.e.Kind, tc.e.Status, got, tc.want)
		}
	}
}

// TestListenerKeepsWriterFeatures: behind a Listener, a handler can still
// flush, go full duplex and hijack (WebSocket upgrades) through
// http.ResponseController, and trailers still reach the client.
func TestListenerKeepsWriterFeatures(t *testing.T) {
	errs := make(chan error, 3)
	l := NewListener(ListenerOptions{Router: route{&Route{Service: "s", Handler: HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		rc := http.NewResponseController(w)
		switch r.URL.Path {
		case "/hijack":
			conn, buf, err := rc.Hijack()
			if err != nil {
				errs <- err
				return nil
			}
			buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
			buf.Flush()
			conn.Close()
		default:
			errs <- rc.EnableFullDuplex()
			w.Header().Set("Trailer", "X-Checksum")
			w.Write([]byte("part"))
			errs <- rc.Flush()
			w.Header().Set("X-Checksum", "abc")
		}
		return nil
	})}}})
	srv := httptest.NewServer(l)
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "part" || resp.Trailer.Get("X-Checksum") != "abc" {
		t.Errorf("body %q trailer %v", body, resp.Trailer)
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("through the listener: %v", err)
		}
	}
	resp, err = http.Get(srv.URL + "/hijack")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hi" {
		t.Errorf("hijacked response %q", body)
	}
	select {
	case err := <-errs:
		t.Errorf("hijack through the listener: %v", err)
	default:
	}
}
