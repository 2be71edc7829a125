package edge_test

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/edge"
)

// precedenceRoute is one route of the precedence fixture, as YAML. Each
// names itself in X-Route, so a backend can say which route a request
// took.
type precedenceRoute struct{ name, yaml string }

var precedenceRoutes = []precedenceRoute{
	{"exact-path", `hostnames: [shop.example.com], matches: [{ path: { exact: /api/items } }]`},
	{"prefix-api", `hostnames: [shop.example.com], matches: [{ path: { prefix: /api } }]`},
	{"prefix-api-items", `hostnames: [shop.example.com], matches: [{ path: { prefix: /api/items/ } }]`},
	{"method-get", `hostnames: [shop.example.com], matches: [{ path: { prefix: /m }, method: GET }]`},
	{"headers-two", `hostnames: [shop.example.com], matches: [{ path: { prefix: /m }, headers: [{ name: A, exact: "1" }, { name: B, exact: "1" }] }]`},
	{"headers-one", `hostnames: [shop.example.com], matches: [{ path: { prefix: /h }, headers: [{ name: A, exact: "1" }] }]`},
	{"headers-two-h", `hostnames: [shop.example.com], matches: [{ path: { prefix: /h }, headers: [{ name: a, exact: "1" }, { name: B, regex: "[0-9]+" }] }]`},
	{"query-one", `hostnames: [shop.example.com], matches: [{ path: { prefix: /q }, query: [{ name: x, exact: "1" }] }]`},
	{"query-two", `hostnames: [shop.example.com], matches: [{ path: { prefix: /q }, query: [{ name: x, exact: "1" }, { name: y, exact: "2" }] }]`},
	{"tie-first", `hostnames: [shop.example.com], matches: [{ path: { prefix: /tie } }]`},
	{"tie-second", `hostnames: [shop.example.com], matches: [{ path: { prefix: /tie } }]`},
	{"re-prefix", `hostnames: [shop.example.com], matches: [{ path: { prefix: /re } }]`},
	{"re-regex", `hostnames: [shop.example.com], matches: [{ path: { regex: "/re/[0-9]+" } }]`},
	{"shop-root", `hostnames: [shop.example.com]`},
	{"wildcard-exact", `hostnames: ["*.example.com"], matches: [{ path: { exact: /wild } }]`},
	{"bare", `hostnames: [example.com], matches: [{ path: { exact: /bare } }]`},
	{"api-regex", `hostnames: [api.example.com], matches: [{ path: { regex: "/v[0-9]+/.*" } }]`},
}

// precedenceCase is a request and the route it must take ("" for none).
type precedenceCase struct {
	host, method, target string
	header               map[string]string
	want                 string
}

var precedenceCases = []precedenceCase{
	{host: "shop.example.com", target: "/api/items", want: "exact-path"},
	{host: "shop.example.com", method: "POST", target: "/api/items", want: "exact-path"},
	{host: "shop.example.com", target: "/api/items/1", want: "prefix-api-items"},
	{host: "shop.example.com", target: "/api/other", want: "prefix-api"},
	{host: "shop.example.com", target: "/api", want: "prefix-api"},
	{host: "shop.example.com", target: "/api/", want: "prefix-api"},
	{host: "shop.example.com", target: "/apix", want: "shop-root"}, // prefixes match whole segments
	{host: "shop.example.com", target: "/m", header: map[string]string{"A": "1", "B": "1"}, want: "method-get"},
	{host: "shop.example.com", method: "POST", target: "/m", header: map[string]string{"A": "1", "B": "1"}, want: "headers-two"},
	{host: "shop.example.com", target: "/h", header: map[string]string{"A": "1"}, want: "headers-one"},
	{host: "shop.example.com", target: "/h", header: map[string]string{"A": "1", "B": "22"}, want: "headers-two-h"},
	{host: "shop.example.com", target: "/q?x=1", want: "query-one"},
	{host: "shop.example.com", target: "/q?x=1&y=2", want: "query-two"},
	{host: "shop.example.com", target: "/tie/x", want: "tie-first"},
	{host: "shop.example.com", target: "/re/12", want: "re-prefix"},           // regex paths rank after prefixes
	{host: "SHOP.example.com:8443", target: "/api/items", want: "exact-path"}, // case and port ignored
	{host: "other.example.com", target: "/wild", want: "wildcard-exact"},
	{host: "a.b.example.com", target: "/wild", want: "wildcard-exact"},
	{host: "shop.example.com", target: "/wild", want: "shop-root"}, // hostname before path
	{host: "example.com", target: "/wild", want: ""},               // *.example.com is not example.com
	{host: "example.com", target: "/bare", want: "bare"},
	{host: "api.example.com", target: "/v2/items", want: "api-regex"},
	{host: "api.example.com", target: "/nope", want: ""},
	{host: "unknown.test", target: "/", want: ""},
}

