package sidecar

import (
	"github.com/sidemesh/sidemesh/internal/meshtest"

	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/sidemesh/sidemesh/sidecar/buildinfo"
	"github.com/sidemesh/sidemesh/telemetry/otlptest"
)

// traceApp is the local app behind a sidecar: it answers 200 and keeps
// the traceparent and baggage headers of every request it gets.
type traceApp struct {
	addr string
	mu   sync.Mutex
	seen []http.Header
}

func newTraceApp(t *testing.T) *traceApp {
	t.Helper()
	a := &traceApp{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a.addr = ln.Addr().String()
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.seen = append(a.seen, r.Header.Clone())
		a.mu.Unlock()
		io.WriteString(w, "hello from the app")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return a
}

func (a *traceApp) last() http.Header {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.seen) == 0 {
		return nil
	}
	return a.seen[len(a.seen)-1]
}

// startTracedInbound starts sidecar B in front of app, tracing to
// collector, and returns its inbound address.
func startTracedInbound(t *testing.T, app *traceApp, collector string) (inB string) {
	t.Helper()
	inB = listenAddr(t)
	appHost, appPort, _ := net.SplitHostPort(app.addr)
	start(t, parse(t, fmt.Sprintf(`
service: { name: catalog, address: %s, port: %s }
inbound: { listen: %s }
outbound: { listen: %s }
telemetry:
  tracing: { otlp_endpoint: %s, sample_ratio: 1 }
`, appHost, appPort, inB, listenAddr(t), collector)))
	return inB
}

