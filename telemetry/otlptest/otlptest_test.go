package otlptest_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/sidemesh/sidemesh/telemetry/otlptest"
)

// TestMain checks that the receiver, the exporters and the SDK leave no
// goroutine behind once everything is shut down. No ignores are needed: the
// gRPC server's Stop and the HTTP server's Close end every connection, which
// also ends the client side of the exporters' pooled HTTP connections.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const wait = 10 * time.Second

func testResource() *resource.Resource {
	return resource.NewSchemaless(attribute.String("service.name", "otlptest-svc"), attribute.Int("res.n", 7))
}

func TestTraces(t *testing.T) {
	for _, transport := range []string{otlptest.TransportGRPC, otlptest.TransportHTTP} {
		t.Run(transport, func(t *testing.T) {
			r := otlptest.Start(t)
			ctx := t.Context()

			var exp sdktrace.SpanExporter
			var err error
			if transport == otlptest.TransportGRPC {
				exp, err = otlptracegrpc.New(ctx,
					otlptracegrpc.WithEndpoint(r.GRPCAddr()),
					otlptracegrpc.WithInsecure(),
					otlptracegrpc.WithHeaders(map[string]string{"X-Test-Key": "k1"}))
			} else {
				// gzip, to check the receiver decompresses.
				exp, err = otlptracehttp.New(ctx,
					otlptracehttp.WithEndpointURL(r.HTTPURL()+"/v1/traces"),
					otlptracehttp.WithCompression(otlptracehttp.GzipCompression),
					otlptracehttp.WithHeaders(map[string]string{"X-Test-Key": "k1"}))
			}
			if err != nil {
				t.Fatal(err)
			}
			tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp), sdktrace.WithResource(testResource()))
			defer tp.Shutdown(context.Background())

			tr := tp.Tracer("otlptest/scope")
			pctx, parent := tr.Start(ctx, "parent", trace.WithSpanKind(trace.SpanKindServer))
			_, child := tr.Start(pctx, "child", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
				attribute.String("s", "v"),
				attribute.Int64("i", 42),
				attribute.Float64("f", 1.5),
				attribute.Bool("b", true),
				attribute.StringSlice("ss", []string{"x", "y"}),
			))
			child.AddEvent("retry")
			child.SetStatus(codes.Error, "upstream reset")
			child.End()
			parent.End()

			spans := r.WaitSpans(t, wait, func(s []otlptest.Span) bool { return len(s) == 2 })
			c, p := spans[0], spans[1] // the syncer exports in End order
			if c.Name != "child" || p.Name != "parent" {
				t.Fatalf("got %v, want child then parent", spans)
			}
			psc, csc := parent.SpanContext(), child.SpanContext()
			if p.TraceID != psc.TraceID().String() || p.SpanID != psc.SpanID().String() || p.ParentSpanID != "" {
				t.Errorf("parent ids %s/%s/%q, want %s/%s/\"\"", p.TraceID, p.SpanID, p.ParentSpanID, psc.TraceID(), psc.SpanID())
			}
			if c.TraceID != psc.TraceID().String() || c.SpanID != csc.SpanID().String() || c.ParentSpanID != psc.SpanID().String() {
				t.Errorf("child ids %s/%s/%s, want %s/%s/%s", c.TraceID, c.SpanID, c.ParentSpanID, psc.TraceID(), csc.SpanID(), psc.SpanID())
			}
			if p.Kind != tracepb.Span_SPAN_KIND_SERVER || c.Kind != tracepb.Span_SPAN_KIND_CLIENT {
				t.Errorf("kinds %v, %v", p.Kind, c.Kind)
			}
			want := map[string]any{"s": "v", "i": int64(42), "f": 1.5, "b": true}
			for k, v := range want {
				if c.Attributes[k] != v {
					t.Errorf("attribute %s = %#v, want %#v", k, c.Attributes[k], v)
				}
			}
			if ss, ok := c.Attributes["ss"].([]any); !ok || len(ss) != 2 || ss[0] != "x" || ss[1] != "y" {
				t.Errorf("attribute ss = %#v, want [x y]", c.Attributes["ss"])
			}
			if c.Resource["service.name"] != "otlptest-svc" || c.Resource["res.n"] != int64(7) {
				t.Errorf("resource %v", c.Resource)
			}
			if c.Scope != "otlptest/scope" {
				t.Errorf("scope %q", c.Scope)
			}
			if c.StatusCode != tracepb.Status_STATUS_CODE_ERROR || c.StatusMessage != "upstream reset" {
				t.Errorf("status %v %q", c.StatusCode, c.StatusMessage)
			}
			if len(c.Events) != 1 || c.Events[0] != "retry" {
				t.Errorf("events %v", c.Events)
			}
			if c.Start.IsZero() || c.End.Before(c.Start) {
				t.Errorf("times %v..%v", c.Start, c.End)
			}
			if c.Transport != transport {
				t.Errorf("transport %q, want %q", c.Transport, transport)
			}
			if n := r.Requests()[transport]; n != 2 {
				t.Errorf("%d %s requests, want 2 (one per span with a syncer); all: %v", n, transport, r.Requests())
			}
			if h := r.Headers()["x-test-key"]; h != "k1" {
				t.Errorf("header x-test-key = %q, want k1; headers %v", h, r.Headers())
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	for _, transport := range []string{otlptest.TransportGRPC, otlptest.TransportHTTP} {
		t.Run(transport, func(t *testing.T) {
			r := otlptest.Start(t)
			ctx := t.Context()

			var exp sdkmetric.Exporter
			var err error
			if transport == otlptest.TransportGRPC {
				exp, err = otlpmetricgrpc.New(ctx, otlpmetricgrpc.WithEndpoint(r.GRPCAddr()), otlpmetricgrpc.WithInsecure())
			} else {
				exp, err = otlpmetrichttp.New(ctx, otlpmetrichttp.WithEndpoint(strings.TrimPrefix(r.HTTPURL(), "http://")),
					otlpmetrichttp.WithInsecure(), otlpmetrichttp.WithCompression(otlpmetrichttp.GzipCompression))
			}
			if err != nil {
				t.Fatal(err)
			}
			mp := sdkmetric.NewMeterProvider(
				sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp, sdkmetric.WithInterval(time.Hour))),
				sdkmetric.WithResource(testResource()))
			defer mp.Shutdown(context.Background())

			m := mp.Meter("otlptest/meter")
			ctr, _ := m.Int64Counter("requests")
			ctr.Add(ctx, 3, metric.WithAttributes(attribute.String("route", "a")))
			ctr.Add(ctx, 2, metric.WithAttributes(attribute.String("route", "a")))
			h, _ := m.Float64Histogram("latency")
			h.Record(ctx, 0.25)
			h.Record(ctx, 0.75)
			if err := mp.ForceFlush(ctx); err != nil {
				t.Fatal(err)
			}

			points := r.WaitMetrics(t, wait, func(ps []otlptest.MetricPoint) bool { return len(ps) >= 2 })
			var sawCounter, sawHist bool
			for _, p := range points {
				switch p.Name {
				case "requests":
					sawCounter = true
					if p.Type != "sum" || p.Value != 5 || !p.Monotonic || p.Attributes["route"] != "a" ||
						p.Temporality != metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE {
						t.Errorf("counter point %v", p)
					}
				case "latency":
					sawHist = true
					if p.Type != "histogram" || p.Count != 2 || p.Sum != 1 {
						t.Errorf("histogram point %v", p)
					}
				}
				if p.Resource["service.name"] != "otlptest-svc" || p.Scope != "otlptest/meter" || p.Transport != transport {
					t.Errorf("point %v: resource/scope/transport", p)
				}
			}
			if !sawCounter || !sawHist {
				t.Errorf("points %v: want requests and latency", points)
			}
		})
	}
}

