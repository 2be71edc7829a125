// Package authn verifies the credentials clients present at the edge and
// returns the principal they name. It knows nothing of HTTP routing or
// the pipeline: a JWT Provider verifies a token string against its
// issuer's key set.
//
// JWTs are verified with go-jose (github.com/go-jose/go-jose/v4): it
// parses only the algorithms a caller allows, never accepts "none", and
// refuses a key whose type does not fit the algorithm, so that an HMAC
// signature made with a public key as its secret cannot verify.
package authn

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Algorithms are the signature algorithms a provider may allow: RSA,
// RSA-PSS, ECDSA and EdDSA. No HMAC algorithm is among them (a JWKS is
// public; an HMAC key in it would let anyone sign), and never "none".
var Algorithms = []string{"RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"}

// Errors of Verify. Each wraps the detail; callers answer ErrInvalid and
// ErrUnavailable with 401.
var (
	// ErrInvalid: the token is malformed, its signature does not verify,
	// its key is unknown, or a claim (issuer, audience, expiry, not
	// before, issued at) is wrong.
	ErrInvalid = errors.New("invalid token")
	// ErrUnavailable: no key set has been loaded yet (the identity
	// provider has not answered since start). Verification fails closed.
	ErrUnavailable = errors.New("no key set loaded yet")
)

// Principal is who a verified token names.
type Principal struct {
	// Provider is the name of the provider that verified the token.
	Provider string
	// ID names the caller in logs and spans: "jwt:<provider>:<subject>".
	ID string
	// Subject is the token's "sub" claim.
	Subject string
	// Claims are all of the token's claims, as JSON decodes them.
	Claims map[string]any
	// Expiry is when the token expires ("exp", which is required).
	Expiry time.Time
}

// Scopes returns the token's scopes: the space-separated "scope" claim
// (RFC 8693) or the "scp" list some providers use.
func (p *Principal) Scopes() []string {
	switch v := p.Claims["scope"].(type) {
	case string:
		return strings.Fields(v)
	}
	var out []string
	if list, ok := p.Claims["scp"].([]any); ok {
		for _, s := range list {
			if s, ok := s.(string); ok {
				out = append(out, s)
			}
		}
	}
	return out
}

// ProviderConfig configures a Provider. Exactly one of JWKSFile and
// JWKSURL is set.
type ProviderConfig struct {
	// Name names the provider in errors and metrics.
	Name string
	// Issuer, when set, must equal the token's "iss".
	Issuer string
	// Audiences, when set, must include one of the token's "aud".
	Audiences []string
	// JWKSFile is a JSON Web Key Set on disk, read by NewProvider and by
	// Reload.
	JWKSFile string
	// JWKSURL is fetched at Start and kept fresh (see Provider).
	JWKSURL string
	// Algorithms allowed, a subset of the package's Algorithms; empty
	// allows them all.
	Algorithms []string
	// ClockSkew is the leeway on "exp", "nbf" and "iat". The config's
	// default is 60s; zero allows none.
	ClockSkew time.Duration
	// Client fetches JWKSURL; default a client with a 5 s timeout.
	Client *http.Client
	// Fetch, when set, gets the JWKS in place of a GET of JWKSURL: a
	// fleet of edges shares one fetch through it (see Provider.Offer).
	// Default HTTPFetcher(JWKSURL, Client).
	Fetch Fetcher
	// Latest, when set, returns the newest key set another edge fetched
	// (see Provider.Offer); a token whose key ID is unknown looks there
	// before it may cause a fetch.
	Latest func() (body []byte, fetched time.Time, maxAge time.Duration, ok bool)
	// Now is the clock; default time.Now.
	Now func() time.Time
	// UnknownKeyRefetch is the least time between two fetches caused by
	// tokens whose key ID is not in the set; default 10s. A rotation is
	// picked up at the first such token; a flood of made-up key IDs
	// costs the identity provider at most one fetch per interval.
	UnknownKeyRefetch time.Duration
	// CacheSize bounds the verified tokens kept (by a hash of the token,
	// until they expire); default 10000.
	CacheSize int
}

// Provider verifies the JWTs of one issuer. Keys come from a file, or
// from a URL fetched at Start and again when its Cache-Control max-age
// (default 5 minutes) runs out, with If-None-Match; a token whose key ID
// is not in the set causes one refetch, shared by every request waiting
// for it and at most one per UnknownKeyRefetch, and a key ID still
// unknown after it is remembered (negative cache) so that it causes no
// more. When the URL stops answering, the last good set stays in use
// however old (its age is in Stats). Verified tokens are cached by a
// SHA-256 of the token until they expire. Safe for concurrent use.
type Provider struct {
	cfg   ProviderConfig
	algs  []jose.SignatureAlgorithm
	keys  *keySource
	cache *tokenCache
}

