package telemetry

import (
	"context"
	"errors"
	"math"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"go.uber.org/goleak"

	"github.com/sidemesh/sidemesh/telemetry/otlptest"
)

const otlpTestWait = 10 * time.Second

// otlpClearEnv blanks every OTEL_* variable for the test, so that the
// environment the tests run in cannot change what they see (the SDK and
// exporters treat a blank variable as unset).
func otlpClearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "OTEL_") {
			t.Setenv(k, "")
		}
	}
}

func otlpTestResource(t *testing.T) *resource.Resource {
	t.Helper()
	res, err := NewResource(context.Background(), ResourceOptions{
		ServiceName: "svc-under-test", InstanceID: "instance-1", Mode: "sidecar", Version: "0.0.0-test",
	})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func otlpShutdown(t *testing.T, shutdown func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), otlpTestWait)
	defer cancel()
	if err := shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

func TestNewTracerProviderExports(t *testing.T) {
	otlpClearEnv(t)
	r := otlptest.Start(t)
	hostPort := strings.TrimPrefix(r.HTTPURL(), "http://")
	for _, tc := range []struct {
		name      string
		o         OTLPOptions
		transport string
	}{
		{"grpc host:port", OTLPOptions{Endpoint: r.GRPCAddr(), Insecure: true}, otlptest.TransportGRPC},
		{"grpc URL", OTLPOptions{Endpoint: "http://" + r.GRPCAddr(), Protocol: "grpc"}, otlptest.TransportGRPC},
		{"http base URL", OTLPOptions{Endpoint: r.HTTPURL(), Protocol: "http/protobuf"}, otlptest.TransportHTTP},
		{"http base URL with slash", OTLPOptions{Endpoint: r.HTTPURL() + "/", Protocol: "http/protobuf"}, otlptest.TransportHTTP},
		{"http full URL", OTLPOptions{Endpoint: r.HTTPURL() + "/v1/traces", Protocol: "http/protobuf"}, otlptest.TransportHTTP},
		{"http alias host:port", OTLPOptions{Endpoint: hostPort, Protocol: "http", Insecure: true}, otlptest.TransportHTTP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := r.Requests()[tc.transport]
			tc.o.Headers = map[string]string{"X-Api-Key": "secret-" + tc.name}
			tc.o.Timeout = 5 * time.Second

			// The setup context is over as soon as NewTracerProvider returns.
			setup, cancel := context.WithCancel(context.Background())
			tp, err := NewTracerProvider(setup, TracingOptions{OTLP: tc.o, Resource: otlpTestResource(t)})
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			_, span := tp.Tracer("test").Start(context.Background(), tc.name, trace.WithAttributes(attribute.String("case", tc.name)))
			span.End()
			otlpShutdown(t, tp.Shutdown)

			spans := r.WaitSpans(t, otlpTestWait, func(s []otlptest.Span) bool {
				return slices.ContainsFunc(s, func(s otlptest.Span) bool { return s.Name == tc.name })
			})
			s := spans[slices.IndexFunc(spans, func(s otlptest.Span) bool { return s.Name == tc.name })]
			if s.Transport != tc.transport {
				t.Errorf("span came over %s, want %s", s.Transport, tc.transport)
			}
			if s.Attributes["case"] != tc.name || s.TraceID != span.SpanContext().TraceID().String() {
				t.Errorf("span %v", s)
			}
			for k, want := range map[string]any{
				"service.name": "svc-under-test", "service.instance.id": "instance-1",
				"service.version": "0.0.0-test", "sidemesh.mode": "sidecar", "telemetry.sdk.language": "go",
			} {
				if s.Resource[k] != want {
					t.Errorf("resource %s = %#v, want %#v", k, s.Resource[k], want)
				}
			}
			if h := r.Headers()["x-api-key"]; h != "secret-"+tc.name {
				t.Errorf("x-api-key = %q, want %q", h, "secret-"+tc.name)
			}
			if n := r.Requests()[tc.transport] - before; n != 1 {
				t.Errorf("%d %s requests, want 1", n, tc.transport)
			}
		})
	}
}

