// Package otlptest is a real OTLP receiver for tests: it speaks the OTLP
// collector protocol over gRPC (TraceService and MetricsService from
// go.opentelemetry.io/proto/otlp) and OTLP/HTTP with protobuf bodies, each
// on its own 127.0.0.1 port, and keeps what it receives, flattened, for
// assertions.
//
// It also provides the two ways a collector can be dead: Blackhole, a
// listener that accepts connections and never answers (the worst case: every
// export hangs until its timeout), and ClosedAddr, an address nobody listens
// on (every connection is refused at once).
//
// Everything here is safe for concurrent use, except that WaitSpans and
// WaitMetrics may fail the test and so, like t.Fatal, must be called from
// the test's own goroutine.
package otlptest

import (
	"compress/gzip"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	_ "google.golang.org/grpc/encoding/gzip" // accept gzip-compressed gRPC exports (OTEL_EXPORTER_OTLP_COMPRESSION=gzip)
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// Transport names used as keys of Requests.
const (
	TransportGRPC = "grpc"
	TransportHTTP = "http"
)

// maxBody bounds one OTLP/HTTP request body after decompression; the OTLP
// exporters themselves refuse to send more than 64 MiB.
const maxBody = 64 << 20

// pollInterval is how often WaitSpans and WaitMetrics look again.
const pollInterval = 5 * time.Millisecond

// Span is one received span, flattened with its resource and scope.
type Span struct {
	// TraceID, SpanID and ParentSpanID are lower-case hex; ParentSpanID is
	// "" for a root span.
	TraceID, SpanID, ParentSpanID string
	Name                          string
	Kind                          tracepb.Span_SpanKind
	Start, End                    time.Time
	// Attributes and Resource hold string, int64, float64, bool, []byte,
	// []any for arrays and map[string]any for key-value lists.
	Attributes map[string]any
	Resource   map[string]any
	// Scope is the instrumentation scope's name.
	Scope         string
	StatusCode    tracepb.Status_StatusCode
	StatusMessage string
	// Events are the span events' names, in order.
	Events []string
	// Transport is how the span arrived: TransportGRPC or TransportHTTP.
	Transport string
}

// MetricPoint is one received metric data point, flattened with its metric,
// resource and scope.
type MetricPoint struct {
	Name string
	// Type is "sum", "gauge", "histogram", "exponential_histogram" or
	// "summary".
	Type       string
	Attributes map[string]any
	Resource   map[string]any
	Scope      string
	// Value is a sum's or gauge's value as float64 (int points converted).
	Value float64
	// Count and Sum are a histogram's (or summary's) count and sum.
	Count uint64
	Sum   float64
	// Monotonic and Temporality are set for sums (Temporality also for
	// histograms).
	Monotonic   bool
	Temporality metricspb.AggregationTemporality
	Time        time.Time
	Transport   string
}

// Receiver is a running OTLP receiver. Its methods are safe for concurrent
// use; the slices and maps they return are copies the caller owns.
type Receiver struct {
	grpcLis net.Listener
	httpLis net.Listener
	grpcSrv *grpc.Server
	httpSrv *http.Server

	mu       sync.Mutex
	spans    []Span
	metrics  []MetricPoint
	requests map[string]int
	headers  map[string]string
}

// Start starts a receiver listening on two fresh 127.0.0.1 ports, one for
// gRPC and one for HTTP; t.Cleanup stops both and waits for their
// goroutines to end, closing any connection still open.
func Start(t testing.TB) *Receiver {
	t.Helper()
	r := &Receiver{requests: map[string]int{}}

	var err error
	if r.grpcLis, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatalf("otlptest: listen for gRPC: %v", err)
	}
	if r.httpLis, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		r.grpcLis.Close()
		t.Fatalf("otlptest: listen for HTTP: %v", err)
	}

	r.grpcSrv = grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(r.grpcSrv, traceService{r: r})
	colmetricspb.RegisterMetricsServiceServer(r.grpcSrv, metricsService{r: r})

	mux := http.NewServeMux()
	mux.HandleFunc("/v1/traces", r.serveTraces)
	mux.HandleFunc("/v1/metrics", r.serveMetrics)
	r.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	var wg sync.WaitGroup
	wg.Go(func() {
		if err := r.grpcSrv.Serve(r.grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("otlptest: gRPC server: %v", err)
		}
	})
	wg.Go(func() {
		if err := r.httpSrv.Serve(r.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("otlptest: HTTP server: %v", err)
		}
	})
	t.Cleanup(func() {
		r.grpcSrv.Stop()
		r.httpSrv.Close()
		wg.Wait()
	})
	return r
}

