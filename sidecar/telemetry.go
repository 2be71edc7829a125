package sidecar

import (
	"context"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/buildinfo"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/telemetry"
)

// startTelemetry starts what cfg.Telemetry asks for. Metrics are always
// recorded (the admin listener serves them); spans and OTLP export only
// when configured. The returned closer closes the access log file, if
// any, after Shutdown of the telemetry.
func (s *Sidecar) startTelemetry(ctx context.Context, cfg *config.Config) (*telemetry.Telemetry, io.Closer, error) {
	tc := cfg.Telemetry
	o := telemetry.Options{
		Logger:   s.log,
		Resource: telemetry.ResourceOptions{ServiceName: "sidemesh", Mode: "sidecar", Version: buildinfo.Version()},
		Build:    telemetry.BuildInfo{Version: buildinfo.Version(), Commit: buildinfo.Commit()},
		Observed: telemetry.Observed{
			Endpoints:     s.observeEndpoints,
			Discovery:     s.observeDiscovery,
			Upstreams:     s.observeRetrying,
			GossipMembers: s.observeMembers,
			GossipIsolation: func() (time.Duration, bool) {
				return s.IsolatedFor(), s.backends != nil && s.backends.pool != nil
			},
			LeafExpiry: s.observeLeaf,
			Sticky:     s.observeSticky,
			JWT:        s.observeJWT,
			RateLimits: s.observeRateLimits,
		},
	}
	if s.backends != nil && s.backends.pool != nil {
		o.Observed.Members = s.observeMemberList
	}
	o.Observed.Cache = func() (telemetry.CacheState, bool) {
		store := s.cache.store.Load()
		if store == nil {
			return telemetry.CacheState{}, false
		}
		st := store.Stats()
		return telemetry.CacheState{
			Entries: int64(st.Entries), Bytes: st.Bytes, Hits: int64(st.Hits), Misses: int64(st.Misses),
			Evictions: int64(st.Evictions), Purged: int64(st.Purged),
		}, true
	}
	if cl := s.sharedLimits; cl != nil {
		o.Observed.RateLimitSyncLate = func() int64 { return int64(cl.late.Load()) }
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

// telemetryCompatible refuses a reload that changes the telemetry
// section: exporters and the access log file are set up once, at start.
func telemetryCompatible(old, next *config.Config) error {
	if !reflect.DeepEqual(old.Telemetry, next.Telemetry) {
		return fmt.Errorf("the telemetry section changed; restart sidemesh to apply it")
	}
	return nil
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
				HasBreaker: u.cfg.CircuitBreaker.Enabled, HasOutlier: u.cfg.Outlier.Enabled,
				HealthChecked: u.cfg.HealthCheck.Enabled(),
			})
		}
	}
	return out
}

// observeDiscovery reports every upstream's feed for the metrics.
func (s *Sidecar) observeDiscovery() []telemetry.DiscoveryState {
	t := s.routes.Load()
	var out []telemetry.DiscoveryState
	for name, u := range t.byName {
		d := telemetry.DiscoveryState{
			Upstream:     name,
			Backend:      strings.Join(u.w.key.Sources, "+"),
			LastSnapshot: u.w.lastSnapshot(),
			Static:       slices.Equal(u.w.key.Sources, []string{config.SourceStatic}),
		}
		if src := u.w.consul; src != nil {
			d.Errors = src.Errors()
		}
		out = append(out, d)
	}
	return out
}

// observeRetrying names the upstreams whose retry counters are
// reported: the HTTP upstreams with retries on.
func (s *Sidecar) observeRetrying() []string {
	t := s.routes.Load()
	var out []string
	for name, u := range t.byName {
		if u.proxy != nil && u.cfg.Retries.Attempts > 0 {
			out = append(out, name)
		}
	}
	return out
}

// observeMembers counts the live gossip members; ok is false without
// gossip.
func (s *Sidecar) observeMembers() (int, bool) {
	if s.backends == nil || s.backends.pool == nil {
		return 0, false
	}
	return s.backends.pool.NumMembers(), true
}

// observeMemberList lists the gossip members, for membership events.
// Set only with gossip.
func (s *Sidecar) observeMemberList() []telemetry.Member {
	ms := s.backends.pool.Members()
	out := make([]telemetry.Member, len(ms))
	for i, m := range ms {
		out[i] = telemetry.Member{Name: m.Name, Addr: m.Addr, State: m.State.String()}
	}
	return out
}

// observeLeaf returns when the sidecar's certificate expires.
func (s *Sidecar) observeLeaf() (time.Time, bool) {
	b := s.security.Current()
	if b == nil {
		return time.Time{}, false
	}
	return b.NotAfter, true
}

// observeRateLimits reports the edge's rate limits for metrics.
func (s *Sidecar) observeRateLimits() []telemetry.RateLimitState {
	var out []telemetry.RateLimitState
	for _, st := range s.RateLimits() {
		out = append(out, telemetry.RateLimitState{
			Route: st.Route, Limit: st.Name, Allowed: int64(st.Allowed), Refused: int64(st.Refused),
			ShadowRefused: int64(st.ShadowRefused), Keys: int64(st.Keys), Evictions: int64(st.Evictions),
			Cluster: st.Scope == config.RateLimitCluster, Bound: int64(st.Bound), Partitioned: st.Partitioned,
		})
	}
	return out
}

// observeJWT reports the edge's JWT providers for metrics.
func (s *Sidecar) observeJWT() []telemetry.JWTState {
	var out []telemetry.JWTState
	for name, st := range s.JWTProviders() {
		out = append(out, telemetry.JWTState{
			Provider: name, Loaded: st.Loaded, Age: st.Age,
			Fetches: int64(st.Fetches), FetchErrors: int64(st.FetchErrors), UnknownKeys: int64(st.UnknownKeys),
		})
	}
	return out
}

// observeSticky reports the edge's sticky routes for metrics.
func (s *Sidecar) observeSticky() []telemetry.StickyState {
	var out []telemetry.StickyState
	for _, st := range s.Sticky() {
		out = append(out, telemetry.StickyState{
			Route: st.Route, Sessions: int64(st.Table.Entries), Bytes: int64(st.Table.Bytes), Evictions: int64(st.Table.Evictions),
			Hits: int64(st.Hits), New: int64(st.Created), Rebinds: int64(st.Rebinds), Misses: int64(st.Misses), Refused: int64(st.Refused),
			OwnerFound: int64(st.OwnerFound), OwnerMissing: int64(st.OwnerMissing), OwnerErrors: int64(st.OwnerErrors),
		})
	}
	return out
}