// precedenceConfig returns the routes, in the given order, as an edge
// config sending every route to backend and naming it in X-Route.
func precedenceConfig(order []precedenceRoute, listen, backend string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "edge:\n  listeners: [{ listen: %s }]\n  routes:\n", listen)
	for _, r := range order {
		fmt.Fprintf(&b, "    - { name: %s, %s, request_headers: { set: { X-Route: %s } }, backends: [{ service: app }] }\n", r.name, r.yaml, r.name)
	}
	fmt.Fprintf(&b, "upstreams: [{ service: app, endpoints: [{ address: %s }] }]\n", backend)
	return b.String()
}

func compile(t *testing.T, order []precedenceRoute) *edge.Table {
	t.Helper()
	cfg, err := config.Parse("edge.yaml", []byte(precedenceConfig(order, "127.0.0.1:1", "127.0.0.1:2")))
	if err != nil {
		t.Fatalf("config:\n%v", err)
	}
	return edge.Compile(cfg.Edge.Routes)
}

func matchName(tab *edge.Table, c precedenceCase) string {
	r := httptest.NewRequest(cmp(c.method, "GET"), "http://"+c.host+c.target, nil)
	for k, v := range c.header {
		r.Header.Set(k, v)
	}
	host := edge.HostOf(r.Host)
	m, _ := tab.Match(host, r.URL.Path, r)
	if m.Route == nil {
		return ""
	}
	return m.Route.Name
}