// GRPCAddr returns the gRPC listener's address as host:port.
func (r *Receiver) GRPCAddr() string { return r.grpcLis.Addr().String() }

// HTTPURL returns the HTTP listener's base URL, http://host:port; exports go
// to HTTPURL()+"/v1/traces" and HTTPURL()+"/v1/metrics".
func (r *Receiver) HTTPURL() string { return "http://" + r.httpLis.Addr().String() }

// Spans returns the spans received so far, in arrival order.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}

// Metrics returns the metric data points received so far, in arrival order.
// A periodic reader with cumulative temporality sends every instrument on
// each export, so the same series may appear several times; the last one is
// the newest.
func (r *Receiver) Metrics() []MetricPoint {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]MetricPoint(nil), r.metrics...)
}

// Requests returns how many export requests (traces and metrics together)
// arrived, by transport: TransportGRPC and TransportHTTP.
func (r *Receiver) Requests() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]int, len(r.requests))
	for k, v := range r.requests {
		m[k] = v
	}
	return m
}

// Headers returns the request headers (HTTP) or metadata (gRPC) of the last
// export received, with lower-case names and multiple values joined by ",".
// It includes what the transport adds (user-agent, content-type, ...).
func (r *Receiver) Headers() map[string]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := make(map[string]string, len(r.headers))
	for k, v := range r.headers {
		m[k] = v
	}
	return m
}

// WaitSpans polls, every few milliseconds, until match returns true for the
// spans received so far and returns them; after timeout it fails the test
// (t.Fatalf), listing what was received. match is called without the
// receiver's lock held, with a copy it may keep.
func (r *Receiver) WaitSpans(t testing.TB, timeout time.Duration, match func([]Span) bool) []Span {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		spans := r.Spans()
		if match(spans) {
			return spans
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, s := range spans {
				fmt.Fprintf(&b, "\n  %s", s)
			}
			t.Fatalf("otlptest: no match after %v; %d spans received (requests %v):%s", timeout, len(spans), r.Requests(), b.String())
		}
		time.Sleep(pollInterval)
	}
}

// WaitMetrics is WaitSpans for metric data points.
func (r *Receiver) WaitMetrics(t testing.TB, timeout time.Duration, match func([]MetricPoint) bool) []MetricPoint {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		points := r.Metrics()
		if match(points) {
			return points
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, p := range points {
				fmt.Fprintf(&b, "\n  %s", p)
			}
			t.Fatalf("otlptest: no match after %v; %d metric points received (requests %v):%s", timeout, len(points), r.Requests(), b.String())
		}
		time.Sleep(pollInterval)
	}
}

// String formats a span on one line for failure messages.
func (s Span) String() string {
	return fmt.Sprintf("%s trace=%s span=%s parent=%s kind=%v status=%v attrs=%v resource=%v via %s",
		s.Name, s.TraceID, s.SpanID, s.ParentSpanID, s.Kind, s.StatusCode, s.Attributes, s.Resource, s.Transport)
}

// String formats a point on one line for failure messages.
func (p MetricPoint) String() string {
	return fmt.Sprintf("%s %s value=%v count=%d sum=%v attrs=%v resource=%v via %s",
		p.Name, p.Type, p.Value, p.Count, p.Sum, p.Attributes, p.Resource, p.Transport)
}

// ---- gRPC ----

type traceService struct {
	coltracepb.UnimplementedTraceServiceServer
	r *Receiver
}

