package edge

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/sidemesh/sidemesh/policy"
	"github.com/sidemesh/sidemesh/sidecar/aggregate"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
	"github.com/sidemesh/sidemesh/sidecar/transcode"
	"github.com/sidemesh/sidemesh/sidecar/transform"
)

// Backends gives the edge the handlers that send requests to mesh
// services. The sidecar's wiring implements it with its upstreams.
type Backends interface {
	// Handler returns the handler that sends a request of route to
	// service, with the route's timeout, retries and balancer where it
	// sets them. Never nil.
	Handler(route *config.Route, service string) pipeline.Handler
}

// BreakerChecker is implemented by Backends that can tell a service whose
// every endpoint is behind an open circuit breaker: an aggregate route's
// leg to it then fails at once instead of waiting for its timeout.
type BreakerChecker interface {
	// BreakerOpen reports whether every endpoint of service, as route
	// balances it, is behind an open breaker. It must not block.
	BreakerOpen(route *config.Route, service string) bool
}

// RouterOptions configure NewRouter.
type RouterOptions struct {
	// Table is the compiled route table. Required.
	Table *Table
	// Backends calls mesh services. Required.
	Backends Backends
	// Filters run in front of every route, first to last (header hygiene,
	// the request ID, X-Forwarded-*).
	Filters []pipeline.Filter
	// Certificates, on a TLS listener, are the listener's: a request whose
	// Host would get another certificate than its connection's SNI did is
	// answered 421 (no domain fronting). Nil on a plain listener.
	Certificates *Certificates
	// Sticky returns the sticky session filter of a route with a sticky
	// section; it runs last of the route's filters, next to its backends.
	// Nil when no route has one.
	Sticky func(*config.Route) pipeline.Filter
	// Auth returns the authentication filter of a route with an auth
	// section; it runs first of the route's filters. Nil when no route
	// has one.
	Auth func(*config.Route) pipeline.Filter
	// Authorize returns the authorization filter of a route (see
	// AuthorizeFilter); it runs after authentication and before rate
	// limits, on every route. Nil when the edge has no edge.policy: then
	// each route's auth alone decides.
	Authorize func(*config.Route) pipeline.Filter
	// RateLimits returns the rate limits of a route with rate_limits;
	// they run after authentication. Nil when no route has any.
	RateLimits func(*config.Route) []*RouteLimit
	// Cache returns the response cache filter of a route with a cache
	// section; it runs after the rewrite (its key is the request as sent
	// upstream) and before response headers are edited (it stores them
	// edited). Nil when no route has one.
	Cache func(*config.Route) pipeline.Filter
}

// Router routes one edge listener's requests: it normalizes the path,
// matches the route table, and returns the chain built for the route.
// It is a pipeline.Router; safe for concurrent use, immutable.
type Router struct {
	table  *Table
	certs  *Certificates
	chains map[chainKey]*pipeline.Route
	// Answers for requests no route takes.
	notFound, badPath, misdirected, badVersion *pipeline.Route
}

// chainKey names the chain of one route under one matched prefix (a
// prefix rewrite depends on it).
type chainKey struct {
	route  int
	prefix string
}

// unknownRoute is the service label of requests no route took.
const unknownRoute = "unknown"