func TestHTTPRejects(t *testing.T) {
	r := otlptest.Start(t)
	body, _ := proto.Marshal(&coltracepb.ExportTraceServiceRequest{})
	var zipped bytes.Buffer
	zw := gzip.NewWriter(&zipped)
	zw.Write(body)
	zw.Close()

	for _, tc := range []struct {
		name, method, ctype, enc string
		body                     []byte
		want                     int
	}{
		{"ok", http.MethodPost, "application/x-protobuf", "", body, http.StatusOK},
		{"gzip", http.MethodPost, "application/x-protobuf", "gzip", zipped.Bytes(), http.StatusOK},
		{"get", http.MethodGet, "", "", nil, http.StatusMethodNotAllowed},
		{"json", http.MethodPost, "application/json", "", []byte("{}"), http.StatusUnsupportedMediaType},
		{"br", http.MethodPost, "application/x-protobuf", "br", body, http.StatusUnsupportedMediaType},
		{"not gzip", http.MethodPost, "application/x-protobuf", "gzip", body, http.StatusBadRequest},
		{"garbage", http.MethodPost, "application/x-protobuf", "", []byte{0xff, 0xff, 0xff}, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), tc.method, r.HTTPURL()+"/v1/traces", bytes.NewReader(tc.body))
			if tc.ctype != "" {
				req.Header.Set("Content-Type", tc.ctype)
			}
			if tc.enc != "" {
				req.Header.Set("Content-Encoding", tc.enc)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	if n := r.Requests()[otlptest.TransportHTTP]; n != 2 {
		t.Errorf("%d accepted HTTP requests, want 2", n)
	}
	http.DefaultClient.CloseIdleConnections()
}

func TestBlackholeNeverAnswers(t *testing.T) {
	addr := otlptest.Blackhole(t)
	c, err := net.DialTimeout("tcp", addr, wait)
	if err != nil {
		t.Fatalf("dial blackhole: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("POST /v1/traces HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	n, err := c.Read(make([]byte, 1))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("read from blackhole: n=%d err=%v, want a deadline error", n, err)
	}
}

func TestClosedAddrRefuses(t *testing.T) {
	c, err := net.DialTimeout("tcp", otlptest.ClosedAddr(t), wait)
	if err == nil {
		c.Close()
		t.Fatal("dial closed port: connected")
	}
}
