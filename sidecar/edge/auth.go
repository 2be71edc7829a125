package edge

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/policy/authn"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

// Verifier verifies a token; *authn.Provider is one.
type Verifier interface {
	Name() string
	Verify(ctx context.Context, token string) (*authn.Principal, error)
}

// AuthFilter returns the filter that requires a route's callers to carry
// a token v verifies, found where from says, that grants what a
// requires. A request without a token, or whose token does not verify
// (or whose provider has no keys yet: it fails closed), is answered 401
// with a WWW-Authenticate challenge (RFC 6750); one whose token verifies
// but does not grant the required scopes or claims, 403. Otherwise the
// filter records the principal and the token's claims in the request's
// Info (for edge.policy), replaces the
// forwarded claims' headers (a client's copies are removed first), and
// removes the token unless a.ForwardToken.
func AuthFilter(v Verifier, from config.TokenSource, a *config.RouteAuth) pipeline.Filter {
	return pipeline.FilterFunc(func(w http.ResponseWriter, r *http.Request, next pipeline.Handler) error {
		token := tokenOf(r, from)
		if token == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sidemesh"`)
			return pipeline.Errorf(http.StatusUnauthorized, pipeline.KindUnauthenticated, "this route needs a token from %s", v.Name())
		}
		p, err := v.Verify(r.Context(), token)
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sidemesh", error="invalid_token"`)
			e := pipeline.Errorf(http.StatusUnauthorized, pipeline.KindUnauthenticated, "the token is not valid")
			if errors.Is(err, authn.ErrUnavailable) {
				e.Msg = "the token cannot be checked yet: its issuer's keys are not loaded"
			}
			e.Err = err
			return e
		}
		if info := pipeline.InfoFrom(r.Context()); info != nil {
			info.Principal, info.Claims = p.ID, p.Claims
			if info.Claims == nil {
				info.Claims = map[string]any{} // a verified token, even without claims
			}
		}
		if missing := lacks(p, a.Require); missing != "" {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="sidemesh", error="insufficient_scope", scope=%q`, strings.Join(a.Require.Scopes, " ")))
			return pipeline.Errorf(http.StatusForbidden, pipeline.KindDenied, "the token does not grant %s", missing)
		}
		for claim, h := range a.ForwardClaims {
			r.Header.Del(h)
			if v, ok := claimText(p.Claims[claim]); ok {
				r.Header.Set(h, v)
			}
		}
		if !a.ForwardToken {
			removeToken(r, from)
		}
		return next.ServeHTTP(w, r)
	})
}

// tokenOf returns the token r carries where from says; "" when none.
func tokenOf(r *http.Request, from config.TokenSource) string {
	switch {
	case from.Header != "":
		return strings.TrimSpace(r.Header.Get(from.Header))
	case from.Query != "":
		return r.URL.Query().Get(from.Query)
	case from.Cookie != "":
		if c, err := r.Cookie(from.Cookie); err == nil {
			return c.Value
		}
		return ""
	}
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// removeToken takes the token out of r, so that the backend never sees
// it.
func removeToken(r *http.Request, from config.TokenSource) {
	switch {
	case from.Header != "":
		r.Header.Del(from.Header)
	case from.Query != "":
		q := r.URL.Query()
		q.Del(from.Query)
		r.URL.RawQuery = q.Encode()
	case from.Cookie != "":
		cookies := r.Cookies()
		r.Header.Del("Cookie")
		for _, c := range cookies {
			if c.Name != from.Cookie {
				r.AddCookie(c)
			}
		}
	default:
		r.Header.Del("Authorization")
	}
}

// lacks returns what p does not grant of req ("scope cart.write",
// "claim tenant=acme"); "" when it grants it all.
func lacks(p *authn.Principal, req config.AuthRequire) string {
	scopes := p.Scopes()
	for _, s := range req.Scopes {
		if !slices.Contains(scopes, s) {
			return "scope " + s
		}
	}
	for name, want := range req.Claims {
		switch v := p.Claims[name].(type) {
		case []any:
			if !slices.ContainsFunc(v, func(e any) bool { s, _ := claimText(e); return s == want }) {
				return "claim " + name + "=" + want
			}
		default:
			if s, ok := claimText(v); !ok || s != want {
				return "claim " + name + "=" + want
			}
		}
	}
	return ""
}

// claimText renders a claim as a header value: a string as is, a number
// or boolean in JSON's form, a list of those joined by commas; ok is
// false for anything else (an object), which is not forwarded.
func claimText(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, !strings.ContainsAny(v, "\r\n\x00")
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), true
	case bool:
		return strconv.FormatBool(v), true
	case []any:
		parts := make([]string, 0, len(v))
		for _, e := range v {
			s, ok := claimText(e)
			if !ok || strings.Contains(s, ",") {
				return "", false
			}
			parts = append(parts, s)
		}
		return strings.Join(parts, ","), true
	}
	return "", false
}

// KeyVerifier verifies an API key; *authn.KeySet is one.
type KeyVerifier interface {
	Name() string
	Verify(presented string, now time.Time) (*authn.APIKey, error)
}

// APIKeyFilter returns the filter that requires a route's callers to
// carry a key of ks, in set's header (or, when set.Query is set, that
// query parameter). Without one, or with one that is unknown, expired
// or revoked, the request is answered 401. Otherwise the filter records
// the principal ("apikey:<set>:<id>") and the set and key ID in the
// request's Info (for edge.policy), forwards the key's ID and
// metadata as a.ForwardClaims says ("id", or a metadata name; client
// copies of those headers removed first), and, with
// set.HideCredentials, removes the key from the request.
//
// isolated says how long the edge has been cut off from the other edges:
// past set.MaxIsolation (when positive) every key is refused, since a
// revocation made elsewhere could not have reached it.
func APIKeyFilter(ks KeyVerifier, set config.APIKeySet, a *config.RouteAuth, now func() time.Time, isolated func() time.Duration) pipeline.Filter {
	challenge := fmt.Sprintf(`ApiKey realm="sidemesh", header=%q`, set.Header)
	return pipeline.FilterFunc(func(w http.ResponseWriter, r *http.Request, next pipeline.Handler) error {
		if cut := isolated(); set.MaxIsolation > 0 && cut > set.MaxIsolation {
			w.Header().Set("WWW-Authenticate", challenge)
			return pipeline.Errorf(http.StatusUnauthorized, pipeline.KindUnauthenticated,
				"this edge has been cut off from the other edges for %v and cannot confirm that an API key is not revoked", cut.Round(time.Second))
		}
		presented := r.Header.Get(set.Header)
		if presented == "" && set.Query != "" {
			presented = r.URL.Query().Get(set.Query)
		}
		if presented == "" {
			w.Header().Set("WWW-Authenticate", challenge)
			return pipeline.Errorf(http.StatusUnauthorized, pipeline.KindUnauthenticated, "this route needs an API key in %s", set.Header)
		}
		k, err := ks.Verify(presented, now())
		if err != nil {
			w.Header().Set("WWW-Authenticate", challenge)
			e := pipeline.Errorf(http.StatusUnauthorized, pipeline.KindUnauthenticated, "the API key is not valid")
			e.Err = err
			return e
		}
		if info := pipeline.InfoFrom(r.Context()); info != nil {
			info.Principal, info.APIKeySet, info.APIKeyID = k.Principal, set.Name, k.ID
		}
		for field, h := range a.ForwardClaims {
			r.Header.Del(h)
			v := k.Metadata[field]
			if field == "id" {
				v = k.ID
			}
			if v != "" && !strings.ContainsAny(v, "\r\n\x00") {
				r.Header.Set(h, v)
			}
		}
		if set.HideCredentials {
			r.Header.Del(set.Header)
			if set.Query != "" {
				if q := r.URL.Query(); q.Has(set.Query) {
					q.Del(set.Query)
					r.URL.RawQuery = q.Encode()
				}
			}
		}
		return next.ServeHTTP(w, r)
	})
}