// NewProvider checks c and, for a file, reads its key set.
func NewProvider(c ProviderConfig) (*Provider, error) {
	if (c.JWKSFile == "") == (c.JWKSURL == "") {
		return nil, fmt.Errorf("authn: provider %s: exactly one of a JWKS file and a JWKS URL", c.Name)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.UnknownKeyRefetch == 0 {
		c.UnknownKeyRefetch = 10 * time.Second
	}
	if c.CacheSize == 0 {
		c.CacheSize = 10000
	}
	if c.Client == nil {
		c.Client = &http.Client{Timeout: 5 * time.Second}
	}
	if c.Fetch == nil && c.JWKSURL != "" {
		c.Fetch = HTTPFetcher(c.JWKSURL, c.Client)
	}
	algs := c.Algorithms
	if len(algs) == 0 {
		algs = Algorithms
	}
	p := &Provider{cfg: c, cache: newTokenCache(c.CacheSize)}
	for _, a := range algs {
		if !slices.Contains(Algorithms, a) {
			return nil, fmt.Errorf("authn: provider %s: algorithm %q: want one of %s", c.Name, a, strings.Join(Algorithms, ", "))
		}
		p.algs = append(p.algs, jose.SignatureAlgorithm(a))
	}
	p.keys = newKeySource(c)
	if c.JWKSFile != "" {
		if err := p.keys.load(); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Name returns the provider's name.
func (p *Provider) Name() string { return p.cfg.Name }

// Start fetches a URL's key set in the background and keeps it fresh
// until ctx ends. Verify fails closed (ErrUnavailable) until the first
// fetch succeeds. It does nothing for a file.
func (p *Provider) Start(ctx context.Context) {
	if p.cfg.JWKSURL != "" {
		go p.keys.refreshLoop(ctx)
	}
}

// Offer makes body, a JWKS that another edge fetched at fetched and that
// is fresh for maxAge, the key set in use, unless this provider's is
// newer. It fails if body is not a usable key set.
func (p *Provider) Offer(body []byte, fetched time.Time, maxAge time.Duration) error {
	if err := p.keys.offer(body, fetched, maxAge); err != nil {
		return fmt.Errorf("authn: provider %s: offered key set: %w", p.cfg.Name, err)
	}
	return nil
}

// Refresh fetches the key set now, or joins the fetch in flight.
func (p *Provider) Refresh(ctx context.Context) error {
	if p.cfg.JWKSURL == "" {
		return p.Reload()
	}
	return p.keys.fetchShared(ctx)
}

// Reload reads a file's key set again; for a URL it does nothing.
func (p *Provider) Reload() error {
	if p.cfg.JWKSFile == "" {
		return nil
	}
	return p.keys.load()
}

// Verify checks token and returns its principal.
func (p *Provider) Verify(ctx context.Context, token string) (*Principal, error) {
	now := p.cfg.Now()
	sum := sha256.Sum256([]byte(token))
	if pr := p.cache.get(sum, now); pr != nil {
		return pr, nil
	}
	tok, err := jwt.ParseSigned(token, p.algs)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if len(tok.Headers) != 1 {
		return nil, fmt.Errorf("%w: %d signatures", ErrInvalid, len(tok.Headers))
	}
	h := tok.Headers[0]
	keys, err := p.keys.lookup(ctx, h.KeyID, now)
	if err != nil {
		return nil, err
	}
	var std jwt.Claims
	var all map[string]any
	verified := false
	for _, k := range keys {
		if k.Algorithm != "" && k.Algorithm != h.Algorithm {
			continue // the key is for another algorithm
		}
		if tok.Claims(k.Key, &std, &all) == nil {
			verified = true
			break
		}
	}
	if !verified {
		return nil, fmt.Errorf("%w: signature does not verify with key %q", ErrInvalid, h.KeyID)
	}
	if std.Expiry == nil {
		return nil, fmt.Errorf("%w: no exp claim", ErrInvalid)
	}
	exp := jwt.Expected{Issuer: p.cfg.Issuer, AnyAudience: p.cfg.Audiences, Time: now}
	if err := std.ValidateWithLeeway(exp, p.cfg.ClockSkew); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	pr := &Principal{Provider: p.cfg.Name, ID: "jwt:" + p.cfg.Name + ":" + std.Subject, Subject: std.Subject, Claims: all, Expiry: std.Expiry.Time()}
	p.cache.put(sum, pr, pr.Expiry.Add(p.cfg.ClockSkew))
	return pr, nil
}

// Stats are a provider's key set and fetch counters.
type Stats struct {
	// Loaded reports that a key set is in use; Age is how long ago it
	// was last fetched (or confirmed unchanged) or read.
	Loaded  bool
	Age     time.Duration
	Fetched time.Time
	// Keys is the number of usable keys in the set.
	Keys int
	// Fetches and FetchErrors count fetches of a URL; UnknownKeys the
	// tokens whose key ID was not in the set.
	Fetches, FetchErrors, UnknownKeys uint64
	// Cached is the number of verified tokens cached.
	Cached int
}

// Stats returns the provider's state.
func (p *Provider) Stats() Stats {
	st := p.keys.stats(p.cfg.Now())
	st.Cached = p.cache.len()
	return st
}

// tokenCache keeps verified tokens by their SHA-256 until they expire,
// at most max; beyond, an arbitrary one goes (map order), expired ones
// first when a sweep finds them.
type tokenCache struct {
	max int
	mu  sync.Mutex
	m   map[[32]byte]cachedToken
}

type cachedToken struct {
	p     *Principal
	until time.Time
}

func newTokenCache(max int) *tokenCache {
	return &tokenCache{max: max, m: make(map[[32]byte]cachedToken)}
}

func (c *tokenCache) get(sum [32]byte, now time.Time) *Principal {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[sum]
	if !ok {
		return nil
	}
	if !now.Before(e.until) {
		delete(c.m, sum)
		return nil
	}
	return e.p
}

func (c *tokenCache) put(sum [32]byte, p *Principal, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		for k := range c.m { // evict one; map order is random
			delete(c.m, k)
			break
		}
	}
	c.m[sum] = cachedToken{p: p, until: until}
}

func (c *tokenCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
