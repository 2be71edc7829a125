package sidecar

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"reflect"
	"runtime/debug"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/proxy"
	"github.com/sidemesh/sidemesh/telemetry"
)

// unknownService is the service label of an outbound request whose Host
// names no upstream: arbitrary Host values must not become metric series.
const unknownService = "unknown"

// startTelemetry starts what cfg.Telemetry asks for. Metrics are always
// recorded (the admin listener serves them); spans and OTLP export only
// when configured. The returned closer closes the access log file, if
// any, after Shutdown of the telemetry.
func (s *Sidecar) startTelemetry(ctx context.Context, cfg *config.Config) (*telemetry.Telemetry, io.Closer, error) {
	tc := cfg.Telemetry
	o := telemetry.Options{
		Logger:   s.log,
		Resource: telemetry.ResourceOptions{ServiceName: "sidemesh", Mode: "sidecar", Version: buildVersion()},
		Observed: telemetry.Observed{
			Endpoints:     s.observeEndpoints,
			Discovery:     s.observeDiscovery,
			GossipMembers: s.observeMembers,
			LeafExpiry:    s.observeLeaf,
		},
	}
	if cfg.Service != nil {
		o.Resource.ServiceName = cfg.Service.Name
		o.Resource.InstanceID = cfg.ServiceID()
	}
	if t := tc.Tracing; t != nil {
		o.Tracing = &telemetry.TracingOptions{
			OTLP:        otlpOptions(t.OTLP),
			SampleRatio: t.SampleRatio,
			QueueSize:   t.QueueSize,
		}
	}
	if m := tc.Metrics; m != nil {
		o.MetricsExport = &telemetry.MetricsExportOptions{OTLP: otlpOptions(m.OTLP), Interval: m.Interval}
	}
	var closer io.Closer = nopCloser{}
	switch tc.AccessLog {
	case config.AccessLogOff:
	case config.AccessLogStdout:
		o.AccessLog = os.Stdout
	case config.AccessLogStderr:
		o.AccessLog = os.Stderr
	default:
		f, err := os.OpenFile(tc.AccessLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, nil, fmt.Errorf("telemetry.access_log: %w", err)
		}
		o.AccessLog, closer = f, f
	}
	t, err := telemetry.New(ctx, o)
	if err != nil {
		closer.Close()
		return nil, nil, err
	}
	if tr := tc.Tracing; tr != nil {
		ratio := "OTEL_TRACES_SAMPLER or 1"
		if r := tr.SampleRatio; r != nil {
			ratio = fmt.Sprint(*r)
		}
		s.log.Info("tracing on", "endpoint", orEnv(tr.Endpoint), "protocol", orEnv(tr.ProtocolName()), "sample_ratio", ratio)
	}
	if m := tc.Metrics; m != nil {
		s.log.Info("metrics export on", "endpoint", orEnv(m.Endpoint), "protocol", orEnv(m.ProtocolName()), "interval", m.Interval)
	}
	return t, closer, nil
}

// orEnv is a log value for an OTLP setting the config may leave to the
// environment.
func orEnv(v string) string {
	if v == "" {
		return "from OTEL_EXPORTER_OTLP_* or default"
	}
	return v
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

// otlpOptions turns a config OTLP section into the exporter's options.
func otlpOptions(c config.OTLP) telemetry.OTLPOptions {
	return telemetry.OTLPOptions{
		Endpoint: c.Endpoint,
		Protocol: c.ProtocolName(),
		Headers:  c.Headers,
		Insecure: c.PlainText(),
		Timeout:  c.Timeout,
	}
}

// buildVersion is the module version sidemesh was built at, or the VCS
// revision of a development build.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, st := range bi.Settings {
		if st.Key == "vcs.revision" && len(st.Value) >= 12 {
			return st.Value[:12]
		}
	}
	return "devel"
}

// telemetryCompatible refuses a reload that changes the telemetry
// section: exporters and the access log file are set up once, at start.
func telemetryCompatible(old, next *config.Config) error {
	if !reflect.DeepEqual(old.Telemetry, next.Telemetry) {
		return fmt.Errorf("the telemetry section changed; restart sidemesh to apply it")
	}
	return nil
}

// withTelemetry wraps a listener's handler in the server side of
// telemetry.
func (s *Sidecar) withTelemetry(h http.Handler, listener string, service func(*http.Request) string) http.Handler {
	return s.tel.Handler(h, telemetry.ServerOptions{Listener: listener, Service: service})
}

// outboundService is the service label of a request on the outbound
// listener: the upstream its Host names, if there is one.
func (s *Sidecar) outboundService(r *http.Request) string {
	name := proxy.ServiceFromHost(r.Host)
	if _, ok := s.routes.Load().byName[name]; ok {
		return name
	}
	return unknownService
}

// inboundService is the service label of a request on the inbound
// listener: the local service.
func (s *Sidecar) inboundService(*http.Request) string {
	if u := s.routes.Load().local; u != nil {
		return u.cfg.Service
	}
	return unknownService
}

// observeEndpoints reports every endpoint's state for the metrics.
func (s *Sidecar) observeEndpoints() []telemetry.EndpointState {
	t := s.routes.Load()
	var out []telemetry.EndpointState
	now := time.Now()
	for name, u := range t.byName {
		for _, ep := range u.bal.Endpoints() {
			out = append(out, telemetry.EndpointState{
				Upstream: name, Endpoint: ep.Addr, Breaker: ep.BreakerState().String(),
				Ejected: ep.EjectedUntil().After(now), Healthy: ep.Healthy(),
			})
		}
	}
	return out
}

// observeDiscovery reports every upstream's feed for the metrics.
func (s *Sidecar) observeDiscovery() []telemetry.DiscoveryState {
	t := s.routes.Load()
	consulSources := s.backends.consulWatches()
	var out []telemetry.DiscoveryState
	for name, u := range t.byName {
		d := telemetry.DiscoveryState{
			Upstream:     name,
			Backend:      strings.Join(u.w.key.Sources, "+"),
			LastSnapshot: u.w.lastSnapshot(),
		}
		if src := consulSources[name]; src != nil {
			d.Errors = src.Errors()
		}
		out = append(out, d)
	}
	return out
}

// observeMembers counts the live gossip members; 0 without gossip.
func (s *Sidecar) observeMembers() int {
	if s.backends == nil || s.backends.pool == nil {
		return 0
	}
	return s.backends.pool.NumMembers()
}

// observeLeaf returns when the sidecar's certificate expires.
func (s *Sidecar) observeLeaf() (time.Time, bool) {
	if s.security == nil {
		return time.Time{}, false
	}
	b := s.security.src.Current()
	if b == nil {
		return time.Time{}, false
	}
	return b.NotAfter, true
}