func TestNewTracerProviderSampling(t *testing.T) {
	otlpClearEnv(t)
	sampledParent := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x0a, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
		SpanID:     trace.SpanID{0x0b, 1, 2, 3, 4, 5, 6, 7},
		TraceFlags: trace.FlagsSampled,
		Remote:     true,
	})
	unsampledParent := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0x0c, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
		SpanID:  trace.SpanID{0x0d, 1, 2, 3, 4, 5, 6, 7},
		Remote:  true,
	})
	const roots = 100

	for _, tc := range []struct {
		name  string
		ratio float64
	}{{"ratio 0", 0}, {"ratio 1", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			r := otlptest.Start(t)
			tp, err := NewTracerProvider(context.Background(), TracingOptions{
				OTLP:        OTLPOptions{Endpoint: r.GRPCAddr(), Insecure: true},
				SampleRatio: &tc.ratio,
				Resource:    otlpTestResource(t),
			})
			if err != nil {
				t.Fatal(err)
			}
			tr := tp.Tracer("test")
			for range roots {
				_, s := tr.Start(context.Background(), "root")
				s.End()
			}
			_, s := tr.Start(trace.ContextWithRemoteSpanContext(context.Background(), sampledParent), "sampled-parent",
				trace.WithSpanKind(trace.SpanKindServer))
			s.End()
			_, s = tr.Start(trace.ContextWithRemoteSpanContext(context.Background(), unsampledParent), "unsampled-parent")
			s.End()
			// Shutdown returns once the last batch is acknowledged, so what
			// the receiver holds afterwards is everything.
			otlpShutdown(t, tp.Shutdown)
			spans := r.WaitSpans(t, otlpTestWait, func(s []otlptest.Span) bool {
				return slices.ContainsFunc(s, func(s otlptest.Span) bool { return s.Name == "sampled-parent" })
			})

			var nroots int
			for _, s := range spans {
				switch s.Name {
				case "root":
					nroots++
					if s.ParentSpanID != "" {
						t.Errorf("root span with parent %s", s.ParentSpanID)
					}
				case "sampled-parent":
					if s.TraceID != sampledParent.TraceID().String() || s.ParentSpanID != sampledParent.SpanID().String() {
						t.Errorf("span of a sampled remote parent: trace %s parent %s, want %s %s",
							s.TraceID, s.ParentSpanID, sampledParent.TraceID(), sampledParent.SpanID())
					}
				default:
					t.Errorf("unexpected span exported: %v", s)
				}
			}
			if want := int(tc.ratio * roots); nroots != want {
				t.Errorf("%d root spans exported, want %d", nroots, want)
			}
		})
	}
}

