package config

import (
	"fmt"
	"net/http"
	"net/textproto"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Edge makes this process an edge gateway: the entry point for clients
// outside the mesh. Its listeners terminate TLS and route requests to mesh
// services (found and called like a sidecar's upstreams) by host, path,
// method, headers, query and API version.
type Edge struct {
	// Listeners are the client-facing listeners. At least one.
	Listeners []EdgeListener `yaml:"listeners"`
	// Routes are matched in the Kubernetes Gateway API's HTTPRoute order
	// (see docs/edge.md); every listener serves every route.
	Routes []Route `yaml:"routes"`
	// Sticky holds the key of the routes' sticky sessions. Required when
	// a route has a sticky section.
	Sticky *EdgeSticky `yaml:"sticky"`
	// JWTProviders are the issuers whose tokens routes may require
	// (a route's auth.jwt names one).
	JWTProviders []JWTProvider `yaml:"jwt_providers"`
	// APIKeys are the API key sets routes may require (a route's
	// auth.api_key names one).
	APIKeys []APIKeySet `yaml:"api_keys"`
	// Policy authorizes callers on every route, after the route's
	// authentication (see EdgePolicy). Nil: no authorization; each
	// route's auth decides, and a route without auth is public.
	Policy *EdgePolicy `yaml:"policy"`
	// RateLimitSync is how the edges exchange the counts of their
	// cluster-scope rate limits.
	RateLimitSync RateLimitSync `yaml:"rate_limit_sync"`
	// Cache bounds the response cache the routes with a cache section
	// share (see EdgeCache). Nil: the defaults.
	Cache *EdgeCache `yaml:"cache"`
}

// EdgeListener is one client-facing listener.
type EdgeListener struct {
	// Listener holds the address and the timeouts and limits, as for the
	// sidecar's listeners.
	Listener `yaml:",inline"`
	// TLS terminates TLS with certificates chosen by SNI. Nil serves plain
	// HTTP (HTTP/1.1 and h2c).
	TLS *EdgeTLS `yaml:"tls"`
	// RedirectToHTTPS answers every request with a 308 to the same URL
	// over https, instead of routing it. Default false; plain listeners
	// only.
	RedirectToHTTPS bool `yaml:"redirect_to_https"`
	// HTTPSPort is the port the redirect names. Default 443 (then left out
	// of the URL).
	HTTPSPort int `yaml:"https_port"`
}

// EdgeTLS is a listener's TLS termination.
type EdgeTLS struct {
	// Certificates are chosen by the client's SNI against their DNS
	// names (exact, then wildcard). Required.
	Certificates []EdgeCertificate `yaml:"certificates"`
	// MinVersion is the oldest TLS version accepted: "1.2" (the default)
	// or "1.3".
	MinVersion string `yaml:"min_version"`
	// ReloadInterval is how often the certificate files are checked for
	// changes; new handshakes get the new ones. Default 2s.
	ReloadInterval time.Duration `yaml:"reload_interval"`
}

// EdgeCertificate is a certificate and its key.
type EdgeCertificate struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// Default marks the certificate for clients that send no SNI, or one
	// no certificate covers. Without a default such clients are refused
	// at the handshake. At most one.
	Default bool `yaml:"default"`
}

