package sidecar

import (
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"

	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/listener"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

// Routing by original destination, for transparent interception (sidemesh
// redirect): a request on the outbound listener whose Host names no
// upstream is routed by where the app meant to connect. An address that
// belongs to a known instance of an upstream's service is balanced across
// that service's instances, as linkerd does; any other address is passed
// through or refused, as outbound.original_destination says. A redirected
// connection that is not HTTP is routed the same way (origdst_tcp.go).

// passthroughHeader marks a request the sidecar passed through to its
// original destination. Seen again on the outbound listener it means the
// sidecar's own connection was redirected back to it: the sidecar is not
// excluded from the redirect rules.
const passthroughHeader = "X-Sidemesh-Passthrough"

// passthroughTransport carries passed-through requests, shared by every
// route table so reloads keep its connections.
var passthroughTransport = &http.Transport{
	DialContext:           (&net.Dialer{Timeout: config.DefaultConnectTimeout}).DialContext,
	MaxIdleConnsPerHost:   64,
	IdleConnTimeout:       config.DefaultPoolIdleTimeout,
	ResponseHeaderTimeout: config.DefaultUpstreamTimeout,
}

// byOriginalDestination returns the route of a redirected request whose
// Host names no upstream, or nil for a request that was not redirected.
func (t *routeTable) byOriginalDestination(r *http.Request) *pipeline.Route {
	dst, err := listener.RequestOriginalDestination(r)
	if err != nil {
		return nil
	}
	if name := t.serviceAt(dst); name != "" {
		if rt := t.outbound[name]; rt != nil {
			return rt
		}
	}
	return t.unknownDestination
}

// serviceAt returns the upstream whose instances include dst: one with an
// endpoint at exactly dst (the sidecar's own address), else the only one
// with an endpoint on dst's IP address (the app's port differs from its
// sidecar's). "" when none does, or when several share the IP address
// and none the port. It walks every endpoint: O(endpoints) per request
// that needs it.
func (t *routeTable) serviceAt(dst netip.AddrPort) string {
	ip := dst.Addr().Unmap()
	byIP := ""
	ambiguous := false
	for name, u := range t.byName {
		if u.bal == nil {
			continue
		}
		for _, ep := range u.bal.Endpoints() {
			epIP, err := netip.ParseAddr(ep.Address)
			if err != nil || epIP.Unmap() != ip {
				continue
			}
			if ep.Port == int(dst.Port()) {
				return name
			}
			if byIP != "" && byIP != name {
				ambiguous = true
			}
			byIP = name
		}
	}
	if ambiguous {
		return ""
	}
	return byIP
}

// unknownDestinationRoute returns the route of a redirected request to an
// address the mesh does not know, as policy (a config value) says.
func unknownDestinationRoute(policy string, log *slog.Logger) *pipeline.Route {
	if policy == config.OriginalDestinationRefuse {
		return &pipeline.Route{Name: "original_destination", Service: unknownService, Handler: pipeline.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			dst, _ := listener.RequestOriginalDestination(r)
			return pipeline.Errorf(http.StatusBadGateway, pipeline.KindNoRoute,
				"%s is no instance of a known service and outbound.original_destination is refuse", dst)
		})}
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			dst, _ := listener.RequestOriginalDestination(pr.In)
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", dst.String()
			pr.Out.Host = pr.In.Host
			pr.Out.Header.Set(passthroughHeader, "1")
		},
		Transport:     passthroughTransport,
		FlushInterval: -1,
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return &pipeline.Route{Name: "passthrough", Service: unknownService, Handler: pipeline.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if r.Header.Get(passthroughHeader) != "" {
			return pipeline.Errorf(http.StatusLoopDetected, pipeline.KindNoRoute,
				"a passed-through request came back to the outbound listener: the sidecar's own connections are redirected (run it as the --proxy-uid or --proxy-gid given to sidemesh redirect)")
		}
		var perr error
		proxy := *rp // a copy per request, for an ErrorHandler of its own
		proxy.ErrorHandler = func(_ http.ResponseWriter, _ *http.Request, err error) { perr = err }
		proxy.ServeHTTP(w, r)
		if perr != nil {
			return pipeline.Errorf(http.StatusBadGateway, pipeline.KindProtocol, "passing through to the original destination: %v", perr)
		}
		return nil
	})}
}
