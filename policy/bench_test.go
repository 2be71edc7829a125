package policy

import (
	"context"
	"fmt"
	"testing"
)

// benchRules is a 100-rule policy in the shape of a real one: per-caller
// L7 allows, namespace patterns, a few denies and catch-alls.
func benchRules(n int) []Rule {
	rules := make([]Rule, 0, n)
	for i := 0; len(rules) < n; i++ {
		svc := fmt.Sprintf("svc%d", i)
		rules = append(rules,
			Rule{Name: fmt.Sprintf("%s-get", svc), From: []string{svc}, To: "cart", Action: Allow,
				Methods: []string{"GET", "HEAD"}, Paths: []PathMatch{{Prefix: fmt.Sprintf("/%s/", svc)}, {Prefix: "/public/"}}},
			Rule{Name: fmt.Sprintf("%s-admin", svc), From: []string{fmt.Sprintf("spiffe://mesh.local/ns/prod/svc/%s", svc)}, To: "cart", Action: Deny,
				Paths: []PathMatch{{Prefix: "/admin/"}}},
			Rule{Name: fmt.Sprintf("ns%d", i), From: []string{fmt.Sprintf("spiffe://mesh.local/ns/team%d/*", i)}, To: "*", Action: Allow,
				Headers: []HeaderMatch{{Name: "X-Env", Prefix: "prod"}}},
			Rule{Name: fmt.Sprintf("orders%d", i), From: []string{svc}, To: "orders", Action: Allow},
		)
	}
	rules = rules[:n-3]
	rules = append(rules,
		Rule{Name: "web-api", From: []string{"web"}, To: "cart", Action: Allow, Methods: []string{"GET"}, Paths: []PathMatch{{Prefix: "/api/"}},
			Headers: []HeaderMatch{{Name: "X-Env", Exact: "prod,canary"}}},
		Rule{Name: "no-debug", From: []string{"*"}, To: "cart", Action: Deny, Headers: []HeaderMatch{{Name: "X-Debug", Present: true}}},
		Rule{Name: "deny-all", From: []string{"*"}, To: "*", Action: Deny},
	)
	return rules
}

func BenchmarkAuthorize(b *testing.B) {
	p, err := NewPolicy(benchRules(100), Deny)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		req  Request
	}{
		{"allow-by-name-L7", req(webProd, "GET", "/api/v1/items", "X-Env", "prod", "X-Env", "canary")},
		{"fallthrough-to-catchall", req(apiProd, "POST", "/api/v1/items")},
		{"pattern", req(Source{Service: "x", SPIFFE: "spiffe://mesh.local/ns/team7/svc/x"}, "GET", "/", "X-Env", "production")},
		{"unauthenticated", req(anon, "GET", "/")},
	} {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				p.Authorize(ctx, c.req)
			}
		})
	}
	b.Run("table", func(b *testing.B) {
		t := NewTable(Deny)
		if err := t.SetRules("config", benchRules(100)); err != nil {
			b.Fatal(err)
		}
		r := req(webProd, "GET", "/api/v1/items", "X-Env", "prod", "X-Env", "canary")
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			t.Authorize(ctx, r)
		}
	})
}

// edgeBenchRules is an edge policy in the shape of a real one: per-route
// allows by claim, subject and API key, a network block, catch-alls.
func edgeBenchRules() []Rule {
	var rules []Rule
	for i := range 20 {
		route := fmt.Sprintf("route%d", i)
		rules = append(rules,
			Rule{Name: route + "-admins", From: []string{"jwt:groups=admin", fmt.Sprintf("jwt:sub=user%d", i)}, To: route, Action: Allow},
			Rule{Name: route + "-partner", From: []string{fmt.Sprintf("apikey:partners/p%d", i)}, To: route, Action: Allow, Methods: []string{"GET"}},
			Rule{Name: route + "-office", From: []string{fmt.Sprintf("cidr:10.%d.0.0/16", i)}, To: route, Action: Allow},
		)
	}
	return append(rules,
		Rule{Name: "orders", From: []string{"jwt:scope=orders.write"}, To: "shop", Action: Allow, Paths: []PathMatch{{Prefix: "/orders/"}}},
		Rule{Name: "blocked", From: []string{"cidr:203.0.113.0/24"}, To: "*", Action: Deny},
		Rule{Name: "partners", From: []string{"apikey:partners/*"}, To: "shop", Action: Allow},
		Rule{Name: "users", From: []string{"jwt:*"}, To: "shop", Action: Allow, Methods: []string{"GET"}},
		Rule{Name: "deny-all", From: []string{"*"}, To: "*", Action: Deny},
	)
}

func BenchmarkAuthorizeEdge(b *testing.B) {
	p, err := NewPolicy(edgeBenchRules(), Deny)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		req  Request
	}{
		{"jwt-scope", edgeGet(alice, "/orders/1")},
		{"jwt-blocked-network", edgeGet(bob, "/")},
		{"apikey-set", edgeGet(acmeKey, "/")},
		{"anonymous-cidr", edgeGet(anon10, "/")},
	} {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				p.Authorize(ctx, c.req)
			}
		})
	}
}

func BenchmarkNormalizePath(b *testing.B) {
	for _, c := range []struct{ name, path string }{
		{"clean", "/api/v1/items/42/details"},
		{"messy", "/api//v1/./items/%7euser/../42/%e2%82%ac/details"},
		{"rejected", "/api/..%2Fadmin"},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				NormalizePath(c.path)
			}
		})
	}
}