// Route sends the requests it matches to mesh services, or redirects them.
type Route struct {
	// Name names the route in logs, spans (http.route) and metrics.
	// Required and unique.
	Name string `yaml:"name"`
	// Hostnames the route serves: exact ("shop.example.com") or a wildcard
	// prefix ("*.example.com": every subdomain, not example.com itself).
	// Empty means every host. A port in the request's Host is ignored.
	Hostnames []string `yaml:"hostnames"`
	// Matches are ORed; the conditions inside one are ANDed. Empty means
	// one match of path prefix "/".
	Matches []RouteMatch `yaml:"matches"`
	// Version, when set, restricts the route to one API version named in
	// a header (see RouteVersion).
	Version *RouteVersion `yaml:"version"`
	// Rewrite changes the path or the Host before the request is sent on.
	Rewrite *Rewrite `yaml:"rewrite"`
	// Redirect answers with a redirect instead of calling backends.
	Redirect *Redirect `yaml:"redirect"`
	// RequestHeaders and ResponseHeaders change headers on the way in and
	// out.
	RequestHeaders  *HeaderFilter `yaml:"request_headers"`
	ResponseHeaders *HeaderFilter `yaml:"response_headers"`
	// Timeout bounds the wait for response headers over all tries. Zero
	// means the upstream's own timeout.
	Timeout time.Duration `yaml:"timeout"`
	// Retries replaces the upstream's retry settings for this route.
	Retries *Retries `yaml:"retries"`
	// Balancer replaces the upstream's balancing policy for this route.
	Balancer string `yaml:"balancer"`
	// MaxBodyBytes bounds the request body; a larger one is answered 413.
	// Zero means no limit.
	MaxBodyBytes int `yaml:"max_body_bytes"`
	// Backends are the mesh services the route sends to, split by weight.
	// Required unless Redirect is set.
	Backends []Backend `yaml:"backends"`
	// Sticky keeps each session's requests on one endpoint (and one
	// backend service), on every edge. Nil: no sessions.
	Sticky *Sticky `yaml:"sticky"`
	// Auth requires a verified JWT of the callers; nil lets anyone in.
	Auth *RouteAuth `yaml:"auth"`
	// RateLimits limit the route's requests; each request takes a token
	// from every limit's bucket for its key, and is refused (429) when
	// an enforced one is empty.
	RateLimits []RateLimit `yaml:"rate_limits"`
	// Cache stores the route's cacheable GET responses in the edge's
	// cache (see RouteCache). Nil: nothing is cached.
	Cache *RouteCache `yaml:"cache"`
	// Transform edits the JSON bodies and query of the route's requests
	// and the JSON bodies of its responses (see Transform). Nil: none.
	Transform *Transform `yaml:"transform"`
	// Aggregate answers with the merged JSON responses of several mesh
	// services instead of one backend's (see Aggregate). A route has
	// backends or an aggregate, not both.
	Aggregate *Aggregate `yaml:"aggregate"`
	// GRPC answers HTTP/JSON requests by calling the gRPC methods of a
	// mesh service (see GRPCTranscode). A route has backends, an
	// aggregate or grpc, one of them.
	GRPC *GRPCTranscode `yaml:"grpc"`
}

// RouteMatch is one set of conditions a request must all meet.
type RouteMatch struct {
	// Path matches the normalized path. Default: prefix "/".
	Path *PathMatch `yaml:"path"`
	// Method, when set, is the request method the match needs.
	Method string `yaml:"method"`
	// Headers and Query must all match.
	Headers []ValueMatch `yaml:"headers"`
	Query   []ValueMatch `yaml:"query"`
}

// PathMatch matches a path in one of three ways; exactly one is set.
type PathMatch struct {
	// Exact matches the whole path.
	Exact string `yaml:"exact"`
	// Prefix matches whole path segments: "/abc" matches "/abc",
	// "/abc/" and "/abc/def", not "/abcd". A trailing "/" is ignored.
	Prefix string `yaml:"prefix"`
	// Regex matches the whole path (RE2, anchored at both ends).
	Regex string `yaml:"regex"`
}

// ValueMatch matches a header or query parameter by name: its value
// exactly, or by a regular expression (RE2, whole value).
type ValueMatch struct {
	Name  string `yaml:"name"`
	Exact string `yaml:"exact"`
	Regex string `yaml:"regex"`
}

// RouteVersion restricts a route to one API version, named in a request
// header. Routes that share paths and version the same header form a
// versioned API: a request without the header goes to the route marked
// Default, and one naming a version no such route serves is answered 400
// with the versions there are.
type RouteVersion struct {
	// Header carries the version. Default "X-Api-Version".
	Header string `yaml:"header"`
	// Value is the version this route serves. Required.
	Value string `yaml:"value"`
	// Default makes this route serve requests without the header.
	Default bool `yaml:"default"`
}

