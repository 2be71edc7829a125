package policy_test

import (
	"context"
	"fmt"

	"github.com/sidemesh/sidemesh/policy"
)

func ExampleNormalizePath() {
	for _, raw := range []string{"/api//v1/./items/%7euser", "/a%3ab", "/public/../admin", "/admin/..%2Fsecret", "/../etc"} {
		p, err := policy.NormalizePath(raw)
		fmt.Printf("%-22s %q %v\n", raw, p, err)
	}
	// Output:
	// /api//v1/./items/%7euser "/api/v1/items/~user" <nil>
	// /a%3ab                 "/a%3Ab" <nil>
	// /public/../admin       "/admin" <nil>
	// /admin/..%2Fsecret     "" policy: ambiguous request path: escaped slash (%2F)
	// /../etc                "" policy: ambiguous request path: .. above the root
}

func ExampleNewPolicy() {
	p, err := policy.NewPolicy([]policy.Rule{
		{Name: "policy.rules[0]", From: []string{"web"}, To: "cart", Action: policy.Allow,
			Methods: []string{"GET"}, Paths: []policy.PathMatch{{Prefix: "/api/"}}},
		{Name: "policy.rules[1]", From: []string{"spiffe://mesh.local/ns/prod/*"}, To: "cart", Action: policy.Deny,
			Paths: []policy.PathMatch{{Prefix: "/admin/"}}},
	}, policy.Deny)
	if err != nil {
		panic(err)
	}
	web := policy.Source{Service: "web", SPIFFE: "spiffe://mesh.local/ns/prod/svc/web", Namespace: "prod"}
	for _, r := range []policy.Request{
		{Source: web, Destination: "cart", Method: "GET", Path: "/api/items"},
		{Source: web, Destination: "cart", Method: "GET", Path: "/admin/users"},
		{Source: web, Destination: "cart", Method: "POST", Path: "/api/items"},
		{Destination: "cart", Method: "GET", Path: "/api/items"},
	} {
		d := p.Authorize(context.Background(), r)
		fmt.Printf("%v %s\n", d.Allow, d.Reason)
	}
	// Output:
	// true allowed by policy.rules[0]: web may GET /api/* on cart
	// false denied by policy.rules[1]: spiffe://mesh.local/ns/prod/* may not call /admin/* on cart
	// false denied by default: no rule matches
	// false denied by default: the caller is not authenticated
}
