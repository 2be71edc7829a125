package telemetry

import (
	"context"
	"fmt"
	"math"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// How OTLP settings are resolved
//
// Every setting has three sources, in this order of precedence: a non-zero
// field given in code, then the OpenTelemetry environment variables (the
// signal-specific OTEL_EXPORTER_OTLP_TRACES_* / OTEL_EXPORTER_OTLP_METRICS_*
// before the generic OTEL_EXPORTER_OTLP_*), then the default. The OTLP
// exporters read their own OTEL_EXPORTER_OTLP_* variables (endpoint,
// insecure, headers, timeout, compression, certificates) when no option is
// passed, so only the fields set in code become exporter options. This
// package reads the environment itself only where the exporters cannot: the
// protocol (which exporter to build), the headers (to merge OTLPOptions.Headers
// over them rather than replace them), the timeout (the batch span
// processor's export timeout must equal it) and the OTEL_BSP_* variables
// (to keep the export batch no larger than the queue). Those it reads are
// validated: a malformed value is an error naming the variable, where the SDK
// would log it and silently fall back to a default.

const (
	otlpProtocolGRPC = "grpc"
	otlpProtocolHTTP = "http/protobuf"

	otlpDefaultTimeout        = 10 * time.Second
	tracingDefaultQueueSize   = 2048
	tracingDefaultBatchDelay  = time.Second
	tracingDefaultExportBatch = 512
)

// OTLPOptions say where and how to send OTLP data. The zero value means
// "whatever the OTEL_EXPORTER_OTLP_* environment says, else the OTLP
// defaults": grpc to localhost:4317 over TLS, 10s timeout.
type OTLPOptions struct {
	// Endpoint is "host:port" or a URL (http://host:port,
	// https://host:port[/path]). Empty means the
	// OTEL_EXPORTER_OTLP_{TRACES|METRICS}_ENDPOINT or
	// OTEL_EXPORTER_OTLP_ENDPOINT environment variable, else the exporter's
	// default (localhost:4317 for grpc, localhost:4318 for http).
	//
	// With http/protobuf, data goes to /v1/traces or /v1/metrics of a
	// host:port or of a URL without a path (or with just "/"); a URL with a
	// path is used as it is. With grpc a URL's path is ignored. (The
	// exporters' own WithEndpointURL would post a path-less URL to "/".)
	Endpoint string
	// Protocol is "grpc" or "http/protobuf" ("http" is accepted as an alias).
	// Empty means OTEL_EXPORTER_OTLP_{TRACES|METRICS}_PROTOCOL /
	// OTEL_EXPORTER_OTLP_PROTOCOL, else grpc. Anything else, from code or
	// environment (including http/json, which the Go exporters do not
	// implement), is an error.
	Protocol string
	// Headers are sent with every export (e.g. an API key); merged over
	// OTEL_EXPORTER_OTLP_{TRACES|METRICS}_HEADERS or, if that is unset,
	// OTEL_EXPORTER_OTLP_HEADERS (a name given here replaces the
	// environment's header of that name, compared case-insensitively).
	Headers map[string]string
	// Insecure sends plain text (no TLS). With a URL endpoint the scheme
	// decides (http:// is insecure) and Insecure is ignored. False leaves the
	// choice to OTEL_EXPORTER_OTLP_{TRACES|METRICS}_INSECURE or the scheme of
	// an environment endpoint URL, else TLS.
	Insecure bool
	// Timeout bounds one export, retries included. Zero means
	// OTEL_EXPORTER_OTLP_{TRACES|METRICS}_TIMEOUT / OTEL_EXPORTER_OTLP_TIMEOUT
	// (milliseconds), else 10s.
	Timeout time.Duration
}

// TracingOptions configure NewTracerProvider. The zero value is valid.
type TracingOptions struct {
	OTLP OTLPOptions
	// SampleRatio is the share of new traces sampled, 0..1; a request that
	// arrives with a sampled/unsampled parent follows its parent
	// (parent-based). Nil means OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG
	// if set (read by the SDK, which logs an invalid value and ignores it),
	// else 1.0 (parent-based always-on).
	SampleRatio *float64
	// QueueSize bounds the spans waiting for export; when full, new spans are
	// dropped (the SDK counts them and reports the total in its debug log),
	// never blocking the request path. Zero means OTEL_BSP_MAX_QUEUE_SIZE,
	// else 2048. The export batch is OTEL_BSP_MAX_EXPORT_BATCH_SIZE, else 512,
	// but never more than the queue.
	QueueSize int
	// BatchTimeout is the longest a span waits before its batch is sent. Zero
	// means OTEL_BSP_SCHEDULE_DELAY (milliseconds), else 1s.
	BatchTimeout time.Duration
	// Resource describes this process (see NewResource). Nil means the SDK's
	// resource.Default(), which reads the environment once per process.
	Resource *resource.Resource
}

// NewTracerProvider returns an SDK TracerProvider exporting over OTLP as o
// says, through a batch span processor that drops rather than blocks. ctx
// bounds only setup and need not outlive the call: no connection is made
// here (the gRPC exporter connects lazily), so a collector that is down at
// startup neither fails nor delays it.
//
// Shutdown(ctx) flushes what is queued within ctx's deadline; when the
// deadline passes it returns ctx's error and abandons the rest: exports
// still in flight are cancelled and spans still queued are dropped, so
// nothing keeps running toward a dead collector after Shutdown returns
// (beyond the moment the cancelled exports take to unwind). A Shutdown
// called with an already-expired ctx is refused by the SDK before it reaches
// the processor, and the processor's goroutine then lives on; use a live ctx.
//
// The provider is safe for concurrent use, as the SDK's is. The export
// timeout of the batch processor is the OTLP timeout, so
// OTEL_BSP_EXPORT_TIMEOUT is not honoured.
func NewTracerProvider(ctx context.Context, o TracingOptions) (*sdktrace.TracerProvider, error) {
	var sampler sdktrace.Sampler
	if o.SampleRatio != nil {
		r := *o.SampleRatio
		if math.IsNaN(r) || r < 0 || r > 1 {
			return nil, fmt.Errorf("telemetry: trace sample ratio %v is outside 0..1", r)
		}
		sampler = sdktrace.ParentBased(sdktrace.TraceIDRatioBased(r))
	}
	if o.QueueSize < 0 {
		return nil, fmt.Errorf("telemetry: trace queue size %d is negative", o.QueueSize)
	}
	if o.BatchTimeout < 0 {
		return nil, fmt.Errorf("telemetry: trace batch timeout %v is negative", o.BatchTimeout)
	}

	queue := o.QueueSize
	if queue == 0 {
		n, err := envPositiveInt("OTEL_BSP_MAX_QUEUE_SIZE", tracingDefaultQueueSize)
		if err != nil {
			return nil, err
		}
		queue = n
	}
	batch, err := envPositiveInt("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", tracingDefaultExportBatch)
	if err != nil {
		return nil, err
	}
	batch = min(batch, queue)
	delay := o.BatchTimeout
	if delay == 0 {
		ms, err := envPositiveInt("OTEL_BSP_SCHEDULE_DELAY", int(tracingDefaultBatchDelay/time.Millisecond))
		if err != nil {
			return nil, err
		}
		delay = time.Duration(ms) * time.Millisecond
	}

	c, err := resolveOTLP(o.OTLP, otlpTraces)
	if err != nil {
		return nil, err
	}
	exp, err := newOTLPSpanExporter(ctx, c)
	if err != nil {
		return nil, err
	}

	stop, abandon := context.WithCancel(context.Background())
	bsp := sdktrace.NewBatchSpanProcessor(abandonableSpanExporter{SpanExporter: exp, stop: stop},
		sdktrace.WithMaxQueueSize(queue),
		sdktrace.WithMaxExportBatchSize(batch),
		sdktrace.WithBatchTimeout(delay),
		sdktrace.WithExportTimeout(c.timeout),
		// No WithBlocking: a full queue drops spans instead of stalling requests.
	)
	opts := []sdktrace.TracerProviderOption{
		sdktrace.WithSpanProcessor(abandoningSpanProcessor{SpanProcessor: bsp, abandon: abandon}),
	}
	if sampler != nil {
		opts = append(opts, sdktrace.WithSampler(sampler))
	}
	// Without WithSampler the SDK reads OTEL_TRACES_SAMPLER(_ARG) and, if
	// unset, uses ParentBased(AlwaysSample()).
	if o.Resource != nil {
		opts = append(opts, sdktrace.WithResource(o.Resource))
	}
	return sdktrace.NewTracerProvider(opts...), nil
}

// abandoningSpanProcessor cancels the exporter's in-flight and future exports
// once the wrapped batch processor's Shutdown has returned, whether it
// finished or its ctx expired. Without it, a Shutdown that times out leaves
// the batch processor's goroutine exporting toward a dead collector for up to
// two export timeouts (the batch in flight, then the queue's remains).
type abandoningSpanProcessor struct {
	sdktrace.SpanProcessor
	abandon context.CancelFunc
}

func (p abandoningSpanProcessor) Shutdown(ctx context.Context) error {
	err := p.SpanProcessor.Shutdown(ctx)
	p.abandon()
	return err
}

// abandonableSpanExporter is an exporter whose exports end when stop is done.
type abandonableSpanExporter struct {
	sdktrace.SpanExporter
	stop context.Context
}

func (e abandonableSpanExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	if e.stop.Err() != nil {
		// Checked first, not left to the cancellation below: that runs in
		// its own goroutine, and an export started meanwhile would dial a
		// connection that outlives the provider.
		return fmt.Errorf("telemetry: %d spans dropped: the tracer provider's Shutdown gave up before they were exported", len(spans))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(e.stop, cancel)()
	return e.SpanExporter.ExportSpans(ctx, spans)
}

// MetricsExportOptions configure NewMetricReader. The zero value is valid.
type MetricsExportOptions struct {
	OTLP OTLPOptions
	// Interval between exports. Zero means OTEL_METRIC_EXPORT_INTERVAL
	// (milliseconds, read by the SDK, which logs an invalid value and ignores
	// it), else 60s.
	Interval time.Duration
}

// NewMetricReader returns a periodic reader exporting over OTLP, to add to an
// sdkmetric.MeterProvider (the reader runs its own goroutine from now on, so
// it must be registered with a provider whose Shutdown is called, or shut
// down itself). Temporality is cumulative unless
// OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE says otherwise (the
// exporter reads it); each export is bounded by the OTLP timeout, and a
// collect-and-export cycle by OTEL_METRIC_EXPORT_TIMEOUT, else 30s. ctx
// bounds only setup: as for traces, no connection is made here. The reader
// is safe for concurrent use.
func NewMetricReader(ctx context.Context, o MetricsExportOptions) (sdkmetric.Reader, error) {
	if o.Interval < 0 {
		return nil, fmt.Errorf("telemetry: metric export interval %v is negative", o.Interval)
	}
	c, err := resolveOTLP(o.OTLP, otlpMetrics)
	if err != nil {
		return nil, err
	}
	exp, err := newOTLPMetricExporter(ctx, c)
	if err != nil {
		return nil, err
	}
	var opts []sdkmetric.PeriodicReaderOption
	if o.Interval > 0 {
		opts = append(opts, sdkmetric.WithInterval(o.Interval))
	}
	return sdkmetric.NewPeriodicReader(exp, opts...), nil
}

// Propagator returns the W3C Trace Context + Baggage propagator sidemesh uses
// on every hop. OTEL_PROPAGATORS is deliberately not honoured: the mesh
// speaks W3C traceparent/tracestate/baggage on the wire, and a process that
// switched to B3 or Jaeger headers would break traces across the mesh. The
// propagator is stateless and safe for concurrent use.
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// otlpSignal names one OTLP signal for environment variables, URL paths and
// messages.
type otlpSignal struct {
	env  string // TRACES or METRICS, as in OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
	path string // the OTLP/HTTP path
	name string // trace or metric
}

var (
	otlpTraces  = otlpSignal{env: "TRACES", path: "/v1/traces", name: "trace"}
	otlpMetrics = otlpSignal{env: "METRICS", path: "/v1/metrics", name: "metric"}
)

// otlpConfig is OTLPOptions resolved against the environment. Fields that
// stay zero are left to the exporter (and so to its environment handling).
type otlpConfig struct {
	sig        otlpSignal
	protocol   string            // otlpProtocolGRPC or otlpProtocolHTTP
	endpoint   string            // host:port from code
	url        *url.URL          // URL from code
	insecure   bool              // Insecure from code, for a host:port or environment endpoint
	headers    map[string]string // code headers merged over the environment's; nil without code headers
	timeout    time.Duration     // effective: code, environment or default
	timeoutSet bool              // timeout came from code
}

func resolveOTLP(o OTLPOptions, sig otlpSignal) (otlpConfig, error) {
	c := otlpConfig{sig: sig}

	// Protocol.
	if p := strings.TrimSpace(o.Protocol); p != "" {
		proto, ok := parseOTLPProtocol(p)
		if !ok {
			return c, fmt.Errorf("telemetry: OTLP protocol %q is not supported (want \"grpc\", or \"http/protobuf\" or its alias \"http\")", o.Protocol)
		}
		c.protocol = proto
	} else if key, v, ok := otlpEnv(sig, "PROTOCOL"); ok {
		proto, ok := parseOTLPProtocol(v)
		if !ok {
			return c, fmt.Errorf("telemetry: %s=%q is not a supported OTLP protocol (want \"grpc\", or \"http/protobuf\" or its alias \"http\")", key, v)
		}
		c.protocol = proto
	} else {
		c.protocol = otlpProtocolGRPC
	}

	// Endpoint.
	if e := strings.TrimSpace(o.Endpoint); e != "" {
		if strings.Contains(e, "://") {
			u, err := url.Parse(e)
			if err != nil {
				return c, fmt.Errorf("telemetry: OTLP endpoint: %w", err)
			}
			if u.Scheme != "http" && u.Scheme != "https" {
				return c, fmt.Errorf("telemetry: OTLP endpoint %q: scheme %q is not http or https", e, u.Scheme)
			}
			if u.Host == "" {
				return c, fmt.Errorf("telemetry: OTLP endpoint %q has no host", e)
			}
			c.url = u
		} else {
			if strings.ContainsAny(e, "/?#@ ") {
				return c, fmt.Errorf("telemetry: OTLP endpoint %q is neither host:port nor an http(s):// URL", e)
			}
			c.endpoint = e
		}
	} else if key, v, ok := otlpEnv(sig, "ENDPOINT"); ok {
		// The exporter reads it; check it here so that a typo is an error
		// rather than a log line and a silent fall back to localhost.
		u, err := url.Parse(v)
		if err != nil {
			return c, fmt.Errorf("telemetry: %s: %w", key, err)
		}
		if c.protocol == otlpProtocolHTTP && ((u.Scheme != "http" && u.Scheme != "https") || u.Host == "") {
			return c, fmt.Errorf("telemetry: %s=%q is not an http:// or https:// URL, as OTLP/HTTP needs", key, v)
		}
	}
	c.insecure = o.Insecure && c.url == nil

	// Headers.
	envHeaders, err := otlpEnvHeaders(sig)
	if err != nil {
		return c, err
	}
	if len(o.Headers) > 0 {
		c.headers = make(map[string]string, len(envHeaders)+len(o.Headers))
		for k, v := range envHeaders {
			c.headers[k] = v
		}
		for k, v := range o.Headers {
			if !validHeaderName(k) {
				return c, fmt.Errorf("telemetry: OTLP header name %q is not a valid HTTP header name", k)
			}
			if !validHeaderValue(v) {
				return c, fmt.Errorf("telemetry: OTLP header %s: value has control characters", k)
			}
			for ek := range c.headers {
				if strings.EqualFold(ek, k) {
					delete(c.headers, ek)
				}
			}
			c.headers[k] = v
		}
	}

	// Timeout.
	switch {
	case o.Timeout < 0:
		return c, fmt.Errorf("telemetry: OTLP timeout %v is negative", o.Timeout)
	case o.Timeout > 0:
		c.timeout, c.timeoutSet = o.Timeout, true
	default:
		c.timeout = otlpDefaultTimeout
		if key, v, ok := otlpEnv(sig, "TIMEOUT"); ok {
			ms, err := strconv.Atoi(v)
			if err != nil || ms <= 0 {
				return c, fmt.Errorf("telemetry: %s=%q is not a positive whole number of milliseconds", key, v)
			}
			c.timeout = time.Duration(ms) * time.Millisecond
		}
	}
	return c, nil
}

func parseOTLPProtocol(v string) (string, bool) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "grpc":
		return otlpProtocolGRPC, true
	case "http/protobuf", "http":
		return otlpProtocolHTTP, true
	}
	return "", false
}