// Rewrite changes a request before it is sent on, as the Gateway API's
// URLRewrite filter does. Its output path is normalized again.
type Rewrite struct {
	// Path replaces the path: ReplaceFullPath, or ReplacePrefixMatch of
	// the route's prefix match.
	Path *PathModifier `yaml:"path"`
	// Hostname replaces the Host header.
	Hostname string `yaml:"hostname"`
}

// PathModifier replaces a path; exactly one of its fields is set.
type PathModifier struct {
	// Full replaces the whole path (the query is kept).
	Full string `yaml:"full"`
	// Prefix replaces the part of the path the route's prefix matched, as
	// the Gateway API's ReplacePrefixMatch (a "" or "/" replacement drops
	// it). Only with prefix matches.
	Prefix *string `yaml:"prefix"`
}

// Redirect answers a request with a redirect, as the Gateway API's
// RequestRedirect filter does. Parts left unset keep the request's.
type Redirect struct {
	Scheme   string        `yaml:"scheme"`
	Hostname string        `yaml:"hostname"`
	Path     *PathModifier `yaml:"path"`
	// Port, when set, goes in the URL unless it is the scheme's default.
	Port int `yaml:"port"`
	// Status is 301, 302 (the default), 303, 307 or 308.
	Status int `yaml:"status"`
}

// HeaderFilter sets, adds and removes headers.
type HeaderFilter struct {
	Set    map[string]string `yaml:"set"`
	Add    map[string]string `yaml:"add"`
	Remove []string          `yaml:"remove"`
}

// Backend is one mesh service behind a route.
type Backend struct {
	// Service names the service; it is found as an upstream is (an
	// upstreams entry of that name, or discovery).
	Service string `yaml:"service"`
	// Weight is the backend's share of the route's requests. Default 1;
	// 0 sends it nothing.
	Weight int `yaml:"weight"`
}

// Defaults of the edge.
const (
	DefaultAPIVersionHeader = "X-Api-Version"
	DefaultHTTPSPort        = 443
	DefaultRedirectStatus   = http.StatusFound
	TLSVersion12            = "1.2"
	TLSVersion13            = "1.3"
)

func (l *EdgeListener) setDefaults() {
	*l = EdgeListener{Listener: defaultListener(""), HTTPSPort: DefaultHTTPSPort}
}

func (t *EdgeTLS) setDefaults() {
	*t = EdgeTLS{MinVersion: TLSVersion12, ReloadInterval: 2 * time.Second}
}

func (v *RouteVersion) setDefaults() { *v = RouteVersion{Header: DefaultAPIVersionHeader} }

func (r *Redirect) setDefaults() { *r = Redirect{Status: DefaultRedirectStatus} }

func (b *Backend) setDefaults() { *b = Backend{Weight: 1} }

// BackendServices returns the services every route of e names (its
// backends, its aggregate's legs, its grpc service), each once, in order
// of appearance.
func (e *Edge) BackendServices() []string {
	var out []string
	for _, r := range e.Routes {
		for _, b := range r.Backends {
			if !slices.Contains(out, b.Service) {
				out = append(out, b.Service)
			}
		}
		if r.Aggregate != nil {
			for _, l := range r.Aggregate.Legs {
				if !slices.Contains(out, l.Service) {
					out = append(out, l.Service)
				}
			}
		}
		if r.GRPC != nil && r.GRPC.Service != "" && !slices.Contains(out, r.GRPC.Service) {
			out = append(out, r.GRPC.Service)
		}
	}
	return out
}

