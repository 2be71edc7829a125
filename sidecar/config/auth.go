package config

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/policy/authn"
)

// JWTProvider is an issuer whose JWTs an edge verifies.
type JWTProvider struct {
	// Name is how routes refer to the provider. Required, unique.
	Name string `yaml:"name"`
	// Issuer, when set, must equal a token's "iss".
	Issuer string `yaml:"issuer"`
	// Audiences, when set, must include one of a token's "aud".
	Audiences []string `yaml:"audiences"`
	// JWKSURL is the provider's key set, fetched at start and kept fresh
	// by its Cache-Control (https, or http on loopback only). Exactly
	// one of JWKSURL and JWKSFile.
	JWKSURL string `yaml:"jwks_url"`
	// JWKSFile is a key set on disk, read again on reload.
	JWKSFile string `yaml:"jwks_file"`
	// Algorithms allowed; default every asymmetric one sidemesh knows
	// (RS256/384/512, PS256, ES256/384, EdDSA). Never an HMAC one, never
	// "none".
	Algorithms []string `yaml:"algorithms"`
	// ClockSkew is the leeway on exp, nbf and iat. Default 60s.
	ClockSkew time.Duration `yaml:"clock_skew"`
	// From is where requests carry the token; default the Authorization
	// header's Bearer credentials.
	From TokenSource `yaml:"from"`
}

func (p *JWTProvider) setDefaults() { *p = JWTProvider{ClockSkew: time.Minute} }

// TokenSource is where a request carries its token: at most one field
// set; none means "Authorization: Bearer <token>".
type TokenSource struct {
	// Header names a header that holds the token alone.
	Header string `yaml:"header"`
	// Query names a query parameter.
	Query string `yaml:"query"`
	// Cookie names a cookie.
	Cookie string `yaml:"cookie"`
}

// APIKeySet is a set of API keys an edge accepts.
type APIKeySet struct {
	// Name is how routes refer to the set. Required, unique.
	Name string `yaml:"name"`
	// File lists the keys: a YAML list of { id, key | sha256, expires,
	// metadata }, read again on reload. Required.
	File string `yaml:"file"`
	// Header carries the key; default X-Api-Key.
	Header string `yaml:"header"`
	// Query, when set, also accepts the key in this query parameter
	// (off by default: URLs end up in logs and browser histories).
	Query string `yaml:"query"`
	// HideCredentials removes the key from the request before the
	// backend sees it. Default true.
	HideCredentials bool `yaml:"hide_credentials"`
	// MaxIsolation: an edge cut off from every other member of its
	// gossip pool (they died, as far as it can tell) for longer than
	// this refuses the set's keys, since it cannot learn of a revocation
	// made elsewhere. Default 5m; 0 never refuses for it.
	MaxIsolation time.Duration `yaml:"max_isolation"`
}

func (k *APIKeySet) setDefaults() {
	*k = APIKeySet{Header: "X-Api-Key", HideCredentials: true, MaxIsolation: 5 * time.Minute}
}

// RouteAuth is what a route requires of its callers: a JWT or an API
// key, exactly one.
type RouteAuth struct {
	// JWT names the provider (edge.jwt_providers) whose token a request
	// must carry.
	JWT string `yaml:"jwt"`
	// APIKey names the key set (edge.api_keys) one of whose keys a
	// request must carry.
	APIKey string `yaml:"api_key"`
	// Require is what the verified token must grant, else 403.
	Require AuthRequire `yaml:"require"`
	// ForwardClaims sends claims to the backend as headers: claim name
	// to header name (for an API key, "id" is the key's ID and any
	// other name a metadata value). A header of that name from the
	// client is removed first, so that none can be forged.
	ForwardClaims map[string]string `yaml:"forward_claims"`
	// ForwardToken passes the token on to the backend; by default it is
	// removed from the request.
	ForwardToken bool `yaml:"forward_token"`
}

// AuthRequire is what a token must hold.
type AuthRequire struct {
	// Scopes must all be among the token's ("scope", space-separated, or
	// "scp").
	Scopes []string `yaml:"scopes"`
	// Claims must each equal the token's claim of that name (or, for a
	// list claim, be one of its values).
	Claims map[string]string `yaml:"claims"`
}

