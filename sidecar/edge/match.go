// Package edge is the gateway kind of sidemesh: the route table of an
// edge (compiled once per config, matched in the Kubernetes Gateway API's
// HTTPRoute order), the handlers its routes end in (weighted backends,
// redirects), the filters in front of them (rewrites, header changes,
// body limits), and TLS termination with certificates chosen by SNI.
package edge

import (
	"net/http"
	"net/textproto"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/sidemesh/sidemesh/sidecar/config"
)

// Table is a compiled route table. Match finds the route of a request
// without allocating; a Table is immutable and safe for concurrent use.
//
// Precedence is the Gateway API's: first the hostname (a route that names
// the request's host exactly, the longest such name; then the longest
// matching wildcard; then routes with no hostnames), then, among the
// routes that apply, an exact path before any prefix, a longer prefix
// (whole segments) before a shorter, a method match before none, more
// header matches before fewer, more query matches before fewer, and the
// order in the file last. Regular-expression paths rank after every
// prefix. If no rule of the routes for the most specific hostname
// matches, those of the next one are tried.
type Table struct {
	exactHosts map[string]*hostRoutes
	// wildHosts is keyed by the suffix after "*.": "example.com".
	wildHosts map[string]*hostRoutes
	anyHost   *hostRoutes
	routes    []*Route
}

// Route is a compiled route: its config and what requests it matches.
type Route struct {
	// Name is the route's name.
	Name string
	// Config is the route as written.
	Config *config.Route
	// Index is the route's position in the file.
	Index int
}

// Match is the outcome of Table.Match.
type Match struct {
	Route *Route
	// Prefix is the path prefix that matched, for ReplacePrefixMatch;
	// empty for an exact or regex match.
	Prefix string
}

// hostRoutes are the entries that apply to one hostname, by path kind.
type hostRoutes struct {
	exact    map[string][]*entry
	prefixes segNode
	regexes  []*entry
}

// segNode is a node of the prefix trie: one path segment.
type segNode struct {
	children map[string]*segNode
	// entries whose prefix ends here, in tie-break order.
	entries []*entry
}

// entry is one match of one route, under one hostname.
type entry struct {
	route   *Route
	prefix  string // normalized: no trailing '/', "" for "/"
	regex   *regexp.Regexp
	method  string
	headers []valueMatcher
	query   []valueMatcher
	version *versionMatcher
	order   int // position in the file: route, then match
}

type valueMatcher struct {
	name  string // canonical for headers
	exact string
	regex *regexp.Regexp
}

type versionMatcher struct {
	header, value string
	isDefault     bool
}

// Compile builds the table of routes. The routes must have passed
// config validation.
func Compile(routes []config.Route) *Table {
	t := &Table{exactHosts: map[string]*hostRoutes{}, wildHosts: map[string]*hostRoutes{}, anyHost: newHostRoutes()}
	for i := range routes {
		rc := &routes[i]
		r := &Route{Name: rc.Name, Config: rc, Index: i}
		t.routes = append(t.routes, r)
		matches := rc.Matches
		if len(matches) == 0 {
			matches = []config.RouteMatch{{}}
		}
		for j, m := range matches {
			e := newEntry(r, rc, m, i*10000+j)
			hosts := rc.Hostnames
			if len(hosts) == 0 {
				t.anyHost.add(e, m)
			}
			for _, h := range hosts {
				var hr *hostRoutes
				if suffix, wild := strings.CutPrefix(h, "*."); wild {
					if hr = t.wildHosts[suffix]; hr == nil {
						hr = newHostRoutes()
						t.wildHosts[suffix] = hr
					}
				} else if hr = t.exactHosts[h]; hr == nil {
					hr = newHostRoutes()
					t.exactHosts[h] = hr
				}
				hr.add(e, m)
			}
		}
	}
	for _, hr := range t.all() {
		hr.sort()
	}
	return t
}

// Routes returns the compiled routes, in file order.
func (t *Table) Routes() []*Route { return t.routes }

func (t *Table) all() []*hostRoutes {
	out := []*hostRoutes{t.anyHost}
	for _, hr := range t.exactHosts {
		out = append(out, hr)
	}
	for _, hr := range t.wildHosts {
		out = append(out, hr)
	}
	return out
}