// chain starts client → sidecar A (outbound) → sidecar B (inbound) → app,
// both sidecars tracing to collector, and returns A's outbound address
// and B's inbound one.
func chain(t *testing.T, app *traceApp, collector string) (outA, inB string) {
	t.Helper()
	inB = startTracedInbound(t, app, collector)
	outA = listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams:
  - service: catalog
    mtls: false
    endpoints: [{ address: %s }]
telemetry:
  tracing: { otlp_endpoint: %s, sample_ratio: 1 }
`, outA, inB, collector)))
	return outA, inB
}

// spansOf returns the spans of trace traceID, sorted by start.
func spansOf(spans []otlptest.Span, traceID string) []otlptest.Span {
	var out []otlptest.Span
	for _, s := range spans {
		if s.TraceID == traceID {
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

func describeSpans(spans []otlptest.Span) string {
	var b strings.Builder
	for _, s := range spans {
		fmt.Fprintf(&b, "\n  %s %s %s span=%s parent=%s service=%v attrs=%v", s.TraceID, s.Kind, s.Name,
			s.SpanID, s.ParentSpanID, s.Resource["service.name"], s.Attributes)
	}
	return b.String()
}

// TestTraceThroughTwoSidecars sends a request with a W3C traceparent
// through client → sidecar A → sidecar B → app and checks, at a real OTLP
// gRPC receiver, that one trace holds four spans linked parent to child
// across both sidecars, with their attributes, and that the app got the
// trace context of B's client span and the caller's baggage.
func TestTraceThroughTwoSidecars(t *testing.T) {
	rcv := otlptest.Start(t)
	app := newTraceApp(t)
	outA, inB := chain(t, app, rcv.GRPCAddr())

	const traceID, callerSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	req, _ := http.NewRequest("GET", "http://"+outA+"/items?page=2", nil)
	req.Host = "catalog"
	req.Header.Set("traceparent", "00-"+traceID+"-"+callerSpan+"-01")
	req.Header.Set("baggage", "tenant=acme")
	resp, err := newClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}

	spans := spansOf(rcv.WaitSpans(t, 15*time.Second, func(s []otlptest.Span) bool {
		return len(spansOf(s, traceID)) >= 4
	}), traceID)
	if len(spans) != 4 {
		t.Fatalf("want 4 spans in trace %s, got %d:%s", traceID, len(spans), describeSpans(spans))
	}
	aServer, aClient, bServer, bClient := spans[0], spans[1], spans[2], spans[3]
	check := func(s otlptest.Span, kind tracepb.Span_SpanKind, service, parent string) {
		t.Helper()
		if s.Kind != kind || s.Resource["service.name"] != service || s.ParentSpanID != parent {
			t.Errorf("span %s: kind %s service %v parent %s; want %s %s parent %s%s",
				s.SpanID, s.Kind, s.Resource["service.name"], s.ParentSpanID, kind, service, parent, describeSpans(spans))
		}
		if s.Name != "GET" {
			t.Errorf("span %s named %q, want GET", s.SpanID, s.Name)
		}
		if s.StatusCode == tracepb.Status_STATUS_CODE_ERROR {
			t.Errorf("span %s has error status: %s", s.SpanID, s.StatusMessage)
		}
	}
	check(aServer, tracepb.Span_SPAN_KIND_SERVER, "sidemesh", callerSpan)
	check(aClient, tracepb.Span_SPAN_KIND_CLIENT, "sidemesh", aServer.SpanID)
	check(bServer, tracepb.Span_SPAN_KIND_SERVER, "catalog", aClient.SpanID)
	check(bClient, tracepb.Span_SPAN_KIND_CLIENT, "catalog", bServer.SpanID)

	wantAttrs := func(s otlptest.Span, want map[string]any) {
		t.Helper()
		for k, v := range want {
			if got := s.Attributes[k]; got != v {
				t.Errorf("span %s (%s %s): %s = %v (%T), want %v (%T)", s.SpanID, s.Kind, s.Resource["service.name"], k, got, got, v, v)
			}
		}
	}
	hostB, portB, _ := net.SplitHostPort(inB)
	wantAttrs(aServer, map[string]any{
		"http.request.method": "GET", "url.path": "/items", "http.response.status_code": int64(200),
		"sidemesh.listener": "outbound", "sidemesh.service": "catalog", "sidemesh.upstream": "catalog",
	})
	wantAttrs(aClient, map[string]any{
		"http.request.method": "GET", "http.response.status_code": int64(200), "peer.service": "catalog",
		"sidemesh.balancer.policy": "round_robin", "sidemesh.breaker.state": "closed",
		"server.address": hostB, "url.full": "http://" + inB + "/items",
	})
	if fmt.Sprint(aClient.Attributes["server.port"]) != portB {
		t.Errorf("A's client span server.port = %v, want %s", aClient.Attributes["server.port"], portB)
	}
	if _, ok := aClient.Attributes["http.request.resend_count"]; ok {
		t.Errorf("first try has http.request.resend_count: %v", aClient.Attributes)
	}
	wantAttrs(bServer, map[string]any{
		"http.response.status_code": int64(200), "sidemesh.listener": "inbound", "sidemesh.service": "catalog",
		"server.address": "catalog", // the Host header A forwarded
	})
	wantAttrs(bClient, map[string]any{
		"http.response.status_code": int64(200), "peer.service": "catalog", "server.address": "127.0.0.1",
	})
	if r := bServer.Resource; r["sidemesh.mode"] != "sidecar" || r["service.instance.id"] == nil {
		t.Errorf("B's resource = %v", r)
	}
	// Parent spans end after their children.
	if aServer.End.Before(aClient.End) || bServer.End.Before(bClient.End) {
		t.Errorf("a server span ended before its client span:%s", describeSpans(spans))
	}

	h := app.last()
	if want := "00-" + traceID + "-" + bClient.SpanID + "-01"; h.Get("traceparent") != want {
		t.Errorf("app got traceparent %q, want %q", h.Get("traceparent"), want)
	}
	if !strings.Contains(h.Get("baggage"), "tenant=acme") {
		t.Errorf("app got baggage %q, want tenant=acme", h.Get("baggage"))
	}
}

// TestTraceStartsAndRetries: a request without a trace starts one at
// sidecar A; a try that fails and is retried on another endpoint is a
// client span of its own, marked as an error, and the retry carries
// http.request.resend_count.
func TestTraceStartsAndRetries(t *testing.T) {
	rcv := otlptest.Start(t)
	app := newTraceApp(t)
	dead := meshtest.FreeAddr(t) // nothing listens: connections are refused
	inB := startTracedInbound(t, app, rcv.GRPCAddr())
	outC := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams:
  - service: catalog
    mtls: false
    balancer: round_robin
    endpoints: [{ address: %s }, { address: %s }]
    retries: { attempts: 2, on: [connect_failure] }
    circuit_breaker: { enabled: false }
    outlier: { enabled: false }
telemetry:
  tracing: { otlp_endpoint: %s }
`, outC, dead, inB, rcv.GRPCAddr())))

	c := newClient(t)
	for i := range 4 {
		if code, _, err := get(c, outC, "catalog"); err != nil || code != 200 {
			t.Fatalf("request %d through C: %d %v", i, code, err)
		}
	}
	// Round robin sends half the first tries to the dead endpoint; each
	// of those is retried on B.
	var retried []otlptest.Span
	rcv.WaitSpans(t, 15*time.Second, func(all []otlptest.Span) bool {
		retried = retried[:0]
		for _, s := range all {
			if s.Kind == tracepb.Span_SPAN_KIND_CLIENT && s.Attributes["http.request.resend_count"] == int64(1) {
				retried = append(retried, s)
			}
		}
		return len(retried) >= 2
	})
	all := rcv.Spans()
	for _, r := range retried {
		tr := spansOf(all, r.TraceID)
		var failed *otlptest.Span
		for i, s := range tr {
			if s.Kind == tracepb.Span_SPAN_KIND_CLIENT && s.ParentSpanID == r.ParentSpanID && s.SpanID != r.SpanID {
				failed = &tr[i]
			}
		}
		if failed == nil {
			t.Fatalf("retry %s has no sibling first try:%s", r.SpanID, describeSpans(tr))
		}
		deadHost, deadPort, _ := net.SplitHostPort(dead)
		if failed.StatusCode != tracepb.Status_STATUS_CODE_ERROR || failed.Attributes["error.type"] != "connect_failure" ||
			failed.Attributes["server.address"] != deadHost || fmt.Sprint(failed.Attributes["server.port"]) != deadPort {
			t.Errorf("failed try: status %s attrs %v; want an error span for connect_failure to %s", failed.StatusCode, failed.Attributes, dead)
		}
		if r.StatusCode == tracepb.Status_STATUS_CODE_ERROR || r.Attributes["http.response.status_code"] != int64(200) {
			t.Errorf("retry span: %v %v", r.StatusCode, r.Attributes)
		}
		// A started the trace: its server span is the root.
		for _, s := range tr {
			if s.SpanID == r.ParentSpanID && s.ParentSpanID != "" {
				t.Errorf("C's server span has parent %s, want a new trace", s.ParentSpanID)
			}
		}
	}
}

