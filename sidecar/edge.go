package sidecar

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/edge"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
	"github.com/sidemesh/sidemesh/sidecar/proxy"
	"github.com/sidemesh/sidemesh/sidecar/sticky"
)

// roleEdge is the role of every edge listener.
const roleEdge = "edge"

// edgeCerts are the running certificates of one TLS edge listener.
type edgeCerts struct {
	certs  *edge.Certificates
	key    string
	cancel context.CancelFunc
}

// edgeKey describes what of an edge listener's config its server is
// built from, beyond the listener settings.
func edgeKey(l config.EdgeListener) string {
	if l.TLS == nil {
		return fmt.Sprintf("plain redirect=%v port=%d", l.RedirectToHTTPS, l.HTTPSPort)
	}
	return fmt.Sprintf("tls %v min=%s every=%v", l.TLS.Certificates, l.TLS.MinVersion, l.TLS.ReloadInterval)
}

// loadEdgeCerts loads the certificates of cfg's TLS edge listeners whose
// certificates are new or changed; the others keep theirs. It is the
// fallible part of applying an edge, done before anything changes; the
// caller starts the new ones (startEdgeCerts) once the config is applied.
func (s *Sidecar) loadEdgeCerts(cfg *config.Config) (map[string]*edgeCerts, error) {
	next := map[string]*edgeCerts{}
	if cfg.Edge == nil {
		return next, nil
	}
	for _, l := range cfg.Edge.Listeners {
		if l.TLS == nil {
			continue
		}
		key := edgeKey(l)
		if old := s.edgeCerts[l.Listen]; old != nil && old.key == key {
			next[l.Listen] = old
			continue
		}
		certs, err := edge.LoadCertificates(l.TLS.Certificates, l.TLS.ReloadInterval, s.log.With("listener", roleEdge, "addr", l.Listen))
		if err != nil {
			return nil, fmt.Errorf("edge listener %s: %w", l.Listen, err)
		}
		next[l.Listen] = &edgeCerts{certs: certs, key: key}
	}
	return next, nil
}

// startEdgeCerts makes next the running certificates: new ones start
// watching their files, replaced ones stop.
func (s *Sidecar) startEdgeCerts(next map[string]*edgeCerts) {
	for _, ec := range next {
		if ec.cancel == nil {
			ctx, cancel := context.WithCancel(s.life)
			ec.cancel = cancel
			go ec.certs.Run(ctx)
		}
	}
	for addr, old := range s.edgeCerts {
		if next[addr] != old {
			old.cancel()
		}
	}
	s.edgeCerts = next
}

// loadStickyKeys loads the keys of cfg's sticky sessions; nil when cfg
// has none. It is the fallible part of applying them, done before
// anything changes.
func loadStickyKeys(cfg *config.Config) (*sticky.Keys, error) {
	if cfg.Edge == nil || cfg.Edge.Sticky == nil {
		return nil, nil
	}
	keys, err := sticky.LoadKeys(cfg.Edge.Sticky.KeyFile, cfg.Edge.Sticky.PreviousKeyFile)
	if err != nil {
		return nil, fmt.Errorf("edge.sticky: %w", err)
	}
	return keys, nil
}

// useStickyKeys makes keys those of the session table, which it creates
// over the gossip pool's store the first time. The clock skew allowance
// is the one the table was created with: it changes with a restart.
func (s *Sidecar) useStickyKeys(cfg *config.Config, keys *sticky.Keys) {
	switch table := s.sticky.Load(); {
	case keys == nil:
	case table == nil:
		s.sticky.Store(sticky.NewTable(s.backends.pool.Store(), keys, sticky.TableOptions{
			ClockSkew: cfg.Edge.Sticky.ClockSkew, Now: s.clock, Peers: s.backends.pool,
		}))
	default:
		table.SetKeys(keys)
	}
}

// Sticky returns the counters and table size of each sticky route this
// edge has served; nil without sticky routes.
func (s *Sidecar) Sticky() []sticky.Stats {
	table := s.sticky.Load()
	if table == nil {
		return nil
	}
	var out []sticky.Stats
	for _, r := range table.Routes() {
		out = append(out, r.Stats())
	}
	slices.SortFunc(out, func(a, b sticky.Stats) int { return strings.Compare(a.Route, b.Route) })
	return out
}

