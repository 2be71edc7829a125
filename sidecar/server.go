package sidecar

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

	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/proxy"
)

// listenerSpec says what server runs behind an address. Two equal specs
// can share one running server across a reload.
type listenerSpec struct {
	addr string
	// role is "inbound", "outbound" or "upstream/<name>".
	role string
	tcp  bool
	// mtls terminates mutual TLS (the inbound listener with tls on).
	mtls bool
	opts config.Listener
}

// server is one HTTP or TCP server behind a socket's handoff.
type server struct {
	spec    listenerSpec
	handoff *handoff
	http    *http.Server
	tcp     *proxy.TCPProxy

	// hard is the base context of every request; cancelling it ends
	// requests a graceful shutdown cannot (upgraded connections).
	hard       context.Context
	cancelHard context.CancelFunc
	// active counts running HTTP handlers, including upgraded ones that
	// http.Server.Shutdown does not wait for.
	active sync.WaitGroup
	// conns counts open HTTP connections; connsChanged is poked (never
	// blocking) whenever one opens or closes.
	conns        atomic.Int64
	connsChanged chan struct{}
	served       chan struct{}
	// tlsConfig terminates TLS for a TCP server (HTTP servers keep theirs
	// in http.Server.TLSConfig).
	tlsConfig *tls.Config
}

// drainQuietPeriod is how long a draining HTTP server waits for its
// connections to close by themselves (each response now says
// "Connection: close") before it shuts down the rest.
const drainQuietPeriod = time.Second

func newHTTPServer(spec listenerSpec, h http.Handler, tlsConfig *tls.Config, log *slog.Logger) *server {
	s := &server{spec: spec, served: make(chan struct{}), connsChanged: make(chan struct{}, 1)}
	s.hard, s.cancelHard = context.WithCancel(context.Background())
	tracked := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.active.Add(1)
		defer s.active.Done()
		h.ServeHTTP(w, r)
	})
	s.http = proxy.NewServer(tracked, proxy.ServerOptions{
		ReadHeaderTimeout: spec.opts.ReadHeaderTimeout,
		IdleTimeout:       spec.opts.IdleTimeout,
		MaxHeaderBytes:    spec.opts.MaxHeaderBytes,
		TLS:               tlsConfig,
		Logger:            log,
	})
	s.http.BaseContext = func(net.Listener) context.Context { return s.hard }
	s.http.ConnState = func(_ net.Conn, st http.ConnState) {
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
	}
	return s
}

// newTCPServer returns a TCP proxy server; with tlsConfig it terminates
// TLS and admit decides, after the handshake, whether a peer may connect.
func newTCPServer(spec listenerSpec, target func() *proxy.TCPTarget, tlsConfig *tls.Config,
	admit func(context.Context, net.Conn) error, log *slog.Logger) *server {
	s := &server{spec: spec, served: make(chan struct{}), tlsConfig: tlsConfig}
	s.hard, s.cancelHard = context.WithCancel(context.Background())
	s.tcp = &proxy.TCPProxy{Target: target, Admit: admit, Logger: log}
	return s
}

// serve starts serving on the socket's new handoff and makes it current;
// it returns the handoff it replaced, if any.
func (s *server) serve(sock *socket, log *slog.Logger) *handoff {
	s.handoff = newHandoff(sock.ln.Addr())
	go func() {
		defer close(s.served)
		var err error
		switch {
		case s.http != nil && s.http.TLSConfig != nil:
			err = s.http.ServeTLS(s.handoff, "", "")
		case s.http != nil:
			err = s.http.Serve(s.handoff)
		case s.tlsConfig != nil:
			err = s.tcp.Serve(tls.NewListener(s.handoff, s.tlsConfig))
		default:
			err = s.tcp.Serve(s.handoff)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, proxy.ErrProxyClosed) &&
			!errors.Is(err, net.ErrClosed) {
			log.Error("listener stopped", "role", s.spec.role, "addr", s.spec.addr, "err", err)
		}
	}()
	return sock.serveTo(s.handoff)
}

// shutdown stops accepting, lets in-flight requests and connections finish
// until ctx is done, then closes what is left.
//
// http.Server.Shutdown alone would drop requests: a keep-alive connection
// whose next request is read after Shutdown starts is closed without an
// answer (net/http checks shuttingDown after reading). So HTTP/1 is
// drained first: keep-alives are turned off, which closes idle
// connections and makes every response close its connection, and the
// server waits a quiet period for connections to go. Shutdown then sends
// HTTP/2 GOAWAY and waits for what remains.
func (s *server) shutdown(ctx context.Context) {
	defer s.cancelHard()
	if s.handoff != nil {
		s.handoff.Close()
	}
	if s.tcp != nil {
		s.tcp.Shutdown(ctx)
		return
	}
	s.http.SetKeepAlivesEnabled(false)
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