// otlpEnv returns the first of OTEL_EXPORTER_OTLP_<SIGNAL>_<name> and
// OTEL_EXPORTER_OTLP_<name> that is set to something other than blanks, as
// the exporters do.
func otlpEnv(sig otlpSignal, name string) (key, value string, ok bool) {
	for _, k := range []string{"OTEL_EXPORTER_OTLP_" + sig.env + "_" + name, "OTEL_EXPORTER_OTLP_" + name} {
		if v := strings.TrimSpace(os.Getenv(k)); v != "" {
			return k, v, true
		}
	}
	return "", "", false
}

// otlpEnvHeaders parses the headers variable the exporter would use: the
// signal's if set, else the generic one (the exporters do not merge the
// two). The format is the specification's: comma-separated key=value with
// percent-encoded values.
func otlpEnvHeaders(sig otlpSignal) (map[string]string, error) {
	key, v, ok := otlpEnv(sig, "HEADERS")
	if !ok {
		return nil, nil
	}
	h := map[string]string{}
	for _, pair := range strings.Split(v, ",") {
		if strings.TrimSpace(pair) == "" {
			continue
		}
		name, val, found := strings.Cut(pair, "=")
		name = strings.TrimSpace(name)
		if !found || !validHeaderName(name) {
			return nil, fmt.Errorf("telemetry: %s: %q is not name=value with a valid header name", key, pair)
		}
		dec, err := url.PathUnescape(val)
		if err != nil {
			return nil, fmt.Errorf("telemetry: %s: value of %s: %w", key, name, err)
		}
		dec = strings.TrimSpace(dec)
		if !validHeaderValue(dec) {
			return nil, fmt.Errorf("telemetry: %s: value of %s has control characters", key, name)
		}
		h[name] = dec
	}
	return h, nil
}