func cmp(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// TestPrecedence: the Gateway API's HTTPRoute precedence, one request
// per rule.
func TestPrecedence(t *testing.T) {
	tab := compile(t, precedenceRoutes)
	for _, c := range precedenceCases {
		if got := matchName(tab, c); got != c.want {
			t.Errorf("%s %s%s %v: route %q, want %q", cmp(c.method, "GET"), c.host, c.target, c.header, got, c.want)
		}
	}
}

// TestPrecedenceIgnoresOrder: where the rules decide, the order routes are
// written in changes nothing (only the two tie routes keep theirs).
func TestPrecedenceIgnoresOrder(t *testing.T) {
	for seed := range uint64(20) {
		order := append([]precedenceRoute(nil), precedenceRoutes...)
		rng := rand.New(rand.NewPCG(seed, 1))
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		// tie-first must stay before tie-second: file order is the last rule.
		fi, si := -1, -1
		for i, r := range order {
			switch r.name {
			case "tie-first":
				fi = i
			case "tie-second":
				si = i
			}
		}
		if fi > si {
			order[fi], order[si] = order[si], order[fi]
		}
		tab := compile(t, order)
		for _, c := range precedenceCases {
			if got := matchName(tab, c); got != c.want {
				t.Errorf("order %d: %s%s: route %q, want %q", seed, c.host, c.target, got, c.want)
			}
		}
	}
}

// TestReplacePrefixMatch: the eleven rows of the Gateway API's
// ReplacePrefixMatch table.
func TestReplacePrefixMatch(t *testing.T) {
	for _, c := range []struct{ path, prefix, repl, want string }{
		{"/foo/bar", "/foo", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo", "/xyz/", "/xyz/bar"},
		{"/foo/bar", "/foo/", "/xyz", "/xyz/bar"},
		{"/foo/bar", "/foo/", "/xyz/", "/xyz/bar"},
		{"/foo", "/foo", "/xyz", "/xyz"},
		{"/foo/", "/foo", "/xyz", "/xyz/"},
		{"/foo/bar", "/foo", "", "/bar"},
		{"/foo/", "/foo", "", "/"},
		{"/foo", "/foo", "", "/"},
		{"/foo/", "/foo", "/", "/"},
		{"/foo", "/foo", "/", "/"},
	} {
		if got := edge.ReplacePrefix(c.path, strings.TrimSuffix(c.prefix, "/"), c.repl); got != c.want {
			t.Errorf("%s with prefix %s replaced by %q = %s, want %s", c.path, c.prefix, c.repl, got, c.want)
		}
	}
}

// TestVersions: a versioned API sends each version to its route, a
// request without the header to the default, and answers an unknown
// version with the versions there are.
func TestVersions(t *testing.T) {
	cfg, err := config.Parse("edge.yaml", []byte(`
edge:
  listeners: [{ listen: 127.0.0.1:1 }]
  routes:
    - { name: cart-v1, matches: [{ path: { prefix: /cart } }], version: { value: "1" }, backends: [{ service: app }] }
    - { name: cart-v2, matches: [{ path: { prefix: /cart } }], version: { value: "2", default: true }, backends: [{ service: app }] }
    - { name: other, matches: [{ path: { prefix: /other } }], backends: [{ service: app }] }
upstreams: [{ service: app, endpoints: [{ address: 127.0.0.1:2 }] }]
`))
	if err != nil {
		t.Fatal(err)
	}
	tab := edge.Compile(cfg.Edge.Routes)
	for _, c := range []struct{ version, want, err string }{
		{"1", "cart-v1", ""},
		{"2", "cart-v2", ""},
		{"", "cart-v2", ""},
		{"3", "", `unknown API version "3" in X-Api-Version: this API has versions 1, 2`},
	} {
		r := httptest.NewRequest("GET", "/cart/x", nil)
		if c.version != "" {
			r.Header.Set("X-Api-Version", c.version)
		}
		m, verr := tab.Match("example.com", "/cart/x", r)
		got := ""
		if m.Route != nil {
			got = m.Route.Name
		}
		if got != c.want || (verr == nil) != (c.err == "") || verr != nil && verr.Error() != c.err {
			t.Errorf("version %q: route %q, error %v; want %q, %q", c.version, got, verr, c.want, c.err)
		}
	}
	if _, verr := tab.Match("example.com", "/nothing", httptest.NewRequest("GET", "/nothing", nil)); verr != nil {
		t.Errorf("a request no versioned route matched got a version error: %v", verr)
	}
	_ = http.StatusOK
}

// TestDescribe: the table as validate --print shows it, in precedence
// order.
func TestDescribe(t *testing.T) {
	got := compile(t, precedenceRoutes).Describe()
	squeeze := regexp.MustCompile(` {2,}`)
	flat := squeeze.ReplaceAllString(got, " ")
	for _, want := range []string{
		"  shop.example.com\n    exact  /api/items                       -> exact-path\n    prefix /api/items                       -> prefix-api-items\n",
		"    prefix /m                               [GET] -> method-get\n    prefix /m                               [header A=1, header B=1] -> headers-two\n",
		"    regex  /re/[0-9]+                       -> re-regex\n  *.example.com",
		"  *.example.com\n    exact  /wild                            -> wildcard-exact\n",
	} {
		if !strings.Contains(flat, squeeze.ReplaceAllString(want, " ")) {
			t.Errorf("Describe() lacks\n%s\nin\n%s", want, got)
		}
	}
	if strings.Index(got, "api.example.com") > strings.Index(got, "*.example.com") {
		t.Errorf("exact hostnames must come before wildcards:\n%s", got)
	}
}
