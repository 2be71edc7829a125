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
	// Healthy reports passing active health checks.
	Healthy bool
	// HasBreaker, HasOutlier and HealthChecked say which of the
	// upstream's features are on: circuit breakers, outlier ejection,
	// active health checks. The breaker state, ejected and healthy series
	// of a feature that is off are not reported at all (an endpoint that
	// no health check covers is not known to be healthy).
	HasBreaker, HasOutlier, HealthChecked bool
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
	// Static reports a feed of static endpoints only: it delivers once,
	// from the config, and is never stale, so no snapshot age is
	// reported for it.
	Static bool
	// Errors counts the failures of the feed's watch since it started
	// (Consul queries that failed); 0 for backends that cannot fail.
	Errors uint64
}

// StickyState is an edge route's sticky sessions at the moment metrics
// are collected.
type StickyState struct {
	Route string
	// Sessions and Bytes are what this edge holds of the route's session
	// table; Evictions the sessions the table's bound forgot.
	Sessions, Bytes, Evictions int64
	// Requests by what the sticky filter did: hit, new, rebind, miss,
	// refused (a strict session's endpoint was unavailable).
	Hits, New, Rebinds, Misses, Refused int64
	// Owner lookups by result: found (the owner knew the session),
	// missing (it did not), error (failed or timed out).
	OwnerFound, OwnerMissing, OwnerErrors int64
}

// Observed supplies the values metrics read at each collection rather
// than on the request path. Every func may be nil, which reports
// nothing of its kind; each is called from the collecting goroutine (or,
// for Members, the history goroutine) and must not block for long.
type Observed struct {
	Endpoints func() []EndpointState
	Discovery func() []DiscoveryState
	// Upstreams returns the upstreams whose retry counters are reported,
	// 0 until their first retry, so that a rate can be taken from the
	// start. Nil reports every upstream a Client was made for.
	Upstreams func() []string
	// GossipMembers returns the live members of the gossip pool; ok is
	// false without one, and no series is reported.
	GossipMembers func() (n int, ok bool)
	// GossipIsolation returns how long this member has been cut off from
	// every other member of the pool (0 when it is not); ok is false
	// without a pool.
	GossipIsolation func() (d time.Duration, ok bool)
	// Members returns the gossip pool's members, polled every second to
	// record who joined and left in the event log; nil without gossip.
	Members func() []Member
	// LeafExpiry returns when the sidecar's certificate expires; ok is
	// false without mutual TLS or before a certificate is loaded.
	LeafExpiry func() (notAfter time.Time, ok bool)
	// Sticky returns the sticky routes of an edge; nil or empty without.
	Sticky func() []StickyState
	// JWT returns an edge's JWT providers; nil or empty without.
	JWT func() []JWTState
	// RateLimits returns an edge's rate limits; nil or empty without.
	RateLimits func() []RateLimitState
	// RateLimitSyncLate returns how many sends of cluster limits' counts
	// took longer than the configured delay; nil without gossip.
	RateLimitSyncLate func() int64
	// Cache returns the edge's response cache; ok is false while no
	// route caches.
	Cache func() (st CacheState, ok bool)
}

// RateLimitState is one rate limit of an edge route at the moment
// metrics are collected.
type RateLimitState struct {
	Route, Limit string
	// Requests by decision: allowed, refused, and in shadow mode
	// (enforce: false) those it would have refused.
	Allowed, Refused, ShadowRefused int64
	// Keys is the number of keys tracked; Evictions those forgotten for
	// the max_keys bound.
	Keys, Evictions int64
	// Cluster marks a limit shared by the edges (scope: cluster): Bound
	// is the most they may admit beyond its quota in a window, and
	// Partitioned reports that this edge is cut off from most of them.
	Cluster     bool
	Bound       int64
	Partitioned bool
}

// CacheState is an edge's response cache at the moment metrics are
// collected.
type CacheState struct {
	// Entries and Bytes are what the store holds now.
	Entries, Bytes int64
	// Requests by result: hit (answered from the store), miss (sent
	// upstream); Evictions and Purged count responses removed.
	Hits, Misses, Evictions, Purged int64
}

// JWTState is an edge's JWT provider at the moment metrics are
// collected.
type JWTState struct {
	Provider string
	// Loaded reports that a key set is in use; Age is how long ago it
	// was last fetched or read (it grows while the issuer is down).
	Loaded bool
	Age    time.Duration
	// Fetches and FetchErrors count key set fetches; UnknownKeys tokens
	// whose key ID was not in the set.
	Fetches, FetchErrors, UnknownKeys int64
}

