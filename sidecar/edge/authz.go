package edge

import (
	"net/http"
	"net/netip"

	"github.com/sidemesh/sidemesh/policy"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
	"github.com/sidemesh/sidemesh/sidecar/proxy"
)

// AuthorizeFilter returns the filter that asks a whether the caller may
// make the request on route (edge.policy). It runs after the route's
// authentication, whose Info fields (Claims, APIKeySet and APIKeyID) say
// who the caller is, and after proxy.Forwarded, whose client address
// (proxy.ClientAddr) cidr: rules match; a caller with neither a JWT nor
// an API key is unauthenticated. The request's destination is the route's
// name and its path the normalized one the route matched, before any
// rewrite.
//
// The filter records the decision in the request's Info (PolicyRule,
// PolicyAllowed), for the access log and the span, and answers a denied
// request 403 denied. The answer names the deciding rule but not its
// reason, which would tell an outside client what the policy wants; a
// decision by default gives its reason ("the caller is not
// authenticated"). denied, when not nil, is told the rule of each denial
// (for the sidemesh.policy.denials metric). a must be safe for
// concurrent use and must not block; *policy.Policy is.
func AuthorizeFilter(a policy.Authorizer, route string, denied func(rule string)) pipeline.Filter {
	return pipeline.FilterFunc(func(w http.ResponseWriter, r *http.Request, next pipeline.Handler) error {
		info := pipeline.InfoFrom(r.Context())
		if info == nil {
			info = new(pipeline.Info)
		}
		// The router normalized the path; this is its canonical spelling
		// (a no-op on a normalized path).
		path, err := policy.NormalizePath(r.URL.EscapedPath())
		if err != nil {
			return pipeline.Errorf(http.StatusBadRequest, pipeline.KindBadPath, "%v", err)
		}
		d := a.Authorize(r.Context(), policy.Request{
			Source:      sourceOf(info, r),
			Destination: route,
			Method:      r.Method,
			Path:        path,
			Header:      r.Header,
		})
		info.PolicyRule, info.PolicyAllowed = d.Rule, d.Allow
		if !d.Allow {
			if denied != nil {
				denied(d.Rule)
			}
			if d.Rule == policy.DefaultRule {
				return pipeline.Errorf(http.StatusForbidden, pipeline.KindDenied, "%s", d.Reason)
			}
			return pipeline.Errorf(http.StatusForbidden, pipeline.KindDenied, "denied by the edge's policy (%s)", d.Rule)
		}
		return next.ServeHTTP(w, r)
	})
}

// sourceOf returns the caller of r as the route's authentication recorded
// it in info, with the client's address.
func sourceOf(info *pipeline.Info, r *http.Request) policy.Source {
	src := policy.Source{APIKeySet: info.APIKeySet, APIKeyID: info.APIKeyID}
	if info.Claims != nil {
		src.JWT, src.Claims = true, info.Claims
		src.Subject, _ = info.Claims["sub"].(string)
	}
	if addr, err := netip.ParseAddr(proxy.ClientAddr(r)); err == nil {
		src.Addr = addr
	}
	return src
}
