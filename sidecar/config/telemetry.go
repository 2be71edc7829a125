package config

import (
	"net"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// Telemetry configures what sidemesh reports about the traffic it carries:
// traces, metrics pushed over OTLP, and the access log. Metrics are always
// served in Prometheus text format on the admin listener's /metrics.
type Telemetry struct {
	// Tracing exports a server span per inbound request and a client span
	// per outbound try over OTLP. Nil (the default) records no spans; W3C
	// trace headers still pass through untouched.
	Tracing *Tracing `yaml:"tracing"`
	// Metrics pushes the metrics over OTLP as well. Nil (the default)
	// pushes nothing.
	Metrics *MetricsExport `yaml:"metrics"`
	// AccessLog is where one JSON line per request goes: off (the
	// default), stdout, stderr, or a file path (appended to, created
	// with mode 0640).
	AccessLog string `yaml:"access_log"`
}

// OTLP says where an OTLP exporter sends its data. A field left unset
// falls back to the OTEL_EXPORTER_OTLP_* environment variables, then to
// the exporter's default.
type OTLP struct {
	// Endpoint is the collector: "host:port" or a URL
	// ("https://otel.example.com:4318"). Default
	// $OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4317 (grpc) or
	// localhost:4318 (http/protobuf).
	Endpoint string `yaml:"otlp_endpoint"`
	// Protocol is grpc or http/protobuf ("http" is short for it). Default
	// $OTEL_EXPORTER_OTLP_PROTOCOL, else grpc.
	Protocol string `yaml:"protocol"`
	// Headers are sent with every export, for example an API key.
	Headers map[string]string `yaml:"headers"`
	// Insecure sends plain text instead of TLS. Default: plain text for a
	// loopback "host:port" endpoint (a collector agent on the same host),
	// TLS otherwise; for a URL endpoint its scheme decides.
	Insecure *bool `yaml:"insecure"`
	// Timeout bounds one export. Default 10s.
	Timeout time.Duration `yaml:"timeout"`
}

// Tracing configures trace export.
type Tracing struct {
	OTLP `yaml:",inline"`
	// SampleRatio is the share of new traces recorded, 0 to 1. A request
	// arriving with a trace follows its caller's decision. Default
	// $OTEL_TRACES_SAMPLER(_ARG) when set, else 1.
	SampleRatio *float64 `yaml:"sample_ratio"`
	// QueueSize bounds the spans waiting for export; past it, spans are
	// dropped rather than slowing requests or growing memory. Default 2048.
	QueueSize int `yaml:"queue_size"`
}

// MetricsExport configures OTLP metric export.
type MetricsExport struct {
	OTLP `yaml:",inline"`
	// Interval between exports. Default 60s.
	Interval time.Duration `yaml:"interval"`
}

// Access log destinations with a meaning of their own; anything else is a
// file path.
const (
	AccessLogOff    = "off"
	AccessLogStdout = "stdout"
	AccessLogStderr = "stderr"
)

// OTLP protocols.
const (
	OTLPGRPC         = "grpc"
	OTLPHTTPProtobuf = "http/protobuf"
	otlpHTTPAlias    = "http"
)

// DefaultTracingQueueSize is Tracing.QueueSize's default.
const DefaultTracingQueueSize = 2048

func (t *Tracing) setDefaults() { *t = Tracing{QueueSize: DefaultTracingQueueSize} }

func (m *MetricsExport) setDefaults() { *m = MetricsExport{Interval: time.Minute} }

// PlainText reports whether the exporter sends plain text: Insecure when
// written, else true for a loopback "host:port" endpoint or an http://
// URL. An empty endpoint (the environment decides) is not plain text.
func (o *OTLP) PlainText() bool {
	if o.Insecure != nil {
		return *o.Insecure
	}
	if u, err := url.Parse(o.Endpoint); err == nil && (u.Scheme == "http" || u.Scheme == "https") {
		return u.Scheme == "http"
	}
	host, _, err := net.SplitHostPort(o.Endpoint)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// ProtocolName returns the protocol with the "http" alias resolved.
func (o *OTLP) ProtocolName() string {
	if o.Protocol == otlpHTTPAlias {
		return OTLPHTTPProtobuf
	}
	return o.Protocol
}

func (v *validator) telemetry(t *Telemetry) {
	if tr := t.Tracing; tr != nil {
		v.otlp("telemetry.tracing", &tr.OTLP)
		if r := tr.SampleRatio; r != nil && (*r < 0 || *r > 1) {
			v.errorf("telemetry.tracing.sample_ratio", "must be between 0 and 1, got %g", *r)
		}
		if tr.QueueSize < 1 || tr.QueueSize > 1<<20 {
			v.errorf("telemetry.tracing.queue_size", "must be between 1 and %d, got %d", 1<<20, tr.QueueSize)
		}
	}
	if m := t.Metrics; m != nil {
		v.otlp("telemetry.metrics", &m.OTLP)
		if m.Interval < time.Second {
			v.errorf("telemetry.metrics.interval", "must be at least 1s, got %s", m.Interval)
		}
	}
	if t.AccessLog == "" {
		v.errorf("telemetry.access_log", "must not be empty: write off, stdout, stderr or a file path")
	}
}

func (v *validator) otlp(path string, o *OTLP) {
	if o.Protocol != "" {
		v.oneOf(path+".protocol", "OTLP protocol", o.Protocol, []string{OTLPGRPC, OTLPHTTPProtobuf, otlpHTTPAlias})
	}
	if e := o.Endpoint; e != "" {
		if strings.Contains(e, "://") {
			u, err := url.Parse(e)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				v.errorf(path+".otlp_endpoint", "invalid endpoint %s: want host:port or an http(s):// URL", quote(e))
			}
		} else if _, port, err := net.SplitHostPort(e); err != nil || port == "" {
			v.errorf(path+".otlp_endpoint", "invalid endpoint %s: want host:port or an http(s):// URL", quote(e))
		}
	}
	for k := range o.Headers {
		if k == "" || strings.ContainsAny(k, " \t\r\n:") {
			v.errorf(path+".headers", "invalid header name %s", quote(k))
		}
	}
	v.nonNegative(path+".timeout", o.Timeout)
}