func newHostRoutes() *hostRoutes { return &hostRoutes{exact: map[string][]*entry{}} }

func newEntry(r *Route, rc *config.Route, m config.RouteMatch, order int) *entry {
	e := &entry{route: r, method: m.Method, order: order}
	for _, h := range m.Headers {
		e.headers = append(e.headers, newValueMatcher(textproto.CanonicalMIMEHeaderKey(h.Name), h))
	}
	for _, q := range m.Query {
		e.query = append(e.query, newValueMatcher(q.Name, q))
	}
	if v := rc.Version; v != nil {
		e.version = &versionMatcher{header: textproto.CanonicalMIMEHeaderKey(v.Header), value: v.Value, isDefault: v.Default}
	}
	return e
}

func newValueMatcher(name string, m config.ValueMatch) valueMatcher {
	vm := valueMatcher{name: name, exact: m.Exact}
	if m.Regex != "" {
		vm.regex = regexp.MustCompile("^(?:" + m.Regex + ")$")
	}
	return vm
}

// add files e under the path kind of m.
func (hr *hostRoutes) add(e *entry, m config.RouteMatch) {
	switch p := m.Path; {
	case p != nil && p.Exact != "":
		hr.exact[p.Exact] = append(hr.exact[p.Exact], e)
	case p != nil && p.Regex != "":
		re := *e
		re.regex = regexp.MustCompile("^(?:" + p.Regex + ")$")
		hr.regexes = append(hr.regexes, &re)
	default:
		prefix := "/"
		if p != nil && p.Prefix != "" {
			prefix = p.Prefix
		}
		pe := *e
		pe.prefix = strings.TrimSuffix(prefix, "/")
		node := &hr.prefixes
		for _, seg := range segments(pe.prefix) {
			if node.children == nil {
				node.children = map[string]*segNode{}
			}
			next := node.children[seg]
			if next == nil {
				next = &segNode{}
				node.children[seg] = next
			}
			node = next
		}
		node.entries = append(node.entries, &pe)
	}
}

// segments splits a normalized path or prefix into its segments: "/a/b"
// is ["a", "b"], "" and "/" are none, "/a/" is ["a", ""].
func segments(p string) []string {
	p = strings.TrimPrefix(p, "/")
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

// sort puts every entry list in tie-break order: a method first, then
// more headers, more query parameters, then file order.
func (hr *hostRoutes) sort() {
	for _, es := range hr.exact {
		slices.SortStableFunc(es, tieBreak)
	}
	slices.SortStableFunc(hr.regexes, tieBreak)
	var walk func(n *segNode)
	walk = func(n *segNode) {
		slices.SortStableFunc(n.entries, tieBreak)
		for _, c := range n.children {
			walk(c)
		}
	}
	walk(&hr.prefixes)
}

func tieBreak(a, b *entry) int {
	switch {
	case (a.method != "") != (b.method != ""):
		if a.method != "" {
			return -1
		}
		return 1
	case len(a.headers) != len(b.headers):
		return len(b.headers) - len(a.headers)
	case len(a.query) != len(b.query):
		return len(b.query) - len(a.query)
	}
	return a.order - b.order
}

// maxDepth bounds the prefix trie walk: deeper paths match at most the
// prefixes of their first maxDepth segments.
const maxDepth = 32

// Match returns the route for a request to host (lower case, no port)
// and path (normalized), with r's method, headers and query. It returns
// the zero Match when nothing matches; versionErr is set when routes
// matched the request but for its API version (an unknown one, or none
// where no route is the default).
func (t *Table) Match(host, path string, r *http.Request) (m Match, versionErr *VersionError) {
	var miss versionMiss
	if hr := t.exactHosts[host]; hr != nil {
		if m, ok := hr.match(path, r, &miss); ok {
			return m, nil
		}
	}
	// Wildcards, the longest suffix first: a.b.example.com tries
	// b.example.com, then example.com, then com.
	for h := host; ; {
		i := strings.IndexByte(h, '.')
		if i < 0 {
			break
		}
		h = h[i+1:]
		if hr := t.wildHosts[h]; hr != nil {
			if m, ok := hr.match(path, r, &miss); ok {
				return m, nil
			}
		}
	}
	if m, ok := t.anyHost.match(path, r, &miss); ok {
		return m, nil
	}
	return Match{}, miss.err(r)
}

// match tries hr's entries in precedence order.
func (hr *hostRoutes) match(path string, r *http.Request, miss *versionMiss) (Match, bool) {
	for _, e := range hr.exact[path] {
		if e.accepts(r, miss) {
			return Match{Route: e.route}, true
		}
	}
	// The deepest matching trie node first: the longest prefix.
	var stack [maxDepth + 1]*segNode
	n := 0
	node := &hr.prefixes
	stack[n] = node
	n++
	rest := strings.TrimPrefix(path, "/")
	for rest != "" && n <= maxDepth {
		seg := rest
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			seg, rest = rest[:i], rest[i+1:]
			if rest == "" {
				// "/a/" has a last, empty segment: "/a" matches it, a
				// node for "" (never made from a prefix) does not exist.
				rest = ""
			}
		} else {
			rest = ""
		}
		next := node.children[seg]
		if next == nil {
			break
		}
		node = next
		stack[n] = node
		n++
	}
	for i := n - 1; i >= 0; i-- {
		for _, e := range stack[i].entries {
			if e.accepts(r, miss) {
				return Match{Route: e.route, Prefix: e.prefix}, true
			}
		}
	}
	for _, e := range hr.regexes {
		if e.regex.MatchString(path) && e.accepts(r, miss) {
			return Match{Route: e.route}, true
		}
	}
	return Match{}, false
}