// With SampleRatio nil the SDK's own OTEL_TRACES_SAMPLER handling applies,
// and without it the default is parent-based always-on.
func TestNewTracerProviderSamplerFromEnv(t *testing.T) {
	sampledParent := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}, TraceFlags: trace.FlagsSampled, Remote: true,
	})
	unsampledParent := sampledParent.WithTraceFlags(0)
	for _, tc := range []struct {
		sampler, arg                         string
		wantRoot, wantSampled, wantUnsampled bool
	}{
		{"", "", true, true, false},
		{"parentbased_traceidratio", "0", false, true, false},
		{"always_off", "", false, false, false},
		{"always_on", "", true, true, true},
	} {
		t.Run("sampler="+tc.sampler, func(t *testing.T) {
			otlpClearEnv(t)
			t.Setenv("OTEL_TRACES_SAMPLER", tc.sampler)
			t.Setenv("OTEL_TRACES_SAMPLER_ARG", tc.arg)
			// Sampling is decided at Start; the receiver only lets Shutdown
			// finish at once.
			tp, err := NewTracerProvider(context.Background(), TracingOptions{
				OTLP: OTLPOptions{Endpoint: otlptest.Start(t).GRPCAddr(), Insecure: true},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer otlpShutdown(t, tp.Shutdown)
			tr := tp.Tracer("test")
			for _, c := range []struct {
				name   string
				parent context.Context
				want   bool
			}{
				{"root", context.Background(), tc.wantRoot},
				{"sampled parent", trace.ContextWithRemoteSpanContext(context.Background(), sampledParent), tc.wantSampled},
				{"unsampled parent", trace.ContextWithRemoteSpanContext(context.Background(), unsampledParent), tc.wantUnsampled},
			} {
				_, s := tr.Start(c.parent, c.name)
				if got := s.SpanContext().IsSampled(); got != c.want {
					t.Errorf("%s: sampled = %v, want %v", c.name, got, c.want)
				}
				s.End()
			}
		})
	}
}

func TestNewTracerProviderEnvFallback(t *testing.T) {
	r := otlptest.Start(t)
	for _, tc := range []struct {
		name      string
		env       map[string]string
		o         OTLPOptions
		transport string
		check     func(t *testing.T, s otlptest.Span, headers map[string]string)
	}{
		{
			name:      "generic endpoint over http",
			env:       map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": r.HTTPURL(), "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
			transport: otlptest.TransportHTTP,
		},
		{
			name:      "generic endpoint over grpc, http scheme means insecure",
			env:       map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + r.GRPCAddr()},
			transport: otlptest.TransportGRPC,
		},
		{
			name: "traces variables beat generic ones",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT":        "http://" + otlptest.Blackhole(t),
				"OTEL_EXPORTER_OTLP_PROTOCOL":        "grpc",
				"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": r.HTTPURL() + "/v1/traces",
				"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
			},
			transport: otlptest.TransportHTTP,
		},
		{
			name:      "code beats environment",
			env:       map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + otlptest.Blackhole(t), "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
			o:         OTLPOptions{Endpoint: r.GRPCAddr(), Protocol: "grpc", Insecure: true},
			transport: otlptest.TransportGRPC,
		},
		{
			name: "code headers merge over environment headers",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + r.GRPCAddr(),
				"OTEL_EXPORTER_OTLP_HEADERS":  "x-env=from%20env, x-both=env",
			},
			o:         OTLPOptions{Headers: map[string]string{"X-Both": "code"}},
			transport: otlptest.TransportGRPC,
			check: func(t *testing.T, _ otlptest.Span, h map[string]string) {
				if h["x-env"] != "from env" || h["x-both"] != "code" {
					t.Errorf("x-env = %q, x-both = %q; want \"from env\", \"code\"", h["x-env"], h["x-both"])
				}
			},
		},
		{
			name: "environment headers alone",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT":       r.HTTPURL(),
				"OTEL_EXPORTER_OTLP_PROTOCOL":       "http/protobuf",
				"OTEL_EXPORTER_OTLP_HEADERS":        "x-generic=1",
				"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-traces=2",
			},
			transport: otlptest.TransportHTTP,
			check: func(t *testing.T, _ otlptest.Span, h map[string]string) {
				// The signal's variable replaces the generic one, as in the exporters.
				if h["x-traces"] != "2" || h["x-generic"] != "" {
					t.Errorf("x-traces = %q, x-generic = %q; want \"2\", \"\"", h["x-traces"], h["x-generic"])
				}
			},
		},
		{
			name: "OTEL_SERVICE_NAME beats OTEL_RESOURCE_ATTRIBUTES and code",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + r.GRPCAddr(),
				"OTEL_SERVICE_NAME":           "svc-from-env",
				"OTEL_RESOURCE_ATTRIBUTES":    "service.name=svc-from-attrs,deployment.environment.name=ci",
			},
			transport: otlptest.TransportGRPC,
			check: func(t *testing.T, s otlptest.Span, _ map[string]string) {
				if s.Resource["service.name"] != "svc-from-env" || s.Resource["deployment.environment.name"] != "ci" ||
					s.Resource["service.instance.id"] != "instance-1" {
					t.Errorf("resource %v", s.Resource)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			otlpClearEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			tp, err := NewTracerProvider(context.Background(), TracingOptions{OTLP: tc.o, Resource: otlpTestResource(t)})
			if err != nil {
				t.Fatal(err)
			}
			_, span := tp.Tracer("test").Start(context.Background(), tc.name)
			span.End()
			otlpShutdown(t, tp.Shutdown)
			spans := r.WaitSpans(t, otlpTestWait, func(s []otlptest.Span) bool {
				return slices.ContainsFunc(s, func(s otlptest.Span) bool { return s.Name == tc.name })
			})
			s := spans[slices.IndexFunc(spans, func(s otlptest.Span) bool { return s.Name == tc.name })]
			if s.Transport != tc.transport {
				t.Errorf("span came over %s, want %s", s.Transport, tc.transport)
			}
			if tc.check != nil {
				tc.check(t, s, r.Headers())
			}
		})
	}
}

