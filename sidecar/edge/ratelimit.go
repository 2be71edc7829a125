package edge

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/policy/ratelimit"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
	"github.com/sidemesh/sidemesh/sidecar/proxy"
)

// RouteLimit is one rate limit of a route: its configuration, its
// buckets, and what it decided. Safe for concurrent use.
type RouteLimit struct {
	Route string
	Cfg   config.RateLimit
	Buckets
	quoted string // the name as the RateLimit headers write it

	allowed, refused, shadowRefused atomic.Uint64
}

// Buckets is where a limit counts: a ratelimit.Limiter (scope local) or
// a ratelimit.Cluster (scope cluster). Implementations are safe for
// concurrent use.
type Buckets interface {
	Allow(key string) ratelimit.Decision
	Stats() ratelimit.Stats
}

// NewRouteLimit returns the limit cfg of route counting in b; nil b:
// new, empty local buckets.
func NewRouteLimit(route string, cfg config.RateLimit, b Buckets) *RouteLimit {
	if b == nil {
		b = ratelimit.New(cfg.Bucket(), cfg.MaxKeys, nil)
	}
	return &RouteLimit{Route: route, Cfg: cfg, Buckets: b, quoted: strconv.Quote(cfg.LimitName())}
}

// LimitStats are what a limit decided, and its keys.
type LimitStats struct {
	Route, Name string
	// Allowed and Refused count requests; ShadowRefused those a limit
	// in shadow mode (enforce: false) would have refused.
	Allowed, Refused, ShadowRefused uint64
	ratelimit.Stats
	// Scope is the limit's scope. For a cluster limit, Edges counts the
	// edges sharing it (this one included), Bound is the most they may
	// admit beyond the quota in a window, and Partitioned reports that
	// this edge is cut off from most of them (on_partition applies).
	Scope       string
	Edges       int
	Bound       int
	Partitioned bool
}

// Stats returns l's counters.
func (l *RouteLimit) Stats() LimitStats {
	st := LimitStats{
		Route: l.Route, Name: l.Cfg.LimitName(), Allowed: l.allowed.Load(), Refused: l.refused.Load(),
		ShadowRefused: l.shadowRefused.Load(), Stats: l.Buckets.Stats(), Scope: config.RateLimitLocal, Edges: 1,
	}
	switch b := l.Buckets.(type) {
	case *ratelimit.Cluster:
		v := b.View()
		st.Scope, st.Edges, st.Bound, st.Partitioned = config.RateLimitCluster, v.Edges, b.Bound(), v.Partitioned
	case interface{ Edges() (int, bool) }: // scope: exact
		st.Scope = config.RateLimitExact
		st.Edges, st.Partitioned = b.Edges()
	}
	return st
}

// RateLimitFilter returns the filter that takes a token from each of
// limits for the request's key. When an enforced limit has none, the
// request is answered 429 with Retry-After; a limit in shadow mode only
// counts it. Every answer carries the RateLimit-Policy and RateLimit
// headers (draft-ietf-httpapi-ratelimit-headers): each limit's quota
// (q, its burst) and window (w, the seconds an empty bucket takes to
// refill), and for the limit with the fewest tokens left, those (r) and
// the seconds until its bucket is full (t). It must run after the
// Forwarded filter (client_ip keys read X-Forwarded-For as that filter
// leaves it) and the route's authentication (jwt:sub keys).
func RateLimitFilter(limits []*RouteLimit) pipeline.Filter {
	policy := make([]string, len(limits))
	for i, l := range limits {
		b := l.Cfg.Bucket()
		policy[i] = fmt.Sprintf("%s;q=%d;w=%d", l.quoted, b.Burst, int(math.Ceil(float64(b.Burst)/b.Rate)))
	}
	policyHeader := strings.Join(policy, ", ")
	return pipeline.FilterFunc(func(w http.ResponseWriter, r *http.Request, next pipeline.Handler) error {
		info := pipeline.InfoFrom(r.Context())
		var tightest *RouteLimit
		var least ratelimit.Decision
		var retry time.Duration
		refused := false
		for _, l := range limits {
			d := l.Allow(limitKey(r, info, &l.Cfg))
			switch {
			case d.Allowed:
				l.allowed.Add(1)
			case l.Cfg.Enforce:
				l.refused.Add(1)
				refused = true
				retry = max(retry, d.RetryAfter)
			default:
				l.shadowRefused.Add(1)
				continue // shadow mode: not in the headers either
			}
			if tightest == nil || d.Remaining < least.Remaining {
				tightest, least = l, d
			}
		}
		h := w.Header()
		h.Set("RateLimit-Policy", policyHeader)
		if tightest != nil {
			v := make([]byte, 0, len(tightest.quoted)+24)
			v = append(v, tightest.quoted...)
			v = strconv.AppendInt(append(v, ";r="...), int64(least.Remaining), 10)
			v = strconv.AppendInt(append(v, ";t="...), int64(ceilSeconds(least.Reset)), 10)
			h.Set("RateLimit", string(v))
		}
		if refused {
			h.Set("Retry-After", strconv.Itoa(max(1, ceilSeconds(retry))))
			return pipeline.Errorf(http.StatusTooManyRequests, pipeline.KindRateLimited, "too many requests; retry in %d s", max(1, ceilSeconds(retry)))
		}
		return next.ServeHTTP(w, r)
	})
}

func ceilSeconds(d time.Duration) int { return int(math.Ceil(d.Seconds())) }

// limitKey returns the bucket key of r under l. A header key whose
// header is missing, and a jwt:sub key without a principal, fall back to
// the client's address, so that leaving a header out does not escape
// the limit.
func limitKey(r *http.Request, info *pipeline.Info, l *config.RateLimit) string {
	switch {
	case l.Key == config.RateLimitJWTSub:
		if info != nil && info.Principal != "" {
			return "sub:" + info.Principal
		}
	case l.HeaderKey() != "":
		if v := r.Header.Get(l.HeaderKey()); v != "" {
			return "h:" + v
		}
	}
	return "ip:" + proxy.ClientAddr(r)
}
