package policy

import (
	"context"
	"net/http"
	"strings"
	"testing"
)

var (
	webProd = Source{Service: "web", SPIFFE: "spiffe://mesh.local/ns/prod/svc/web", Namespace: "prod"}
	webDev  = Source{Service: "web", SPIFFE: "spiffe://mesh.local/ns/dev/svc/web", Namespace: "dev"}
	apiProd = Source{Service: "api", SPIFFE: "spiffe://mesh.local/ns/prod/svc/api", Namespace: "prod"}
	apiDev  = Source{Service: "api", SPIFFE: "spiffe://mesh.local/ns/dev/svc/api", Namespace: "dev"}
	other   = Source{Service: "web", SPIFFE: "spiffe://other.td/ns/prod/svc/web", Namespace: "prod"}
	idOnly  = Source{SPIFFE: "spiffe://mesh.local/ns/prod/svc/batch"}
	anon    = Source{}
)

func allow(name, to string, from ...string) Rule {
	return Rule{Name: name, From: from, To: to, Action: Allow}
}

func deny(name, to string, from ...string) Rule {
	return Rule{Name: name, From: from, To: to, Action: Deny}
}

func with(r Rule, f func(*Rule)) Rule { f(&r); return r }

func get(src Source, path string) Request {
	return Request{Source: src, Destination: "cart", Method: "GET", Path: path}
}

func req(src Source, method, path string, kv ...string) Request {
	r := Request{Source: src, Destination: "cart", Method: method, Path: path, Header: http.Header{}}
	for i := 0; i+1 < len(kv); i += 2 {
		r.Header.Add(kv[i], kv[i+1])
	}
	return r
}