func TestOTLPOptionErrors(t *testing.T) {
	nan, big := math.NaN(), 1.5
	for _, tc := range []struct {
		name    string
		env     map[string]string
		tracing TracingOptions
		metrics *MetricsExportOptions
		want    []string // substrings of the error
	}{
		{name: "unknown protocol", tracing: TracingOptions{OTLP: OTLPOptions{Protocol: "udp"}},
			want: []string{`"udp"`, `"grpc"`, `"http/protobuf"`, `"http"`}},
		{name: "unknown protocol for metrics", metrics: &MetricsExportOptions{OTLP: OTLPOptions{Protocol: "thrift"}},
			want: []string{`"thrift"`, `"grpc"`}},
		{name: "http/json from environment", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
			want: []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", `"http/json"`}},
		{name: "bad metrics protocol from environment", env: map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "kafka"},
			metrics: &MetricsExportOptions{}, want: []string{"OTEL_EXPORTER_OTLP_PROTOCOL", `"kafka"`}},
		{name: "URL scheme", tracing: TracingOptions{OTLP: OTLPOptions{Endpoint: "ftp://collector:4317"}}, want: []string{`"ftp"`}},
		{name: "URL without host", tracing: TracingOptions{OTLP: OTLPOptions{Endpoint: "http://"}}, want: []string{"no host"}},
		{name: "path without scheme", tracing: TracingOptions{OTLP: OTLPOptions{Endpoint: "collector:4318/v1/traces"}}, want: []string{"neither"}},
		{name: "http needs a URL in the environment", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"},
			tracing: TracingOptions{OTLP: OTLPOptions{Protocol: "http/protobuf"}}, want: []string{"OTEL_EXPORTER_OTLP_ENDPOINT"}},
		{name: "ratio above 1", tracing: TracingOptions{SampleRatio: &big}, want: []string{"1.5"}},
		{name: "ratio NaN", tracing: TracingOptions{SampleRatio: &nan}, want: []string{"NaN"}},
		{name: "negative queue", tracing: TracingOptions{QueueSize: -1}, want: []string{"queue size -1"}},
		{name: "negative batch timeout", tracing: TracingOptions{BatchTimeout: -time.Second}, want: []string{"batch timeout"}},
		{name: "negative OTLP timeout", tracing: TracingOptions{OTLP: OTLPOptions{Timeout: -time.Second}}, want: []string{"timeout -1s"}},
		{name: "negative interval", metrics: &MetricsExportOptions{Interval: -time.Second}, want: []string{"interval"}},
		{name: "queue size from environment", env: map[string]string{"OTEL_BSP_MAX_QUEUE_SIZE": "lots"},
			want: []string{"OTEL_BSP_MAX_QUEUE_SIZE", `"lots"`}},
		{name: "timeout from environment", env: map[string]string{"OTEL_EXPORTER_OTLP_TIMEOUT": "0"},
			want: []string{"OTEL_EXPORTER_OTLP_TIMEOUT"}},
		{name: "headers from environment", env: map[string]string{"OTEL_EXPORTER_OTLP_HEADERS": "a=1,novalue"},
			want: []string{"OTEL_EXPORTER_OTLP_HEADERS", "novalue"}},
		{name: "header name", tracing: TracingOptions{OTLP: OTLPOptions{Headers: map[string]string{"bad key": "v"}}},
			want: []string{`"bad key"`}},
		{name: "header value", tracing: TracingOptions{OTLP: OTLPOptions{Headers: map[string]string{"k": "a\r\nb"}}},
			want: []string{"control"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			otlpClearEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var err error
			if tc.metrics != nil {
				var r sdkmetric.Reader
				if r, err = NewMetricReader(context.Background(), *tc.metrics); err == nil {
					otlpShutdown(t, r.Shutdown)
				}
			} else {
				var tp interface{ Shutdown(context.Context) error }
				if tp, err = NewTracerProvider(context.Background(), tc.tracing); err == nil {
					otlpShutdown(t, tp.Shutdown)
				}
			}
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "telemetry: ") {
				t.Errorf("error %q does not start with \"telemetry: \"", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not mention %s", msg, w)
				}
			}
		})
	}
}