func (s traceService) Export(ctx context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	s.r.recordTraces(TransportGRPC, grpcHeaders(ctx), req)
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

type metricsService struct {
	colmetricspb.UnimplementedMetricsServiceServer
	r *Receiver
}

func (s metricsService) Export(ctx context.Context, req *colmetricspb.ExportMetricsServiceRequest) (*colmetricspb.ExportMetricsServiceResponse, error) {
	s.r.recordMetrics(TransportGRPC, grpcHeaders(ctx), req)
	return &colmetricspb.ExportMetricsServiceResponse{}, nil
}

func grpcHeaders(ctx context.Context) map[string]string {
	md, _ := metadata.FromIncomingContext(ctx)
	h := make(map[string]string, len(md))
	for k, v := range md {
		h[strings.ToLower(k)] = strings.Join(v, ",")
	}
	return h
}

// ---- HTTP ----

func (r *Receiver) serveTraces(w http.ResponseWriter, req *http.Request) {
	var msg coltracepb.ExportTraceServiceRequest
	if !readProto(w, req, &msg) {
		return
	}
	r.recordTraces(TransportHTTP, httpHeaders(req), &msg)
	writeProto(w, &coltracepb.ExportTraceServiceResponse{})
}

func (r *Receiver) serveMetrics(w http.ResponseWriter, req *http.Request) {
	var msg colmetricspb.ExportMetricsServiceRequest
	if !readProto(w, req, &msg) {
		return
	}
	r.recordMetrics(TransportHTTP, httpHeaders(req), &msg)
	writeProto(w, &colmetricspb.ExportMetricsServiceResponse{})
}

// readProto decodes an OTLP/HTTP protobuf request body into msg, or answers
// with the status the OTLP/HTTP specification asks for and returns false.
func readProto(w http.ResponseWriter, req *http.Request, msg proto.Message) bool {
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "otlptest: OTLP/HTTP wants POST", http.StatusMethodNotAllowed)
		return false
	}
	if ct, _, _ := mime.ParseMediaType(req.Header.Get("Content-Type")); ct != "application/x-protobuf" {
		http.Error(w, fmt.Sprintf("otlptest: content type %q not supported (want application/x-protobuf)", ct), http.StatusUnsupportedMediaType)
		return false
	}
	var body io.Reader = req.Body
	switch enc := strings.ToLower(strings.TrimSpace(req.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(req.Body)
		if err != nil {
			http.Error(w, "otlptest: bad gzip body: "+err.Error(), http.StatusBadRequest)
			return false
		}
		defer zr.Close()
		body = zr
	default:
		http.Error(w, fmt.Sprintf("otlptest: content encoding %q not supported (want gzip or none)", enc), http.StatusUnsupportedMediaType)
		return false
	}
	b, err := io.ReadAll(io.LimitReader(body, maxBody+1))
	if err != nil {
		http.Error(w, "otlptest: read body: "+err.Error(), http.StatusBadRequest)
		return false
	}
	if len(b) > maxBody {
		http.Error(w, "otlptest: body larger than 64 MiB", http.StatusRequestEntityTooLarge)
		return false
	}
	if err := proto.Unmarshal(b, msg); err != nil {
		http.Error(w, "otlptest: decode protobuf: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

func writeProto(w http.ResponseWriter, msg proto.Message) {
	b, err := proto.Marshal(msg)
	if err != nil {
		http.Error(w, "otlptest: encode response: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}

func httpHeaders(req *http.Request) map[string]string {
	h := make(map[string]string, len(req.Header))
	for k, v := range req.Header {
		h[strings.ToLower(k)] = strings.Join(v, ",")
	}
	return h
}

// ---- recording ----

func (r *Receiver) recordTraces(transport string, headers map[string]string, req *coltracepb.ExportTraceServiceRequest) {
	var spans []Span
	for _, rs := range req.GetResourceSpans() {
		res := resourceMap(rs.GetResource())
		for _, ss := range rs.GetScopeSpans() {
			scope := ss.GetScope().GetName()
			for _, s := range ss.GetSpans() {
				sp := Span{
					TraceID:       hex.EncodeToString(s.GetTraceId()),
					SpanID:        hex.EncodeToString(s.GetSpanId()),
					ParentSpanID:  hex.EncodeToString(s.GetParentSpanId()),
					Name:          s.GetName(),
					Kind:          s.GetKind(),
					Start:         unixNano(s.GetStartTimeUnixNano()),
					End:           unixNano(s.GetEndTimeUnixNano()),
					Attributes:    attrMap(s.GetAttributes()),
					Resource:      res,
					Scope:         scope,
					StatusCode:    s.GetStatus().GetCode(),
					StatusMessage: s.GetStatus().GetMessage(),
					Transport:     transport,
				}
				for _, e := range s.GetEvents() {
					sp.Events = append(sp.Events, e.GetName())
				}
				spans = append(spans, sp)
			}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.spans = append(r.spans, spans...)
	r.requests[transport]++
	r.headers = headers
}

func (r *Receiver) recordMetrics(transport string, headers map[string]string, req *colmetricspb.ExportMetricsServiceRequest) {
	var points []MetricPoint
	for _, rm := range req.GetResourceMetrics() {
		res := resourceMap(rm.GetResource())
		for _, sm := range rm.GetScopeMetrics() {
			scope := sm.GetScope().GetName()
			for _, m := range sm.GetMetrics() {
				base := MetricPoint{Name: m.GetName(), Resource: res, Scope: scope, Transport: transport}
				points = append(points, flattenMetric(base, m)...)
			}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.metrics = append(r.metrics, points...)
	r.requests[transport]++
	r.headers = headers
}

func flattenMetric(base MetricPoint, m *metricspb.Metric) []MetricPoint {
	var out []MetricPoint
	number := func(typ string, dps []*metricspb.NumberDataPoint, monotonic bool, temp metricspb.AggregationTemporality) {
		for _, dp := range dps {
			p := base
			p.Type, p.Monotonic, p.Temporality = typ, monotonic, temp
			p.Attributes = attrMap(dp.GetAttributes())
			p.Time = unixNano(dp.GetTimeUnixNano())
			switch v := dp.GetValue().(type) {
			case *metricspb.NumberDataPoint_AsDouble:
				p.Value = v.AsDouble
			case *metricspb.NumberDataPoint_AsInt:
				p.Value = float64(v.AsInt)
			}
			out = append(out, p)
		}
	}
	switch d := m.GetData().(type) {
	case *metricspb.Metric_Sum:
		number("sum", d.Sum.GetDataPoints(), d.Sum.GetIsMonotonic(), d.Sum.GetAggregationTemporality())
	case *metricspb.Metric_Gauge:
		number("gauge", d.Gauge.GetDataPoints(), false, metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_UNSPECIFIED)
	case *metricspb.Metric_Histogram:
		for _, dp := range d.Histogram.GetDataPoints() {
			p := base
			p.Type, p.Temporality = "histogram", d.Histogram.GetAggregationTemporality()
			p.Attributes = attrMap(dp.GetAttributes())
			p.Time = unixNano(dp.GetTimeUnixNano())
			p.Count, p.Sum = dp.GetCount(), dp.GetSum()
			out = append(out, p)
		}
	case *metricspb.Metric_ExponentialHistogram:
		for _, dp := range d.ExponentialHistogram.GetDataPoints() {
			p := base
			p.Type, p.Temporality = "exponential_histogram", d.ExponentialHistogram.GetAggregationTemporality()
			p.Attributes = attrMap(dp.GetAttributes())
			p.Time = unixNano(dp.GetTimeUnixNano())
			p.Count, p.Sum = dp.GetCount(), dp.GetSum()
			out = append(out, p)
		}
	case *metricspb.Metric_Summary:
		for _, dp := range d.Summary.GetDataPoints() {
			p := base
			p.Type = "summary"
			p.Attributes = attrMap(dp.GetAttributes())
			p.Time = unixNano(dp.GetTimeUnixNano())
			p.Count, p.Sum = dp.GetCount(), dp.GetSum()
			out = append(out, p)
		}
	}
	return out
}

func unixNano(ns uint64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(ns))
}

func resourceMap(r *resourcepb.Resource) map[string]any { return attrMap(r.GetAttributes()) }

func attrMap(kvs []*commonpb.KeyValue) map[string]any {
	m := make(map[string]any, len(kvs))
	for _, kv := range kvs {
		m[kv.GetKey()] = anyValue(kv.GetValue())
	}
	return m
}

func anyValue(v *commonpb.AnyValue) any {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_BoolValue:
		return x.BoolValue
	case *commonpb.AnyValue_IntValue:
		return x.IntValue
	case *commonpb.AnyValue_DoubleValue:
		return x.DoubleValue
	case *commonpb.AnyValue_BytesValue:
		return x.BytesValue
	case *commonpb.AnyValue_ArrayValue:
		vals := x.ArrayValue.GetValues()
		a := make([]any, len(vals))
		for i, e := range vals {
			a[i] = anyValue(e)
		}
		return a
	case *commonpb.AnyValue_KvlistValue:
		return attrMap(x.KvlistValue.GetValues())
	default:
		return nil
	}
}

// ---- dead collectors ----

// Blackhole returns the host:port of a 127.0.0.1 listener that accepts TCP
// connections and never reads from or writes to them: a collector that
// hangs, the worst case, since every export waits for its full timeout (TLS
// and HTTP/2 handshakes never complete, HTTP requests never get a response).
// Accepted connections are held open until t.Cleanup closes them and the
// listener.
//
// The other dead collector, one whose port is closed so that connections are
// refused at once, is ClosedAddr.
func Blackhole(t testing.TB) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("otlptest: listen for blackhole: %v", err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return // listener closed by cleanup
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		lis.Close()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return lis.Addr().String()
}

// ClosedAddr returns the host:port of a 127.0.0.1 port that was just
// listened on and closed, so that connecting to it is refused: a collector
// that is down. Another process could in principle take the port in
// between; for a test that only needs "nobody answers here" that race is
// harmless.
func ClosedAddr(t testing.TB) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("otlptest: listen for closed port: %v", err)
	}
	addr := lis.Addr().String()
	if err := lis.Close(); err != nil {
		t.Fatalf("otlptest: close listener: %v", err)
	}
	return addr
}
