package authn

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// idp is a test identity provider: signing keys, and a JWKS endpoint
// that counts its fetches and can be taken down.
type idp struct {
	t       testing.TB
	mu      sync.Mutex
	keys    map[string]crypto.Signer // by kid
	algs    map[string]jose.SignatureAlgorithm
	down    atomic.Bool
	fetches atomic.Int64
	srv     *httptest.Server
}

var (
	rsaKeyOnce sync.Once
	rsaKey     *rsa.PrivateKey
)

// testRSAKey is one RSA key for every test: generating them is slow
// under the race detector.
func testRSAKey(t testing.TB) *rsa.PrivateKey {
	rsaKeyOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		rsaKey = k
	})
	return rsaKey
}

func newIDP(t testing.TB) *idp {
	p := &idp{t: t, keys: map[string]crypto.Signer{}, algs: map[string]jose.SignatureAlgorithm{}}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.fetches.Add(1)
		if p.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Cache-Control", "max-age=300")
		json.NewEncoder(w).Encode(p.jwks())
	}))
	t.Cleanup(p.srv.Close)
	return p
}

// add gives the provider a signing key of alg under kid.
func (p *idp) add(kid string, alg jose.SignatureAlgorithm) {
	var k crypto.Signer
	switch alg {
	case jose.RS256, jose.PS256:
		k = testRSAKey(p.t)
	case jose.ES256:
		k, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case jose.EdDSA:
		_, k, _ = ed25519.GenerateKey(rand.Reader)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keys[kid], p.algs[kid] = k, alg
}

func (p *idp) jwks() jose.JSONWebKeySet {
	p.mu.Lock()
	defer p.mu.Unlock()
	var set jose.JSONWebKeySet
	for kid, k := range p.keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.Public(), KeyID: kid, Algorithm: string(p.algs[kid]), Use: "sig"})
	}
	return set
}

// sign returns a token with claims, signed by kid's key.
func (p *idp) sign(kid string, claims any) string {
	p.mu.Lock()
	k, alg := p.keys[kid], p.algs[kid]
	p.mu.Unlock()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: k, KeyID: kid}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		p.t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		p.t.Fatal(err)
	}
	return tok
}

// claims are good claims for the test provider, valid for an hour.
func claims(now time.Time) map[string]any {
	return map[string]any{
		"iss": "https://idp.test", "aud": []string{"shop"}, "sub": "ada",
		"exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "nbf": now.Unix(), "scope": "cart.read cart.write",
	}
}

func with(c map[string]any, k string, v any) map[string]any {
	out := map[string]any{}
	for key, val := range c {
		out[key] = val
	}
	if v == nil {
		delete(out, k)
	} else {
		out[k] = v
	}
	return out
}