// NewRouter builds every route's chain once.
func NewRouter(o RouterOptions) *Router {
	rt := &Router{table: o.Table, certs: o.Certificates, chains: map[chainKey]*pipeline.Route{}}
	answer := func(status int, kind pipeline.Kind, msg func(*http.Request) string) *pipeline.Route {
		return &pipeline.Route{Service: unknownRoute, Handler: pipeline.Chain(pipeline.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			return &pipeline.Error{Status: status, Kind: kind, Msg: msg(r)}
		}), o.Filters...)}
	}
	rt.notFound = answer(http.StatusNotFound, pipeline.KindNoRoute, func(r *http.Request) string {
		return fmt.Sprintf("no route for %s %s%s", r.Method, HostOf(r.Host), r.URL.Path)
	})
	rt.badPath = answer(http.StatusBadRequest, pipeline.KindBadPath, func(r *http.Request) string {
		if _, err := policy.NormalizePath(r.URL.EscapedPath()); err != nil {
			return err.Error()
		}
		return "path parameters (';') are not allowed: an app may read the path without them"
	})
	rt.misdirected = answer(http.StatusMisdirectedRequest, pipeline.KindMisdirected, func(r *http.Request) string {
		return fmt.Sprintf("this connection was made for %q, which another certificate serves than %q", r.TLS.ServerName, HostOf(r.Host))
	})
	rt.badVersion = answer(http.StatusBadRequest, pipeline.KindBadRequest, func(r *http.Request) string {
		_, verr := rt.table.Match(HostOf(r.Host), r.URL.Path, r)
		return fmt.Sprint(verr)
	})
	for _, route := range o.Table.Routes() {
		prefixes := []string{""}
		for _, m := range route.Config.Matches {
			if m.Path != nil && m.Path.Prefix != "" {
				prefixes = append(prefixes, strings.TrimSuffix(m.Path.Prefix, "/"))
			}
		}
		if len(route.Config.Matches) == 0 {
			prefixes = append(prefixes, "")
		}
		for _, p := range prefixes {
			key := chainKey{route.Index, p}
			if rt.chains[key] != nil {
				continue
			}
			rt.chains[key] = &pipeline.Route{
				Name: route.Name, Service: route.Name,
				Handler: pipeline.Chain(routeHandler(route.Config, p, o.Backends), append(o.Filters, routeFilters(route.Config, p, o)...)...),
			}
		}
	}
	return rt
}

// Route implements pipeline.Router.
func (rt *Router) Route(r *http.Request) *pipeline.Route {
	escaped := r.URL.EscapedPath()
	path, err := policy.NormalizePath(escaped)
	if err != nil || strings.IndexByte(escaped, ';') >= 0 {
		// Path parameters too: Tomcat and Jetty serve /admin;x as /admin,
		// which no route for /admin would have matched.
		return rt.badPath
	}
	if path != escaped {
		u, _ := url.Parse(path) // NormalizePath returns a valid escaped path
		r.URL.Path, r.URL.RawPath = u.Path, u.RawPath
	}
	host := HostOf(r.Host)
	if rt.certs != nil && r.TLS != nil && rt.certs.ForName(r.TLS.ServerName) != rt.certs.ForName(host) {
		return rt.misdirected
	}
	m, verr := rt.table.Match(host, r.URL.Path, r)
	switch {
	case m.Route != nil:
		if c := rt.chains[chainKey{m.Route.Index, m.Prefix}]; c != nil {
			return c
		}
		return rt.chains[chainKey{m.Route.Index, ""}]
	case verr != nil:
		return rt.badVersion
	}
	return rt.notFound
}