// TestNewTracerProviderDeadCollector runs the request path against a
// collector that hangs (Blackhole) and one that is down (a closed port):
// starting up must not wait for it, ending spans must not block or pile up
// in memory, and Shutdown must give up when its context says so and leave
// nothing running.
func TestNewTracerProviderDeadCollector(t *testing.T) {
	otlpClearEnv(t)
	const (
		spans = 200_000
		queue = 256
		// The heap may hold at most the queue plus one batch in flight (256
		// spans each, a few KiB per span with its attributes and the
		// protobuf copy being sent): well under 4 MiB. 32 MiB leaves room
		// for GC timing and runtime noise while still catching any per-span
		// retention: 200,000 retained spans would be hundreds of MiB.
		maxHeapGrowth = 32 << 20
	)
	// For scale: the same loop on a provider with no processor at all.
	floor := sdktrace.NewTracerProvider()
	start := time.Now()
	for i := range spans {
		_, s := floor.Tracer("test").Start(context.Background(), "request", trace.WithAttributes(attribute.Int("i", i)))
		s.End()
	}
	t.Logf("floor, no span processor: %d ns/span", time.Since(start).Nanoseconds()/spans)
	otlpShutdown(t, floor.Shutdown)

	for _, tc := range []struct {
		name     string
		protocol string
		addr     func(testing.TB) string
	}{
		{"grpc blackhole", "grpc", otlptest.Blackhole},
		{"grpc closed port", "grpc", otlptest.ClosedAddr},
		{"http blackhole", "http/protobuf", otlptest.Blackhole},
		{"http closed port", "http/protobuf", otlptest.ClosedAddr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := tc.addr(t)
			leaks := goleak.IgnoreCurrent()

			setup, cancel := context.WithTimeout(context.Background(), time.Second)
			start := time.Now()
			tp, err := NewTracerProvider(setup, TracingOptions{
				OTLP:      OTLPOptions{Endpoint: addr, Protocol: tc.protocol, Insecure: true},
				QueueSize: queue,
				Resource:  otlpTestResource(t),
			})
			cancel()
			if err != nil {
				t.Fatalf("NewTracerProvider with a dead collector: %v", err)
			}
			t.Logf("setup took %v", time.Since(start))

			tr := tp.Tracer("test")
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start = time.Now()
			for i := range spans {
				_, s := tr.Start(context.Background(), "request", trace.WithAttributes(attribute.Int("i", i)))
				s.End()
			}
			elapsed := time.Since(start)
			runtime.GC()
			runtime.ReadMemStats(&after)
			growth := int64(after.HeapAlloc) - int64(before.HeapAlloc)
			t.Logf("%d spans in %v: %d ns/span; heap %+d KiB (bound %d KiB)",
				spans, elapsed, elapsed.Nanoseconds()/spans, growth>>10, maxHeapGrowth>>10)
			if growth > maxHeapGrowth {
				t.Errorf("heap grew by %d MiB ending %d spans toward a dead collector; want < %d MiB",
					growth>>20, spans, maxHeapGrowth>>20)
			}

			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			start = time.Now()
			err = tp.Shutdown(ctx)
			took := time.Since(start)
			t.Logf("Shutdown(1s) took %v: %v", took, err)
			if took > 5*time.Second {
				t.Errorf("Shutdown with a 1s context took %v", took)
			}
			// Nothing keeps exporting toward the dead collector: the
			// batch processor, the exporter and its connections are gone.
			goleak.VerifyNone(t, leaks)
		})
	}
}

