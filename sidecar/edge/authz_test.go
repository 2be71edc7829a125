package edge_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/telemetry/otlptest"
)

// TestEdgePolicy: edge.policy decides, after each route's authentication,
// by JWT subject and claims, API key, and client network, with the
// mesh's precedence; it matches the normalized path; auth failures stay
// 401; an anonymous caller gets the default; the decision names the rule
// in the access log and the span.
func TestEdgePolicy(t *testing.T) {
	rcv := otlptest.Start(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	}))
	t.Cleanup(jwks.Close)
	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, nil)
	token := func(claims map[string]any) string {
		claims["iss"], claims["aud"], claims["exp"] = "https://idp.test", "shop", time.Now().Add(time.Hour).Unix()
		tok, err := jwt.Signed(signer).Claims(claims).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return "Bearer " + tok
	}
	dir := t.TempDir()
	keys := filepath.Join(dir, "partners.keys")
	if err := os.WriteFile(keys, []byte("- { id: acme, key: acme-0123456789abcdef }\n- { id: globex, key: globex-0123456789abcdef }\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	app := startRecordingBackend(t, "app")
	logPath := filepath.Join(dir, "access.log")
	ln, adminLn := meshtest.Listen(t), meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
admin: { listen: %s }
edge:
  listeners: [{ listen: %s }]
  jwt_providers: [{ name: idp, issuer: "https://idp.test", audiences: [shop], jwks_url: %s }]
  api_keys: [{ name: partners, file: %s }]
  routes:
    - { name: orders, matches: [{ path: { prefix: /orders } }], auth: { jwt: idp }, backends: [{ service: app }] }
    - { name: admin, matches: [{ path: { prefix: /admin } }], auth: { jwt: idp }, backends: [{ service: app }] }
    - { name: partner, matches: [{ path: { prefix: /partner } }], auth: { api_key: partners }, backends: [{ service: app }] }
    - { name: public, matches: [{ path: { prefix: /public } }], backends: [{ service: app }] }
  policy:
    rules:
      - { from: ["jwt:sub=ada"], to: orders, action: allow }                        # 0
      - { from: ["jwt:sub=ada"], to: admin, action: deny }                          # 1
      - { from: ["jwt:groups=ops"], to: admin, action: allow }                      # 2
      - { from: ["jwt:groups=ops"], to: admin, action: deny, exact_paths: [/admin/secrets] }  # 3
      - { from: ["jwt:scope=admin.write"], to: admin, action: allow, methods: [POST] }       # 4
      - { from: ["apikey:partners/acme"], to: partner, action: allow }              # 5
      - { from: ["cidr:203.0.113.0/24"], to: orders, action: deny }                 # 6
      - { from: ["jwt:*"], to: orders, action: allow }                              # 7
      - { from: ["cidr:10.0.0.0/8"], to: public, action: allow }                    # 8
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
trusted_proxies: [127.0.0.0/8]
telemetry:
  access_log: %s
  tracing: { otlp_endpoint: %s, sample_ratio: 1 }
`, adminLn.Addr().String(), addr, jwks.URL, keys, app.addr, logPath, rcv.GRPCAddr()), ln, adminLn)
	c := newClient(t)

	ada := token(map[string]any{"sub": "ada"})
	bob := token(map[string]any{"sub": "bob", "groups": []string{"dev", "ops"}})
	carol := token(map[string]any{"sub": "carol", "scope": "admin.read admin.write"})
	dave := token(map[string]any{"sub": "dave"})
	rule := func(i int) string { return fmt.Sprintf("edge.policy.rules[%d]", i) }
	for _, tt := range []struct {
		name, method, target string
		hdr                  map[string]string
		code                 int
		rule                 string // "" when the policy does not run
	}{
		{"subject allowed on one route", "GET", "/orders/1", map[string]string{"Authorization": ada}, 200, rule(0)},
		{"subject denied on another", "GET", "/admin/users", map[string]string{"Authorization": ada}, 403, rule(1)},
		{"list claim", "GET", "/admin/users", map[string]string{"Authorization": bob}, 200, rule(2)},
		{"scope claim", "POST", "/admin/users", map[string]string{"Authorization": carol}, 200, rule(4)},
		{"scope claim, other method: default", "GET", "/admin/users", map[string]string{"Authorization": carol}, 403, "default"},
		{"normalized path decides", "GET", "/admin/x/../secrets", map[string]string{"Authorization": bob}, 403, rule(3)},
		{"normalized path, dot segments", "GET", "/admin/./users/", map[string]string{"Authorization": bob}, 200, rule(2)},
		{"API key id", "GET", "/partner/x", map[string]string{"X-Api-Key": "acme-0123456789abcdef"}, 200, rule(5)},
		{"other API key: default", "GET", "/partner/x", map[string]string{"X-Api-Key": "globex-0123456789abcdef"}, 403, "default"},
		{"cidr deny beats jwt:* allow", "GET", "/orders/1", map[string]string{"Authorization": dave, "X-Forwarded-For": "203.0.113.9"}, 403, rule(6)},
		{"jwt:* allow elsewhere", "GET", "/orders/1", map[string]string{"Authorization": dave, "X-Forwarded-For": "198.51.100.1"}, 200, rule(7)},
		{"jwt:sub beats cidr deny", "GET", "/orders/1", map[string]string{"Authorization": ada, "X-Forwarded-For": "203.0.113.9"}, 200, rule(0)},
		{"anonymous: default deny", "GET", "/public/x", map[string]string{"X-Forwarded-For": "198.51.100.1"}, 403, "default"},
		{"anonymous: cidr allow", "GET", "/public/x", map[string]string{"X-Forwarded-For": "10.1.2.3"}, 200, rule(8)},
		{"no token: 401 before the policy", "GET", "/orders/1", nil, 401, ""},
		{"bad token: 401 before the policy", "GET", "/orders/1", map[string]string{"Authorization": "Bearer abc.def.ghi"}, 401, ""},
		{"bad API key: 401 before the policy", "GET", "/partner/x", map[string]string{"X-Api-Key": "nope-0123456789abcdef"}, 401, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			hdr := map[string]string{"X-Case": tt.name}
			for k, v := range tt.hdr {
				hdr[k] = v
			}
			code, body, h := send(t, c, tt.method, addr, "shop", tt.target, hdr)
			if code != tt.code {
				t.Fatalf("%d %q, want %d", code, body, tt.code)
			}
			if code == 403 && h.Get("X-Sidemesh-Error") != "denied" {
				t.Errorf("403 with X-Sidemesh-Error %q, want denied", h.Get("X-Sidemesh-Error"))
			}
			if code == 403 && tt.rule != "default" && (!strings.Contains(body, tt.rule) || strings.Contains(body, "jwt:") || strings.Contains(body, "cidr:")) {
				t.Errorf("403 body %q: want the rule's name, not what it matches", body)
			}
		})
	}
	if seen := app.take(); len(seen) == 0 || seen[0].Target != "/orders/1" {
		t.Errorf("backend saw %+v", seen)
	}
	metrics := string(scrape(t, adminLn.Addr().String()))
	for _, want := range []string{
		`sidemesh_policy_denials_total{sidemesh_policy_rule="edge.policy.rules[1]"} 1`,
		`sidemesh_policy_denials_total{sidemesh_policy_rule="default"} 3`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// The access log and the spans carry each decision.
	var lines map[string]map[string]any
	meshtest.Eventually(t, 10*time.Second, "an access log line per case", func() error {
		lines = map[string]map[string]any{}
		data, _ := os.ReadFile(logPath)
		for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil {
				lines[fmt.Sprint(m["path"], " ", m["status"], " ", m["principal"])] = m
			}
		}
		if len(lines) < 8 {
			return fmt.Errorf("%d distinct lines", len(lines))
		}
		return nil
	})
	for key, want := range map[string]string{
		"/orders/1 200 jwt:idp:ada":           rule(0),
		"/admin/users 403 jwt:idp:ada":        rule(1),
		"/admin/users 403 jwt:idp:carol":      "default",
		"/admin/secrets 403 jwt:idp:bob":      rule(3),
		"/partner/x 200 apikey:partners:acme": rule(5),
		"/public/x 403 <nil>":                 "default",
		"/public/x 200 <nil>":                 rule(8),
	} {
		l := lines[key]
		if l == nil {
			t.Errorf("no access log line for %s in %v", key, lines)
			continue
		}
		if l["policy_rule"] != want {
			t.Errorf("access log line for %s: policy_rule %v, want %s (%v)", key, l["policy_rule"], want, l)
		}
		decision := "allow"
		if strings.Contains(key, " 403 ") {
			decision = "deny"
			if l["error"] != "denied" {
				t.Errorf("access log line for %s: error %v, want denied", key, l["error"])
			}
		}
		if l["policy_decision"] != decision {
			t.Errorf("access log line for %s: policy_decision %v, want %s", key, l["policy_decision"], decision)
		}
	}

	for key, l := range lines {
		if _, ran := l["policy_rule"]; ran && l["status"] == 401.0 {
			t.Errorf("access log line for %s: the policy ran on a request authentication refused: %v", key, l)
		}
	}

	servers := func(spans []otlptest.Span) (out []otlptest.Span) {
		for _, s := range spans {
			if s.Kind == tracepb.Span_SPAN_KIND_SERVER {
				out = append(out, s)
			}
		}
		return out
	}
	spans := servers(rcv.WaitSpans(t, 15*time.Second, func(s []otlptest.Span) bool { return len(servers(s)) >= 17 }))
	decisions := map[string]string{}
	for _, s := range spans {
		if r, ok := s.Attributes["sidemesh.policy.rule"]; ok {
			decisions[fmt.Sprint(s.Attributes["url.path"])+" "+fmt.Sprint(r)] = fmt.Sprint(s.Attributes["sidemesh.policy.decision"])
		}
	}
	for key, want := range map[string]string{
		"/admin/secrets " + rule(3): "deny",
		"/admin/users " + rule(2):   "allow",
		"/partner/x " + rule(5):     "allow",
		"/public/x default":         "deny",
	} {
		if decisions[key] != want {
			t.Errorf("span %s: decision %q, want %q (all: %v)", key, decisions[key], want, decisions)
		}
	}
}