// accepts reports whether r meets e's conditions beyond the path. A
// request that meets them all but the version is noted in miss.
func (e *entry) accepts(r *http.Request, miss *versionMiss) bool {
	if e.method != "" && r.Method != e.method {
		return false
	}
	for i := range e.headers {
		if !e.headers[i].matches(r.Header[e.headers[i].name]) {
			return false
		}
	}
	if len(e.query) > 0 {
		q := r.URL.Query() // allocates; only routes that match on the query pay it
		for i := range e.query {
			if !e.query[i].matches(q[e.query[i].name]) {
				return false
			}
		}
	}
	if v := e.version; v != nil {
		got := r.Header[v.header]
		switch {
		case len(got) == 0 && v.isDefault, len(got) == 1 && got[0] == v.value:
			return true
		}
		miss.add(v)
		return false
	}
	return true
}

// matches reports whether a header's or parameter's values match: the
// values joined with "," (as a proxy may fold them) for a header, the
// first value for a parameter.
func (m *valueMatcher) matches(values []string) bool {
	if len(values) == 0 {
		return false
	}
	v := values[0]
	if len(values) > 1 {
		v = strings.Join(values, ",")
	}
	if m.regex != nil {
		return m.regex.MatchString(v)
	}
	return v == m.exact
}

// versionMiss collects the versions of routes a request matched but for
// its API version.
type versionMiss struct {
	header   string
	versions []string
	hasDef   bool
}

func (m *versionMiss) add(v *versionMatcher) {
	if m.header == "" {
		m.header = v.header
	}
	if v.header == m.header && !slices.Contains(m.versions, v.value) {
		m.versions = append(m.versions, v.value)
	}
	m.hasDef = m.hasDef || v.isDefault
}

func (m *versionMiss) err(r *http.Request) *VersionError {
	if m.header == "" {
		return nil
	}
	slices.Sort(m.versions)
	return &VersionError{Header: m.header, Got: r.Header.Get(m.header), Known: m.versions}
}

// VersionError says a request reached a versioned API with a version it
// does not serve, or none where there is no default.
type VersionError struct {
	Header string
	Got    string   // "" when the header was absent
	Known  []string // the versions the API serves
}

func (e *VersionError) Error() string {
	if e.Got == "" {
		return e.Header + " is required: this API has versions " + strings.Join(e.Known, ", ")
	}
	return "unknown API version " + strconv.Quote(e.Got) + " in " + e.Header + ": this API has versions " + strings.Join(e.Known, ", ")
}

// HostOf returns the host a Host header names, for matching: lower case,
// without a port or a trailing dot.
func HostOf(hostHeader string) string {
	h := hostHeader
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.Contains(h[i:], "]") {
		h = h[:i]
	}
	h = strings.TrimSuffix(h, ".")
	for i := 0; i < len(h); i++ {
		if 'A' <= h[i] && h[i] <= 'Z' {
			return strings.ToLower(h)
		}
	}
	return h
}
