package config

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/policy"
)

const edgePolicyYAML = `
edge:
  listeners: [{ listen: 127.0.0.1:8080 }]
  api_keys: [{ name: partners, file: partners.keys }]
  routes:
    - { name: shop, matches: [{ path: { prefix: /shop } }], backends: [{ service: shop }] }
    - { name: admin, matches: [{ path: { prefix: /admin } }], backends: [{ service: shop }] }
  policy:
    rules:
      - { from: ["jwt:groups=admin", "jwt:sub=ada"], to: admin, action: allow }
      - { from: ["apikey:partners/*"], to: shop, action: allow, methods: [GET], paths: [/shop/], exact_paths: [/shop] }
      - { from: ["cidr:203.0.113.0/24"], action: deny }
      - { from: ["jwt:*"], to: "*", action: allow, headers: [{ name: X-Debug, present: true, invert: true }] }
upstreams: [{ service: shop, endpoints: [{ address: 127.0.0.1:9000 }] }]
`

// TestEdgePolicy: an edge.policy section parses with its default (deny),
// an empty to means every route, and the compiled policy decides by
// route name.
func TestEdgePolicy(t *testing.T) {
	c := mustParse(t, edgePolicyYAML)
	p := c.Edge.Policy
	if p == nil || p.Default != "deny" || p.DefaultAction() != policy.Deny {
		t.Fatalf("edge.policy = %+v, want default deny", p)
	}
	if r := p.Rule(2); r.To != "*" || r.Name != "edge.policy.rules[2]" || r.Action != policy.Deny {
		t.Errorf("rule 2 = %+v, want To * named edge.policy.rules[2]", r)
	}
	if r := p.Rule(1); len(r.Paths) != 2 || r.Paths[0].Prefix != "/shop/" || r.Paths[1].Exact != "/shop" {
		t.Errorf("rule 1 paths = %+v", r.Paths)
	}
	if len(c.Warnings()) != 0 {
		t.Errorf("warnings: %v", c.Warnings())
	}
	pol, err := p.Compile()
	if err != nil {
		t.Fatal(err)
	}
	ada := policy.Source{JWT: true, Subject: "ada", Claims: map[string]any{"sub": "ada"}, Addr: netip.MustParseAddr("203.0.113.5")}
	for _, tt := range []struct {
		route string
		src   policy.Source
		allow bool
		rule  string
	}{
		{"admin", ada, true, "edge.policy.rules[0]"},
		{"shop", ada, false, "edge.policy.rules[2]"},
		{"shop", policy.Source{APIKeySet: "partners", APIKeyID: "acme"}, true, "edge.policy.rules[1]"},
		{"shop", policy.Source{Addr: netip.MustParseAddr("198.51.100.1")}, false, policy.DefaultRule},
	} {
		d := pol.Authorize(context.Background(), policy.Request{Source: tt.src, Destination: tt.route, Method: "GET", Path: "/shop/x"})
		if d.Allow != tt.allow || d.Rule != tt.rule {
			t.Errorf("%s %+v: %+v, want allow=%v by %s", tt.route, tt.src, d, tt.allow, tt.rule)
		}
	}

	out, err := c.EffectiveYAML()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "policy:\n        default: deny\n") {
		t.Errorf("effective config lacks the edge policy's default:\n%s", out)
	}
}

// TestEdgePolicyAbsent: without the section there is no policy, and an
// explicit default allow is kept.
func TestEdgePolicyAbsent(t *testing.T) {
	c := mustParse(t, `
edge:
  listeners: [{ listen: 127.0.0.1:8080 }]
  routes: [{ name: shop, backends: [{ service: shop }] }]
upstreams: [{ service: shop, endpoints: [{ address: 127.0.0.1:9000 }] }]
`)
	if c.Edge.Policy != nil {
		t.Errorf("edge.policy = %+v without the section, want nil", c.Edge.Policy)
	}
	c = mustParse(t, strings.Replace(edgePolicyYAML, "  policy:\n", "  policy:\n    default: allow\n", 1))
	if c.Edge.Policy.DefaultAction() != policy.Allow {
		t.Errorf("default allow read as %v", c.Edge.Policy.DefaultAction())
	}
}

// TestEdgePolicyWarnsOfMeshNames: a service name or SPIFFE ID matches no
// edge caller; the file still loads, with a warning at the entry.
func TestEdgePolicyWarnsOfMeshNames(t *testing.T) {
	c := mustParse(t, strings.Replace(edgePolicyYAML, `["jwt:*"]`, `["web", "spiffe://mesh.local/ns/prod/svc/web"]`, 1))
	w := c.Warnings().Error()
	for _, want := range []string{
		`edge.policy.rules[3].from[0]: "web" names a mesh workload`,
		`edge.policy.rules[3].from[1]: "spiffe://mesh.local/ns/prod/svc/web" names a mesh workload`,
	} {
		if !strings.Contains(w, want) {
			t.Errorf("warnings %q lack %q", w, want)
		}
	}
}