func newTestProvider(t *testing.T, p *idp, now func() time.Time) *Provider {
	t.Helper()
	pr, err := NewProvider(ProviderConfig{
		Name: "test-idp", Issuer: "https://idp.test", Audiences: []string{"shop"}, JWKSURL: p.srv.URL,
		ClockSkew: time.Minute, Now: now,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	pr.Start(ctx)
	return pr
}

// TestVerify: tokens of every key type verify; every way a token can be
// wrong is ErrInvalid.
func TestVerify(t *testing.T) {
	p := newIDP(t)
	p.add("rsa", jose.RS256)
	p.add("pss", jose.PS256)
	p.add("ec", jose.ES256)
	p.add("ed", jose.EdDSA)
	now := time.Now()
	pr := newTestProvider(t, p, func() time.Time { return now })
	ctx := context.Background()
	for _, kid := range []string{"rsa", "pss", "ec", "ed"} {
		got, err := pr.Verify(ctx, p.sign(kid, claims(now)))
		if err != nil {
			t.Fatalf("%s: %v", kid, err)
		}
		if got.Subject != "ada" || strings.Join(got.Scopes(), ",") != "cart.read,cart.write" {
			t.Errorf("%s: principal %+v", kid, got)
		}
	}

	good := p.sign("rsa", claims(now))
	parts := strings.Split(good, ".")
	forged, _ := json.Marshal(with(claims(now), "sub", "root"))
	der, _ := x509.MarshalPKIXPublicKey(testRSAKey(t).Public())
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	hmacSigner, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: jose.JSONWebKey{Key: pubPEM, KeyID: "rsa"}}, nil)
	hsWithPublicKey, _ := jwt.Signed(hmacSigner).Claims(claims(now)).Serialize()
	enc := base64.RawURLEncoding
	none := enc.EncodeToString([]byte(`{"alg":"none","kid":"rsa","typ":"JWT"}`)) + "." + parts[1] + "."
	for name, tok := range map[string]string{
		"wrong audience":            p.sign("rsa", with(claims(now), "aud", []string{"billing"})),
		"wrong issuer":              p.sign("rsa", with(claims(now), "iss", "https://evil.test")),
		"expired beyond the skew":   p.sign("ec", with(claims(now), "exp", now.Add(-2*time.Minute).Unix())),
		"nbf in the future":         p.sign("ec", with(claims(now), "nbf", now.Add(2*time.Minute).Unix())),
		"iat in the future":         p.sign("ed", with(claims(now), "iat", now.Add(2*time.Minute).Unix())),
		"no exp":                    p.sign("ed", with(claims(now), "exp", nil)),
		"alg none":                  none,
		"HS256 with the public key": hsWithPublicKey,
		"tampered payload":          parts[0] + "." + enc.EncodeToString(forged) + "." + parts[2],
		"not a JWT":                 "abc",
		"unknown key":               strings.Replace(good, parts[0], enc.EncodeToString([]byte(`{"alg":"RS256","kid":"nope","typ":"JWT"}`)), 1),
	} {
		if _, err := pr.Verify(ctx, tok); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	// Within the skew: expired 30 s ago is still good.
	if _, err := pr.Verify(ctx, p.sign("ec", with(claims(now), "exp", now.Add(-30*time.Second).Unix()))); err != nil {
		t.Errorf("expired within the skew: %v", err)
	}
}

// TestAlgorithmAllowList: a provider allowing ES256 only refuses an
// RS256 token signed by a key of its own set.
func TestAlgorithmAllowList(t *testing.T) {
	p := newIDP(t)
	p.add("rsa", jose.RS256)
	p.add("ec", jose.ES256)
	pr, err := NewProvider(ProviderConfig{Name: "x", JWKSURL: p.srv.URL, Algorithms: []string{"ES256"}})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if _, err := pr.Verify(context.Background(), p.sign("rsa", claims(now))); !errors.Is(err, ErrInvalid) {
		t.Errorf("RS256 with only ES256 allowed: %v", err)
	}
	if _, err := pr.Verify(context.Background(), p.sign("ec", claims(now))); err != nil {
		t.Errorf("ES256: %v", err)
	}
	if _, err := NewProvider(ProviderConfig{Name: "x", JWKSURL: p.srv.URL, Algorithms: []string{"HS256"}}); err == nil {
		t.Error("a provider allowing HS256 was accepted")
	}
}

// TestRotationAndUnknownKeys: the first token signed with a new key
// causes exactly one fetch, shared by the concurrent requests that carry
// it; 1,000 tokens with made-up key IDs cause at most one more.
func TestRotationAndUnknownKeys(t *testing.T) {
	p := newIDP(t)
	p.add("old", jose.ES256)
	now := time.Now()
	pr := newTestProvider(t, p, func() time.Time { return now })
	ctx := context.Background()
	if _, err := pr.Verify(ctx, p.sign("old", claims(now))); err != nil {
		t.Fatal(err)
	}
	before := p.fetches.Load()
	p.add("new", jose.ES256)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range 50 {
		tok := p.sign("new", with(claims(now), "jti", fmt.Sprint(i)))
		wg.Go(func() {
			if _, err := pr.Verify(ctx, tok); err != nil {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if failed.Load() != 0 || p.fetches.Load()-before != 1 {
		t.Fatalf("rotation: %d of 50 failed, %d fetches; want none failed and exactly one fetch", failed.Load(), p.fetches.Load()-before)
	}

	before = p.fetches.Load()
	enc := base64.RawURLEncoding
	good := strings.Split(p.sign("new", claims(now)), ".")
	for i := range 1000 {
		hdr := enc.EncodeToString(fmt.Appendf(nil, `{"alg":"ES256","kid":"random-%d","typ":"JWT"}`, i))
		if _, err := pr.Verify(ctx, hdr+"."+good[1]+"."+good[2]); !errors.Is(err, ErrInvalid) {
			t.Fatalf("random kid %d: %v", i, err)
		}
	}
	if n := p.fetches.Load() - before; n > 1 {
		t.Errorf("1,000 random key IDs caused %d fetches, want at most 1", n)
	}
	if st := pr.Stats(); st.UnknownKeys < 1000 {
		t.Errorf("stats %+v: want the unknown key IDs counted", st)
	}
}

// TestProviderDown: before any key set, tokens fail closed; after one,
// the provider going down changes nothing but the set's age.
func TestProviderDown(t *testing.T) {
	p := newIDP(t)
	p.add("ec", jose.ES256)
	p.down.Store(true)
	var offset atomic.Int64
	base := time.Now()
	clock := func() time.Time { return base.Add(time.Duration(offset.Load())) }
	pr := newTestProvider(t, p, clock)
	ctx := context.Background()
	if _, err := pr.Verify(ctx, p.sign("ec", claims(base))); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("before any key set: %v, want ErrUnavailable", err)
	}
	p.down.Store(false)
	if _, err := pr.Verify(ctx, p.sign("ec", claims(base))); err != nil {
		t.Fatalf("once the provider answers: %v", err)
	}
	p.down.Store(true)
	offset.Store(int64(20 * time.Minute)) // long past max-age=300
	if _, err := pr.Verify(ctx, p.sign("ec", claims(clock()))); err != nil {
		t.Fatalf("provider down after a good fetch: %v", err)
	}
	if st := pr.Stats(); !st.Loaded || st.Age < 20*time.Minute {
		t.Errorf("stats %+v: want the stale set's age reported", st)
	}
}

// TestJWKSFile: a key set on disk, reloaded; symmetric keys in it are
// ignored.
func TestJWKSFile(t *testing.T) {
	p := newIDP(t)
	p.add("ed", jose.EdDSA)
	set := p.jwks()
	set.Keys = append(set.Keys, jose.JSONWebKey{Key: []byte("0123456789abcdef0123456789abcdef"), KeyID: "hmac", Algorithm: "HS256"})
	data, _ := json.Marshal(set)
	file := filepath.Join(t.TempDir(), "jwks.json")
	os.WriteFile(file, data, 0o600)
	pr, err := NewProvider(ProviderConfig{Name: "file", JWKSFile: file})
	if err != nil {
		t.Fatal(err)
	}
	if st := pr.Stats(); st.Keys != 1 {
		t.Errorf("keys = %d, want the Ed25519 key only", st.Keys)
	}
	if _, err := pr.Verify(context.Background(), p.sign("ed", claims(time.Now()))); err != nil {
		t.Fatal(err)
	}
	if _, err := NewProvider(ProviderConfig{Name: "none"}); err == nil {
		t.Error("a provider without keys was accepted")
	}
}

// BenchmarkVerify: a cached token, and an uncached ES256 and RS256 one.
func BenchmarkVerify(b *testing.B) {
	p := newIDP(b)
	p.add("ec", jose.ES256)
	p.add("rsa", jose.RS256)
	now := time.Now()
	pr, err := NewProvider(ProviderConfig{Name: "b", JWKSURL: p.srv.URL, Now: func() time.Time { return now }})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for _, kid := range []string{"ec", "rsa"} {
		tok := p.sign(kid, claims(now))
		pr.Verify(ctx, tok)
		b.Run("cached/"+kid, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := pr.Verify(ctx, tok); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("uncached/"+kid, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				pr.cache = newTokenCache(1)
				if _, err := pr.Verify(ctx, tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
