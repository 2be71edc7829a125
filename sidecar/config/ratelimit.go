package config

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/policy/ratelimit"
)

// RateLimit is one limit on a route's requests: a token bucket per key.
type RateLimit struct {
	// Name names the limit in the RateLimit headers and metrics; default
	// the key.
	Name string `yaml:"name"`
	// Key says whose requests share a bucket: client_ip (the default:
	// the first X-Forwarded-For hop the edge trusts, else the peer),
	// header:NAME (a header's value; requests without it share the
	// client's address bucket), or jwt:sub (the authenticated subject;
	// the route needs auth).
	Key string `yaml:"key"`
	// Rate is the refill rate: "100/s", "6000/m", "10/h". Required.
	Rate string `yaml:"rate"`
	// Burst is the bucket's size; default one second of Rate, at least 1.
	Burst int `yaml:"burst"`
	// Scope is where the count is kept: local (the default), each edge
	// for itself, exact under concurrency; or cluster, one quota for all
	// the edges of the gossip pool, each counting what it admits and
	// sending its counts to the others every edge.rate_limit_sync
	// interval. A cluster limit is Burst requests in any window of
	// Burst/Rate seconds; the edges together may admit up to
	// (N-1) × ⌈Rate × (interval + delay)⌉ more in a window (the loader
	// warns when that is more than a tenth of Burst), and while more
	// than one edge shares it, one edge admits at most
	// ⌈Rate × (interval + delay)⌉ of a key's requests at once (see
	// docs/edge.md); or exact, for small limits: each key's bucket is
	// held by one edge, its owner, which the others lease tokens from;
	// a request costs a round trip between edges, and the limit is never
	// exceeded, also when the owner dies or an edge joins.
	Scope string `yaml:"scope"`
	// OnPartition is what a cluster limit does while this edge sees
	// fewer than a majority of the edges it knew (the others died
	// without leaving, or the network split): local_share (the default)
	// enforces this edge's share of the quota, 1/N of it, by its own
	// counts alone, so that all the sides together never exceed it;
	// fail_open goes on with the edges it still sees (each side may
	// admit the whole quota); fail_closed refuses every request.
	OnPartition string `yaml:"on_partition"`
	// Enforce refuses requests over the limit with 429 (the default);
	// false only counts them (shadow mode), to try a limit on real
	// traffic first.
	Enforce bool `yaml:"enforce"`
	// MaxKeys bounds the keys tracked; beyond, the least recently used is
	// forgotten (counted in metrics). Default 100000.
	MaxKeys int `yaml:"max_keys"`
}

// Rate-limit scopes, partition behaviours and keys.
const (
	RateLimitLocal     = "local"
	RateLimitCluster   = "cluster"
	RateLimitExact     = "exact"
	PartitionShare     = "local_share"
	PartitionOpen      = "fail_open"
	PartitionClosed    = "fail_closed"
	RateLimitClientIP  = "client_ip"
	RateLimitJWTSub    = "jwt:sub"
	rateLimitHeaderPfx = "header:"
)

func (l *RateLimit) setDefaults() {
	*l = RateLimit{Key: RateLimitClientIP, Scope: RateLimitLocal, Enforce: true, MaxKeys: 100_000}
}

// RateLimitSync is how the edges exchange the counts of their
// cluster-scope rate limits: each sends the counts that changed to every
// other edge once an Interval, directly over the gossip pool's encrypted
// stream.
type RateLimitSync struct {
	// Interval is how often counts are sent. Default 100ms.
	Interval time.Duration `yaml:"interval"`
	// Delay is the time a send may take to arrive, for the overshoot
	// bound; sends that take longer are counted in the metric
	// sidemesh.ratelimit.sync.late. Default 50ms.
	Delay time.Duration `yaml:"delay"`
	// ExpectedEdges is how many edges you run, for the warning the
	// loader gives when a cluster limit is too small for its overshoot
	// bound; the running edges recompute the bound with the edges they
	// see (GET /rate_limits). Default 3.
	ExpectedEdges int `yaml:"expected_edges"`
}

// Pace returns the requests of one key an edge admits at once under a
// cluster limit of rate r (tokens a second) while other edges share it:
// ⌈r × (Interval + Delay)⌉, at least 1.
func (s RateLimitSync) Pace(r float64) int {
	return max(1, int(math.Ceil(r*(s.Interval+s.Delay).Seconds())))
}

func (e *Edge) setDefaults() {
	e.RateLimitSync = RateLimitSync{Interval: 100 * time.Millisecond, Delay: 50 * time.Millisecond, ExpectedEdges: 3}
}

// LimitName returns the limit's name: Name, else its key.
func (l *RateLimit) LimitName() string {
	if l.Name != "" {
		return l.Name
	}
	return l.Key
}

