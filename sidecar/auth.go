package sidecar

import (
	"context"
	"fmt"
	"net/http"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/policy/authn"
	"github.com/sidemesh/sidemesh/policy/ratelimit"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/edge"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

// jwtProvider is a running JWT provider and the config it was built
// from.
type jwtProvider struct {
	cfg    config.JWTProvider
	p      *authn.Provider
	shared *sharedJWKS        // the pool's shared fetch; nil without gossip or for a file
	cancel context.CancelFunc // stops its key refresh; nil until started
}

// jwtUnknownKeyRefetch is the least time between two key set fetches an
// edge makes for unknown key IDs (authn's default); tests that rotate
// keys back to back shorten it.
var jwtUnknownKeyRefetch = 10 * time.Second

// loadJWTProviders builds the JWT providers of cfg, reusing the running
// ones whose config did not change (a file's keys are read again). It is
// the fallible part of applying them, done before anything changes:
// a JWKS file that does not load refuses the config.
func (s *Sidecar) loadJWTProviders(cfg *config.Config) (map[string]*jwtProvider, error) {
	next := map[string]*jwtProvider{}
	if cfg.Edge == nil {
		return next, nil
	}
	for _, pc := range cfg.Edge.JWTProviders {
		if old := loaded(&s.jwt)[pc.Name]; old != nil && reflect.DeepEqual(old.cfg, pc) {
			if err := old.p.Reload(); err != nil {
				return nil, fmt.Errorf("edge.jwt_providers %s: %w", pc.Name, err)
			}
			next[pc.Name] = old
			continue
		}
		ac := pc.AuthnConfig()
		ac.Now, ac.UnknownKeyRefetch = s.clock, jwtUnknownKeyRefetch
		var shared *sharedJWKS
		if pc.JWKSURL != "" && s.backends != nil && s.backends.pool != nil {
			shared = newSharedJWKS(pc.Name, s.backends.pool, authn.HTTPFetcher(pc.JWKSURL, &http.Client{Timeout: 5 * time.Second}), s.clock)
			ac.Fetch, ac.Latest = shared.fetch, shared.published
		}
		p, err := authn.NewProvider(ac)
		if err != nil {
			return nil, fmt.Errorf("edge.jwt_providers %s: %w", pc.Name, err)
		}
		next[pc.Name] = &jwtProvider{cfg: pc, p: p, shared: shared}
	}
	return next, nil
}

// startJWTProviders makes next the running providers: new ones start
// fetching their keys, replaced ones stop.
func (s *Sidecar) startJWTProviders(next map[string]*jwtProvider) {
	for _, jp := range next {
		if jp.cancel == nil {
			ctx, cancel := context.WithCancel(s.life)
			jp.cancel = cancel
			if jp.shared != nil {
				jp.shared.start(ctx, jp.p)
			}
			jp.p.Start(ctx)
		}
	}
	for name, old := range loaded(&s.jwt) {
		if next[name] != old {
			old.cancel()
		}
	}
	s.jwt.Store(&next)
}

// authFilter returns the authentication filter of route rc, over the
// JWT providers and API key sets of the config being applied.
func (s *Sidecar) authFilter(rc *config.Route) pipeline.Filter {
	if rc.Auth.APIKey != "" {
		k := loaded(&s.keySets)[rc.Auth.APIKey] // validated: it exists
		return edge.APIKeyFilter(k.ks, k.cfg, rc.Auth, s.clock, s.IsolatedFor)
	}
	jp := loaded(&s.jwt)[rc.Auth.JWT] // validated: it exists
	return edge.AuthFilter(jp.p, jp.cfg.From, rc.Auth)
}

// JWTProviders returns the state of each JWT provider, by name. It takes
// no lock: metrics collection calls it, also from Shutdown.
func (s *Sidecar) JWTProviders() map[string]authn.Stats {
	out := map[string]authn.Stats{}
	for name, jp := range loaded(&s.jwt) {
		out[name] = jp.p.Stats()
	}
	return out
}

// routeLimits returns the rate limits of cfg's routes, by route name,
// reusing the buckets of a limit whose route and configuration did not
// change, so that a reload grants no fresh burst. It records them in
// s.limits.
func (s *Sidecar) routeLimits(cfg *config.Config) map[string][]*edge.RouteLimit {
	out := map[string][]*edge.RouteLimit{}
	next := map[string]*edge.RouteLimit{}
	shared := map[string]*clusterLimit{}
	exact := map[string]*exactLimit{}
	if cfg.Edge != nil {
		for _, rc := range cfg.Edge.Routes {
			for _, lc := range rc.RateLimits {
				id := limitID(rc.Name, lc.LimitName())
				l := loaded(&s.limits)[id]
				if l == nil || !reflect.DeepEqual(l.Cfg, lc) {
					var b edge.Buckets
					switch {
					case s.sharedLimits == nil: // validated: not for a shared scope
					case lc.Scope == config.RateLimitCluster:
						b = ratelimit.NewCluster(lc.Bucket(), lc.MaxKeys, s.clock)
					case lc.Scope == config.RateLimitExact:
						b = newExactLimit(id, lc, s.sharedLimits, s.clock)
					}
					l = edge.NewRouteLimit(rc.Name, lc, b)
				}
				switch b := l.Buckets.(type) {
				case *ratelimit.Cluster:
					shared[id] = &clusterLimit{cfg: lc, c: b}
				case *exactLimit:
					exact[id] = b
				}
				next[id] = l
				out[rc.Name] = append(out[rc.Name], l)
			}
		}
	}
	if s.sharedLimits != nil && cfg.Edge != nil {
		s.sharedLimits.use(shared, exact, cfg.Edge.RateLimitSync)
	}
	s.limits.Store(&next)
	return out
}

// RateLimits returns what each rate limit decided. It takes no lock.
func (s *Sidecar) RateLimits() []edge.LimitStats {
	var out []edge.LimitStats
	for _, l := range loaded(&s.limits) {
		out = append(out, l.Stats())
	}
	return out
}

// loaded returns the map p points to; nil before the first Store.
func loaded[M ~map[K]V, K comparable, V any](p *atomic.Pointer[M]) M {
	if m := p.Load(); m != nil {
		return *m
	}
	return nil
}
