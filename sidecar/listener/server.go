package listener

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// HTTPOptions configure an HTTP server.
type HTTPOptions struct {
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
	// Logger receives the server's internal errors. Nil means
	// slog.Default().
	Logger *slog.Logger
	// Detection, when set on a plain-text server, tells HTTP from other
	// TCP on the connections netfilter redirected to it and hands the
	// rest to Detection.Opaque (sniff.go). Nil (the default) serves every
	// connection as HTTP; connections that were not redirected are served
	// so either way, for one getsockopt at accept.
	Detection *Detection
}

// TCPServer is what a TCP server runs (proxy.TCPProxy): Serve accepts
// connections until Shutdown, which waits for open ones until its context
// is done. After Shutdown, Serve returns an error that wraps
// net.ErrClosed.
type TCPServer interface {
	Serve(l net.Listener) error
	Shutdown(ctx context.Context) error
}

// Server is one HTTP or TCP server behind a Socket. Create it with NewHTTP
// or NewTCP, Serve it on a socket once, and Shutdown it once.
type Server struct {
	handoff *handoff
	http    *http.Server
	tcp     TCPServer
	log     *slog.Logger

	// hard is the base context of every request; cancelling it ends
	// requests a graceful shutdown cannot (upgraded connections).
	hard       context.Context
	cancelHard context.CancelFunc
	// active counts running HTTP handlers, including upgraded ones that
	// http.Server.Shutdown does not wait for, and redirected connections
	// in detection or served by Detection.Opaque.
	active sync.WaitGroup
	// conns counts open HTTP connections; connsChanged is poked (never
	// blocking) whenever one opens or closes.
	conns        atomic.Int64
	connsChanged chan struct{}
	served       chan struct{}
	// draining is set when Shutdown begins: every response from then on
	// closes its connection.
	draining atomic.Bool
	// tlsConfig terminates TLS for a TCP server (HTTP servers keep theirs
	// in http.Server.TLSConfig).
	tlsConfig *tls.Config
	// detection is HTTPOptions.Detection.
	detection *Detection
}

// drainQuietPeriod is how long a draining HTTP server waits for its
// connections to close by themselves (each response now says
// "Connection: close") before it shuts down the rest.
const drainQuietPeriod = time.Second

// NewHTTP returns an HTTP server for h with every timeout a proxy needs
// set. There is no read or write timeout on whole requests: bodies and
// upgraded connections may stream for as long as both sides keep them
// open; slow clients are bounded by ReadHeaderTimeout and IdleTimeout.
func NewHTTP(h http.Handler, o HTTPOptions) *Server {
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
	s := &Server{log: o.Logger, served: make(chan struct{}), connsChanged: make(chan struct{}, 1), detection: o.Detection}
	s.hard, s.cancelHard = context.WithCancel(context.Background())
	tracked := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.active.Add(1)
		defer s.active.Done()
		closeIfAmbiguous(w, r)
		if s.draining.Load() {
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, r)
	})
	var p http.Protocols
	p.SetHTTP1(true)
	if o.TLS != nil {
		p.SetHTTP2(true)
	} else {
		p.SetUnencryptedHTTP2(true)
	}
	s.http = &http.Server{
		Handler:           tracked,
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
		ErrorLog:    slog.NewLogLogger(o.Logger.Handler(), slog.LevelDebug),
		BaseContext: func(net.Listener) context.Context { return s.hard },
		ConnContext: connContext,
		ConnState: func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				s.conns.Add(1)
			case http.StateClosed, http.StateHijacked:
				s.conns.Add(-1)
			default:
				return
			}
			select {
			case s.connsChanged <- struct{}{}:
			default:
			}
		},
	}
	return s
}

// NewTCP returns a server running t; with tlsConfig it terminates TLS
// first (t then sees *tls.Conn values, their handshake not yet done).
func NewTCP(t TCPServer, tlsConfig *tls.Config, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{tcp: t, log: log, served: make(chan struct{}), tlsConfig: tlsConfig}
	s.hard, s.cancelHard = context.WithCancel(context.Background())
	return s
}

// Serve starts serving the connections sock accepts from now on, in place
// of the server sock served before (which the caller shuts down). It does
// not block.
func (s *Server) Serve(sock *Socket) {
	s.handoff = newHandoff(sock.Addr())
	go func() {
		defer close(s.served)
		var err error
		switch {
		case s.http != nil && s.http.TLSConfig != nil:
			err = s.http.ServeTLS(s.handoff, "", "")
		case s.http != nil:
			err = s.http.Serve(framingListener{s.sniffing(sock)})
		case s.tlsConfig != nil:
			err = s.tcp.Serve(tls.NewListener(s.handoff, s.tlsConfig))
		default:
			err = s.tcp.Serve(s.handoff)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			s.log.Error("server stopped", "addr", sock.Addr().String(), "err", err)
		}
	}()
	sock.serveTo(s.handoff)
}

// Shutdown stops accepting, lets in-flight requests and connections finish
// until ctx is done, then closes what is left.
//
// http.Server.Shutdown alone would drop requests: a keep-alive connection
// whose next request is read after Shutdown starts is closed without an
// answer (net/http checks shuttingDown after reading), and closing an idle
// connection races with a client that is sending on it (a POST lost to a
// reload). So HTTP/1 is drained first: for a quiet period every response
// says "Connection: close" and idle connections stay open, so a client
// that sends on one gets its answer and moves on; only then are
// keep-alives turned off, which closes the connections still idle, and
// Shutdown sends HTTP/2 GOAWAY and waits for what remains.
func (s *Server) Shutdown(ctx context.Context) {
	defer s.cancelHard()
	if s.handoff != nil {
		s.handoff.Close()
		// Once Serve has returned, every connection it accepted is
		// counted in conns: a connection accepted a moment before must
		// not look like none (its request would then be read after
		// http.Server.Shutdown began, and dropped unanswered).
		select {
		case <-s.served:
		case <-ctx.Done():
		}
	}
	if s.tcp != nil {
		s.tcp.Shutdown(ctx)
		return
	}
	s.draining.Store(true)
	quiet := drainQuietPeriod
	if dl, ok := ctx.Deadline(); ok {
		quiet = min(quiet, time.Until(dl)/2)
	}
	timer := time.NewTimer(quiet)
	defer timer.Stop()
wait:
	for s.conns.Load() > 0 {
		select {
		case <-s.connsChanged:
		case <-timer.C:
			break wait
		case <-ctx.Done():
			break wait
		}
	}
	s.http.SetKeepAlivesEnabled(false)
	if err := s.http.Shutdown(ctx); err != nil {
		s.http.Close()
	}
	idle := make(chan struct{})
	go func() { s.active.Wait(); close(idle) }()
	select {
	case <-idle:
	case <-ctx.Done():
		s.cancelHard() // ends upgraded connections still open
		<-idle
	}
}
