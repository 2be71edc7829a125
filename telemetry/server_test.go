package telemetry

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
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

// serve records one request of method answered with status.
func serve(tel *Telemetry, method string, status int) {
	r := httptest.NewRequest(method, "/x", nil)
	ctx := tel.BeginServer(context.Background(), r, "outbound", "svc", time.Now())
	tel.EndServer(ctx, r, ServerRecord{Listener: "outbound", Service: "svc", Start: time.Now(), Status: status})
}

// TestServerRecords checks the statuses and labels the server side
// records: the status as given, 101 for an upgrade, methods outside the
// standard set as _OTHER, a request that ended without a status (its
// handler panicked) as an error, and nothing left in flight.
func TestServerRecords(t *testing.T) {
	var buf bytes.Buffer
	tel := newTestTelemetry(t, &buf)
	serve(tel, "GET", http.StatusAccepted)
	serve(tel, "GET", http.StatusSwitchingProtocols)
	serve(tel, "BREW", http.StatusOK)
	serve(tel, "POST", 0)

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

// TestNilTelemetry: a nil *Telemetry records nothing and needs no checks.
func TestNilTelemetry(t *testing.T) {
	var tel *Telemetry
	r := httptest.NewRequest("GET", "/", nil)
	ctx := context.Background()
	if got := tel.BeginServer(ctx, r, "inbound", "svc", time.Now()); got != ctx {
		t.Fatal("BeginServer of a nil Telemetry changed the context")
	}
	tel.EndServer(ctx, r, ServerRecord{})
	c := tel.Client("svc", "round_robin")
	try := c.StartTry(context.Background(), httptest.NewRequest("GET", "/", nil), TryInfo{})
	try.End(200, "")
	c.Retry()
	tel.Metrics().PolicyDenial("default")
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}
