package sidecar

import (
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
	"github.com/sidemesh/sidemesh/sidecar/proxy"
)

// unknownService is the service label of an outbound request whose Host
// names no upstream: arbitrary Host values must not become metric series.
const unknownService = "unknown"

// routeTable is what the listeners route by: the running upstreams and
// the chain built for each. It is replaced whole on reload and read
// without locks.
type routeTable struct {
	byName map[string]*upstream
	local  *upstream
	// outbound holds the route of each HTTP upstream, by name, for the
	// outbound and dedicated listeners; noRoute answers the rest.
	outbound map[string]*pipeline.Route
	noRoute  *pipeline.Route
	// unknownDestination answers a redirected request to an address that
	// is no known instance (origdst.go): passthrough or refuse.
	unknownDestination *pipeline.Route
	// inbound is the route to the local app; nil without an HTTP service.
	inbound *pipeline.Route
	// edge holds the router of each edge listener, by address.
	edge map[string]pipeline.Router
}

// newRouteTable builds the chains of every route: on every listener
// Hygiene first (so no header a later filter sets can be removed by the
// caller), then the request ID and X-Forwarded-* headers, then on the
// inbound listener the authorization filter, then the proxy.
func (s *Sidecar) newRouteTable(cfg *config.Config, ups map[string]*upstream, local *upstream) *routeTable {
	t := newRouteTable(ups, local)
	fwd := &proxy.Forwarded{Trusted: cfg.TrustedPrefixes()}
	out := &proxy.Hygiene{Underscores: underscorePolicy(cfg.Outbound.HeadersWithUnderscores)}
	in := &proxy.Hygiene{Underscores: underscorePolicy(cfg.Inbound.HeadersWithUnderscores)}
	for name, u := range ups {
		if u.proxy != nil {
			t.outbound[name] = &pipeline.Route{Name: name, Service: name,
				Handler: pipeline.Chain(u.proxy, out, proxy.RequestID, fwd)}
		}
	}
	t.noRoute.Handler = pipeline.Chain(t.noRoute.Handler, out, proxy.RequestID, fwd)
	t.unknownDestination = unknownDestinationRoute(cfg.Outbound.OriginalDestination, s.log)
	if local != nil && local.proxy != nil {
		t.inbound = &pipeline.Route{Name: local.cfg.Service, Service: local.cfg.Service,
			Handler: pipeline.Chain(local.proxy, in, proxy.RequestID, fwd, s.security.Filter())}
	}
	return t
}

// underscorePolicy turns a listener's headers_with_underscores into
// Hygiene's policy.
func underscorePolicy(v string) proxy.UnderscorePolicy {
	switch v {
	case config.UnderscoresReject:
		return proxy.RejectUnderscores
	case config.UnderscoresAllow:
		return proxy.AllowUnderscores
	}
	return proxy.DropUnderscores
}

// newRouteTable returns a table of ups and local with no chains but the
// one that answers unknown names.
func newRouteTable(ups map[string]*upstream, local *upstream) *routeTable {
	names := make([]string, 0, len(ups))
	for n := range ups {
		names = append(names, n)
	}
	sort.Strings(names)
	known := "known upstreams: none"
	if len(names) > 0 {
		known = "known upstreams: " + strings.Join(names, ", ")
	}
	return &routeTable{
		byName:   ups,
		local:    local,
		outbound: make(map[string]*pipeline.Route, len(ups)),
		noRoute: &pipeline.Route{Service: unknownService, Handler: pipeline.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			return pipeline.Errorf(http.StatusBadGateway, pipeline.KindNoRoute,
				"no upstream named %q is configured on this sidecar (%s)", serviceFromHost(r.Host), known)
		})},
	}
}

// outboundRouter routes the outbound listener by Host header, then, for
// a redirected connection, by its original destination (origdst.go).
type outboundRouter struct{ s *Sidecar }

func (r outboundRouter) Route(req *http.Request) *pipeline.Route {
	t := r.s.routes.Load()
	if rt := t.outbound[serviceFromHost(req.Host)]; rt != nil {
		return rt
	}
	if rt := t.byOriginalDestination(req); rt != nil {
		return rt
	}
	return t.noRoute
}

// dedicatedRouter routes an upstream's dedicated listener.
type dedicatedRouter struct {
	s    *Sidecar
	name string
}

func (r dedicatedRouter) Route(*http.Request) *pipeline.Route {
	t := r.s.routes.Load()
	if rt := t.outbound[r.name]; rt != nil {
		return rt
	}
	return t.noRoute // the upstream was removed; its listener is going
}

// inboundRouter routes the inbound listener to the local app.
type inboundRouter struct{ s *Sidecar }

func (r inboundRouter) Route(*http.Request) *pipeline.Route {
	return r.s.routes.Load().inbound // nil (no route) only while the service is removed
}

// meshDomain is the suffix an app may put after a service name in the
// Host header: "catalog" and "catalog.mesh" name the same upstream.
const meshDomain = ".mesh"

// serviceFromHost returns the service a Host header names: the port and a
// trailing meshDomain are removed and the name is lower-cased.
// "Catalog.mesh:80" names "catalog".
func serviceFromHost(host string) string {
	// Only a host with a ':' can have a port: SplitHostPort allocates
	// the error it returns for one without (every request by name).
	if strings.IndexByte(host, ':') >= 0 {
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	return strings.TrimSuffix(host, meshDomain)
}

func joinHostPort(host string, port int) string {
	return net.JoinHostPort(host, strconv.Itoa(port))
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, err
	}
	return host, port, nil
}
