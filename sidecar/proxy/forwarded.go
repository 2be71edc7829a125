package proxy

import (
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

// Forwarded is the filter that sets X-Forwarded-For, -Host and -Proto on
// every request. Values a client sent are dropped (a client must not
// forge the chain), unless the client's address is in Trusted: then they
// are kept, its X-Forwarded-For extended with the client's address, and a
// Forwarded header carried on. The proxy sends these headers as the
// filter leaves them. It runs after Hygiene, so a header the caller named
// in Connection is already gone. Safe for concurrent use.
type Forwarded struct {
	// Trusted are the peers whose X-Forwarded-* headers are kept.
	Trusted []netip.Prefix
}

// Serve implements pipeline.Filter.
func (f *Forwarded) Serve(w http.ResponseWriter, r *http.Request, next pipeline.Handler) error {
	peer, _ := netip.ParseAddrPort(r.RemoteAddr)
	clientIP := peer.Addr().Unmap()
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	host := r.Host
	var ip string
	switch {
	case peer.Addr().Is4():
		// RemoteAddr spells an IPv4 address canonically (ParseAddrPort
		// refuses anything else): take it as it is, without formatting
		// a copy.
		ip = r.RemoteAddr[:strings.LastIndexByte(r.RemoteAddr, ':')]
	case clientIP.IsValid():
		ip = clientIP.String()
	}
	h := r.Header
	if clientIP.IsValid() && isTrusted(clientIP, f.Trusted) {
		if prior := h.Values("X-Forwarded-For"); len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		if v := h.Get("X-Forwarded-Host"); v != "" {
			host = v
		}
		if v := h.Get("X-Forwarded-Proto"); v != "" {
			proto = v
		}
	} else {
		delete(h, "Forwarded")
	}
	// One allocation for the three values.
	vs := [...]string{ip, host, proto}
	v := vs[:]
	if ip != "" {
		h["X-Forwarded-For"] = v[0:1:1]
	} else {
		delete(h, "X-Forwarded-For")
	}
	h["X-Forwarded-Host"] = v[1:2:2]
	h["X-Forwarded-Proto"] = v[2:3:3]
	return next.ServeHTTP(w, r)
}

// forwardedHeaders are the headers httputil.ReverseProxy removes from an
// outbound request before Rewrite, and which the proxy puts back as the
// Forwarded filter left them on the inbound one.
var forwardedHeaders = [...]string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded"}

func isTrusted(ip netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

var _ pipeline.Filter = (*Forwarded)(nil)

// ClientAddr returns the address of r's client as the Forwarded filter
// established it: the first X-Forwarded-For address, which that filter
// sets to the peer's unless the peer is a trusted proxy; else the peer's
// address. Filters that key on the client (sticky sessions by source IP,
// rate limits by client_ip) run after Forwarded and use it.
func ClientAddr(r *http.Request) string {
	if xff := r.Header.Get("X-Forwarded-For"); xff != "" {
		first, _, _ := strings.Cut(xff, ",")
		return strings.TrimSpace(first)
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