// scrape fetches and parses the admin listener's /metrics.
func scrape(t *testing.T, adminAddr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("/metrics Content-Type %q, want the Prometheus text format", ct)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse as Prometheus text: %v", err)
	}
	return families
}

// metricValue returns the value of the series of family name whose labels
// include want (histograms: their count), and whether there is one.
func metricValue(families map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := families[name]
	if f == nil {
		return 0, false
	}
	sum, found := 0.0, false
next:
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum, found
}

func familyNames(families map[string]*dto.MetricFamily) string {
	names := make([]string, 0, len(families))
	for n := range families {
		names = append(names, n)
	}
	slices.Sort(names)
	return strings.Join(names, " ")
}

// TestMetricsMatchTraffic sends a known number of requests through a
// sidecar whose upstream has one good and one failing endpoint, then
// checks that /metrics parses as Prometheus text and that its counters
// match: requests served, tries per endpoint and status, retries, the
// failing endpoint's breaker open and its ejection.
func TestMetricsMatchTraffic(t *testing.T) {
	good, bad := newControlledBackend(t, "good"), newControlledBackend(t, "bad")
	bad.mode.Store(int32(mode500))
	adminAddr, out := listenAddr(t), listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
admin: { listen: %s }
outbound: { listen: %s }
%s`, adminAddr, out, breakerUpstream(good, bad))))

	const n = 40
	c := newClient(t)
	ok, failed := 0, 0
	for range n {
		code, _, err := get(c, out, "svc")
		switch {
		case err != nil:
			t.Fatal(err)
		case code == 200:
			ok++
		default:
			failed++
		}
	}
	// Two requests for a Host that names no upstream.
	for range 2 {
		if code, _, _ := get(c, out, "nosuch"); code != http.StatusBadGateway {
			t.Fatalf("unknown upstream: %d", code)
		}
	}

	m := scrape(t, adminAddr)
	server := map[string]string{"sidemesh_listener": "outbound", "sidemesh_service": "svc", "http_request_method": "GET"}
	if got, _ := metricValue(m, "http_server_request_duration_seconds", server); got != n {
		t.Errorf("server requests for svc = %v, want %d (families: %s)", got, n, familyNames(m))
	}
	server["http_response_status_code"] = "200"
	if got, _ := metricValue(m, "http_server_request_duration_seconds", server); got != float64(ok) {
		t.Errorf("server 200s = %v, want %d", got, ok)
	}
	if got, _ := metricValue(m, "http_server_request_duration_seconds", map[string]string{"sidemesh_service": "unknown"}); got != 2 {
		t.Errorf("requests for an unknown upstream = %v, want 2", got)
	}
	if got, _ := metricValue(m, "http_server_active_requests", map[string]string{"sidemesh_listener": "outbound"}); got != 0 {
		t.Errorf("requests in flight after all answered = %v, want 0", got)
	}

	// Every try is counted by endpoint; the bad endpoint's tries all
	// failed with 500.
	goodHost, goodPort, _ := net.SplitHostPort(good.addr)
	badHost, badPort, _ := net.SplitHostPort(bad.addr)
	goodTries, _ := metricValue(m, "http_client_request_duration_seconds", map[string]string{"sidemesh_upstream": "svc", "server_address": goodHost, "server_port": goodPort})
	badTries, _ := metricValue(m, "http_client_request_duration_seconds", map[string]string{"sidemesh_upstream": "svc", "server_address": badHost, "server_port": badPort, "http_response_status_code": "500"})
	if goodTries != float64(good.hits.Load()) || badTries != float64(bad.hits.Load()) {
		t.Errorf("tries: good %v bad %v; the backends saw %d and %d", goodTries, badTries, good.hits.Load(), bad.hits.Load())
	}
	retries, _ := metricValue(m, "sidemesh_upstream_retries_total", map[string]string{"sidemesh_upstream": "svc"})
	if want := goodTries + badTries - n; retries != want {
		t.Errorf("retries = %v, want tries - requests = %v", retries, want)
	}

	ep := map[string]string{"sidemesh_upstream": "svc", "sidemesh_endpoint": bad.addr}
	if v, _ := metricValue(m, "sidemesh_endpoint_breaker_state", merge(ep, "sidemesh_breaker_state", "open")); v != 1 {
		t.Errorf("bad endpoint breaker state open = %v, want 1", v)
	}
	if v, _ := metricValue(m, "sidemesh_endpoint_breaker_state", merge(ep, "sidemesh_breaker_state", "closed")); v != 0 {
		t.Errorf("bad endpoint breaker state closed = %v, want 0", v)
	}
	if v, _ := metricValue(m, "sidemesh_endpoint_breaker_transitions_total", merge(ep, "sidemesh_breaker_state", "open")); v != 1 {
		t.Errorf("transitions to open = %v, want 1", v)
	}
	if v, _ := metricValue(m, "sidemesh_endpoint_ejections_total", ep); v != 1 {
		t.Errorf("ejections = %v, want 1", v)
	}
	if v, _ := metricValue(m, "sidemesh_endpoint_ejected", ep); v != 1 {
		t.Errorf("ejected = %v, want 1", v)
	}
	goodEP := map[string]string{"sidemesh_upstream": "svc", "sidemesh_endpoint": good.addr}
	if v, _ := metricValue(m, "sidemesh_endpoint_breaker_state", merge(goodEP, "sidemesh_breaker_state", "closed")); v != 1 {
		t.Errorf("good endpoint breaker closed = %v, want 1", v)
	}
	// A static feed delivers once and is never stale: it has no age.
	if v, ok := metricValue(m, "sidemesh_discovery_snapshot_age_seconds", map[string]string{"sidemesh_upstream": "svc"}); ok {
		t.Errorf("discovery snapshot age of a static feed = %v, want no series", v)
	}
}

// TestMetricsAtStart scrapes a sidecar that has served nothing yet: the
// Go runtime's and the process's series and the build are there; the
// retry counters of every HTTP upstream with retries on are there at 0,
// so a rate works from the first scrape; and the series of features
// that are off are not there at all.
func TestMetricsAtStart(t *testing.T) {
	backend := namedBackend(t, "b")
	adminAddr := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
admin: { listen: %[1]s }
outbound: { listen: %[2]s }
upstreams:
  - { service: svc, endpoints: [{ address: %[3]s }] }
  - { service: noretry, endpoints: [{ address: %[3]s }], retries: { attempts: 0 } }
  - { service: tcpsvc, protocol: tcp, listen: %[4]s, endpoints: [{ address: %[3]s }] }
  - service: checked
    endpoints: [{ address: %[3]s }]
    health_check: { path: /healthz, interval: 50ms, timeout: 1s }
`, adminAddr, listenAddr(t), backend, listenAddr(t))))
	m := scrape(t, adminAddr)
	for _, name := range []string{"sidemesh_upstream_retries_total", "sidemesh_upstream_retry_budget_exhausted_total"} {
		if v, ok := metricValue(m, name, map[string]string{"sidemesh_upstream": "svc"}); !ok || v != 0 {
			t.Errorf("%s for svc before any request = %v (present %v), want 0", name, v, ok)
		}
		for _, up := range []string{"noretry", "tcpsvc"} {
			if _, ok := metricValue(m, name, map[string]string{"sidemesh_upstream": up}); ok {
				t.Errorf("%s for %s, which cannot retry", name, up)
			}
		}
	}
	info := map[string]string{"version": buildinfo.Version(), "commit": buildinfo.Commit(), "goversion": runtime.Version()}
	if v, ok := metricValue(m, "sidemesh_build_info", info); !ok || v != 1 {
		t.Errorf("sidemesh_build_info%v = %v (present %v), want 1; families: %s", info, v, ok, familyNames(m))
	}
	for _, name := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "process_cpu_seconds_total", "process_resident_memory_bytes"} {
		if _, ok := m[name]; !ok {
			t.Errorf("no %s; families: %s", name, familyNames(m))
		}
	}
	for _, name := range []string{"sidemesh_gossip_members", "sidemesh_tls_certificate_expiry_seconds", "sidemesh_discovery_snapshot_age_seconds"} {
		if _, ok := m[name]; ok {
			t.Errorf("%s is exported though its feature is off (no gossip, no mutual TLS, static endpoints)", name)
		}
	}
	// Only the upstream with health checks has a health series.
	if _, ok := metricValue(m, "sidemesh_endpoint_healthy", map[string]string{"sidemesh_upstream": "svc"}); ok {
		t.Errorf("sidemesh_endpoint_healthy for svc, which has no health checks")
	}
	if _, ok := metricValue(m, "sidemesh_endpoint_healthy", map[string]string{"sidemesh_upstream": "checked", "sidemesh_endpoint": backend}); !ok {
		t.Errorf("no sidemesh_endpoint_healthy for the health-checked upstream")
	}
}

