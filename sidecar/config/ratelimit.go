package config

import (
	"fmt"
	"math"
	"strings"

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
	// Scope is where the count is kept: local, each edge for itself (the
	// only one built so far).
	Scope string `yaml:"scope"`
	// Enforce refuses requests over the limit with 429 (the default);
	// false only counts them (shadow mode), to try a limit on real
	// traffic first.
	Enforce bool `yaml:"enforce"`
	// MaxKeys bounds the keys tracked; beyond, the least recently used is
	// forgotten (counted in metrics). Default 100000.
	MaxKeys int `yaml:"max_keys"`
}

// Rate-limit scopes and keys.
const (
	RateLimitLocal     = "local"
	RateLimitClientIP  = "client_ip"
	RateLimitJWTSub    = "jwt:sub"
	rateLimitHeaderPfx = "header:"
)

func (l *RateLimit) setDefaults() {
	*l = RateLimit{Key: RateLimitClientIP, Scope: RateLimitLocal, Enforce: true, MaxKeys: 100_000}
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
		if l.Scope != RateLimitLocal {
			v.errorf(p+".scope", "%s: only local is built so far (each edge counts for itself)", quote(l.Scope))
		}
		if l.MaxKeys < 1 {
			v.errorf(p+".max_keys", "must be at least 1, got %d", l.MaxKeys)
		}
	}
	if len(r.RateLimits) > 0 && r.Redirect != nil {
		v.errorf(path+".rate_limits", "a route that redirects sends nothing to limit")
	}
}
