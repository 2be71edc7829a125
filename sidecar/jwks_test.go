package sidecar

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// TestJWKSFetchedOnceAcrossEdges: three edges in a pool share their
// issuer's key set. After a key rotation, the first token signed with
// the new key, through any edge, causes exactly one fetch across the
// three, and the other edges accept tokens of the new key without one.
func TestJWKSFetchedOnceAcrossEdges(t *testing.T) {
	// Three rotations within seconds: each edge may ask once per
	// rotation. (Rotations are hours apart in life; an edge's asks for
	// unknown key IDs are rate-limited to one per 10 s.)
	old := jwtUnknownKeyRefetch
	jwtUnknownKeyRefetch = time.Nanosecond
	t.Cleanup(func() { jwtUnknownKeyRefetch = old })
	var mu sync.Mutex
	keys := map[string]*ecdsa.PrivateKey{}
	addKey := func(kid string) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		mu.Lock()
		keys[kid] = k
		mu.Unlock()
	}
	addKey("old")
	var fetches atomic.Int64
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		mu.Lock()
		defer mu.Unlock()
		var set jose.JSONWebKeySet
		for kid, k := range keys {
			set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.Public(), KeyID: kid, Algorithm: "ES256", Use: "sig"})
		}
		w.Header().Set("Cache-Control", "max-age=3600")
		json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(idp.Close)
	sign := func(kid string) string {
		mu.Lock()
		k := keys[kid]
		mu.Unlock()
		signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: k, KeyID: kid}}, nil)
		tok, _ := jwt.Signed(signer).Claims(map[string]any{"sub": "ada", "exp": time.Now().Add(time.Hour).Unix()}).Serialize()
		return tok
	}

	app := namedBackend(t, "app")
	dir := t.TempDir()
	gkey, _ := gossip.GenerateKey()
	keyFile := filepath.Join(dir, "gossip.key")
	os.WriteFile(keyFile, []byte(gkey), 0o600)
	var edges []*Sidecar
	var addrs []string
	seed := ""
	for i := range 3 {
		addr := listenAddr(t)
		bind := fmt.Sprintf("127.0.0.1:%d", meshtest.FreeUDPAndTCPPort(t))
		join := "[]"
		if seed == "" {
			seed = bind
		} else {
			join = "[" + seed + "]"
		}
		edges = append(edges, start(t, parse(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  jwt_providers: [{ name: idp, jwks_url: %s }]
  routes:
    - { name: api, matches: [{ path: { prefix: / } }], auth: { jwt: idp }, backends: [{ service: app }] }
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
discovery: { gossip: { bind: %s, join: %s, key_file: %s, profile: local, node_name: edge-%d } }
`, addr, idp.URL, app, bind, join, keyFile, i))))
		addrs = append(addrs, addr)
	}
	meshtest.WaitFor(t, 15*time.Second, "three edges in the pool, each with the key set", func() bool {
		for _, e := range edges {
			if e.GossipMembers() != 3 || !e.JWTProviders()["idp"].Loaded || len(e.backends.pool.Store().List(routeDigestPrefix)) != 3 {
				return false
			}
		}
		return true
	})
	c := &http.Client{Timeout: 10 * time.Second}
	call := func(i int, tok string) int {
		req, _ := http.NewRequest("GET", "http://"+addrs[i]+"/x", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for i := range 3 {
		if code := call(i, sign("old")); code != 200 {
			t.Fatalf("edge-%d with the old key: %d", i, code)
		}
	}
	t.Logf("%d fetches while three edges started", fetches.Load())

	for i := range 3 { // each edge in turn sees the first token of a new key
		kid := fmt.Sprintf("new-%d", i)
		addKey(kid)
		before := fetches.Load()
		if code := call(i, sign(kid)); code != 200 {
			for j, e := range edges {
				t.Logf("edge-%d: %+v, owner %s", j, e.JWTProviders()["idp"], loaded(&e.jwt)["idp"].shared.owner())
			}
			t.Fatalf("edge-%d, first token of %s: %d (%d fetches since the rotation)", i, kid, code, fetches.Load()-before)
		}
		for j := range 3 {
			if code := call(j, sign(kid)); code != 200 {
				t.Errorf("edge-%d with %s: %d", j, kid, code)
			}
		}
		if n := fetches.Load() - before; n != 1 {
			t.Errorf("rotation to %s seen first through edge-%d: %d fetches across the edges, want 1", kid, i, n)
		}
	}
}