func merge(m map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for a, b := range m {
		out[a] = b
	}
	return out
}

// TestAccessLog: one JSON line per request in the file the config names,
// with the trace the request came with.
func TestAccessLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.log")
	backend := namedBackend(t, "b")
	out := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams: [{ service: svc, mtls: false, endpoints: [{ address: %s }] }]
telemetry: { access_log: %s }
`, out, backend, path)))

	const traceID = "0af7651916cd43dd8448eb211c80319c"
	req, _ := http.NewRequest("POST", "http://"+out+"/orders", strings.NewReader("12345"))
	req.Host = "svc"
	req.Header.Set("traceparent", "00-"+traceID+"-b7ad6b7169203331-01")
	resp, err := newClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if code, _, err := get(newClient(t), out, "nosuch"); err != nil || code != 502 {
		t.Fatalf("unknown upstream: %d %v", code, err)
	}

	var lines []map[string]any
	meshtest.Eventually(t, 5*time.Second, "two access log lines", func() error {
		if lines = readJSONLines(t, path); len(lines) < 2 {
			return fmt.Errorf("%v", lines)
		}
		return nil
	})
	if len(lines) != 2 {
		t.Fatalf("access log has %d lines, want 2: %v", len(lines), lines)
	}
	l := lines[0]
	want := map[string]any{
		"msg": "access", "listener": "outbound", "service": "svc", "method": "POST", "path": "/orders",
		"status": 200.0, "bytes_in": 5.0, "bytes_out": 1.0, "upstream": "svc", "endpoint": backend,
		"tries": 1.0, "retries": 0.0, "trace_id": traceID,
	}
	for k, v := range want {
		if l[k] != v {
			t.Errorf("access log %s = %v, want %v (line %v)", k, l[k], v, l)
		}
	}
	if d, _ := l["duration_ms"].(float64); d <= 0 {
		t.Errorf("duration_ms = %v", l["duration_ms"])
	}
	if id, _ := l["request_id"].(string); id == "" {
		t.Errorf("no request_id: %v", l)
	}
	if l2 := lines[1]; l2["status"] != 502.0 || l2["service"] != "unknown" {
		t.Errorf("second line = %v, want status 502 for service unknown", l2)
	}
}

func readJSONLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("access log line %q is not JSON: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// TestDeadCollector: with the trace collector hanging on every
// connection, requests still flow, their latency stays that of a sidecar
// without tracing (same run, interleaved), memory stays bounded by the
// span queue, and shutdown still ends within its deadline.
func TestDeadCollector(t *testing.T) {
	backend := namedBackend(t, "b")
	dead := otlptest.Blackhole(t)
	outDead, outOff := listenAddr(t), listenAddr(t)
	tracedCfg := parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams: [{ service: svc, mtls: false, endpoints: [{ address: %s }] }]
telemetry:
  tracing: { otlp_endpoint: %s, sample_ratio: 1, queue_size: 256, timeout: 2s }
`, outDead, backend, dead))
	traced := New(tracedCfg, quietLogger(), handedFor(tracedCfg))
	if err := traced.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams: [{ service: svc, mtls: false, endpoints: [{ address: %s }] }]
