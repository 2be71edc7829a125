package proxy

import (
	"crypto/tls"
	"log/slog"
	"net/http"
	"time"
)

// ServerOptions configure the server side of a proxy listener.
type ServerOptions struct {
	// ReadHeaderTimeout bounds reading request headers. Zero means 10s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle this long. Zero means
	// 120s.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds request headers. Zero means 64 KiB.
	MaxHeaderBytes int
	// TLS, when set, terminates TLS with ALPN offering h2 and http/1.1.
	// Nil serves plain text, accepting HTTP/1.1 and h2c (prior knowledge).
	TLS *tls.Config
	// Logger receives the server's internal errors. Nil means slog.Default().
	Logger *slog.Logger
}

// NewServer returns an http.Server for h with every timeout a proxy needs
// set. There is no read or write timeout on whole requests: bodies and
// upgraded connections may stream for as long as both sides keep them
// open; slow clients are bounded by ReadHeaderTimeout and IdleTimeout.
func NewServer(h http.Handler, o ServerOptions) *http.Server {
	if o.ReadHeaderTimeout <= 0 {
		o.ReadHeaderTimeout = 10 * time.Second
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 120 * time.Second
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = 64 << 10
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	var p http.Protocols
	p.SetHTTP1(true)
	if o.TLS != nil {
		p.SetHTTP2(true)
	} else {
		p.SetUnencryptedHTTP2(true)
	}
	return &http.Server{
		Handler:           h,
		TLSConfig:         o.TLS,
		ReadHeaderTimeout: o.ReadHeaderTimeout,
		IdleTimeout:       o.IdleTimeout,
		MaxHeaderBytes:    o.MaxHeaderBytes,
		Protocols:         &p,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: 1000,
			SendPingTimeout:      30 * time.Second,
			PingTimeout:          15 * time.Second,
		},
		ErrorLog: slog.NewLogLogger(o.Logger.Handler(), slog.LevelDebug),
	}
}