func TestNewMetricReaderExports(t *testing.T) {
	otlpClearEnv(t)
	r := otlptest.Start(t)
	for _, tc := range []struct {
		name      string
		o         OTLPOptions
		transport string
	}{
		{"grpc", OTLPOptions{Endpoint: r.GRPCAddr(), Insecure: true}, otlptest.TransportGRPC},
		{"http", OTLPOptions{Endpoint: r.HTTPURL(), Protocol: "http/protobuf"}, otlptest.TransportHTTP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.Headers = map[string]string{"x-api-key": "metrics-" + tc.name}
			reader, err := NewMetricReader(context.Background(), MetricsExportOptions{OTLP: tc.o, Interval: 20 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader), sdkmetric.WithResource(otlpTestResource(t)))
			defer otlpShutdown(t, mp.Shutdown)
			name := "test.requests." + tc.name
			ctr, err := mp.Meter("test").Int64Counter(name)
			if err != nil {
				t.Fatal(err)
			}
			ctr.Add(context.Background(), 7, metric.WithAttributes(attribute.String("route", "/a")))

			// No ForceFlush: the periodic export must bring it.
			points := r.WaitMetrics(t, otlpTestWait, func(ps []otlptest.MetricPoint) bool {
				return slices.ContainsFunc(ps, func(p otlptest.MetricPoint) bool { return p.Name == name })
			})
			p := points[slices.IndexFunc(points, func(p otlptest.MetricPoint) bool { return p.Name == name })]
			if p.Type != "sum" || p.Value != 7 || !p.Monotonic || p.Attributes["route"] != "/a" ||
				p.Temporality != metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE {
				t.Errorf("point %v, want a cumulative monotonic sum of 7 with route=/a", p)
			}
			if p.Transport != tc.transport || p.Resource["service.name"] != "svc-under-test" || p.Resource["sidemesh.mode"] != "sidecar" {
				t.Errorf("point %v: transport or resource", p)
			}
			if h := r.Headers()["x-api-key"]; h != "metrics-"+tc.name {
				t.Errorf("x-api-key = %q", h)
			}
		})
	}
}

func TestPropagator(t *testing.T) {
	otlpClearEnv(t)
	t.Setenv("OTEL_PROPAGATORS", "b3") // not honoured: the mesh speaks W3C
	p := Propagator()
	if f := p.Fields(); !slices.Contains(f, "traceparent") || !slices.Contains(f, "baggage") {
		t.Fatalf("fields %v, want traceparent and baggage", f)
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0xab, 1}, SpanID: trace.SpanID{0xcd, 2}, TraceFlags: trace.FlagsSampled,
	})
	m, _ := baggage.NewMemberRaw("tenant", "t1")
	b, _ := baggage.New(m)
	ctx := baggage.ContextWithBaggage(trace.ContextWithSpanContext(context.Background(), sc), b)
	h := http.Header{}
	p.Inject(ctx, propagation.HeaderCarrier(h))
	if want := "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-01"; h.Get("traceparent") != want {
		t.Errorf("traceparent %q, want %q", h.Get("traceparent"), want)
	}
	if h.Get("baggage") != "tenant=t1" {
		t.Errorf("baggage %q", h.Get("baggage"))
	}
	out := p.Extract(context.Background(), propagation.HeaderCarrier(h))
	if got := trace.SpanContextFromContext(out); got.TraceID() != sc.TraceID() || got.SpanID() != sc.SpanID() || !got.IsSampled() || !got.IsRemote() {
		t.Errorf("extracted %v", got)
	}
	if baggage.FromContext(out).Member("tenant").Value() != "t1" {
		t.Errorf("extracted baggage %v", baggage.FromContext(out))
	}
}