// StickyEdges returns the edges this one knows share its session table,
// itself included; nil without sticky routes.
func (s *Sidecar) StickyEdges() []string {
	if table := s.sticky.Load(); table != nil {
		return table.Owners()
	}
	return nil
}

// GossipMembers returns the number of live members of the gossip pool,
// this one included; 0 without gossip.
func (s *Sidecar) GossipMembers() int {
	if s.backends == nil || s.backends.pool == nil {
		return 0
	}
	return s.backends.pool.NumMembers()
}

// edgeRouters builds the router of each edge listener of cfg over the
// upstreams ups and the balancer variants.
func (s *Sidecar) edgeRouters(cfg *config.Config, ups, variants map[string]*upstream, certs map[string]*edgeCerts) map[string]pipeline.Router {
	out := map[string]pipeline.Router{}
	if cfg.Edge == nil {
		return out
	}
	table := edge.Compile(cfg.Edge.Routes)
	limits := s.routeLimits(cfg)
	cacheFilter := s.cacheFilter(cfg)
	var authorize func(*config.Route) pipeline.Filter
	if pc := cfg.Edge.Policy; pc != nil {
		pol, err := pc.Compile()
		if err != nil {
			// Validate compiled it already; should it fail here, a nil
			// Policy denies every request rather than let them all in.
			s.log.Error("edge policy does not compile: denying every request", "error", err)
		}
		denied := s.tel.Metrics().PolicyDenial
		authorize = func(rc *config.Route) pipeline.Filter { return edge.AuthorizeFilter(pol, rc.Name, denied) }
	}
	backends := &edgeBackends{ups: ups, variants: variants, made: map[backendKey]pipeline.Handler{}}
	fwd := &proxy.Forwarded{Trusted: cfg.TrustedPrefixes()}
	for _, l := range cfg.Edge.Listeners {
		filters := []pipeline.Filter{&proxy.Hygiene{Underscores: underscorePolicy(l.HeadersWithUnderscores)}, proxy.RequestID, fwd}
		if l.RedirectToHTTPS {
			out[l.Listen] = edge.HTTPSRedirect(l.HTTPSPort, filters)
			continue
		}
		o := edge.RouterOptions{Table: table, Backends: backends, Filters: filters}
		if table := s.sticky.Load(); table != nil {
			o.Sticky = func(rc *config.Route) pipeline.Filter { return table.Route(rc).Filter() }
		}
		o.Auth = s.authFilter
		o.Authorize = authorize
		o.Cache = cacheFilter
		if len(limits) > 0 {
			o.RateLimits = func(rc *config.Route) []*edge.RouteLimit { return limits[rc.Name] }
		}
		if ec := certs[l.Listen]; ec != nil {
			o.Certificates = ec.certs
		}
		out[l.Listen] = edge.NewRouter(o)
	}
	return out
}

// variantKey names the upstream of service balanced by policy for the
// edge routes that choose their own balancer.
func variantKey(service, policy string) string { return service + "#" + policy }

// edgeVariants returns the upstream configs the edge's balancer overrides
// need: each backend (aggregate leg, grpc) service of such a route, with the
// route's policy.
func edgeVariants(cfg *config.Config) map[string]config.Upstream {
	out := map[string]config.Upstream{}
	if cfg.Edge == nil {
		return out
	}
	for _, r := range cfg.Edge.Routes {
		if r.Balancer == "" {
			continue
		}
		var services []string
		for _, b := range r.Backends {
			services = append(services, b.Service)
		}
		if r.Aggregate != nil {
			for _, l := range r.Aggregate.Legs {
				services = append(services, l.Service)
			}
		}
		if r.GRPC != nil {
			services = append(services, r.GRPC.Service)
		}
		for _, svc := range services {
			for _, u := range cfg.Upstreams {
				if u.Service == svc && u.Balancer != r.Balancer {
					u.Balancer = r.Balancer
					out[variantKey(svc, r.Balancer)] = u
				}
			}
		}
	}
	return out
}

// edgeBackends implements edge.Backends over the running upstreams.
type edgeBackends struct {
	ups, variants map[string]*upstream
	made          map[backendKey]pipeline.Handler
}