// edge checks the edge section.
func (v *validator) edge(c *Config) {
	e := c.Edge
	if len(e.Listeners) == 0 {
		v.errorf("edge.listeners", "an edge needs at least one listener")
	}
	for i := range e.Listeners {
		l := &e.Listeners[i]
		path := fmt.Sprintf("edge.listeners[%d]", i)
		v.listener(path, &l.Listener, true)
		if l.TLS != nil && l.RedirectToHTTPS {
			v.errorf(path+".redirect_to_https", "a TLS listener cannot redirect to https: it is https")
		}
		if l.HTTPSPort < 1 || l.HTTPSPort > 65535 {
			v.errorf(path+".https_port", "port must be between 1 and 65535, got %d", l.HTTPSPort)
		}
		if t := l.TLS; t != nil {
			if len(t.Certificates) == 0 {
				v.errorf(path+".tls.certificates", "required: a TLS listener needs at least one certificate")
			}
			defaults := 0
			for j, cert := range t.Certificates {
				cp := fmt.Sprintf("%s.tls.certificates[%d]", path, j)
				if cert.CertFile == "" {
					v.errorf(cp+".cert_file", "required")
				}
				if cert.KeyFile == "" {
					v.errorf(cp+".key_file", "required")
				}
				if cert.Default {
					if defaults++; defaults == 2 {
						v.errorf(cp+".default", "only one certificate can be the default")
					}
				}
			}
			v.oneOf(path+".tls.min_version", "TLS version", t.MinVersion, []string{TLSVersion12, TLSVersion13})
			v.positive(path+".tls.reload_interval", t.ReloadInterval)
		}
	}
	names := map[string]int{}
	for i := range e.Routes {
		v.route(c, i, names)
		v.sticky(c, fmt.Sprintf("edge.routes[%d]", i), &e.Routes[i])
		v.rateLimits(fmt.Sprintf("edge.routes[%d]", i), &e.Routes[i])
		v.transform(fmt.Sprintf("edge.routes[%d]", i), &e.Routes[i])
		v.aggregate(c, fmt.Sprintf("edge.routes[%d]", i), &e.Routes[i])
		v.grpcTranscode(c, fmt.Sprintf("edge.routes[%d]", i), &e.Routes[i])
		v.routeCache(fmt.Sprintf("edge.routes[%d]", i), &e.Routes[i])
	}
	v.edgeCache(e)
	v.versions(e)
	v.edgeSticky(c)
	v.jwtProviders(e)
	v.apiKeySets(e)
	v.edgePolicy(e)
	v.rateLimitSync(e.RateLimitSync)
}

