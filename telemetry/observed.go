package telemetry

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// EndpointState is an endpoint's state at the moment metrics are
// collected.
type EndpointState struct {
	Upstream string
	// Endpoint is the endpoint's "host:port".
	Endpoint string
	// Breaker is closed, half-open or open.
	Breaker string
	// Ejected reports an outlier ejection in force.
	Ejected bool
	// Healthy reports passing active health checks (true without them).
	Healthy bool
}

// DiscoveryState is an upstream's discovery feed at the moment metrics are
// collected.
type DiscoveryState struct {
	Upstream string
	// Backend is the feed's backend: consul, gossip, static, or several
	// joined with "+".
	Backend string
	// LastSnapshot is when the feed last delivered endpoints; zero before
	// the first.
	LastSnapshot time.Time
	// Errors counts the failures of the feed's watch since it started
	// (Consul queries that failed); 0 for backends that cannot fail.
	Errors uint64
}

// Observed supplies the values metrics read at each collection rather
// than on the request path. Every func may be nil; each is called from
// the collecting goroutine and must not block for long.
type Observed struct {
	Endpoints     func() []EndpointState
	Discovery     func() []DiscoveryState
	GossipMembers func() int
	// LeafExpiry returns when the sidecar's certificate expires; ok is
	// false without mutual TLS or before a certificate is loaded.
	LeafExpiry func() (notAfter time.Time, ok bool)
}

// breakerStates are the values of sidemesh.breaker.state, reported as a
// state set: 1 for the current state, 0 for the others.
var breakerStates = []string{"closed", "half-open", "open"}

// observe registers the instruments o feeds on meter.
func observe(meter metric.Meter, o Observed) error {
	// The 0/1 gauges have no unit: "1" would make Prometheus names end in
	// _ratio.
	breaker, err1 := meter.Int64ObservableGauge("sidemesh.endpoint.breaker.state",
		metric.WithDescription("Circuit breaker state of each endpoint: 1 for the state it is in, 0 for the others."))
	ejected, err2 := meter.Int64ObservableGauge("sidemesh.endpoint.ejected",
		metric.WithDescription("1 while an endpoint is ejected as an outlier."))
	healthy, err3 := meter.Int64ObservableGauge("sidemesh.endpoint.healthy",
		metric.WithDescription("1 while an endpoint passes its active health checks (or has none)."))
	age, err4 := meter.Float64ObservableGauge("sidemesh.discovery.snapshot.age", metric.WithUnit("s"),
		metric.WithDescription("Seconds since an upstream's discovery feed last delivered endpoints."))
	errs, err5 := meter.Int64ObservableCounter("sidemesh.discovery.errors", metric.WithUnit("{error}"),
		metric.WithDescription("Failed discovery queries of an upstream's feed."))
	members, err6 := meter.Int64ObservableGauge("sidemesh.gossip.members", metric.WithUnit("{member}"),
		metric.WithDescription("Live members of the gossip pool, this sidecar included."))
	expiry, err7 := meter.Float64ObservableGauge("sidemesh.tls.certificate.expiry", metric.WithUnit("s"),
		metric.WithDescription("Seconds until the sidecar's own certificate expires; negative once expired."))
	for _, err := range []error{err1, err2, err3, err4, err5, err6, err7} {
		if err != nil {
			return fmt.Errorf("telemetry: creating observable instruments: %w", err)
		}
	}
	_, err := meter.RegisterCallback(func(_ context.Context, ob metric.Observer) error {
		if o.Endpoints != nil {
			for _, e := range o.Endpoints() {
				base := []attribute.KeyValue{KeyUpstream.String(e.Upstream), KeyEndpoint.String(e.Endpoint)}
				for _, s := range breakerStates {
					v := int64(0)
					if s == e.Breaker {
						v = 1
					}
					ob.ObserveInt64(breaker, v, metric.WithAttributes(append(base[:2:2], KeyBreakerState.String(s))...))
				}
				ob.ObserveInt64(ejected, boolInt(e.Ejected), metric.WithAttributes(base...))
				ob.ObserveInt64(healthy, boolInt(e.Healthy), metric.WithAttributes(base...))
			}
		}
		if o.Discovery != nil {
			now := time.Now()
			for _, d := range o.Discovery() {
				attrs := metric.WithAttributes(KeyUpstream.String(d.Upstream), KeyBackend.String(d.Backend))
				if !d.LastSnapshot.IsZero() {
					ob.ObserveFloat64(age, now.Sub(d.LastSnapshot).Seconds(), attrs)
				}
				ob.ObserveInt64(errs, int64(d.Errors), attrs)
			}
		}
		if o.GossipMembers != nil {
			ob.ObserveInt64(members, int64(o.GossipMembers()))
		}
		if o.LeafExpiry != nil {
			if t, ok := o.LeafExpiry(); ok {
				ob.ObserveFloat64(expiry, time.Until(t).Seconds())
			}
		}
		return nil
	}, breaker, ejected, healthy, age, errs, members, expiry)
	if err != nil {
		return fmt.Errorf("telemetry: registering metric callback: %w", err)
	}
	return nil
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