`, outOff, backend)))

	c := newClient(t)
	timed := func(addr string) time.Duration {
		t0 := time.Now()
		code, _, err := get(c, addr, "svc")
		if err != nil || code != 200 {
			t.Fatalf("request via %s: %d %v", addr, code, err)
		}
		return time.Since(t0)
	}
	for range 200 { // warm up both
		timed(outDead)
		timed(outOff)
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	const n = 5000
	var withDead, without []time.Duration
	for range n {
		withDead = append(withDead, timed(outDead))
		without = append(without, timed(outOff))
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)

	p50 := func(d []time.Duration) time.Duration {
		slices.Sort(d)
		return d[len(d)/2]
	}
	pd, po := p50(withDead), p50(without)
	growth := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("p50 with a dead collector %v, without tracing %v (ratio %.2f); heap growth over %d requests: %d KiB",
		pd, po, float64(pd)/float64(po), n, growth/1024)
	// 2n spans were made; unbounded they would hold well over 10 MiB.
	// The queue holds 256.
	if growth > 8<<20 {
		t.Errorf("heap grew by %d KiB over %d requests with a dead collector: the span queue is not bounded", growth/1024, n)
	}
	// A blocked exporter would show as latency of the order of the
	// export timeout (2s); a sidecar with tracing on costs a little.
	if pd > 3*po+2*time.Millisecond {
		t.Errorf("p50 latency %v with a dead collector against %v without tracing", pd, po)
	}

	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	t0 := time.Now()
	traced.Shutdown(ctx)
	if d := time.Since(t0); d > 5*time.Second {
		t.Errorf("shutdown with a dead collector took %v, its deadline was 1s", d)
	}
}

// TestShutdownFlushesSpans: spans still queued when the sidecar is told
// to stop reach the collector before Shutdown returns, although the batch
// delay is a minute.
func TestShutdownFlushesSpans(t *testing.T) {
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
	rcv := otlptest.Start(t)
	backend := namedBackend(t, "b")
	out := listenAddr(t)
	cfg := parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams: [{ service: svc, endpoints: [{ address: %s }] }]
telemetry: { tracing: { otlp_endpoint: %s } }
`, out, backend, rcv.GRPCAddr()))
	s := New(cfg, quietLogger(), handedFor(cfg))
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	c := newClient(t)
	for range 3 {
		if code, _, err := get(c, out, "svc"); err != nil || code != 200 {
			t.Fatalf("request: %d %v", code, err)
		}
	}
	if n := len(rcv.Spans()); n != 0 {
		t.Fatalf("%d spans exported before shutdown with a one-minute batch delay", n)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	s.Shutdown(ctx)
	if n := len(rcv.Spans()); n != 6 {
		t.Fatalf("after Shutdown the collector has %d spans, want 6 (a server and a client span per request)", n)
	}
}