func TestAuthorize(t *testing.T) {
	getOnly := func(r *Rule) { r.Methods = []string{"get"} }
	apiPaths := func(r *Rule) { r.Paths = []PathMatch{{Prefix: "/api/"}} }
	adminPost := func(r *Rule) { r.Methods = []string{"POST"}; r.Paths = []PathMatch{{Prefix: "/admin/"}} }

	cases := []struct {
		name      string
		rules     []Rule
		def       Action
		req       Request
		wantAllow bool
		wantRule  string
	}{
		// Defaults.
		{"no rules, default deny", nil, Deny, get(webProd, "/"), false, "default"},
		{"no rules, default allow", nil, Allow, get(webProd, "/"), true, "default"},
		{"other destination falls to default", []Rule{allow("a", "orders", "web")}, Deny, get(webProd, "/"), false, "default"},
		{"other caller falls to default", []Rule{allow("a", "cart", "api")}, Deny, get(webProd, "/"), false, "default"},
		{"exact allow", []Rule{allow("a", "cart", "web")}, Deny, get(webProd, "/"), true, "a"},
		{"exact deny under default allow", []Rule{deny("a", "cart", "web")}, Allow, get(webProd, "/"), false, "a"},

		// Consul's table: destination first, then source.
		{"exact/exact allow beats */exact deny",
			[]Rule{deny("any", "cart", "*"), allow("web", "cart", "web")}, Deny, get(webProd, "/"), true, "web"},
		{"exact/exact deny beats */exact allow",
			[]Rule{allow("any", "cart", "*"), deny("web", "cart", "web")}, Allow, get(webProd, "/"), false, "web"},
		{"*/exact allow beats exact/* deny",
			[]Rule{deny("web-any", "*", "web"), allow("any-cart", "cart", "*")}, Deny, get(webProd, "/"), true, "any-cart"},
		{"*/exact deny beats exact/* allow",
			[]Rule{allow("web-any", "*", "web"), deny("any-cart", "cart", "*")}, Allow, get(webProd, "/"), false, "any-cart"},
		{"exact/* allow beats */* deny",
			[]Rule{deny("all", "*", "*"), allow("web-any", "*", "web")}, Deny, get(webProd, "/"), true, "web-any"},
		{"*/* applies last",
			[]Rule{allow("all", "*", "*"), deny("api", "cart", "api")}, Deny, get(webProd, "/"), true, "all"},

		// Equal precedence: deny wins, in either order; else rule order.
		{"deny beats allow at equal precedence",
			[]Rule{allow("a", "cart", "web"), deny("d", "cart", "web")}, Allow, get(webProd, "/"), false, "d"},
		{"deny beats allow at equal precedence, reversed",
			[]Rule{deny("d", "cart", "web"), allow("a", "cart", "web")}, Allow, get(webProd, "/"), false, "d"},
		{"deny beats allow for *",
			[]Rule{allow("a", "cart", "*"), deny("d", "cart", "*")}, Allow, get(webProd, "/"), false, "d"},
		{"first of two allows names the decision",
			[]Rule{allow("a1", "cart", "web"), allow("a2", "cart", "web")}, Deny, get(webProd, "/"), true, "a1"},

		// SPIFFE IDs and patterns.
		{"SPIFFE ID beats service name",
			[]Rule{deny("name", "cart", "web"), allow("id", "cart", "spiffe://mesh.local/ns/prod/svc/web")}, Deny, get(webProd, "/"), true, "id"},
		{"SPIFFE ID does not match another namespace",
			[]Rule{deny("name", "cart", "web"), allow("id", "cart", "spiffe://mesh.local/ns/prod/svc/web")}, Deny, get(webDev, "/"), false, "name"},
		{"service name matches any namespace",
			[]Rule{allow("name", "cart", "web")}, Deny, get(webDev, "/"), true, "name"},
		{"service name beats pattern",
			[]Rule{deny("dev", "cart", "spiffe://mesh.local/ns/dev/*"), allow("name", "cart", "web")}, Deny, get(webDev, "/"), true, "name"},
		{"pattern beats *",
			[]Rule{allow("any", "cart", "*"), deny("dev", "cart", "spiffe://mesh.local/ns/dev/*")}, Allow, get(apiDev, "/"), false, "dev"},
		{"pattern applies to its namespace only",
			[]Rule{allow("any", "cart", "*"), deny("dev", "cart", "spiffe://mesh.local/ns/dev/*")}, Deny, get(apiProd, "/"), true, "any"},
		{"longer pattern beats shorter",
			[]Rule{deny("prod", "cart", "spiffe://mesh.local/ns/prod/*"), allow("td", "cart", "spiffe://mesh.local/*")}, Deny, get(apiDev, "/"), true, "td"},
		{"longer pattern beats shorter, deny",
			[]Rule{deny("prod", "cart", "spiffe://mesh.local/ns/prod/*"), allow("td", "cart", "spiffe://mesh.local/*")}, Allow, get(apiProd, "/"), false, "prod"},
		{"svc pattern",
			[]Rule{allow("svcs", "cart", "spiffe://mesh.local/ns/prod/svc/*")}, Deny, get(apiProd, "/"), true, "svcs"},
		{"pattern matches whole segments only",
			[]Rule{allow("p", "cart", "spiffe://mesh.local/ns/pro/*")}, Deny, get(apiProd, "/"), false, "default"},
		{"pattern does not match another trust domain",
			[]Rule{allow("td", "cart", "spiffe://mesh.local/*")}, Deny, get(other, "/"), false, "default"},
		{"pattern does not match its own prefix",
			[]Rule{allow("td", "cart", "spiffe://mesh.local/ns/prod/*")}, Deny,
			get(Source{SPIFFE: "spiffe://mesh.local/ns/prod/"}, "/"), false, "default"},
		{"identity without a service name matches * and SPIFFE",
			[]Rule{allow("any", "cart", "*"), deny("p", "cart", "spiffe://mesh.local/ns/prod/svc/*")}, Allow, get(idOnly, "/"), false, "p"},
		{"identity without a service name matches *",
			[]Rule{allow("any", "cart", "*")}, Deny, get(idOnly, "/"), true, "any"},

		// Unauthenticated callers match nothing, not even "*".
		{"unauthenticated caller is not *", []Rule{allow("any", "cart", "*")}, Deny, get(anon, "/"), false, "default"},
		{"unauthenticated caller gets default allow", []Rule{deny("any", "*", "*")}, Allow, get(anon, "/"), true, "default"},

		// From entries rank separately.
		{"a rule with several From entries: exact entry",
			[]Rule{allow("any", "cart", "*"), deny("pair", "cart", "web", "api")}, Allow, get(webProd, "/"), false, "pair"},
		{"a rule with several From entries: other caller",
			[]Rule{allow("any", "cart", "*"), deny("pair", "cart", "web", "api")}, Allow, get(idOnly, "/"), true, "any"},
		{"the same rule's * entry does not lower its exact entry",
			[]Rule{deny("d", "cart", "spiffe://mesh.local/*"), allow("mixed", "cart", "*", "web")}, Deny, get(webProd, "/"), true, "mixed"},

		// L7: methods.
		{"method matches, rule written lower case",
			[]Rule{with(allow("g", "cart", "web"), getOnly)}, Deny, get(webProd, "/x"), true, "g"},
		{"other method does not apply",
			[]Rule{with(allow("g", "cart", "web"), getOnly)}, Deny, req(webProd, "POST", "/x"), false, "default"},
		{"request method is case-sensitive",
			[]Rule{with(allow("g", "cart", "web"), getOnly)}, Deny, req(webProd, "get", "/x"), false, "default"},
		{"TCP connection: a rule with methods does not apply",
			[]Rule{with(allow("g", "cart", "web"), getOnly)}, Deny, Request{Source: webProd, Destination: "cart"}, false, "default"},
		{"TCP connection: an L4 rule applies",
			[]Rule{allow("l4", "cart", "web")}, Deny, Request{Source: webProd, Destination: "cart"}, true, "l4"},

		// L7: paths.
		{"prefix path", []Rule{with(allow("p", "cart", "web"), apiPaths)}, Deny, get(webProd, "/api/items"), true, "p"},
		{"prefix path itself", []Rule{with(allow("p", "cart", "web"), apiPaths)}, Deny, get(webProd, "/api/"), true, "p"},
		{"prefix is a string prefix: /api/ does not match /api", []Rule{with(allow("p", "cart", "web"), apiPaths)}, Deny, get(webProd, "/api"), false, "default"},
		{"prefix without slash matches /apiary",
			[]Rule{with(allow("p", "cart", "web"), func(r *Rule) { r.Paths = []PathMatch{{Prefix: "/api"}} })}, Deny, get(webProd, "/apiary"), true, "p"},
		{"exact path",
			[]Rule{with(allow("e", "cart", "web"), func(r *Rule) { r.Paths = []PathMatch{{Exact: "/healthz"}} })}, Deny, get(webProd, "/healthz"), true, "e"},
		{"exact path does not match with trailing slash",
			[]Rule{with(allow("e", "cart", "web"), func(r *Rule) { r.Paths = []PathMatch{{Exact: "/healthz"}} })}, Deny, get(webProd, "/healthz/"), false, "default"},
		{"one of several paths",
			[]Rule{with(allow("e", "cart", "web"), func(r *Rule) { r.Paths = []PathMatch{{Exact: "/a"}, {Prefix: "/b/"}} })}, Deny, get(webProd, "/b/c"), true, "e"},
		{"paths are case-sensitive",
			[]Rule{with(deny("d", "cart", "web"), apiPaths)}, Allow, get(webProd, "/API/x"), true, "default"},

		// Specific allow over general deny and vice versa, with fall-through.
		{"specific L7 allow beats general deny",
			[]Rule{deny("all", "cart", "*"), with(allow("web-get-api", "cart", "web"), func(r *Rule) { getOnly(r); apiPaths(r) })},
			Deny, get(webProd, "/api/x"), true, "web-get-api"},
		{"specific L7 allow that does not match falls through to general deny",
			[]Rule{allow("dummy", "orders", "web"), deny("all", "cart", "*"), with(allow("web-get-api", "cart", "web"), func(r *Rule) { getOnly(r); apiPaths(r) })},
			Allow, req(webProd, "POST", "/api/x"), false, "all"},
		{"specific L7 deny beats general allow",
			[]Rule{allow("all", "cart", "*"), with(deny("no-admin", "cart", "web"), adminPost)}, Deny, req(webProd, "POST", "/admin/users"), false, "no-admin"},
		{"specific L7 deny that does not match falls through to general allow",
			[]Rule{allow("all", "cart", "*"), with(deny("no-admin", "cart", "web"), adminPost)}, Deny, get(webProd, "/admin/users"), true, "all"},
		{"L7 deny and L7 allow at equal precedence: deny wins where both match",
			[]Rule{with(allow("a", "cart", "web"), apiPaths), with(deny("d", "cart", "web"), getOnly)}, Allow, get(webProd, "/api/x"), false, "d"},
		{"L7 deny and L7 allow at equal precedence: allow where only it matches",
			[]Rule{with(allow("a", "cart", "web"), apiPaths), with(deny("d", "cart", "web"), getOnly)}, Deny, req(webProd, "PUT", "/api/x"), true, "a"},

		// L7: headers.
		{"header present",
			[]Rule{with(allow("h", "cart", "web"), func(r *Rule) { r.Headers = []HeaderMatch{{Name: "x-canary", Present: true}} })},
			Deny, req(webProd, "GET", "/", "X-Canary", ""), true, "h"},
		{"header absent",
			[]Rule{with(allow("h", "cart", "web"), func(r *Rule) { r.Headers = []HeaderMatch{{Name: "x-canary", Present: true}} })},
			Deny, req(webProd, "GET", "/"), false, "default"},
		{"header present, inverted, nil header map",
			[]Rule{with(deny("h", "cart", "web"), func(r *Rule) { r.Headers = []HeaderMatch{{Name: "X-Token", Present: true, Invert: true}} })},
			Allow, get(webProd, "/"), false, "h"},
		{"header exact",
			[]Rule{with(allow("h", "cart", "web"), func(r *Rule) { r.Headers = []HeaderMatch{{Name: "X-Env", Exact: "prod"}} })},
			Deny, req(webProd, "GET", "/", "X-Env", "prod"), true, "h"},
		{"header exact, other value",
			[]Rule{with(allow("h", "cart", "web"), func(r *Rule) { r.Headers = []HeaderMatch{{Name: "X-Env", Exact: "prod"}} })},
			Deny, req(webProd, "GET", "/", "X-Env", "production"), false, "default"},
		{"header exact, inverted",
			[]Rule{with(deny("h", "cart", "web"), func(r *Rule) { r.Headers = []HeaderMatch{{Name: "X-Env", Exact: "prod", Invert: true}} })},
			Allow, req(webProd, "GET", "/", "X-Env", "dev"), false, "h"},
		{"header exact, inverted, absent header matches",
			[]Rule{with(deny("h", "cart", "web"), func(r *Rule) { r.Headers = []HeaderMatch{{Name: "X-Env", Exact: "prod", Invert: true}} })},
			Allow, req(webProd, "GET", "/"), false, "h"},
		{"header sent twice is matched joined: exact does not match one value",
			[]Rule{with(allow("h", "cart", "web"), func(r *Rule) { r.Headers = []HeaderMatch{{Name: "X-Role", Exact: "admin"}} })},
			Deny, req(webProd, "GET", "/", "X-Role", "admin", "X-Role", "user"), false, "default"},
		{"header sent twice is matched joined with a comma",
			[]Rule{with(allow("h", "cart", "web"), func(r *Rule) { r.Headers = []HeaderMatch{{Name: "X-Role", Exact: "admin,user"}} })},
			Deny, req(webProd, "GET", "/", "X-Role", "admin", "X-Role", "user"), true, "h"},
		{"header prefix",
			[]Rule{with(allow("h", "cart", "web"), func(r *Rule) { r.Headers = []HeaderMatch{{Name: "Authorization", Prefix: "Bearer "}} })},
			Deny, req(webProd, "GET", "/", "Authorization", "Bearer x"), true, "h"},
		{"header prefix, inverted",
			[]Rule{with(deny("h", "cart", "web"), func(r *Rule) { r.Headers = []HeaderMatch{{Name: "Authorization", Prefix: "Bearer ", Invert: true}} })},
			Allow, req(webProd, "GET", "/", "Authorization", "Basic x"), false, "h"},
		{"all headers must match",
			[]Rule{with(allow("h", "cart", "web"), func(r *Rule) {
				r.Headers = []HeaderMatch{{Name: "A", Exact: "1"}, {Name: "B", Exact: "2"}}
			})},
			Deny, req(webProd, "GET", "/", "A", "1", "B", "3"), false, "default"},
		{"all conditions must match",
			[]Rule{with(allow("h", "cart", "web"), func(r *Rule) {
				getOnly(r)
				apiPaths(r)
				r.Headers = []HeaderMatch{{Name: "A", Exact: "1"}}
			})},
			Deny, req(webProd, "GET", "/api/x", "A", "1"), true, "h"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := NewPolicy(c.rules, c.def)
			if err != nil {
				t.Fatal(err)
			}
			d := p.Authorize(context.Background(), c.req)
			if d.Allow != c.wantAllow || d.Rule != c.wantRule {
				t.Errorf("Authorize = %+v; want allow=%v rule=%q", d, c.wantAllow, c.wantRule)
			}
			if d.Reason == "" {
				t.Error("empty Reason")
			}
			// The reference evaluator agrees.
			if allow, rule := refAuthorize(c.rules, c.def, c.req); allow != d.Allow || rule != d.Rule {
				t.Errorf("reference: allow=%v rule=%q; Authorize: %+v", allow, rule, d)
			}
		})
	}
}

