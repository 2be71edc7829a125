package telemetry

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// newTestTelemetry returns metrics-only telemetry with an access log in
// buf.
func newTestTelemetry(t *testing.T, buf *bytes.Buffer) *Telemetry {
	t.Helper()
	tel, err := New(context.Background(), Options{Resource: ResourceOptions{ServiceName: "test"}, AccessLog: buf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	return tel
}

func metricsText(t *testing.T, tel *Telemetry) string {
	t.Helper()
	rec := httptest.NewRecorder()
	tel.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

func serve(h http.Handler, method string) {
	defer func() { recover() }() // the server recovers http.ErrAbortHandler
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(method, "/x", nil))
}

// TestHandlerRecords checks the statuses and labels the server handler
// records: the final status after interim 1xx responses, 101 for an
// upgrade, methods outside the standard set as _OTHER, and a request whose
// handler panicked (the reverse proxy's abort) still counted and no
// longer in flight.
func TestHandlerRecords(t *testing.T) {
	var buf bytes.Buffer
	tel := newTestTelemetry(t, &buf)
	wrap := func(f http.HandlerFunc) http.Handler {
		return tel.Handler(f, ServerOptions{Listener: "outbound", Service: func(*http.Request) string { return "svc" }})
	}
	serve(wrap(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusEarlyHints)
		w.WriteHeader(http.StatusAccepted)
	}), "GET")
	serve(wrap(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusSwitchingProtocols) }), "GET")
	serve(wrap(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("x")) }), "BREW")
	serve(wrap(func(w http.ResponseWriter, r *http.Request) { panic(http.ErrAbortHandler) }), "POST")

	text := metricsText(t, tel)
	for _, want := range []string{
		`http_server_request_duration_seconds_count{error_type="_OTHER",http_request_method="POST",sidemesh_listener="outbound",sidemesh_service="svc"} 1`,
		`http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="202",sidemesh_listener="outbound",sidemesh_service="svc"} 1`,
		`http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="101",sidemesh_listener="outbound",sidemesh_service="svc"} 1`,
		`http_server_request_duration_seconds_count{http_request_method="_OTHER",http_response_status_code="200",sidemesh_listener="outbound",sidemesh_service="svc"} 1`,
		`http_server_active_requests{sidemesh_listener="outbound",sidemesh_service="svc"} 0`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("metrics lack\n  %s\nin:\n%s", want, grepLines(text, "http_server"))
		}
	}
	if n := strings.Count(buf.String(), `"msg":"access"`); n != 4 {
		t.Errorf("%d access log lines, want 4:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), `"method":"BREW"`) {
		t.Errorf("the access log should keep the method as sent:\n%s", buf.String())
	}
}

func grepLines(text, sub string) string {
	var out []string
	for line := range strings.Lines(text) {
		if strings.Contains(line, sub) && !strings.HasPrefix(line, "#") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "")
}

// TestNilTelemetry: a nil *Telemetry wraps nothing and records nothing.
func TestNilTelemetry(t *testing.T) {
	var tel *Telemetry
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	if got := tel.Handler(h, ServerOptions{}); got == nil {
		t.Fatal("nil handler")
	}
	c := tel.Client("svc", "round_robin")
	try := c.StartTry(context.Background(), httptest.NewRequest("GET", "/", nil), TryInfo{})
	try.End(200, "")
	c.Retry()
	tel.Metrics().PolicyDenial("default")
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestHandlerKeepsWriterFeatures: behind Handler, the proxy can still
// flush, go full duplex and hijack (WebSocket upgrades) through
// http.ResponseController, and trailers still reach the client.
func TestHandlerKeepsWriterFeatures(t *testing.T) {
	tel := newTestTelemetry(t, &bytes.Buffer{})
	errs := make(chan error, 3)
	h := tel.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		switch r.URL.Path {
		case "/hijack":
			conn, buf, err := rc.Hijack()
			if err != nil {
				errs <- err
				return
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
	}), ServerOptions{Listener: "inbound", Service: func(*http.Request) string { return "svc" }})
	srv := httptest.NewServer(h)
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
			t.Errorf("through the handler: %v", err)
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
		t.Errorf("hijack through the handler: %v", err)
	default:
	}
}