// routeFilters are route's own filters, in order: authentication,
// authorization, rate limits, the body limit, request headers, the
// rewrite (under matched prefix), the cache, the transform, response
// headers, the sticky session. The transform comes after the rewrite, so
// its query edits apply to the query sent on, and after the cache, so
// the cache keeps (and serves ranges of) transformed bodies; its
// response edits see the response headers as response_headers left
// them.
func routeFilters(rc *config.Route, prefix string, o RouterOptions) []pipeline.Filter {
	var fs []pipeline.Filter
	if rc.Auth != nil && o.Auth != nil {
		fs = append(fs, o.Auth(rc))
	}
	if o.Authorize != nil {
		fs = append(fs, o.Authorize(rc))
	}
	if len(rc.RateLimits) > 0 && o.RateLimits != nil {
		fs = append(fs, RateLimitFilter(o.RateLimits(rc)))
	}
	if n := int64(rc.MaxBodyBytes); n > 0 {
		fs = append(fs, pipeline.FilterFunc(func(w http.ResponseWriter, r *http.Request, next pipeline.Handler) error {
			if r.ContentLength > n {
				return pipeline.Errorf(http.StatusRequestEntityTooLarge, pipeline.KindBadRequest, "the request body is %d bytes; this route takes at most %d", r.ContentLength, n)
			}
			if r.Body != nil && r.Body != http.NoBody {
				r.Body = http.MaxBytesReader(w, r.Body, n)
			}
			return next.ServeHTTP(w, r)
		}))
	}
	if h := rc.RequestHeaders; h != nil {
		fs = append(fs, pipeline.FilterFunc(func(w http.ResponseWriter, r *http.Request, next pipeline.Handler) error {
			editHeader(r.Header, h)
			return next.ServeHTTP(w, r)
		}))
	}
	if rw := rc.Rewrite; rw != nil {
		fs = append(fs, pipeline.FilterFunc(func(w http.ResponseWriter, r *http.Request, next pipeline.Handler) error {
			if rw.Path != nil {
				// What a rewrite produces is normalized again: a
				// replacement must not lead outside what the route
				// allows (Envoy CVE-2021-29492, Traefik CVE-2025-66490).
				out, err := policy.NormalizePath(modifyPath(rw.Path, r.URL.Path, prefix))
				if err != nil {
					return pipeline.Errorf(http.StatusBadRequest, pipeline.KindBadPath, "the rewritten path is ambiguous: %v", err)
				}
				u, _ := url.Parse(out)
				r.URL.Path, r.URL.RawPath = u.Path, u.RawPath
			}
			if rw.Hostname != "" {
				r.Host = rw.Hostname
			}
			return next.ServeHTTP(w, r)
		}))
	}
	if rc.Cache != nil && o.Cache != nil {
		fs = append(fs, o.Cache(rc))
	}
	if rc.Transform != nil {
		f, err := transform.New(rc.Transform, nil)
		if err != nil {
			panic(fmt.Sprintf("edge: route %s: %v (config validation refuses this)", rc.Name, err))
		}
		fs = append(fs, f)
	}
	if h := rc.ResponseHeaders; h != nil {
		fs = append(fs, pipeline.FilterFunc(func(w http.ResponseWriter, r *http.Request, next pipeline.Handler) error {
			return next.ServeHTTP(&headerWriter{ResponseWriter: w, edit: h}, r)
		}))
	}
	if rc.Sticky != nil && o.Sticky != nil {
		fs = append(fs, o.Sticky(rc))
	}
	return fs
}

// routeHandler is what route ends in: a redirect, its aggregate, its
// gRPC transcoder, or its backends.
func routeHandler(rc *config.Route, prefix string, backends Backends) pipeline.Handler {
	if rd := rc.Redirect; rd != nil {
		return pipeline.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			http.Redirect(w, r, redirectURL(rd, r, prefix), rd.Status)
			return nil
		})
	}
	if rc.Aggregate != nil {
		o := aggregate.Options{Route: rc, Backend: backends.Handler}
		if b, ok := backends.(BreakerChecker); ok {
			o.BreakerOpen = b.BreakerOpen
		}
		return aggregate.New(o)
	}
	if g := rc.GRPC; g != nil {
		o := transcode.Options{
			Service: g.Service, Handler: backends.Handler(rc, g.Service), RefreshInterval: g.RefreshInterval,
			Lenient: !g.Strict, MaxRequestBytes: g.MaxRequestBytes, MaxResponseBytes: g.MaxResponseBytes, Headers: g.Headers,
		}
		if g.Descriptors != "" {
			d, err := transcode.ReadDescriptorSet(g.Descriptors)
			if err != nil {
				// Validation read it; it changed since.
				return pipeline.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
					return pipeline.Errorf(http.StatusBadGateway, pipeline.KindNoRoute, "route %s: %v", rc.Name, err)
				})
			}
			o.Descriptors = d
		}
		return transcode.New(o)
	}
	s := &split{}
	for _, b := range rc.Backends {
		if b.Weight == 0 {
			continue
		}
		s.total += b.Weight
		s.cum = append(s.cum, s.total)
		s.services = append(s.services, b.Service)
		s.handlers = append(s.handlers, backends.Handler(rc, b.Service))
	}
	if len(s.handlers) == 1 {
		return s.handlers[0]
	}
	return s
}