// route checks route i; names maps each route name to its index.
func (v *validator) route(c *Config, i int, names map[string]int) {
	r := &c.Edge.Routes[i]
	path := fmt.Sprintf("edge.routes[%d]", i)
	if v.name(path+".name", r.Name) {
		if j, dup := names[r.Name]; dup {
			v.errorf(path+".name", "route %s is declared twice (first at %s)", quote(r.Name), v.where(fmt.Sprintf("edge.routes[%d].name", j)))
		} else {
			names[r.Name] = i
		}
	}
	for j, h := range r.Hostnames {
		if err := checkHostname(h); err != nil {
			v.errorf(fmt.Sprintf("%s.hostnames[%d]", path, j), "%v", err)
		}
	}
	hasPrefix := len(r.Matches) == 0
	for j, m := range r.Matches {
		mp := fmt.Sprintf("%s.matches[%d]", path, j)
		if p := m.Path; p != nil {
			set := 0
			for _, s := range []string{p.Exact, p.Prefix, p.Regex} {
				if s != "" {
					set++
				}
			}
			switch {
			case set != 1:
				v.errorf(mp+".path", "write exactly one of exact, prefix and regex")
			case p.Regex != "":
				if _, err := regexp.Compile(p.Regex); err != nil {
					v.errorf(mp+".path.regex", "%v", err)
				}
			case p.Exact != "" && !strings.HasPrefix(p.Exact, "/"), p.Prefix != "" && !strings.HasPrefix(p.Prefix, "/"):
				v.errorf(mp+".path", "a path must start with /")
			}
			if p.Prefix != "" {
				hasPrefix = true
			}
		} else {
			hasPrefix = true
		}
		if m.Method != "" && !validMethod(m.Method) {
			v.errorf(mp+".method", "invalid method %s", quote(m.Method))
		}
		for k, h := range m.Headers {
			v.valueMatch(fmt.Sprintf("%s.headers[%d]", mp, k), h, true)
		}
		for k, q := range m.Query {
			v.valueMatch(fmt.Sprintf("%s.query[%d]", mp, k), q, false)
		}
	}
	if rv := r.Version; rv != nil {
		if rv.Value == "" {
			v.errorf(path+".version.value", "required")
		}
		if !validHeaderName(rv.Header) {
			v.errorf(path+".version.header", "invalid header name %s", quote(rv.Header))
		}
	}
	if rw := r.Rewrite; rw != nil {
		if rw.Path == nil && rw.Hostname == "" {
			v.errorf(path+".rewrite", "write path, hostname or both")
		}
		v.pathModifier(path+".rewrite.path", rw.Path, hasPrefix)
		if rw.Hostname != "" {
			if err := checkHostname(rw.Hostname); err != nil || strings.HasPrefix(rw.Hostname, "*") {
				v.errorf(path+".rewrite.hostname", "invalid hostname %s", quote(rw.Hostname))
			}
		}
	}
	if rd := r.Redirect; rd != nil {
		if rd.Scheme != "" && rd.Scheme != "http" && rd.Scheme != "https" {
			v.errorf(path+".redirect.scheme", "unknown scheme %s (want http or https)", quote(rd.Scheme))
		}
		if rd.Port < 0 || rd.Port > 65535 {
			v.errorf(path+".redirect.port", "port must be between 1 and 65535, got %d", rd.Port)
		}
		if !slices.Contains([]int{301, 302, 303, 307, 308}, rd.Status) {
			v.errorf(path+".redirect.status", "want 301, 302, 303, 307 or 308, got %d", rd.Status)
		}
		v.pathModifier(path+".redirect.path", rd.Path, hasPrefix)
		if r.Rewrite != nil {
			v.errorf(path+".redirect", "a route redirects or rewrites, not both")
		}
		if len(r.Backends) > 0 {
			v.errorf(path+".backends", "a route that redirects has no backends")
		}
	} else if len(r.Backends) == 0 && r.Aggregate == nil && r.GRPC == nil {
		v.errorf(path+".backends", "required: name the services the route sends to, write an aggregate, or write a redirect")
	}
	total := 0
	for j, b := range r.Backends {
		bp := fmt.Sprintf("%s.backends[%d]", path, j)
		v.name(bp+".service", b.Service)
		if b.Weight < 0 || b.Weight > maxWeight {
			v.errorf(bp+".weight", "must be between 0 and %d, got %d", maxWeight, b.Weight)
		}
		total += b.Weight
		if implicit(c, b.Service) && c.Discovery.Consul == nil && c.Discovery.Gossip == nil {
			v.errorf(bp+".service", "no upstream %s is declared and no discovery backend could find it: add an upstreams entry with endpoints, or discovery", quote(b.Service))
		}
	}
	if len(r.Backends) > 0 && total == 0 {
		v.errorf(path+".backends", "every backend has weight 0: the route would send nothing anywhere")
	}
	for _, hf := range []struct {
		p string
		f *HeaderFilter
	}{{path + ".request_headers", r.RequestHeaders}, {path + ".response_headers", r.ResponseHeaders}} {
		if hf.f == nil {
			continue
		}
		for name := range hf.f.Set {
			if !validHeaderName(name) {
				v.errorf(hf.p+".set", "invalid header name %s", quote(name))
			}
		}
		for name := range hf.f.Add {
			if !validHeaderName(name) {
				v.errorf(hf.p+".add", "invalid header name %s", quote(name))
			}
		}
		for k, name := range hf.f.Remove {
			if !validHeaderName(name) {
				v.errorf(fmt.Sprintf("%s.remove[%d]", hf.p, k), "invalid header name %s", quote(name))
			}
		}
	}
	v.nonNegative(path+".timeout", r.Timeout)
	if r.Retries != nil {
		v.retries(path+".retries", *r.Retries)
	}
	if r.MaxBodyBytes < 0 {
		v.errorf(path+".max_body_bytes", "must not be negative, got %d", r.MaxBodyBytes)
	}
}