type backendKey struct {
	route   *config.Route
	service string
}

// Handler implements edge.Backends: the upstream's proxy, or the one of
// the route's balancer, with the route's timeout and retries when it sets
// them. Each route and service gets one handler, whatever the number of
// listeners.
func (b *edgeBackends) Handler(route *config.Route, service string) pipeline.Handler {
	key := backendKey{route, service}
	if h := b.made[key]; h != nil {
		return h
	}
	u := b.ups[service]
	if route.Balancer != "" {
		if v := b.variants[variantKey(service, route.Balancer)]; v != nil {
			u = v
		}
	}
	var h pipeline.Handler
	switch {
	case u == nil || u.proxy == nil:
		h = pipeline.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
			return pipeline.Errorf(http.StatusBadGateway, pipeline.KindNoRoute, "upstream %q is not an HTTP upstream", service)
		})
	case route.Timeout == 0 && route.Retries == nil:
		h = u.proxy
	default:
		o := u.proxyOpts
		if route.Timeout > 0 {
			o.Timeout = route.Timeout
		}
		if route.Retries != nil {
			o.Retry = retryPolicy(*route.Retries)
		}
		h = proxy.NewUpstream(o)
	}
	b.made[key] = h
	return h
}

// BreakerOpen implements edge.BreakerChecker: whether the upstream
// Handler would use for route and service has endpoints, all behind an
// open breaker (the balancer would send to one anyway, in panic mode).
func (b *edgeBackends) BreakerOpen(route *config.Route, service string) bool {
	u := b.ups[service]
	if route.Balancer != "" {
		if v := b.variants[variantKey(service, route.Balancer)]; v != nil {
			u = v
		}
	}
	if u == nil || u.bal == nil {
		return false
	}
	eps := u.bal.Endpoints()
	for _, ep := range eps {
		if ep.BreakerState() != breaker.Open {
			return false
		}
	}
	return len(eps) > 0
}

// routeDigestKey is the gossip store key under which member publishes
// the digest of its routes.
func routeDigestKey(member string) string { return routeDigestPrefix + member }

// routeDigestPrefix holds the route digests: one entry per edge of the
// pool, tied to its membership, which makes it the list of the edges.
const routeDigestPrefix = "edge/routes/"

// routeDigest identifies e's routes: the first 12 hex digits of the
// SHA-256 of their YAML.
func routeDigest(e *config.Edge) string {
	b, _ := yaml.Marshal(e.Routes)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

// publishRouteDigest puts the digest of cfg's routes in the gossip pool,
// tied to this member, so that /members on any member shows which edges
// serve which routes.
func (s *Sidecar) publishRouteDigest(cfg *config.Config) {
	if cfg.Edge == nil || s.backends == nil || s.backends.pool == nil {
		return
	}
	pool := s.backends.pool
	if err := pool.Store().Set(routeDigestKey(pool.Name()), []byte(routeDigest(cfg.Edge)), gossip.SetOptions{Tied: true}); err != nil {
		s.log.Warn("gossip: publish the route digest", "err", err)
	}
}

// describeMatch writes a route match for the admin API.
func describeMatch(m config.RouteMatch) string {
	var parts []string
	switch p := m.Path; {
	case p == nil:
		parts = append(parts, "prefix /")
	case p.Exact != "":
		parts = append(parts, "exact "+p.Exact)
	case p.Prefix != "":
		parts = append(parts, "prefix "+p.Prefix)
	default:
		parts = append(parts, "regex "+p.Regex)
	}
	if m.Method != "" {
		parts = append(parts, m.Method)
	}
	for _, h := range m.Headers {
		parts = append(parts, "header "+h.Name)
	}
	for _, q := range m.Query {
		parts = append(parts, "query "+q.Name)
	}
	return strings.Join(parts, " ")
}

// edgeRouter routes an edge listener through the current route table.
type edgeRouter struct {
	s    *Sidecar
	addr string
}

func (r edgeRouter) Route(req *http.Request) *pipeline.Route {
	if rt := r.s.routes.Load().edge[r.addr]; rt != nil {
		return rt.Route(req)
	}
	return nil // the listener is being removed
}
