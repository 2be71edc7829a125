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

// NewTransport returns an http.Transport tuned for proxying: no
// environment proxy, no transparent compression (the proxy must forward
// Accept-Encoding and bodies untouched), large idle pools, bounded connect
// and handshake, and HTTP/2 health pings so dead connections are found.
func NewTransport(o TransportOptions) *http.Transport {
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
	return t
}