// split sends each request to one of its handlers, at random in
// proportion to their weights; a request whose sticky session belongs to
// one of its services (Info.Backend) goes to that one.
type split struct {
	services []string
	handlers []pipeline.Handler
	cum      []int // cumulative weights
	total    int
}

func (s *split) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	if info := pipeline.InfoFrom(r.Context()); info != nil && info.Backend != "" {
		for i, svc := range s.services {
			if svc == info.Backend {
				return s.handlers[i].ServeHTTP(w, r)
			}
		}
	}
	n := rand.IntN(s.total)
	for i, c := range s.cum {
		if n < c {
			return s.handlers[i].ServeHTTP(w, r)
		}
	}
	return s.handlers[len(s.handlers)-1].ServeHTTP(w, r)
}

// redirectURL builds the Location of rd for r: every part rd leaves unset
// is the request's; the query is kept.
func redirectURL(rd *config.Redirect, r *http.Request, prefix string) string {
	scheme := rd.Scheme
	if scheme == "" {
		scheme = "http"
		if r.TLS != nil {
			scheme = "https"
		}
	}
	host := rd.Hostname
	if host == "" {
		host = HostOf(r.Host)
	}
	port := ""
	switch {
	case rd.Port != 0:
		port = strconv.Itoa(rd.Port)
	case rd.Scheme == "" && rd.Hostname == "":
		// Same scheme and host: keep the request's port.
		if _, p, err := net.SplitHostPort(r.Host); err == nil {
			port = p
		}
	}
	if port == "80" && scheme == "http" || port == "443" && scheme == "https" {
		port = ""
	}
	if port != "" {
		host = net.JoinHostPort(host, port)
	}
	path := r.URL.Path
	if rd.Path != nil {
		path = modifyPath(rd.Path, path, prefix)
	}
	u := url.URL{Scheme: scheme, Host: host, Path: path, RawQuery: r.URL.RawQuery}
	return u.String()
}

// HTTPSRedirect is the router of a listener that sends every request to
// the same URL over https (on port, left out when 443), with a 308 so the
// method and body are kept.
func HTTPSRedirect(port int, filters []pipeline.Filter) pipeline.Router {
	route := &pipeline.Route{Name: "redirect-to-https", Service: "redirect-to-https", Handler: pipeline.Chain(pipeline.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		host := HostOf(r.Host)
		if port != 443 {
			host = net.JoinHostPort(host, strconv.Itoa(port))
		}
		u := url.URL{Scheme: "https", Host: host, Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery}
		http.Redirect(w, r, u.String(), http.StatusPermanentRedirect)
		return nil
	}), filters...)}
	return staticRouter{route}
}

type staticRouter struct{ r *pipeline.Route }

func (s staticRouter) Route(*http.Request) *pipeline.Route { return s.r }

// editHeader applies f to h: remove, then set, then add.
func editHeader(h http.Header, f *config.HeaderFilter) {
	for _, k := range f.Remove {
		h.Del(k)
	}
	for k, v := range f.Set {
		h.Set(k, v)
	}
	for k, v := range f.Add {
		h.Add(k, v)
	}
}

// headerWriter applies a response header filter when the response
// starts. It unwraps for http.ResponseController.
type headerWriter struct {
	http.ResponseWriter
	edit    *config.HeaderFilter
	applied bool
}

func (w *headerWriter) apply() {
	if !w.applied {
		w.applied = true
		editHeader(w.ResponseWriter.Header(), w.edit)
	}
}

func (w *headerWriter) WriteHeader(code int) {
	if code >= 200 || code == http.StatusSwitchingProtocols {
		w.apply()
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *headerWriter) Write(p []byte) (int, error) {
	w.apply()
	return w.ResponseWriter.Write(p)
}

func (w *headerWriter) Flush() {
	w.apply()
	http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *headerWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
