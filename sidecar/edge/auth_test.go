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
	"regexp"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// TestJWTRoute: a route that requires a JWT answers 401 with a Bearer
// challenge without a token or with a bad one, 403 when the token lacks
// a scope or claim, and passes the request on otherwise, with the
// claims it forwards (a client's forged copies removed) and without the
// token; the access log names the principal.
func TestJWTRoute(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	}))
	t.Cleanup(jwks.Close)
	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, nil)
	sign := func(claims map[string]any) string {
		tok, err := jwt.Signed(signer).Claims(claims).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	now := time.Now()
	good := map[string]any{"iss": "https://idp.test", "aud": "shop", "sub": "ada", "exp": now.Add(time.Hour).Unix(),
		"scope": "cart.read", "tenant": "acme", "groups": []string{"admins", "ops"}}
	with := func(k string, v any) map[string]any {
		out := map[string]any{}
		for key, val := range good {
			out[key] = val
		}
		out[k] = v
		return out
	}

	app := meshtest.Listen(t)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "uri=%s auth=%q user=%q groups=%q cookie=%q", r.RequestURI, r.Header.Get("Authorization"), r.Header.Get("X-User"), r.Header.Get("X-Groups"), r.Header.Get("Cookie"))
	})}
	go srv.Serve(app)
	t.Cleanup(func() { srv.Close() })
	logPath := filepath.Join(t.TempDir(), "access.log")
	ln, adminLn := meshtest.Listen(t), meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  jwt_providers:
    - { name: idp, issuer: "https://idp.test", audiences: [shop], jwks_url: %s }
    - { name: idp-cookie, issuer: "https://idp.test", audiences: [shop], jwks_url: %s, from: { cookie: session } }
  routes:
    - name: cart
      matches: [{ path: { prefix: /cart } }]
      auth: { jwt: idp, require: { scopes: [cart.read], claims: { tenant: acme, groups: ops } }, forward_claims: { sub: X-User, groups: X-Groups } }
      backends: [{ service: app }]
    - name: web
      matches: [{ path: { prefix: /web } }]
      auth: { jwt: idp-cookie }
      backends: [{ service: app }]
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
telemetry: { access_log: %s }
admin: { listen: %s }
`, addr, jwks.URL, jwks.URL, app.Addr(), logPath, adminLn.Addr()), ln, adminLn)
	c := newClient(t)
	bearer := func(tok string) map[string]string { return map[string]string{"Authorization": "Bearer " + tok} }

	code, body, h := send(t, c, "GET", addr, "shop", "/cart/1", nil)
	if code != 401 || h.Get("WWW-Authenticate") != `Bearer realm="sidemesh"` {
		t.Errorf("no token: %d %q, WWW-Authenticate %q", code, body, h.Get("WWW-Authenticate"))
	}
	for name, tok := range map[string]string{
		"garbage":        "abc.def.ghi",
		"expired":        sign(with("exp", now.Add(-time.Hour).Unix())),
		"other audience": sign(with("aud", "billing")),
	} {
		code, body, h := send(t, c, "GET", addr, "shop", "/cart/1", bearer(tok))
		if code != 401 || !strings.Contains(h.Get("WWW-Authenticate"), `error="invalid_token"`) {
			t.Errorf("%s: %d %q, WWW-Authenticate %q", name, code, body, h.Get("WWW-Authenticate"))
		}
	}
	for name, tok := range map[string]string{
		"no scope":     sign(with("scope", "cart.write")),
		"other tenant": sign(with("tenant", "evil")),
		"no ops group": sign(with("groups", []string{"admins"})),
	} {
		code, body, h := send(t, c, "GET", addr, "shop", "/cart/1", bearer(tok))
		if code != 403 || !strings.Contains(h.Get("WWW-Authenticate"), `error="insufficient_scope"`) {
			t.Errorf("%s: %d %q, WWW-Authenticate %q", name, code, body, h.Get("WWW-Authenticate"))
		}
	}
	hdr := bearer(sign(good))
	hdr["X-User"] = "root" // forged
	code, body, _ = send(t, c, "GET", addr, "shop", "/cart/1", hdr)
	if want := `uri=/cart/1 auth="" user="ada" groups="admins,ops" cookie=""`; code != 200 || body != want {
		t.Errorf("good token: %d %q, want 200 %q", code, body, want)
	}

	// A token in a cookie, removed before the backend; other cookies stay.
	code, body, _ = send(t, c, "GET", addr, "shop", "/web/", map[string]string{"Cookie": "theme=dark; session=" + sign(good) + "; lang=en"})
	if want := `uri=/web/ auth="" user="" groups="" cookie="theme=dark; lang=en"`; code != 200 || body != want {
		t.Errorf("cookie token: %d %q, want 200 %q", code, body, want)
	}

	meshtest.Eventually(t, 5*time.Second, "the access log to name the principal", func() error {
		data, _ := os.ReadFile(logPath)
		if !strings.Contains(string(data), `"principal":"jwt:idp:ada"`) {
			return fmt.Errorf("no principal in:\n%s", data)
		}
		if strings.Contains(string(data), "eyJ") {
			t.Fatalf("a token is in the access log:\n%s", data)
		}
		return nil
	})

	metrics := scrape(t, adminLn.Addr().String())
	for _, re := range []string{
		`sidemesh_jwt_keys_age_seconds\{[^}]*sidemesh_jwt_provider="idp"[^}]*\} [0-9.e+-]+\n`,
		`sidemesh_jwt_keys_fetches_total\{[^}]*sidemesh_jwt_provider="idp"[^}]*sidemesh_result="ok"[^}]*\} [1-9]`,
		`sidemesh_jwt_keys_fetches_total\{[^}]*sidemesh_jwt_provider="idp"[^}]*sidemesh_result="error"[^}]*\} 0\n`,
	} {
		if !regexp.MustCompile(re).Match(metrics) {
			t.Errorf("/metrics lacks %s", re)
		}
	}
}
