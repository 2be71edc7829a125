package proxy

import (
	"net/http"
	"strings"

	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

// Hygiene is the first filter of every HTTP chain. It removes the
// request's hop-by-hop headers (RFC 9110, section 7.6.1) — Connection and
// every header it names, Keep-Alive, Proxy-Connection, Proxy-Authenticate,
// Proxy-Authorization, Transfer-Encoding, TE unless it is "trailers" —
// before any filter sets a header of its own. httputil.ReverseProxy
// removes what Connection names from the outbound request after the
// filters ran, so without this a caller could delete X-Request-Id or the
// verified identity header by naming it in Connection.
//
// Upgrade passes only for WebSocket, the one upgrade the proxy splices
// and understands; any other (h2c, say) is dropped and the request
// served as a plain HTTP/1.1 request, so no tunnel can carry requests the
// filters never saw.
//
// CONNECT is refused (405 bad_request): a tunnel would carry bytes no
// filter sees, past the policy and the balancer. An app behind HTTP_PROXY
// sends CONNECT only for https:// URLs; it reaches the mesh with http://
// ones, which the sidecars encrypt between them.
//
// It also refuses (400 bad_request) a request target with a '#': a
// fragment is never part of a request target (RFC 9112, section 3.2), and
// net/http would leave it in the path, where an exact-path rule would not
// see it. Header names with an underscore are handled as Underscores says.
// Safe for concurrent use.
type Hygiene struct {
	// Underscores says what happens to a request header whose name has an
	// underscore: X_Sidemesh_Peer_Identity is the identity header to a
	// CGI or WSGI app (Python's wsgiref, PHP), which maps "-" and "_" to
	// the same name. The zero value drops such headers, as nginx and
	// Envoy's headers_with_underscores_action can.
	Underscores UnderscorePolicy
}

// UnderscorePolicy says what Hygiene does with header names that contain
// an underscore.
type UnderscorePolicy int

// Underscore policies.
const (
	// DropUnderscores removes the header and passes the request on.
	DropUnderscores UnderscorePolicy = iota
	// RejectUnderscores answers 400.
	RejectUnderscores
	// AllowUnderscores passes them on.
	AllowUnderscores
)

// hopHeaders are removed from every request and response a proxy passes
// on (canonical form). Upgrade and Connection are handled apart.
var hopHeaders = [...]string{
	"Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization", "Transfer-Encoding",
}

// Serve implements pipeline.Filter.
func (f *Hygiene) Serve(w http.ResponseWriter, r *http.Request, next pipeline.Handler) error {
	if r.Method == http.MethodConnect {
		return pipeline.Errorf(http.StatusMethodNotAllowed, pipeline.KindBadRequest,
			"sidemesh does not tunnel (CONNECT); send http:// URLs: the sidecars encrypt between them")
	}
	if strings.IndexByte(r.RequestURI, '#') >= 0 {
		return pipeline.Errorf(http.StatusBadRequest, pipeline.KindBadRequest, "a request target cannot hold a fragment ('#')")
	}
	h := r.Header
	if f.Underscores != AllowUnderscores {
		for k := range h {
			if strings.IndexByte(k, '_') < 0 {
				continue
			}
			if f.Underscores == RejectUnderscores {
				return pipeline.Errorf(http.StatusBadRequest, pipeline.KindBadRequest, "header %q has an underscore in its name", k)
			}
			delete(h, k)
		}
	}
	websocket := false
	if conn := h["Connection"]; conn != nil {
		for _, v := range conn {
			for tok := range strings.SplitSeq(v, ",") {
				tok = strings.TrimSpace(tok)
				if strings.EqualFold(tok, "Upgrade") {
					websocket = strings.EqualFold(strings.TrimSpace(h.Get("Upgrade")), "websocket")
					continue
				}
				if tok != "" && !strings.EqualFold(tok, "TE") { // TE: trailers is kept, below
					h.Del(tok)
				}
			}
		}
		delete(h, "Connection")
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
	if te := h["Te"]; te != nil {
		delete(h, "Te")
		if hasToken(te, "trailers") {
			h["Te"] = []string{"trailers"}
		}
	}
	if websocket {
		h["Connection"] = []string{"Upgrade"}
	} else {
		delete(h, "Upgrade")
	}
	return next.ServeHTTP(w, r)
}

var _ pipeline.Filter = (*Hygiene)(nil)

// isUpgrade reports whether a request asks to switch protocols. Behind
// Hygiene, only WebSocket upgrades are left.
func isUpgrade(h http.Header) bool {
	return h.Get("Upgrade") != ""
}

// hasToken reports whether the comma-separated header values vs hold
// token, case-insensitively.
func hasToken(vs []string, token string) bool {
	for _, v := range vs {
		for tok := range strings.SplitSeq(v, ",") {
			if i := strings.IndexByte(tok, ';'); i >= 0 {
				tok = tok[:i]
			}
			if strings.EqualFold(strings.TrimSpace(tok), token) {
				return true
			}
		}
	}
	return false
}

// upgradeType returns the protocol a request or 101 response switches to,
// "" when its Connection header does not say "Upgrade".
func upgradeType(h http.Header) string {
	if !hasToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}