// TestConfigRedactsOTLPHeaders: /config shows the exporter's headers
// without their values, which are API keys.
func TestConfigRedactsOTLPHeaders(t *testing.T) {
	adminAddr := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
admin: { listen: %s }
outbound: { listen: %s }
telemetry:
  tracing: { otlp_endpoint: %s, headers: { x-api-key: s3cret } }
`, adminAddr, listenAddr(t), otlptest.ClosedAddr(t))))
	var cfg map[string]any
	adminGet(t, adminAddr, "/config", &cfg)
	tel, _ := cfg["telemetry"].(map[string]any)
	tr, _ := tel["tracing"].(map[string]any)
	headers, _ := tr["headers"].(map[string]any)
	if headers["x-api-key"] != "[redacted]" {
		t.Errorf("/config telemetry = %v, want the header value redacted", tel)
	}
	if b, _ := json.Marshal(cfg); strings.Contains(string(b), "s3cret") {
		t.Errorf("/config leaks the secret: %s", b)
	}
	// The defaults that depend on other settings are resolved, and
	// features that are off have no blocks: what validate --print shows.
	pol, _ := cfg["policy"].(map[string]any)
	if pol["default"] != "allow" {
		t.Errorf("/config policy = %v, want default: allow (no mutual TLS)", pol)
	}
	for _, off := range []string{"service", "inbound", "tls"} {
		if v, ok := cfg[off]; ok {
			t.Errorf("/config shows %s: %v for a feature that is off", off, v)
		}
	}
}

// TestMetricsOverOTLP: with telemetry.metrics, the same metrics /metrics
// serves are pushed to an OTLP collector, here over http/protobuf.
func TestMetricsOverOTLP(t *testing.T) {
	rcv := otlptest.Start(t)
	backend := namedBackend(t, "b")
	out := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams: [{ service: svc, endpoints: [{ address: %s }] }]
telemetry:
  metrics: { otlp_endpoint: %s, protocol: http/protobuf, interval: 1s }
`, out, backend, rcv.HTTPURL())))
	c := newClient(t)
	for range 7 {
		if code, _, err := get(c, out, "svc"); err != nil || code != 200 {
			t.Fatalf("request: %d %v", code, err)
		}
	}
	rcv.WaitMetrics(t, 15*time.Second, func(points []otlptest.MetricPoint) bool {
		for _, p := range points {
			if p.Name == "http.server.request.duration" && p.Attributes["sidemesh.service"] == "svc" &&
				p.Count == 7 && p.Transport == "http" && p.Resource["service.name"] == "sidemesh" {
				return true
			}
		}
		return false
	})
}

