package proxy

import (
	"crypto/tls"
	"net"
	"net/http"
	"time"
)

// TransportOptions configure the client side of a proxy: how it connects
// to and pools connections with one upstream's endpoints.
type TransportOptions struct {
	// HTTP2 speaks HTTP/2 to endpoints: h2c with prior knowledge over plain
	// TCP, h2 negotiated by ALPN over TLS. Otherwise HTTP/1.1.
	HTTP2 bool
	// TLS, when set, makes connections TLS with this configuration. Nil
	// means plain TCP.
	TLS *tls.Config
	// ConnectTimeout bounds the TCP connect and the TLS handshake. Zero
	// means 2s.
	ConnectTimeout time.Duration
	// IdleTimeout closes pooled connections idle this long. Zero means
	// they are kept until the endpoint closes them.
	IdleTimeout time.Duration
	// MaxIdlePerEndpoint bounds idle pooled connections per endpoint.
	// Zero means 256. (Go's default of 2 makes a busy proxy open and
	// close connections constantly.)
	MaxIdlePerEndpoint int
}

// Transport carries requests to the endpoints of one upstream. Over
// HTTP/1.1, requests without a body and without an upgrade (most GETs)
// take a path of their own, h1Transport, with its own pool of
// connections; every other request (a body, a WebSocket upgrade, HTTP/2,
// gRPC) goes through an http.Transport. Safe for concurrent use.
type Transport struct {
	std *http.Transport
	h1  *h1Transport // nil when the upstream speaks HTTP/2
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.h1 != nil && h1Eligible(req) {
		return t.h1.roundTrip(req)
	}
	return t.std.RoundTrip(req)
}

// CloseIdleConnections closes the idle connections of both paths;
// connections in use are closed when their request ends.
func (t *Transport) CloseIdleConnections() {
	t.std.CloseIdleConnections()
	if t.h1 != nil {
		t.h1.closeIdle()
	}
}

// NewTransport returns a Transport tuned for proxying: no environment
// proxy, no transparent compression (the proxy must forward
// Accept-Encoding and bodies untouched), large idle pools, bounded connect
// and handshake, and HTTP/2 health pings so dead connections are found.
func NewTransport(o TransportOptions) *Transport {
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 2 * time.Second
	}
	if o.MaxIdlePerEndpoint <= 0 {
		o.MaxIdlePerEndpoint = 256
	}
	dialer := &net.Dialer{Timeout: o.ConnectTimeout, KeepAlive: 30 * time.Second}
	t := &http.Transport{
		Proxy:                  nil,
		DialContext:            dialer.DialContext,
		TLSClientConfig:        o.TLS,
		TLSHandshakeTimeout:    o.ConnectTimeout,
		DisableCompression:     true,
		MaxIdleConns:           0, // no global cap; the per-endpoint one applies
		MaxIdleConnsPerHost:    o.MaxIdlePerEndpoint,
		IdleConnTimeout:        o.IdleTimeout,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 1 << 20,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: 30 * time.Second,
			PingTimeout:     15 * time.Second,
		},
	}
	var p http.Protocols
	switch {
	case !o.HTTP2:
		p.SetHTTP1(true)
	case o.TLS != nil:
		p.SetHTTP2(true)
		p.SetHTTP1(true) // if the peer's ALPN does not offer h2
	default:
		p.SetUnencryptedHTTP2(true)
	}
	t.Protocols = &p
	tr := &Transport{std: t}
	if !o.HTTP2 {
		tr.h1 = &h1Transport{
			dial:             dialer.DialContext,
			tls:              o.TLS,
			handshakeTimeout: o.ConnectTimeout,
			idleTimeout:      o.IdleTimeout,
			maxIdle:          o.MaxIdlePerEndpoint,
			maxHeaderBytes:   t.MaxResponseHeaderBytes,
		}
	}
	return tr
}
