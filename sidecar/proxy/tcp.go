package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
	"github.com/sidemesh/sidemesh/telemetry"
)

// TCPTarget is where a TCP proxy sends a new connection.
type TCPTarget struct {
	// Name is the upstream's service name, for logs.
	Name string
	// Picker chooses the endpoint per connection. Required.
	Picker balancer.Picker
	// ConnectTimeout bounds dialing an endpoint. Zero means 2s.
	ConnectTimeout time.Duration
	// IdleTimeout closes a connection when no byte has moved in either
	// direction for this long. Zero means never.
	IdleTimeout time.Duration
	// TLS, when set, wraps every connection to an endpoint in TLS with
	// this configuration (mutual TLS between sidecars); the handshake
	// counts as part of connecting.
	TLS *tls.Config
	// Telemetry counts connections and bytes. Nil records nothing.
	Telemetry *telemetry.Client
	// HideEndpoints leaves the endpoint out of Telemetry's series, for
	// endpoints that are arbitrary addresses (an original destination
	// passed through), which must not become metric series. Default
	// false.
	HideEndpoints bool
	// Dial opens the connection to an endpoint, before TLS; it must
	// return by the deadline of ctx. Nil means a net.Dialer's
	// DialContext.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// TCPProxy accepts connections and splices each to an endpoint chosen per
// connection. Safe for concurrent use.
type TCPProxy struct {
	// Target returns where new connections go; it is called once per
	// accepted connection so a config reload can change it. Required.
	Target func() *TCPTarget
	// Logger receives per-connection errors. Nil means slog.Default().
	Logger *slog.Logger
	// Admit, when set, is called with each accepted connection before
	// anything is proxied (for a TLS listener: after the handshake, which
	// Admit performs); a non-nil error closes the connection. It is how a
	// denied peer is turned away after proving who it is.
	Admit func(ctx context.Context, c net.Conn) error

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*tcpSession]struct{}
	closing   bool
	wg        sync.WaitGroup
}

// ErrProxyClosed is returned by Serve after Shutdown. It wraps
// net.ErrClosed.
var ErrProxyClosed = fmt.Errorf("proxy: TCP proxy closed: %w", net.ErrClosed)

// Serve accepts connections on l until Shutdown. It always returns a
// non-nil error: ErrProxyClosed after Shutdown.
func (p *TCPProxy) Serve(l net.Listener) error {
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		l.Close()
		return ErrProxyClosed
	}
	if p.listeners == nil {
		p.listeners = map[net.Listener]struct{}{}
	}
	p.listeners[l] = struct{}{}
	p.mu.Unlock()

	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			p.mu.Lock()
			closing := p.closing
			p.mu.Unlock()
			if closing {
				return ErrProxyClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) {
				// Out of file descriptors or a transient accept error:
				// back off as net/http does instead of spinning.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				p.logger().Warn("tcp accept failed; retrying", "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		s := &tcpSession{client: c}
		if !p.track(s) {
			c.Close()
			return ErrProxyClosed
		}
		go p.serve(s)
	}
}

func (p *TCPProxy) logger() *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return slog.Default()
}

func (p *TCPProxy) track(s *tcpSession) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return false
	}
	if p.conns == nil {
		p.conns = map[*tcpSession]struct{}{}
	}
	p.conns[s] = struct{}{}
	p.wg.Add(1)
	return true
}

func (p *TCPProxy) untrack(s *tcpSession) {
	p.mu.Lock()
	delete(p.conns, s)
	p.mu.Unlock()
	p.wg.Done()
}

// ServeConn proxies c, a connection accepted elsewhere, as Serve proxies
// the connections it accepts (Admit included), and returns when it has
// ended; Shutdown closes it like those. It closes c.
func (p *TCPProxy) ServeConn(c net.Conn) {
	s := &tcpSession{client: c}
	if !p.track(s) {
		c.Close()
		return
	}
	p.serve(s)
}

// Active returns the number of open proxied connections.
func (p *TCPProxy) Active() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Shutdown stops accepting, waits for open connections to finish until ctx
// is done, then closes those left. It returns ctx.Err() if it had to close
// connections.
func (p *TCPProxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.closing = true
	for l := range p.listeners {
		l.Close()
	}
	p.mu.Unlock()

	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	p.mu.Lock()
	for s := range p.conns {
		s.close()
	}
	p.mu.Unlock()
	<-done
	return ctx.Err()
}

// tcpSession is one proxied connection pair.
type tcpSession struct {
	client   net.Conn
	mu       sync.Mutex
	upstream net.Conn
	closed   bool
	last     atomic.Int64 // unix nanos of the last byte moved either way
	// sent and received count the bytes written to the endpoint and
	// read from it.
	sent, received atomic.Int64
}

func (s *tcpSession) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.client.Close()
	if s.upstream != nil {
		s.upstream.Close()
	}
}

