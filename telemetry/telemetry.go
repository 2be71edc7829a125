package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of sidemesh's spans and metrics.
const ScopeName = "github.com/sidemesh/sidemesh"

// Options configure New.
type Options struct {
	// Resource describes this process on every span and metric.
	Resource ResourceOptions
	// Tracing, when set, records spans and exports them over OTLP. Nil
	// records none; trace headers then pass through untouched.
	Tracing *TracingOptions
	// MetricsExport, when set, pushes metrics over OTLP too. Metrics are
	// always available to MetricsHandler.
	MetricsExport *MetricsExportOptions
	// AccessLog receives one JSON line per request. Nil means none.
	AccessLog io.Writer
	// Observed feeds the metrics read at collection time, and the
	// gossip membership events.
	Observed Observed
	// Build labels the sidemesh_build_info series of MetricsHandler.
	Build BuildInfo
	// Logger receives export failures, rate-limited. Nil means
	// slog.Default(). The OpenTelemetry SDK's error handler is
	// process-wide: the last Telemetry created sets it.
	Logger *slog.Logger
}

// BuildInfo says which build is running, for the sidemesh_build_info
// series (the Go version is added). Empty fields are exported as empty
// label values.
type BuildInfo struct {
	// Version is the release, e.g. v0.4.0 or devel-1a2b3c4d5e6f.
	Version string
	// Commit is the VCS revision the binary was built from.
	Commit string
}

// Telemetry is one process's tracer, meters, access log, and the event
// log and traffic history of the admin API. Its methods are safe for
// concurrent use. A nil *Telemetry records nothing, so callers need no
// checks of their own.
type Telemetry struct {
	tp         *sdktrace.TracerProvider // nil when tracing is off
	tracer     trace.Tracer             // nil when tracing is off
	propagator propagation.TextMapPropagator
	mp         *sdkmetric.MeterProvider
	registry   *prometheus.Registry
	metrics    *Metrics
	access     *slog.Logger // nil when the access log is off
	events     *EventLog
	history    *history

	// The goroutine sampling the history: stop ends it, done is closed
	// when it has.
	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

// New starts the telemetry o asks for. The OTLP exporters connect lazily:
// a collector that is down at startup delays nothing and fails nothing;
// spans are dropped while it stays down.
func New(ctx context.Context, o Options) (*Telemetry, error) {
	if disabled() {
		o.Tracing, o.MetricsExport = nil, nil
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	installErrorLog(o.Logger.With("component", "telemetry"))
	res, err := NewResource(ctx, o.Resource)
	switch {
	case errors.Is(err, resource.ErrPartialResource):
		// A malformed OTEL_RESOURCE_ATTRIBUTES: keep what parsed.
		o.Logger.Warn("telemetry: some resource attributes were left out", "err", err)
	case err != nil:
		return nil, err
	}
	t := &Telemetry{propagator: Propagator(), registry: prometheus.NewRegistry(), events: NewEventLog(DefaultEventLogSize)}

	prom, err := otelprom.New(otelprom.WithRegisterer(t.registry), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
	}
	if err := registerProcessMetrics(t.registry, o.Build); err != nil {
		return nil, err
	}
	readers := []sdkmetric.Option{sdkmetric.WithResource(res), sdkmetric.WithReader(prom)}
	if o.MetricsExport != nil {
		r, err := NewMetricReader(ctx, *o.MetricsExport)
		if err != nil {
			return nil, err
		}
		readers = append(readers, sdkmetric.WithReader(r))
	}
	t.mp = sdkmetric.NewMeterProvider(readers...)
	meter := t.mp.Meter(ScopeName)
	if t.metrics, err = newMetrics(meter); err != nil {
		t.mp.Shutdown(ctx)
		return nil, err
	}
	t.metrics.events = t.events
	if err := observe(meter, t.metrics, o.Observed); err != nil {
		t.mp.Shutdown(ctx)
		return nil, err
	}

	if o.Tracing != nil {
		tr := *o.Tracing
		tr.Resource = res
		if t.tp, err = NewTracerProvider(ctx, tr); err != nil {
			t.mp.Shutdown(ctx)
			return nil, err
		}
		t.tracer = t.tp.Tracer(ScopeName)
	}
	if o.AccessLog != nil {
		t.access = newAccessLogger(o.AccessLog)
	}
	t.history = newHistory(t.metrics, time.Now())
	t.stop, t.done = make(chan struct{}), make(chan struct{})
	t.startLoop(o.Observed.Members, t.stop, t.done)
	return t, nil
}

// registerProcessMetrics registers on r the Go runtime's go_* series, the
// process's process_* series (CPU, memory, open files; on Linux) and
// sidemesh_build_info.
func registerProcessMetrics(r *prometheus.Registry, b BuildInfo) error {
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "sidemesh_build_info",
		Help:        "Always 1; its labels say which build of sidemesh is running.",
		ConstLabels: prometheus.Labels{"version": b.Version, "commit": b.Commit, "goversion": runtime.Version()},
	})
	info.Set(1)
	for _, c := range []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		info,
	} {
		if err := r.Register(c); err != nil {
			return fmt.Errorf("telemetry: registering process metrics: %w", err)
		}
	}
	return nil
}

// disabled reports OTEL_SDK_DISABLED=true: no OTLP export of any kind
// (the Prometheus endpoint, which is not the SDK's export, stays).
func disabled() bool {
	return strings.EqualFold(strings.TrimSpace(os.Getenv("OTEL_SDK_DISABLED")), "true")
}

// Metrics returns the instruments; nil (recording nothing) for a nil t.
func (t *Telemetry) Metrics() *Metrics {
	if t == nil {
		return nil
	}
	return t.metrics
}

// MetricsHandler serves every metric in the Prometheus text exposition
// format (OpenMetrics when the scraper asks for it). Names are the
// OpenTelemetry ones translated by Prometheus rules:
// http.server.request.duration becomes
// http_server_request_duration_seconds.
//
// A nil t serves 503: nothing is recorded.
func (t *Telemetry) MetricsHandler() http.Handler {
	if t == nil {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "telemetry is not running", http.StatusServiceUnavailable)
		})
	}
	return promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{EnableOpenMetrics: true})
}

// Shutdown flushes pending spans and metrics within ctx's deadline and
// stops the exporters and the history sampling; what cannot be sent in
// time is dropped. The event log and the history stay readable. Safe to
// call on a nil t, and more than once.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	t.stopOnce.Do(func() { close(t.stop) })
	<-t.done
	var errs []error
	if t.tp != nil {
		if err := t.tp.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("telemetry: flushing spans: %w", err))
		}
	}
	if err := t.mp.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("telemetry: flushing metrics: %w", err))
	}
	return errors.Join(errs...)
}
