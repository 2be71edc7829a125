package sidecar

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// testIdP is an identity provider whose JWKS endpoint counts its
// fetches and serves every key added with addKey.
type testIdP struct {
	*httptest.Server
	fetches atomic.Int64
	mu      sync.Mutex
	keys    map[string]*ecdsa.PrivateKey
}

func newTestIdP(t *testing.T) *testIdP {
	idp := &testIdP{keys: map[string]*ecdsa.PrivateKey{}}
	idp.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		idp.fetches.Add(1)
		idp.mu.Lock()
		defer idp.mu.Unlock()
		var set jose.JSONWebKeySet
		for kid, k := range idp.keys {
			set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.Public(), KeyID: kid, Algorithm: "ES256", Use: "sig"})
		}
		w.Header().Set("Cache-Control", "max-age=3600")
		json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(idp.Close)
	return idp
}

// addKey makes the IdP publish a new key with ID kid.
func (idp *testIdP) addKey(kid string) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	idp.mu.Lock()
	idp.keys[kid] = k
	idp.mu.Unlock()
}

// sign returns a token of the IdP's key kid.
func (idp *testIdP) sign(kid string) string {
	idp.mu.Lock()
	k := idp.keys[kid]
	idp.mu.Unlock()
	return signES256(k, kid)
}

// signES256 returns a token for ada, valid for an hour, signed by k with
// key ID kid.
func signES256(k *ecdsa.PrivateKey, kid string) string {
	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: k, KeyID: kid}}, nil)
	tok, _ := jwt.Signed(signer).Claims(map[string]any{"sub": "ada", "exp": time.Now().Add(time.Hour).Unix()}).Serialize()
	return tok
}