// implicit reports whether service is an upstream the file does not
// declare.
func implicit(c *Config, service string) bool {
	for _, u := range c.Upstreams {
		if u.Service == service {
			return u.implicit
		}
	}
	return false
}

// pathModifier checks a rewrite or redirect path; hasPrefix says whether
// the route matches by prefix, which ReplacePrefixMatch needs.
func (v *validator) pathModifier(path string, m *PathModifier, hasPrefix bool) {
	if m == nil {
		return
	}
	switch {
	case m.Full != "" && m.Prefix != nil, m.Full == "" && m.Prefix == nil:
		v.errorf(path, "write exactly one of full and prefix")
	case m.Full != "" && !strings.HasPrefix(m.Full, "/"):
		v.errorf(path+".full", "a path must start with /")
	case m.Prefix != nil && *m.Prefix != "" && !strings.HasPrefix(*m.Prefix, "/"):
		v.errorf(path+".prefix", "a path must start with /")
	case m.Prefix != nil && !hasPrefix:
		v.errorf(path+".prefix", "replacing the prefix needs a route that matches by path prefix")
	}
}

func (v *validator) valueMatch(path string, m ValueMatch, header bool) {
	if m.Name == "" {
		v.errorf(path+".name", "required")
	} else if header && !validHeaderName(m.Name) {
		v.errorf(path+".name", "invalid header name %s", quote(m.Name))
	}
	if m.Exact != "" && m.Regex != "" {
		v.errorf(path, "write exact or regex, not both")
	}
	if m.Regex != "" {
		if _, err := regexp.Compile(m.Regex); err != nil {
			v.errorf(path+".regex", "%v", err)
		}
	}
}

// versions checks that each versioned API has one default route at most
// per header and path set.
func (v *validator) versions(e *Edge) {
	seen := map[string]int{}
	for i, r := range e.Routes {
		if r.Version == nil || !r.Version.Default {
			continue
		}
		key := textproto.CanonicalMIMEHeaderKey(r.Version.Header) + " " + strings.Join(r.Hostnames, ",") + " " + matchKey(r.Matches)
		if j, dup := seen[key]; dup {
			v.errorf(fmt.Sprintf("edge.routes[%d].version.default", i), "routes %s and %s are both the default version of the same API",
				quote(e.Routes[j].Name), quote(r.Name))
			continue
		}
		seen[key] = i
	}
}

// matchKey describes matches, to tell routes that match the same
// requests apart from others.
func matchKey(ms []RouteMatch) string {
	var b strings.Builder
	for _, m := range ms {
		fmt.Fprintf(&b, "%+v;", m)
	}
	return b.String()
}

// checkHostname validates a route hostname: DNS labels, lower case, with
// an optional "*." first label.
func checkHostname(h string) error {
	name := strings.TrimPrefix(h, "*.")
	if name == "" || strings.Contains(name, "*") || strings.ToLower(name) != name || strings.HasSuffix(name, ".") {
		return fmt.Errorf("invalid hostname %s: want lower-case DNS labels, optionally after a \"*.\"", quote(h))
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("invalid hostname %s", quote(h))
		}
		for _, c := range []byte(label) {
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return fmt.Errorf("invalid hostname %s", quote(h))
			}
		}
	}
	return nil
}

func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, c := range []byte(m) {
		if !('A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// validHeaderName reports whether s is an HTTP field name (RFC 9110
// token).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if !(c == '!' || c == '#' || c == '$' || c == '%' || c == '&' || c == '\'' || c == '*' || c == '+' || c == '-' ||
			c == '.' || c == '^' || c == '_' || c == '`' || c == '|' || c == '~' ||
			'0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}