func TestDecisionReason(t *testing.T) {
	rules := []Rule{
		{Name: "policy.rules[0]", From: []string{"web"}, To: "cart", Action: Allow, Methods: []string{"get", "HEAD"}, Paths: []PathMatch{{Prefix: "/api/"}, {Exact: "/healthz"}}},
		{Name: "policy.rules[1]", From: []string{"web"}, To: "cart", Action: Deny, Methods: []string{"POST"}, Paths: []PathMatch{{Prefix: "/admin/"}}},
		{Name: "policy.rules[2]", From: []string{"*"}, To: "*", Action: Allow},
		{Name: "policy.rules[3]", From: []string{"spiffe://mesh.local/ns/dev/*"}, To: "cart", Action: Deny, Headers: []HeaderMatch{{Name: "X-Env", Exact: "prod"}, {Name: "X-Debug", Present: true, Invert: true}}},
	}
	p, err := NewPolicy(rules, Deny)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		req  Request
		want string
	}{
		{get(webProd, "/api/x"), "allowed by policy.rules[0]: web may GET|HEAD /api/*, /healthz on cart"},
		{req(webProd, "POST", "/admin/x"), "denied by policy.rules[1]: web may not POST /admin/* on cart"},
		{req(apiProd, "POST", "/"), "allowed by policy.rules[2]: any authenticated caller may call any service"},
		{req(apiDev, "GET", "/", "X-Env", "prod"), `denied by policy.rules[3]: spiffe://mesh.local/ns/dev/* may not call cart when X-Env is "prod" and X-Debug is not present`},
		{get(anon, "/"), "denied by default: the caller is not authenticated"},
	} {
		if d := p.Authorize(context.Background(), c.req); d.Reason != c.want {
			t.Errorf("Reason = %q\n          want %q", d.Reason, c.want)
		}
	}
	p, _ = NewPolicy(nil, Allow)
	if d := p.Authorize(context.Background(), get(webProd, "/")); d.Reason != "allowed by default: no rule matches" {
		t.Errorf("default Reason = %q", d.Reason)
	}
}