// TestReloadRefusesTelemetryChange: exporters are set up at start, so a
// reload that changes the telemetry section is refused and the old
// config stays in force.
func TestReloadRefusesTelemetryChange(t *testing.T) {
	out := listenAddr(t)
	yaml := `
outbound: { listen: %s }
telemetry: { access_log: %s }
`
	s := start(t, parse(t, fmt.Sprintf(yaml, out, "off")))
	err := s.Reload(t.Context(), parse(t, fmt.Sprintf(yaml, out, "stderr")))
	if err == nil || !strings.Contains(err.Error(), "telemetry section changed; restart") {
		t.Fatalf("Reload = %v, want a refusal naming the telemetry section", err)
	}
	if got := s.Config().Telemetry.AccessLog; got != "off" {
		t.Errorf("access_log in force = %q, want the old off", got)
	}
}

// TestMetricsExemplars: scraped as OpenMetrics, the duration histograms
// link to the sampled trace of a request.
func TestMetricsExemplars(t *testing.T) {
	rcv := otlptest.Start(t)
	backend := namedBackend(t, "b")
	out, adminAddr := listenAddr(t), listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
admin: { listen: %s }
upstreams: [{ service: svc, endpoints: [{ address: %s }] }]
telemetry: { tracing: { otlp_endpoint: %s } }
`, out, adminAddr, backend, rcv.GRPCAddr())))
	const traceID = "5b8efff798038103d269b633813fc60c"
	req, _ := http.NewRequest("GET", "http://"+out+"/", nil)
	req.Host = "svc"
	req.Header.Set("traceparent", "00-"+traceID+"-eee19b7ec3c1b174-01")
	resp, err := newClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	mreq, _ := http.NewRequest("GET", "http://"+adminAddr+"/metrics", nil)
	mreq.Header.Set("Accept", "application/openmetrics-text; version=1.0.0")
	mresp, err := http.DefaultClient.Do(mreq)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for line := range strings.Lines(string(body)) {
		if strings.HasPrefix(line, "http_server_request_duration_seconds_bucket{") && strings.Contains(line, `trace_id="`+traceID+`"`) {
			return
		}
	}
	t.Errorf("no exemplar with trace %s on http_server_request_duration_seconds (Content-Type %s):\n%s",
		traceID, mresp.Header.Get("Content-Type"), grepPrefix(string(body), "http_server_request_duration_seconds_bucket"))
}

func grepPrefix(text, prefix string) string {
	var b strings.Builder
	for line := range strings.Lines(text) {
		if strings.HasPrefix(line, prefix) {
			b.WriteString(line)
		}
	}
	return b.String()
}
