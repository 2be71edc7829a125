package proxy

import (
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strings"
)

// setForwarded sets X-Forwarded-For, -Host and -Proto on the outbound
// request. httputil.ReverseProxy has already removed every client-sent
// Forwarded and X-Forwarded-* header from pr.Out; a peer inside trusted
// gets its values carried over (its X-Forwarded-For extended with its own
// address), anyone else's are dropped, so a client cannot forge the chain.
func setForwarded(pr *httputil.ProxyRequest, trusted []netip.Prefix) {
	peer, _ := netip.ParseAddrPort(pr.In.RemoteAddr)
	clientIP := peer.Addr().Unmap()
	proto := "http"
	if pr.In.TLS != nil {
		proto = "https"
	}
	host := pr.In.Host
	var ip string
	if clientIP.IsValid() {
		ip = clientIP.String()
	}
	if clientIP.IsValid() && isTrusted(clientIP, trusted) {
		in := pr.In.Header
		if prior := in.Values("X-Forwarded-For"); len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		if v := in.Get("X-Forwarded-Host"); v != "" {
			host = v
		}
		if v := in.Get("X-Forwarded-Proto"); v != "" {
			proto = v
		}
		if v := in.Values("Forwarded"); len(v) > 0 {
			pr.Out.Header["Forwarded"] = v
		}
	}
	h := pr.Out.Header
	if ip != "" {
		h["X-Forwarded-For"] = []string{ip}
	}
	h["X-Forwarded-Host"] = []string{host}
	h["X-Forwarded-Proto"] = []string{proto}
}

func isTrusted(ip netip.Addr, trusted []netip.Prefix) bool {
	for _, p := range trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// isUpgrade reports whether r asks to switch protocols (WebSocket).
func isUpgrade(h http.Header) bool {
	return h.Get("Upgrade") != ""
}