// jwtProviders checks the edge's JWT providers and every route's auth.
func (v *validator) jwtProviders(e *Edge) {
	names := map[string]int{}
	for i := range e.JWTProviders {
		p := &e.JWTProviders[i]
		path := fmt.Sprintf("edge.jwt_providers[%d]", i)
		v.uniqueName(names, "edge.jwt_providers", i, p.Name, "the provider")
		switch {
		case (p.JWKSURL == "") == (p.JWKSFile == ""):
			v.errorf(path, "exactly one of jwks_url and jwks_file: where the provider's public keys are")
		case p.JWKSURL != "":
			v.jwksURL(path+".jwks_url", p.JWKSURL)
		}
		for j, a := range p.Algorithms {
			if !slices.Contains(authn.Algorithms, a) {
				v.errorf(fmt.Sprintf("%s.algorithms[%d]", path, j), "unknown or refused algorithm %s: want one of %s (no HMAC algorithm: the keys are public)",
					quote(a), strings.Join(authn.Algorithms, ", "))
			}
		}
		v.nonNegative(path+".clock_skew", p.ClockSkew)
		set := 0
		for _, f := range []string{p.From.Header, p.From.Query, p.From.Cookie} {
			if f != "" {
				set++
			}
		}
		if set > 1 {
			v.errorf(path+".from", "at most one of header, query and cookie")
		}
		if p.From.Header != "" && !validHeaderName(p.From.Header) {
			v.errorf(path+".from.header", "invalid header name %s", quote(p.From.Header))
		}
		if p.From.Cookie != "" && !validCookieName(p.From.Cookie) {
			v.errorf(path+".from.cookie", "invalid cookie name %s", quote(p.From.Cookie))
		}
	}
	for i := range e.Routes {
		a := e.Routes[i].Auth
		if a == nil {
			continue
		}
		path := fmt.Sprintf("edge.routes[%d].auth", i)
		switch _, ok := names[a.JWT]; {
		case (a.JWT == "") == (a.APIKey == ""):
			v.errorf(path, "exactly one of jwt (a provider's tokens) and api_key (a key set's keys)")
		case a.JWT != "" && !ok:
			v.errorf(path+".jwt", "no edge.jwt_providers entry is named %s", quote(a.JWT))
		case a.APIKey != "" && !slices.ContainsFunc(e.APIKeys, func(k APIKeySet) bool { return k.Name == a.APIKey }):
			v.errorf(path+".api_key", "no edge.api_keys entry is named %s", quote(a.APIKey))
		case a.APIKey != "" && (len(a.Require.Scopes) > 0 || len(a.Require.Claims) > 0):
			v.errorf(path+".require", "scopes and claims are for JWTs; an API key grants its route")
		}
		for claim, h := range a.ForwardClaims {
			if claim == "" || !validHeaderName(h) {
				v.errorf(path+".forward_claims", "%s: %s is not a header name", quote(claim), quote(h))
			}
		}
		if e.Routes[i].Redirect != nil {
			v.errorf(path, "a route that redirects sends nothing to authenticate for")
		}
	}
}

// uniqueName checks the name of entry i of the list at list, which
// routes refer to as what: required, and unlike the names before it,
// which names maps to their index (it adds this one).
func (v *validator) uniqueName(names map[string]int, list string, i int, name, what string) {
	path := fmt.Sprintf("%s[%d].name", list, i)
	switch prev, dup := names[name]; {
	case name == "":
		v.errorf(path, "required: routes name %s by it", what)
	case dup:
		v.errorf(path, "%s is also the name of %s[%d]", quote(name), list, prev)
	default:
		names[name] = i
	}
}

// apiKeySets checks the edge's API key sets.
func (v *validator) apiKeySets(e *Edge) {
	names := map[string]int{}
	for i := range e.APIKeys {
		k := &e.APIKeys[i]
		path := fmt.Sprintf("edge.api_keys[%d]", i)
		v.uniqueName(names, "edge.api_keys", i, k.Name, "the key set")
		if k.File == "" {
			v.errorf(path+".file", "required: the file that lists the keys")
		}
		if !validHeaderName(k.Header) {
			v.errorf(path+".header", "invalid header name %s", quote(k.Header))
		}
		v.nonNegative(path+".max_isolation", k.MaxIsolation)
	}
}

// jwksURL checks a key set's URL: https, or http to a loopback address
// (a local agent): keys fetched in the clear could be replaced by anyone
// on the path, who could then sign any token.
func (v *validator) jwksURL(path, s string) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		v.errorf(path, "not an absolute URL: %s", quote(s))
		return
	}
	switch u.Scheme {
	case "https":
	case "http":
		ip := net.ParseIP(u.Hostname())
		if u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
			v.errorf(path, "http:// keys can be replaced in transit, and then any token forged: use https (plain http only to a loopback address)")
		}
	default:
		v.errorf(path, "scheme %s: want https", quote(u.Scheme))
	}
}

// jwksFiles returns the edge's JWKS files, for path resolution and
// checking.
func (e *Edge) jwksFiles() []fileField {
	if e == nil {
		return nil
	}
	var fs []fileField
	for i := range e.JWTProviders {
		fs = append(fs, fileField{fmt.Sprintf("edge.jwt_providers[%d].jwks_file", i), &e.JWTProviders[i].JWKSFile})
	}
	return fs
}

// apiKeyFiles returns the edge's API key files, for path resolution and
// checking.
func (e *Edge) apiKeyFiles() []fileField {
	if e == nil {
		return nil
	}
	var fs []fileField
	for i := range e.APIKeys {
		fs = append(fs, fileField{fmt.Sprintf("edge.api_keys[%d].file", i), &e.APIKeys[i].File})
	}
	return fs
}

// AuthnConfig returns the verifier configuration of p.
func (p *JWTProvider) AuthnConfig() authn.ProviderConfig {
	return authn.ProviderConfig{
		Name: p.Name, Issuer: p.Issuer, Audiences: p.Audiences, JWKSFile: p.JWKSFile, JWKSURL: p.JWKSURL,
		Algorithms: p.Algorithms, ClockSkew: p.ClockSkew,
	}
}