func TestNewPolicyNamesUnnamedRules(t *testing.T) {
	p, err := NewPolicy([]Rule{allow("", "orders", "web"), allow("", "cart", "web")}, Deny)
	if err != nil {
		t.Fatal(err)
	}
	if d := p.Authorize(context.Background(), get(webProd, "/")); d.Rule != "rules[1]" {
		t.Errorf("Rule = %q, want rules[1]", d.Rule)
	}
}

func TestNilPolicyDenies(t *testing.T) {
	var p *Policy
	d := p.Authorize(context.Background(), get(webProd, "/"))
	if d.Allow || d.Rule != "default" || d.Reason == "" {
		t.Errorf("nil Policy: %+v", d)
	}
	if p.Default() != Deny {
		t.Errorf("nil Policy: Default %v", p.Default())
	}
}

func TestPolicyIsImmutable(t *testing.T) {
	rules := []Rule{{Name: "r", From: []string{"web"}, To: "cart", Action: Allow, Methods: []string{"GET"}, Paths: []PathMatch{{Prefix: "/api/"}}}}
	p, err := NewPolicy(rules, Deny)
	if err != nil {
		t.Fatal(err)
	}
	rules[0].From[0] = "api"
	rules[0].Methods[0] = "POST"
	rules[0].Paths[0].Prefix = "/admin/"
	rules[0].Action = Deny
	if d := p.Authorize(context.Background(), get(webProd, "/api/x")); !d.Allow {
		t.Errorf("changing the rules after NewPolicy changed the policy: %+v", d)
	}
}