// breakerStates are the values of sidemesh.breaker.state, reported as a
// state set: 1 for the current state, 0 for the others.
var breakerStates = []string{"closed", "half-open", "open"}

// observe registers on meter the instruments o feeds, and those of m's
// retry counters.
func observe(meter metric.Meter, m *Metrics, o Observed) error {
	// The 0/1 gauges have no unit: "1" would make Prometheus names end in
	// _ratio.
	breaker, err1 := meter.Int64ObservableGauge("sidemesh.endpoint.breaker.state",
		metric.WithDescription("Circuit breaker state of each endpoint: 1 for the state it is in, 0 for the others."))
	ejected, err2 := meter.Int64ObservableGauge("sidemesh.endpoint.ejected",
		metric.WithDescription("1 while an endpoint is ejected as an outlier."))
	healthy, err3 := meter.Int64ObservableGauge("sidemesh.endpoint.healthy",
		metric.WithDescription("1 while an endpoint passes its active health checks, 0 while it fails them; only for upstreams with health checks."))
	age, err4 := meter.Float64ObservableGauge("sidemesh.discovery.snapshot.age", metric.WithUnit("s"),
		metric.WithDescription("Seconds since an upstream's discovery feed last delivered endpoints."))
	errs, err5 := meter.Int64ObservableCounter("sidemesh.discovery.errors", metric.WithUnit("{error}"),
		metric.WithDescription("Failed discovery queries of an upstream's feed."))
	members, err6 := meter.Int64ObservableGauge("sidemesh.gossip.members", metric.WithUnit("{member}"),
		metric.WithDescription("Live members of the gossip pool, this sidecar included."))
	expiry, err7 := meter.Float64ObservableGauge("sidemesh.tls.certificate.expiry", metric.WithUnit("s"),
		metric.WithDescription("Seconds until the sidecar's own certificate expires; negative once expired."))
	retries, err8 := meter.Int64ObservableCounter("sidemesh.upstream.retries", metric.WithUnit("{retry}"),
		metric.WithDescription("Retries sent to an upstream."))
	budgetOut, err9 := meter.Int64ObservableCounter("sidemesh.upstream.retry_budget.exhausted", metric.WithUnit("{retry}"),
		metric.WithDescription("Retries an upstream's retry budget refused."))
	sessions, err10 := meter.Int64ObservableGauge("sidemesh.sticky.sessions", metric.WithUnit("{session}"),
		metric.WithDescription("Sessions of an edge route this edge holds in its copy of the shared session table."))
	tableBytes, err11 := meter.Int64ObservableGauge("sidemesh.sticky.table.size", metric.WithUnit("By"),
		metric.WithDescription("Memory the route's sessions take in this edge's copy of the session table (estimate)."))
	evictions, err12 := meter.Int64ObservableCounter("sidemesh.sticky.evictions", metric.WithUnit("{session}"),
		metric.WithDescription("Sessions the route's max_sessions bound made this edge forget, least recently used first."))
	outcomes, err13 := meter.Int64ObservableCounter("sidemesh.sticky.requests", metric.WithUnit("{request}"),
		metric.WithDescription("Requests of a sticky route, by what happened to their session: hit, new, rebind, miss, refused."))
	owners, err14 := meter.Int64ObservableCounter("sidemesh.sticky.owner.lookups", metric.WithUnit("{lookup}"),
		metric.WithDescription("Exchanges with a session's owner edge, by result: found, missing (a lookup the owner could not answer), error (failed or timed out)."))
	jwksAge, err15 := meter.Float64ObservableGauge("sidemesh.jwt.keys.age", metric.WithUnit("s"),
		metric.WithDescription("Seconds since a JWT provider's key set was last fetched or read; it grows while the issuer does not answer, and the last good set stays in use. Absent until a first set is loaded (tokens are refused until then)."))
	jwksFetches, err16 := meter.Int64ObservableCounter("sidemesh.jwt.keys.fetches", metric.WithUnit("{fetch}"),
		metric.WithDescription("Fetches of a JWT provider's key set, by result: ok or error."))
	unknownKeys, err17 := meter.Int64ObservableCounter("sidemesh.jwt.unknown_keys", metric.WithUnit("{token}"),
		metric.WithDescription("Tokens whose key ID was not in their provider's key set."))
	limited, err18 := meter.Int64ObservableCounter("sidemesh.ratelimit.requests", metric.WithUnit("{request}"),
		metric.WithDescription("Requests an edge route's rate limit saw, by decision: allowed, refused (429), shadow_refused (would have been refused; enforce: false)."))
	limitKeys, err19 := meter.Int64ObservableGauge("sidemesh.ratelimit.keys", metric.WithUnit("{key}"),
		metric.WithDescription("Keys (clients, subjects, header values) a rate limit tracks on this edge."))
	limitEvictions, err20 := meter.Int64ObservableCounter("sidemesh.ratelimit.evictions", metric.WithUnit("{key}"),
		metric.WithDescription("Keys a rate limit forgot for its max_keys bound, least recently used first."))
	isolation, err21 := meter.Float64ObservableGauge("sidemesh.gossip.isolation", metric.WithUnit("s"),
		metric.WithDescription("Seconds this member has been cut off from every other member of the gossip pool (they died, as far as it can tell); 0 when it is not. Past an API key set's max_isolation, its keys are refused."))
	limitBound, err22 := meter.Int64ObservableGauge("sidemesh.ratelimit.overshoot_bound", metric.WithUnit("{request}"),
		metric.WithDescription("For a cluster rate limit: the most requests the edges may admit beyond its quota in one window, (edges - 1) × ⌈rate × (sync interval + delay)⌉, with the edges this one sees."))
	limitPartitioned, err23 := meter.Int64ObservableGauge("sidemesh.ratelimit.partitioned", metric.WithUnit("{limit}"),
		metric.WithDescription("1 while a cluster rate limit's edge is cut off from most of the edges it knew and applies the limit's on_partition behaviour; else 0."))
	syncLate, err24 := meter.Int64ObservableCounter("sidemesh.ratelimit.sync.late", metric.WithUnit("{send}"),
		metric.WithDescription("Sends of cluster rate limits' counts to another edge that took longer than edge.rate_limit_sync.delay (the overshoot bound assumes none do)."))
	cacheRequests, err25 := meter.Int64ObservableCounter("sidemesh.cache.requests", metric.WithUnit("{request}"),
		metric.WithDescription("Requests of the edge's caching routes, by result: hit (answered from the cache) or miss (sent to the backend)."))
	cacheEntries, err26 := meter.Int64ObservableGauge("sidemesh.cache.entries", metric.WithUnit("{response}"),
		metric.WithDescription("Responses the edge's cache holds, every Vary variant apart."))
	cacheBytes, err27 := meter.Int64ObservableGauge("sidemesh.cache.size", metric.WithUnit("By"),
		metric.WithDescription("Memory the edge's cache takes (an estimate), within edge.cache.max_bytes."))
	cacheRemoved, err28 := meter.Int64ObservableCounter("sidemesh.cache.removed", metric.WithUnit("{response}"),
		metric.WithDescription("Responses removed from the edge's cache, by reason: evicted (the byte bound) or purged."))
	for _, err := range []error{err1, err2, err3, err4, err5, err6, err7, err8, err9, err10, err11, err12, err13, err14, err15, err16, err17, err18, err19, err20, err21, err22, err23, err24, err25, err26, err27, err28} {
		if err != nil {
			return fmt.Errorf("telemetry: creating observable instruments: %w", err)
		}
	}
	_, err := meter.RegisterCallback(func(_ context.Context, ob metric.Observer) error {
		if o.Endpoints != nil {
			for _, e := range o.Endpoints() {
				base := []attribute.KeyValue{KeyUpstream.String(e.Upstream), KeyEndpoint.String(e.Endpoint)}
				if e.HasBreaker {
					for _, s := range breakerStates {
						v := int64(0)
						if s == e.Breaker {
							v = 1
						}
						ob.ObserveInt64(breaker, v, metric.WithAttributes(append(base[:2:2], KeyBreakerState.String(s))...))
					}
				}
				if e.HasOutlier {
					ob.ObserveInt64(ejected, boolInt(e.Ejected), metric.WithAttributes(base...))
				}
				if e.HealthChecked {
					ob.ObserveInt64(healthy, boolInt(e.Healthy), metric.WithAttributes(base...))
				}
			}
		}
		if o.Discovery != nil {
			now := time.Now()
			for _, d := range o.Discovery() {
				attrs := metric.WithAttributes(KeyUpstream.String(d.Upstream), KeyBackend.String(d.Backend))
				if !d.LastSnapshot.IsZero() && !d.Static {
					ob.ObserveFloat64(age, now.Sub(d.LastSnapshot).Seconds(), attrs)
				}
				ob.ObserveInt64(errs, int64(d.Errors), attrs)
			}
		}
		names := m.upstreams.names
		if o.Upstreams != nil {
			names = o.Upstreams
		}
		for _, name := range names() {
			c := m.upstreamCounters(name)
			attrs := m.upstreamSeries(name).opt
			ob.ObserveInt64(retries, int64(c.retries.Load()), attrs)
			ob.ObserveInt64(budgetOut, int64(c.budgetOut.Load()), attrs)
		}
		if o.GossipMembers != nil {
			if n, ok := o.GossipMembers(); ok {
				ob.ObserveInt64(members, int64(n))
			}
		}
		if o.GossipIsolation != nil {
			if d, ok := o.GossipIsolation(); ok {
				ob.ObserveFloat64(isolation, d.Seconds())
			}
		}
		if o.LeafExpiry != nil {
			if t, ok := o.LeafExpiry(); ok {
				ob.ObserveFloat64(expiry, time.Until(t).Seconds())
			}
		}
		if o.Sticky != nil {
			for _, st := range o.Sticky() {
				route := KeyRouteName.String(st.Route)
				ob.ObserveInt64(sessions, st.Sessions, metric.WithAttributes(route))
				ob.ObserveInt64(tableBytes, st.Bytes, metric.WithAttributes(route))
				ob.ObserveInt64(evictions, st.Evictions, metric.WithAttributes(route))
				for _, c := range []struct {
					outcome string
					n       int64
				}{{"hit", st.Hits}, {"new", st.New}, {"rebind", st.Rebinds}, {"miss", st.Misses}, {"refused", st.Refused}} {
					ob.ObserveInt64(outcomes, c.n, metric.WithAttributes(route, keyStickyOutcome.String(c.outcome)))
				}
				for _, c := range []struct {
					result string
					n      int64
				}{{"found", st.OwnerFound}, {"missing", st.OwnerMissing}, {"error", st.OwnerErrors}} {
					ob.ObserveInt64(owners, c.n, metric.WithAttributes(route, keyStickyOwnerResult.String(c.result)))
				}
			}
		}
		if o.JWT != nil {
			for _, st := range o.JWT() {
				p := keyJWTProvider.String(st.Provider)
				if st.Loaded {
					ob.ObserveFloat64(jwksAge, st.Age.Seconds(), metric.WithAttributes(p))
				}
				ob.ObserveInt64(jwksFetches, st.Fetches-st.FetchErrors, metric.WithAttributes(p, keyResult.String("ok")))
				ob.ObserveInt64(jwksFetches, st.FetchErrors, metric.WithAttributes(p, keyResult.String("error")))
				ob.ObserveInt64(unknownKeys, st.UnknownKeys, metric.WithAttributes(p))
			}
		}
		if o.RateLimits != nil {
			for _, st := range o.RateLimits() {
				attrs := []attribute.KeyValue{KeyRouteName.String(st.Route), keyLimit.String(st.Limit)}
				for _, c := range []struct {
					decision string
					n        int64
				}{{"allowed", st.Allowed}, {"refused", st.Refused}, {"shadow_refused", st.ShadowRefused}} {
					ob.ObserveInt64(limited, c.n, metric.WithAttributes(append(attrs, keyDecision.String(c.decision))...))
				}
				ob.ObserveInt64(limitKeys, st.Keys, metric.WithAttributes(attrs...))
				ob.ObserveInt64(limitEvictions, st.Evictions, metric.WithAttributes(attrs...))
				if st.Cluster {
					ob.ObserveInt64(limitBound, st.Bound, metric.WithAttributes(attrs...))
					ob.ObserveInt64(limitPartitioned, boolInt(st.Partitioned), metric.WithAttributes(attrs...))
				}
			}
		}
		if o.RateLimitSyncLate != nil {
			ob.ObserveInt64(syncLate, o.RateLimitSyncLate())
		}
		if o.Cache != nil {
			if st, ok := o.Cache(); ok {
				ob.ObserveInt64(cacheRequests, st.Hits, metric.WithAttributes(keyResult.String("hit")))
				ob.ObserveInt64(cacheRequests, st.Misses, metric.WithAttributes(keyResult.String("miss")))
				ob.ObserveInt64(cacheEntries, st.Entries)
				ob.ObserveInt64(cacheBytes, st.Bytes)
				ob.ObserveInt64(cacheRemoved, st.Evictions, metric.WithAttributes(keyReason.String("evicted")))
				ob.ObserveInt64(cacheRemoved, st.Purged, metric.WithAttributes(keyReason.String("purged")))
			}
		}
		return nil
	}, breaker, ejected, healthy, age, errs, members, expiry, retries, budgetOut, sessions, tableBytes, evictions, outcomes, owners,
		jwksAge, jwksFetches, unknownKeys, limited, limitKeys, limitEvictions, isolation, limitBound, limitPartitioned, syncLate, cacheRequests, cacheEntries, cacheBytes, cacheRemoved)
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
