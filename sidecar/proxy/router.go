package proxy

import (
	"net"
	"net/http"
	"strings"
)

// Router finds the upstream for a request.
type Router interface {
	// Route returns the upstream that serves r, or nil when there is none.
	// It must not block.
	Route(r *http.Request) *Upstream
}

// Handler proxies every request to the upstream its Router names, and
// answers 502 with a plain-text explanation when there is none.
type Handler struct {
	// Router resolves upstreams. Required.
	Router Router
	// Describe, when set, is appended to the 502 message for an unknown
	// upstream (for example the list of known services).
	Describe func() string
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u := h.Router.Route(r)
	if u == nil {
		msg := "no upstream named " + quote(ServiceFromHost(r.Host)) + " is configured on this sidecar"
		if h.Describe != nil {
			msg += " (" + h.Describe() + ")"
		}
		writeError(w, KindNoRoute, msg)
		return
	}
	u.ServeHTTP(w, r)
}

// MeshDomain is the suffix an app may put after a service name in the Host
// header: "catalog" and "catalog.mesh" name the same upstream.
const MeshDomain = ".mesh"

// ServiceFromHost returns the service a Host header names: the port and a
// trailing MeshDomain are removed and the name is lower-cased. "Catalog.mesh:80"
// names "catalog".
func ServiceFromHost(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	return strings.TrimSuffix(host, MeshDomain)
}

func quote(s string) string { return `"` + s + `"` }

// Single is a Router that sends every request to one upstream: the inbound
// listener's local app, or an upstream's dedicated listener.
type Single struct{ Upstream *Upstream }

// Route returns s.Upstream.
func (s Single) Route(*http.Request) *Upstream { return s.Upstream }

var _ Router = Single{}