func (p *TCPProxy) serve(s *tcpSession) {
	defer p.untrack(s)
	defer s.close()
	t := p.Target()
	if t == nil {
		return
	}
	log := p.logger().With("upstream", t.Name, "client", s.client.RemoteAddr().String())
	if p.Admit != nil {
		ctx, cancel := context.WithTimeout(context.Background(), admitTimeout)
		err := p.Admit(ctx, s.client)
		cancel()
		if err != nil {
			log.Info("tcp: connection refused", "err", err)
			return
		}
	}
	var client netip.Addr
	if ta, ok := s.client.RemoteAddr().(*net.TCPAddr); ok {
		client = ta.AddrPort().Addr().Unmap()
	}
	conn := t.Telemetry.StartConn()
	pick, err := t.Picker.Pick(balancer.Request{Client: client})
	if err != nil {
		log.Warn("tcp: no endpoint", "err", err)
		conn.End("", string(pipeline.KindNoEndpoints), 0, 0)
		return
	}
	timeout := t.ConnectTimeout
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	endpoint := pick.Endpoint.Addr // as metrics name it
	if t.HideEndpoints {
		endpoint = ""
	}
	start := time.Now()
	up, err := dialEndpoint(pick.Endpoint.Addr, timeout, t)
	if err != nil {
		pick.Done(balancer.Result{Err: err, Latency: time.Since(start)})
		log.Warn("tcp: connect failed", "endpoint", pick.Endpoint.Addr, "err", err)
		conn.End(endpoint, string(pipeline.KindConnectFailure), 0, 0)
		return
	}
	res := balancer.Result{Latency: time.Since(start)}
	defer func() {
		pick.Done(res)
		kind := ""
		if res.Err != nil {
			kind = string(pipeline.KindReset)
		}
		conn.End(endpoint, kind, s.sent.Load(), s.received.Load())
	}()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		up.Close()
		return
	}
	s.upstream = up
	s.mu.Unlock()

	s.last.Store(time.Now().UnixNano())
	// Each copy reports the error that ended it and whether the endpoint
	// caused it (reading from it or writing to it failed). The client
	// hanging up, the idle timeout and Shutdown are not the endpoint's
	// failures and must not count against it.
	type end struct {
		err      error
		endpoint bool
	}
	ends := make(chan end, 2)
	go func() {
		onWrite, err := s.pipe(up, s.client, t.IdleTimeout, &s.sent)
		ends <- end{err, onWrite}
	}()
	go func() {
		onWrite, err := s.pipe(s.client, up, t.IdleTimeout, &s.received)
		ends <- end{err, !onWrite}
	}()
	for range 2 {
		e := <-ends
		if e.err == nil {
			continue
		}
		s.mu.Lock()
		torn := s.closed // by the other copy's error or by Shutdown
		s.mu.Unlock()
		if torn {
			continue
		}
		if e.endpoint && !errors.Is(e.err, errIdle) {
			res.Err = e.err
		}
		s.close() // one side broke: tear down the other
	}
}

// pipe copies src to dst until src ends, then half-closes dst so the peer
// sees the end of the stream while the other direction carries on. With
// an idle timeout, reads wake up periodically and give up only when
// neither direction has moved a byte for that long. It returns the error
// that ended the copy, if any, and whether it was writing to dst (rather
// than reading from src) that failed. It adds the bytes written to count.
func (s *tcpSession) pipe(dst, src net.Conn, idle time.Duration, count *atomic.Int64) (onWrite bool, err error) {
	buf := sharedBuffers.Get()
	defer sharedBuffers.Put(buf)
	for {
		if idle > 0 {
			src.SetReadDeadline(time.Now().Add(idle))
		}
		n, err := src.Read(buf)
		if n > 0 {
			s.last.Store(time.Now().UnixNano())
			w, werr := dst.Write(buf[:n])
			count.Add(int64(w))
			if werr != nil {
				return true, werr
			}
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if time.Since(time.Unix(0, s.last.Load())) < idle {
					continue // the other direction is busy
				}
				return false, errIdle
			}
			if errors.Is(err, io.EOF) {
				if cw, ok := dst.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
				return false, nil
			}
			return false, err
		}
	}
}

// admitTimeout bounds TCPProxy.Admit, which includes a TLS handshake.
const admitTimeout = 10 * time.Second

// dialEndpoint connects to addr with t.Dial, with TLS when t.TLS is set,
// all within timeout.
func dialEndpoint(addr string, timeout time.Duration, t *TCPTarget) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	dial := t.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	c, err := dial(ctx, "tcp", addr)
	if err != nil || t.TLS == nil {
		return c, err
	}
	cfg := t.TLS
	if cfg.ServerName == "" { // as tls.Dialer does
		cfg = cfg.Clone()
		cfg.ServerName, _, _ = net.SplitHostPort(addr)
	}
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// errIdle ends a TCP session that saw no traffic for its idle timeout.
var errIdle = errors.New("idle timeout")
