package edge_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/sidecar"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/edge"
)

// benchTable compiles n routes over 10 hostnames, each route a few
// prefix matches with headers and a method, as a large API gateway has.
func benchTable(b *testing.B, n int) *edge.Table {
	var y strings.Builder
	y.WriteString("edge:\n  listeners: [{ listen: 127.0.0.1:1 }]\n  routes:\n")
	for i := range n {
		fmt.Fprintf(&y, "    - { name: r%d, hostnames: [h%d.example.com], matches: [{ path: { prefix: /api/v%d/svc%d }, method: GET }, { path: { exact: /svc%d/health } }, { path: { prefix: /svc%d }, headers: [{ name: X-Tenant, exact: t%d }] }], backends: [{ service: app }] }\n",
			i, i%10, i%3, i, i, i, i%7)
	}
	y.WriteString("upstreams: [{ service: app, endpoints: [{ address: 127.0.0.1:2 }] }]\n")
	cfg, err := config.Parse("bench.yaml", []byte(y.String()))
	if err != nil {
		b.Fatal(err)
	}
	return edge.Compile(cfg.Edge.Routes)
}

// BenchmarkMatch: the cost of matching one request against 10 and 1,000
// routes (the last route's, the worst case of a linear table).
func BenchmarkMatch(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprint(n, "_routes"), func(b *testing.B) {
			tab := benchTable(b, n)
			last := n - 1
			path := fmt.Sprintf("/api/v%d/svc%d/items/42", last%3, last)
			r := httptest.NewRequest("GET", "http://h9.example.com"+path, nil)
			host := edge.HostOf(r.Host)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				m, _ := tab.Match(host, path, r)
				if m.Route == nil {
					b.Fatal("no match")
				}
			}
		})
	}
}

// BenchmarkEdgeTLS: requests through an edge route with TLS termination
// (HTTP/1.1 keep-alive, parallel clients) to a backend on loopback; its
// twin BenchmarkEdgeDirect sends the same requests to the backend itself.
// Their ns/op ratio is the edge's cost.
func BenchmarkEdgeTLS(b *testing.B) {
	ca := newTestCA(b)
	certFile, keyFile := ca.issue(b, "shop", "shop.example.com")
	backend := benchBackend(b)
	ln := meshtest.Listen(b)
	addr := ln.Addr().String()
	startEdgeB(b, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s, tls: { certificates: [{ cert_file: %s, key_file: %s }] } }]
  routes: [{ name: shop, hostnames: [shop.example.com], matches: [{ path: { prefix: /api } }], backends: [{ service: app }] }]
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
`, addr, certFile, keyFile, backend), ln)
	tr := &http.Transport{MaxIdleConnsPerHost: 64, TLSClientConfig: &tls.Config{RootCAs: ca.roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}}
	defer tr.CloseIdleConnections()
	benchGet(b, &http.Client{Transport: tr}, "https://shop.example.com/api/items")
}

// BenchmarkEdgeAuthLimit: requests through one edge to one backend, on a
// route without filters (plain) and on one that verifies a JWT (ES256,
// from the verified-token cache after the first) and takes a token of a
// rate limit keyed by its subject (jwt+limit), in one run: their ratio
// is what authentication and a rate limit cost a request.
func BenchmarkEdgeAuthLimit(b *testing.B) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	}))
	b.Cleanup(jwks.Close)
	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, nil)
	tok, err := jwt.Signed(signer).Claims(map[string]any{"iss": "https://idp.test", "aud": "shop", "sub": "ada", "exp": time.Now().Add(time.Hour).Unix()}).Serialize()
	if err != nil {
		b.Fatal(err)
	}
	backend := benchBackend(b)
	ln := meshtest.Listen(b)
	addr := ln.Addr().String()
	startEdgeB(b, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  jwt_providers: [{ name: idp, issuer: "https://idp.test", audiences: [shop], jwks_url: %s }]
  routes:
    - { name: plain, matches: [{ path: { prefix: /plain } }], backends: [{ service: app }] }
    - name: guarded
      matches: [{ path: { prefix: /guarded } }]
      auth: { jwt: idp }
      rate_limits: [{ key: jwt:sub, rate: 1000000/s }]
      backends: [{ service: app }]
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
`, addr, jwks.URL, backend), ln)
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tokenTransport{tr, "Bearer " + tok}}
	b.Run("plain", func(b *testing.B) { benchGet(b, c, "http://"+addr+"/plain/items") })
	b.Run("jwt+limit", func(b *testing.B) { benchGet(b, c, "http://"+addr+"/guarded/items") })
}

// tokenTransport sends every request with an Authorization header.
type tokenTransport struct {
	http.RoundTripper
	auth string
}

func (t tokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", t.auth)
	return t.RoundTripper.RoundTrip(r)
}

func BenchmarkEdgeDirect(b *testing.B) {
	backend := benchBackend(b)
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	benchGet(b, &http.Client{Transport: tr}, "http://"+backend+"/api/items")
}

func benchBackend(b *testing.B) string {
	ln := meshtest.Listen(b)
	body := []byte(strings.Repeat("x", 1024))
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write(body)
	})}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func benchGet(b *testing.B, c *http.Client, url string) {
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := c.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}

func startEdgeB(b *testing.B, yaml string, lns ...net.Listener) {
	cfg, err := config.Parse("edge.yaml", []byte(yaml))
	if err != nil {
		b.Fatal(err)
	}
	s := sidecar.New(cfg, slog.New(slog.DiscardHandler), sidecar.WithListeners(lns...))
	if err := s.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
}
