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
		// pr.In still has the headers its Connection header names; they
		// are hop-by-hop, meant for this proxy only, so never carried on.
		in := pr.In.Header
		if prior := in.Values("X-Forwarded-For"); len(prior) > 0 && !inConnection(in, "X-Forwarded-For") {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		if v := in.Get("X-Forwarded-Host"); v != "" && !inConnection(in, "X-Forwarded-Host") {
			host = v
		}
		if v := in.Get("X-Forwarded-Proto"); v != "" && !inConnection(in, "X-Forwarded-Proto") {
			proto = v
		}
		if v := in.Values("Forwarded"); len(v) > 0 && !inConnection(in, "Forwarded") {
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

// inConnection reports whether h's Connection header names the field name,
// which makes that field hop-by-hop (RFC 9110, section 7.6.1).
func inConnection(h http.Header, name string) bool {
	for _, v := range h["Connection"] {
		for tok := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), name) {
				return true
			}
		}
	}
	return false
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

// upgradeType returns the protocol a request or 101 response switches to,
// "" when its Connection header does not say "Upgrade".
func upgradeType(h http.Header) string {
	if !inConnection(h, "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}