func TestAuthorizeDoesNotAllocate(t *testing.T) {
	p, err := NewPolicy(benchRules(100), Deny)
	if err != nil {
		t.Fatal(err)
	}
	r := req(webProd, "GET", "/api/v1/items", "X-Env", "prod", "X-Env", "canary")
	allocs := testing.AllocsPerRun(100, func() { p.Authorize(context.Background(), r) })
	if allocs != 0 {
		t.Errorf("Authorize: %v allocations, want 0", allocs)
	}
}

func TestValidate(t *testing.T) {
	ok := Rule{From: []string{"web"}, To: "cart"}
	cases := []struct {
		name string
		rule Rule
		want []string // substrings of the error; none for valid
	}{
		{"minimal", ok, nil},
		{"everything", Rule{Name: "r", From: []string{"web", "*", "spiffe://mesh.local/ns/prod/svc/web", "spiffe://mesh.local/ns/prod/*", "spiffe://mesh.local/*", "my_svc.v2-x"}, To: "*", Action: Allow,
			Methods: []string{"get", "PURGE"}, Paths: []PathMatch{{Exact: "/"}, {Prefix: "/api/"}, {Prefix: "/a%3Ab"}},
			Headers: []HeaderMatch{{Name: "x-a", Present: true}, {Name: "X-B", Exact: "1", Invert: true}, {Name: "X-C", Prefix: "p"}}}, nil},
		{"empty from", Rule{To: "cart"}, []string{"from: required"}},
		{"empty to", Rule{From: []string{"web"}}, []string{"to: required"}},
		{"named", Rule{Name: "policy.rules[4]", To: "cart"}, []string{"rule policy.rules[4]: from: required"}},
		{"all problems at once", Rule{From: []string{"we b"}, To: "ca*rt", Action: 7, Methods: []string{"GE T"}}, []string{"from[0]", "to:", "action:", "methods[0]"}},
		{"empty from entry", with(ok, func(r *Rule) { r.From = []string{""} }), []string{"from[0]: empty service name"}},
		{"partial wildcard", with(ok, func(r *Rule) { r.From = []string{"web*"} }), []string{"from[0]", "wildcard"}},
		{"other scheme", with(ok, func(r *Rule) { r.From = []string{"https://x/y"} }), []string{"only spiffe://"}},
		{"upper-case scheme", with(ok, func(r *Rule) { r.From = []string{"SPIFFE://mesh.local/x"} }), []string{"only spiffe://"}},
		{"no trust domain", with(ok, func(r *Rule) { r.From = []string{"spiffe:///ns/x"} }), []string{"missing trust domain"}},
		{"upper-case trust domain", with(ok, func(r *Rule) { r.From = []string{"spiffe://Mesh.local/ns/x"} }), []string{"trust domain"}},
		{"no path", with(ok, func(r *Rule) { r.From = []string{"spiffe://mesh.local"} }), []string{"no workload path", "spiffe://mesh.local/*"}},
		{"trailing slash", with(ok, func(r *Rule) { r.From = []string{"spiffe://mesh.local/ns/"} }), []string{"empty path segment"}},
		{"double slash", with(ok, func(r *Rule) { r.From = []string{"spiffe://mesh.local/ns//x"} }), []string{"empty path segment"}},
		{"dot segment", with(ok, func(r *Rule) { r.From = []string{"spiffe://mesh.local/ns/../x"} }), []string{"dot segment"}},
		{"star in the middle", with(ok, func(r *Rule) { r.From = []string{"spiffe://mesh.local/ns/*/svc/web"} }), []string{"only allowed as the whole last segment"}},
		{"partial star", with(ok, func(r *Rule) { r.From = []string{"spiffe://mesh.local/ns/pro*"} }), []string{"only allowed as the whole last segment"}},
		{"bad segment", with(ok, func(r *Rule) { r.From = []string{"spiffe://mesh.local/ns/a%20b"} }), []string{"segment"}},
		{"bad action", with(ok, func(r *Rule) { r.Action = 2 }), []string{"action: invalid"}},
		{"empty method", with(ok, func(r *Rule) { r.Methods = []string{""} }), []string{"methods[0]"}},
		{"empty path match", with(ok, func(r *Rule) { r.Paths = []PathMatch{{}} }), []string{"paths[0]: set exact or prefix"}},
		{"both exact and prefix", with(ok, func(r *Rule) { r.Paths = []PathMatch{{Exact: "/a", Prefix: "/b"}} }), []string{"not both"}},
		{"relative path", with(ok, func(r *Rule) { r.Paths = []PathMatch{{Prefix: "api/"}} }), []string{"must start with /"}},
		{"unnormalized path", with(ok, func(r *Rule) { r.Paths = []PathMatch{{Prefix: "/api//v1/"}} }), []string{"not a normalized path", `"/api/v1/"`}},
		{"unnormalized escape", with(ok, func(r *Rule) { r.Paths = []PathMatch{{Exact: "/%7euser"}} }), []string{`"/~user"`}},
		{"ambiguous path", with(ok, func(r *Rule) { r.Paths = []PathMatch{{Exact: "/a%2Fb"}} }), []string{"escaped slash"}},
		{"header without name", with(ok, func(r *Rule) { r.Headers = []HeaderMatch{{Exact: "x"}} }), []string{"headers[0]: name: required"}},
		{"pseudo-header", with(ok, func(r *Rule) { r.Headers = []HeaderMatch{{Name: ":path", Exact: "/"}} }), []string{"pseudo-headers"}},
		{"bad header name", with(ok, func(r *Rule) { r.Headers = []HeaderMatch{{Name: "X A", Present: true}} }), []string{"not a valid header name"}},
		{"header without condition", with(ok, func(r *Rule) { r.Headers = []HeaderMatch{{Name: "X-A", Invert: true}} }), []string{"exactly one"}},
		{"header with two conditions", with(ok, func(r *Rule) { r.Headers = []HeaderMatch{{Name: "X-A", Present: true, Exact: "1"}} }), []string{"exactly one"}},
		{"header value that never matches", with(ok, func(r *Rule) { r.Headers = []HeaderMatch{{Name: "X-A", Exact: "a\nb"}} }), []string{"never match"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.rule.Validate()
			if len(c.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				if _, err := NewPolicy([]Rule{c.rule}, Deny); err != nil {
					t.Fatalf("NewPolicy: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want an error mentioning %q", c.want)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to mention %q", err, w)
				}
			}
			if _, err := NewPolicy([]Rule{c.rule}, Deny); err == nil {
				t.Error("NewPolicy accepted an invalid rule")
			}
		})
	}
}

func TestNewPolicyReportsEveryRule(t *testing.T) {
	_, err := NewPolicy([]Rule{{Name: "a", To: "x"}, {From: []string{"web"}}}, Deny)
	if err == nil || !strings.Contains(err.Error(), "rule a: from") || !strings.Contains(err.Error(), "rule rules[1]: to") {
		t.Errorf("NewPolicy error = %v, want both rules named", err)
	}
	if _, err := NewPolicy(nil, Action(3)); err == nil {
		t.Error("NewPolicy accepted an invalid default")
	}
}