// Bucket returns the limit's bucket shape; l must have passed
// validation.
func (l *RateLimit) Bucket() ratelimit.Limit {
	r, _ := ratelimit.ParseRate(l.Rate)
	burst := l.Burst
	if burst == 0 {
		burst = max(1, int(math.Ceil(r)))
	}
	return ratelimit.Limit{Rate: r, Burst: burst}
}

// HeaderKey returns the header a header:NAME key names; "" for other
// keys.
func (l *RateLimit) HeaderKey() string {
	h, _ := strings.CutPrefix(l.Key, rateLimitHeaderPfx)
	if h == l.Key {
		return ""
	}
	return h
}

// clusterLimit checks the cluster-scope limit l at path, and warns when
// it is too small for its overshoot bound.
func (v *validator) clusterLimit(path string, l *RateLimit) {
	if v.c.Discovery.Gossip == nil {
		v.errorf(path+".scope", "cluster limits are shared over the gossip pool: configure discovery.gossip on every edge")
	}
	if l.OnPartition != "" {
		v.oneOf(path+".on_partition", "behaviour", l.OnPartition, []string{PartitionShare, PartitionOpen, PartitionClosed})
	}
	if _, err := ratelimit.ParseRate(l.Rate); err != nil || l.Burst < 0 || v.c.Edge.RateLimitSync.ExpectedEdges < 1 {
		return // reported elsewhere
	}
	b, sync := l.Bucket(), v.c.Edge.RateLimitSync
	if bound := (sync.ExpectedEdges - 1) * sync.Pace(b.Rate); bound*10 > b.Burst {
		v.warnf(path, "with %d edges syncing every %v (+%v delay), this cluster limit of %d per %v may admit up to %d more per window (%d%%): raise its burst (a longer window), shorten edge.rate_limit_sync.interval, or use scope: exact",
			sync.ExpectedEdges, sync.Interval, sync.Delay, b.Burst, ratelimit.Window(b), bound, bound*100/b.Burst)
	}
}

// rateLimitSync checks edge.rate_limit_sync.
func (v *validator) rateLimitSync(s RateLimitSync) {
	v.positive("edge.rate_limit_sync.interval", s.Interval)
	if s.Delay < 0 {
		v.errorf("edge.rate_limit_sync.delay", "must not be negative, got %v", s.Delay)
	}
	if s.ExpectedEdges < 1 {
		v.errorf("edge.rate_limit_sync.expected_edges", "must be at least 1, got %d", s.ExpectedEdges)
	}
}

// rateLimits checks route r's limits, at path.
func (v *validator) rateLimits(path string, r *Route) {
	names := map[string]int{}
	for i := range r.RateLimits {
		l := &r.RateLimits[i]
		p := fmt.Sprintf("%s.rate_limits[%d]", path, i)
		if prev, dup := names[l.LimitName()]; dup {
			v.errorf(p+".name", "%s is also the name of rate_limits[%d]: name one of them", quote(l.LimitName()), prev)
		}
		names[l.LimitName()] = i
		switch {
		case l.Key == RateLimitClientIP:
		case l.Key == RateLimitJWTSub:
			if r.Auth == nil {
				v.errorf(p+".key", "jwt:sub needs the route to authenticate its callers (auth: { jwt: ... })")
			}
		case strings.HasPrefix(l.Key, rateLimitHeaderPfx):
			if !validHeaderName(l.HeaderKey()) {
				v.errorf(p+".key", "invalid header name %s", quote(l.HeaderKey()))
			}
		default:
			v.errorf(p+".key", "unknown key %s: want client_ip, header:NAME or jwt:sub", quote(l.Key))
		}
		if l.Rate == "" {
			v.errorf(p+".rate", "required, e.g. 100/s")
		} else if _, err := ratelimit.ParseRate(l.Rate); err != nil {
			v.errorf(p+".rate", "%s", strings.TrimPrefix(err.Error(), "rate "))
		}
		if l.Burst < 0 {
			v.errorf(p+".burst", "must not be negative, got %d", l.Burst)
		}
		switch l.Scope {
		case RateLimitLocal:
			if l.OnPartition != "" {
				v.errorf(p+".on_partition", "only a cluster limit has partitions; a local one is this edge's alone")
			}
		case RateLimitCluster:
			v.clusterLimit(p, l)
		case RateLimitExact:
			if v.c.Discovery.Gossip == nil {
				v.errorf(p+".scope", "exact limits are kept by the edges of the gossip pool: configure discovery.gossip on every edge")
			}
			if l.OnPartition != "" {
				v.errorf(p+".on_partition", "an exact limit always fails closed on the minority side of a partition; on_partition is for cluster limits")
			}
		default:
			v.errorf(p+".scope", "unknown scope %s: want local, cluster or exact", quote(l.Scope))
		}
		if l.MaxKeys < 1 {
			v.errorf(p+".max_keys", "must be at least 1, got %d", l.MaxKeys)
		}
	}
	if len(r.RateLimits) > 0 && r.Redirect != nil {
		v.errorf(path+".rate_limits", "a route that redirects sends nothing to limit")
	}
}