// validHeaderName reports whether s is an HTTP token (RFC 9110), which is
// also what gRPC accepts once lower-cased.
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.ContainsRune("!#$%&'*+-.^_`|~", c):
		default:
			return false
		}
	}
	return true
}

func validHeaderValue(s string) bool {
	for _, c := range s {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// envPositiveInt returns the environment variable key as a positive int, or
// def if it is unset or blank.
func envPositiveInt(key string, def int) (int, error) {
	v := strings.TrimSpace(os.Getenv(key))
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("telemetry: %s=%q is not a positive whole number", key, v)
	}
	return n, nil
}

// otlpNeedsSignalPath reports whether an OTLP/HTTP endpoint URL from code is
// a base URL to which the signal's path is added.
func otlpNeedsSignalPath(u *url.URL) bool { return u.Path == "" || u.Path == "/" }

func newOTLPSpanExporter(ctx context.Context, c otlpConfig) (sdktrace.SpanExporter, error) {
	switch c.protocol {
	case otlpProtocolGRPC:
		var opts []otlptracegrpc.Option
		if c.url != nil {
			opts = append(opts, otlptracegrpc.WithEndpointURL(c.url.String()))
		} else if c.endpoint != "" {
			opts = append(opts, otlptracegrpc.WithEndpoint(c.endpoint))
		}
		if c.insecure {
			opts = append(opts, otlptracegrpc.WithInsecure())
		}
		if c.headers != nil {
			opts = append(opts, otlptracegrpc.WithHeaders(c.headers))
		}
		if c.timeoutSet {
			opts = append(opts, otlptracegrpc.WithTimeout(c.timeout))
		}
		exp, err := otlptracegrpc.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("telemetry: OTLP trace exporter (grpc): %w", err)
		}
		return exp, nil
	default:
		var opts []otlptracehttp.Option
		if c.url != nil {
			opts = append(opts, otlptracehttp.WithEndpointURL(c.url.String()))
			if otlpNeedsSignalPath(c.url) {
				opts = append(opts, otlptracehttp.WithURLPath(c.sig.path))
			}
		} else if c.endpoint != "" {
			// Also set the path, or one from an environment base URL would stay.
			opts = append(opts, otlptracehttp.WithEndpoint(c.endpoint), otlptracehttp.WithURLPath(c.sig.path))
		}
		if c.insecure {
			opts = append(opts, otlptracehttp.WithInsecure())
		}
		if c.headers != nil {
			opts = append(opts, otlptracehttp.WithHeaders(c.headers))
		}
		if c.timeoutSet {
			opts = append(opts, otlptracehttp.WithTimeout(c.timeout))
		}
		exp, err := otlptracehttp.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("telemetry: OTLP trace exporter (http/protobuf): %w", err)
		}
		return exp, nil
	}
}