// startJWTEdges starts three edges in one gossip pool, each with one
// route that needs a token of idp, and waits until each has idp's key
// set. It returns them and their listen addresses.
func startJWTEdges(t *testing.T, idp *testIdP) ([]*Sidecar, []string) {
	app := namedBackend(t, "app")
	p := newEdgePool(t, 3, func(addr string) string {
		return fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  jwt_providers: [{ name: idp, jwks_url: %s }]
  routes:
    - { name: api, matches: [{ path: { prefix: / } }], auth: { jwt: idp }, backends: [{ service: app }] }
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
`, addr, idp.URL, app)
	})
	meshtest.WaitFor(t, 15*time.Second, "each edge with the key set and every route digest", func() bool {
		for _, e := range p.edges {
			if !e.JWTProviders()["idp"].Loaded || len(e.backends.pool.Store().List(routeDigestPrefix)) != 3 {
				return false
			}
		}
		return true
	})
	return p.edges, p.addrs
}

// bearerCaller returns a function that sends a request with a bearer
// token to the edge listening at addr and returns the status.
func bearerCaller(t *testing.T) func(addr, tok string) (int, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	t.Cleanup(c.CloseIdleConnections)
	return func(addr, tok string) (int, error) {
		req, _ := http.NewRequest("GET", "http://"+addr+"/x", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
}

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
	idp := newTestIdP(t)
	idp.addKey("old")
	edges, addrs := startJWTEdges(t, idp)
	do := bearerCaller(t)
	call := func(i int, tok string) int {
		code, err := do(addrs[i], tok)
		if err != nil {
			t.Fatal(err)
		}
		return code
	}
	for i := range 3 {
		if code := call(i, idp.sign("old")); code != 200 {
			t.Fatalf("edge-%d with the old key: %d", i, code)
		}
	}
	t.Logf("%d fetches while three edges started", idp.fetches.Load())

	for i := range 3 { // each edge in turn sees the first token of a new key
		kid := fmt.Sprintf("new-%d", i)
		idp.addKey(kid)
		before := idp.fetches.Load()
		if code := call(i, idp.sign(kid)); code != 200 {
			for j, e := range edges {
				t.Logf("edge-%d: %+v, owner %s", j, e.JWTProviders()["idp"], loaded(&e.jwt)["idp"].shared.owner())
			}
			t.Fatalf("edge-%d, first token of %s: %d (%d fetches since the rotation)", i, kid, code, idp.fetches.Load()-before)
		}
		for j := range 3 {
			if code := call(j, idp.sign(kid)); code != 200 {
				t.Errorf("edge-%d with %s: %d", j, kid, code)
			}
		}
		if n := idp.fetches.Load() - before; n != 1 {
			t.Errorf("rotation to %s seen first through edge-%d: %d fetches across the edges, want 1", kid, i, n)
		}
	}
}

// TestJWKSRandomKeyIDFlood: 1,000 tokens signed by a key the issuer does
// not have, each with a fresh random key ID, spread over three edges of
// a pool by 16 concurrent clients, are each answered 401 and cost the
// issuer at most 3 fetches across the edges.
//
// The bound: an edge fetches for an unknown key ID at most once per
// jwtUnknownKeyRefetch (R), other unknown IDs in between being refused
// without one (and each ID, once unknown after a fetch, remembered as
// such); a fetch an edge asks the owner for is one fetch by the owner,
// or the asker's own if the owner does not answer within jwksWait. So a
// flood of D costs at most 3 × (1 + ⌊D/R⌋) fetches. The test sets R to
// a minute and bounds the flood to 30 s, so D < R and the bound is 3.
// (With the default R of 10 s, a loaded machine could take longer than
// R for the flood and the bound would not be derivable from the test.)
func TestJWKSRandomKeyIDFlood(t *testing.T) {
	const (
		tokens   = 1000
		workers  = 16
		refetch  = time.Minute
		deadline = 30 * time.Second
		bound    = 3 // 3 edges × (1 + ⌊D/R⌋), D < R
	)
	old := jwtUnknownKeyRefetch
	jwtUnknownKeyRefetch = refetch
	t.Cleanup(func() { jwtUnknownKeyRefetch = old })
	idp := newTestIdP(t)
	idp.addKey("good")
	_, addrs := startJWTEdges(t, idp)
	do := bearerCaller(t)
	for i := range 3 {
		if code, err := do(addrs[i], idp.sign("good")); err != nil || code != 200 {
			t.Fatalf("edge-%d with the issuer's key: %d %v", i, code, err)
		}
	}
	initial := idp.fetches.Load()

	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	toks := make(chan int)
	var mu sync.Mutex
	codes := map[int]int{}
	var failed []error
	var wg sync.WaitGroup
	began := time.Now()
	stop := began.Add(deadline)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range toks {
				kid := make([]byte, 12)
				rand.Read(kid)
				code, err := do(addrs[i%3], signES256(stranger, hex.EncodeToString(kid)))
				mu.Lock()
				codes[code]++
				if err != nil {
					failed = append(failed, err)
				}
				mu.Unlock()
			}
		}()
	}
	sent := 0
	for ; sent < tokens && time.Now().Before(stop); sent++ {
		toks <- sent
	}
	close(toks)
	wg.Wait()
	took := time.Since(began)
	flood := idp.fetches.Load() - initial
	t.Logf("%d tokens with random key IDs in %v over three edges: %d fetches (after %d at start); answers %v",
		sent, took.Round(time.Millisecond), flood, initial, codes)
	switch {
	case sent < tokens:
		t.Fatalf("sent %d of %d tokens within %v", sent, tokens, deadline)
	case took >= refetch:
		t.Fatalf("the flood took %v, not less than the refetch interval %v: the bound does not hold", took, refetch)
	}
	if len(failed) > 0 {
		t.Errorf("%d requests failed, the first: %v", len(failed), failed[0])
	}
	if codes[401] != tokens {
		t.Errorf("answers %v, want %d × 401", codes, tokens)
	}
	if flood > bound {
		t.Errorf("%d fetches across the edges for the flood, want at most %d", flood, bound)
	}
}