func TestNewResource(t *testing.T) {
	ctx := context.Background()
	attrs := func(r *resource.Resource) map[string]string {
		m := map[string]string{}
		for _, kv := range r.Attributes() {
			m[string(kv.Key)] = kv.Value.Emit()
		}
		return m
	}

	t.Run("from options", func(t *testing.T) {
		otlpClearEnv(t)
		r, err := NewResource(ctx, ResourceOptions{ServiceName: "svc", InstanceID: "i-1", Mode: "edge", Version: "1.2.3"})
		if err != nil {
			t.Fatal(err)
		}
		got := attrs(r)
		for k, want := range map[string]string{
			"service.name": "svc", "service.instance.id": "i-1", "service.version": "1.2.3", "sidemesh.mode": "edge",
			"telemetry.sdk.language": "go", "telemetry.sdk.name": "opentelemetry",
		} {
			if got[k] != want {
				t.Errorf("%s = %q, want %q", k, got[k], want)
			}
		}
		if got["host.name"] == "" || got["telemetry.sdk.version"] == "" {
			t.Errorf("host.name or telemetry.sdk.version missing: %v", got)
		}
		if r.SchemaURL() != semconv.SchemaURL {
			t.Errorf("schema URL %q, want %q", r.SchemaURL(), semconv.SchemaURL)
		}
		// Same schema as the SDK's own resources: merging must not conflict.
		if _, err := resource.Merge(resource.Default(), r); err != nil {
			t.Errorf("merge with resource.Default(): %v", err)
		}
	})

	t.Run("defaults", func(t *testing.T) {
		otlpClearEnv(t)
		r, err := NewResource(ctx, ResourceOptions{})
		if err != nil {
			t.Fatal(err)
		}
		got := attrs(r)
		if !strings.HasPrefix(got["service.name"], "unknown_service:") {
			t.Errorf("service.name %q, want unknown_service:...", got["service.name"])
		}
		for _, k := range []string{"service.instance.id", "service.version", "sidemesh.mode"} {
			if _, ok := got[k]; ok {
				t.Errorf("%s set from an empty option", k)
			}
		}
	})

	t.Run("environment overrides", func(t *testing.T) {
		otlpClearEnv(t)
		t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs,sidemesh.mode=sidecar,team=mesh%20core")
		r, err := NewResource(ctx, ResourceOptions{ServiceName: "svc", Mode: "edge"})
		if err != nil {
			t.Fatal(err)
		}
		got := attrs(r)
		if got["service.name"] != "from-attrs" || got["sidemesh.mode"] != "sidecar" || got["team"] != "mesh core" {
			t.Errorf("attributes %v", got)
		}
		t.Setenv("OTEL_SERVICE_NAME", "from-service-name")
		if r, err = NewResource(ctx, ResourceOptions{ServiceName: "svc"}); err != nil {
			t.Fatal(err)
		}
		if got := attrs(r)["service.name"]; got != "from-service-name" {
			t.Errorf("service.name %q, want OTEL_SERVICE_NAME's", got)
		}
	})

	t.Run("malformed environment", func(t *testing.T) {
		otlpClearEnv(t)
		t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "team=core,garbage")
		r, err := NewResource(ctx, ResourceOptions{ServiceName: "svc"})
		if !errors.Is(err, resource.ErrPartialResource) || !strings.HasPrefix(err.Error(), "telemetry: ") {
			t.Fatalf("error %v, want a telemetry error wrapping resource.ErrPartialResource", err)
		}
		if got := attrs(r); got["service.name"] != "svc" || got["team"] != "core" {
			t.Errorf("partial resource %v", got)
		}
	})

	t.Run("bad mode", func(t *testing.T) {
		otlpClearEnv(t)
		_, err := NewResource(ctx, ResourceOptions{Mode: "gateway"})
		if err == nil || !strings.Contains(err.Error(), `"gateway"`) {
			t.Errorf("error %v, want one naming the mode", err)
		}
	})
}