func newOTLPMetricExporter(ctx context.Context, c otlpConfig) (sdkmetric.Exporter, error) {
	switch c.protocol {
	case otlpProtocolGRPC:
		var opts []otlpmetricgrpc.Option
		if c.url != nil {
			opts = append(opts, otlpmetricgrpc.WithEndpointURL(c.url.String()))
		} else if c.endpoint != "" {
			opts = append(opts, otlpmetricgrpc.WithEndpoint(c.endpoint))
		}
		if c.insecure {
			opts = append(opts, otlpmetricgrpc.WithInsecure())
		}
		if c.headers != nil {
			opts = append(opts, otlpmetricgrpc.WithHeaders(c.headers))
		}
		if c.timeoutSet {
			opts = append(opts, otlpmetricgrpc.WithTimeout(c.timeout))
		}
		exp, err := otlpmetricgrpc.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("telemetry: OTLP metric exporter (grpc): %w", err)
		}
		return exp, nil
	default:
		var opts []otlpmetrichttp.Option
		if c.url != nil {
			opts = append(opts, otlpmetrichttp.WithEndpointURL(c.url.String()))
			if otlpNeedsSignalPath(c.url) {
				opts = append(opts, otlpmetrichttp.WithURLPath(c.sig.path))
			}
		} else if c.endpoint != "" {
			// Also set the path, or one from an environment base URL would stay.
			opts = append(opts, otlpmetrichttp.WithEndpoint(c.endpoint), otlpmetrichttp.WithURLPath(c.sig.path))
		}
		if c.insecure {
			opts = append(opts, otlpmetrichttp.WithInsecure())
		}
		if c.headers != nil {
			opts = append(opts, otlpmetrichttp.WithHeaders(c.headers))
		}
		if c.timeoutSet {
			opts = append(opts, otlpmetrichttp.WithTimeout(c.timeout))
		}
		exp, err := otlpmetrichttp.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("telemetry: OTLP metric exporter (http/protobuf): %w", err)
		}
		return exp, nil
	}
}
