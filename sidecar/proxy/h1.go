package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// h1Transport is Transport's HTTP/1.1 path for requests without a body
// (GET, HEAD, most DELETEs): the goroutine that calls RoundTrip writes the
// request and reads the response head on a pooled connection, and whoever
// reads the response body reads it off that connection; no goroutine runs
// per connection. http.Transport runs a reader and a writer goroutine per
// connection and hands each request and response between them and the
// caller: about a fifth of a proxied request's CPU, and a third of its
// allocations (issue 18). Requests are written and responses parsed by
// net/http itself (Request.Write, http.ReadResponse), under the same limits
// as http.Transport's; what this adds is the pool, and the decisions
// http.Transport makes around it, each noted where it is made. Safe for
// concurrent use.
type h1Transport struct {
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// tls, when set, makes connections TLS with this configuration;
	// handshakeTimeout bounds the handshake.
	tls              *tls.Config
	handshakeTimeout time.Duration
	// idleTimeout closes connections idle this long; zero keeps them
	// until the endpoint closes them. maxIdle bounds the idle connections
	// of one endpoint.
	idleTimeout time.Duration
	maxIdle     int
	// maxHeaderBytes bounds a response's head (http.Transport's
	// MaxResponseHeaderBytes).
	maxHeaderBytes int64

	mu    sync.Mutex
	hosts map[string]*h1Host // by "host:port"
}

// h1Host is the idle connections to one endpoint.
type h1Host struct {
	t    *h1Transport
	addr string

	mu sync.Mutex
	// idle holds the idle connections, the most recently used last: the
	// next request takes it, so that under a falling load the surplus
	// idles out at the bottom.
	idle []*h1Conn
	// sweep closes connections idle past the idle timeout; nil until the
	// first one is put back. swept reports that it is scheduled.
	sweep *time.Timer
	swept bool
	// gone is set when the sweep removed the emptied pool from the
	// transport; a connection put back to it then is closed.
	gone bool
}

// h1Conn is one HTTP/1.1 connection to an endpoint.
type h1Conn struct {
	host *h1Host
	conn net.Conn // *net.TCPConn or *tls.Conn
	// lim is what br reads the connection through: it bounds response
	// heads and counts what a request got back, for the retry of a
	// request a stale connection dropped.
	lim      limitedConn
	br       *bufio.Reader
	bw       *bufio.Writer
	tlsState *tls.ConnectionState
	// probe reports an endpoint that closed the connection or sent
	// something since the last response (newProbe); nil where it cannot
	// look.
	probe func() bool
	// reused reports a connection that carried a request before.
	reused bool
	// idleSince is when it was put back in the pool.
	idleSince time.Time
}

// limitedConn reads its connection and counts the bytes read; while
// limited (a response head is read), reads past remaining fail.
type limitedConn struct {
	conn      net.Conn
	limited   bool
	remaining int64
	read      int64
}

// errHeadersTooLarge is http.Transport's error for a response head over
// MaxResponseHeaderBytes.
type errHeadersTooLarge int64

func (e errHeadersTooLarge) Error() string {
	return fmt.Sprintf("net/http: server response headers exceeded %d bytes; aborted", int64(e))
}

func (l *limitedConn) Read(p []byte) (int, error) {
	if l.limited {
		if l.remaining <= 0 {
			return 0, errHeadersTooLarge(l.remaining)
		}
		if int64(len(p)) > l.remaining {
			p = p[:l.remaining]
		}
	}
	n, err := l.conn.Read(p)
	l.read += int64(n)
	if l.limited {
		l.remaining -= int64(n)
	}
	return n, err
}

// h1Eligible reports whether req takes the fast path: an HTTP/1.1 request
// without a body and without a protocol upgrade. Requests with a body stay
// on http.Transport, which sends the body while it reads the response, as
// full-duplex streaming and early responses need.
func h1Eligible(req *http.Request) bool {
	return (req.Body == nil || req.Body == http.NoBody) && req.Header["Upgrade"] == nil && req.Method != http.MethodConnect
}

// roundTrip implements http.RoundTripper for requests h1Eligible accepts.
func (t *h1Transport) roundTrip(req *http.Request) (*http.Response, error) {
	if err := validateRequest(req); err != nil {
		return nil, err
	}
	again := replayable(req)
	for {
		c, err := t.get(req.Context(), req.URL.Host)
		if err != nil {
			return nil, err
		}
		resp, err := c.roundTrip(req)
		if err == nil {
			return resp, nil
		}
		// A pooled connection that gave nothing back was most likely
		// closed by the endpoint while idle: like http.Transport
		// (shouldRetryRequest), send a request that may be sent twice
		// again, on another connection. A fresh one ends the loop.
		if c.reused && c.lim.read == 0 && again && req.Context().Err() == nil {
			continue
		}
		return nil, err
	}
}

// validateRequest refuses what http.Transport refuses before sending.
func validateRequest(req *http.Request) error {
	if req.URL == nil {
		return errors.New("http: nil Request.URL")
	}
	if req.URL.Host == "" {
		return errors.New("http: no Host in request URL")
	}
	if req.Method != "" && !validMethod(req.Method) {
		return fmt.Errorf("net/http: invalid method %q", req.Method)
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return fmt.Errorf("net/http: invalid header field name %q", k)
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return fmt.Errorf("net/http: invalid header field value for %q", k)
			}
		}
	}
	return nil
}

// validMethod reports whether method is an HTTP token.
func validMethod(method string) bool {
	return len(method) > 0 && strings.IndexFunc(method, func(r rune) bool { return !httpguts.IsTokenRune(r) }) == -1
}

// replayable is http.Request's isReplayable for a request without a body.
func replayable(req *http.Request) bool {
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return req.Header["Idempotency-Key"] != nil || req.Header["X-Idempotency-Key"] != nil
}

// host returns the pool of addr.
func (t *h1Transport) host(addr string) *h1Host {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := t.hosts[addr]
	if h == nil {
		if t.hosts == nil {
			t.hosts = make(map[string]*h1Host)
		}
		h = &h1Host{t: t, addr: addr}
		t.hosts[addr] = h
	}
	return h
}

// get returns an idle connection to addr, or dials one.
func (t *h1Transport) get(ctx context.Context, addr string) (*h1Conn, error) {
	h := t.host(addr)
	for {
		h.mu.Lock()
		n := len(h.idle)
		if n == 0 {
			h.mu.Unlock()
			return h.dial(ctx)
		}
		c := h.idle[n-1]
		h.idle[n-1] = nil
		h.idle = h.idle[:n-1]
		h.mu.Unlock()
		if !c.usable() {
			c.conn.Close()
			continue
		}
		return c, nil
	}
}

// usable reports whether an idle connection may carry a request: not idle
// past the idle timeout, and quiet since its last response. An endpoint
// that closed it meanwhile (an idle timeout of its own) would make the
// request fail; one that sent more than its last response would have
// those bytes read as the next one (a desync: the response of one
// request given to another). http.Transport notices both with a read it
// keeps pending on every idle connection; here, one look at the socket
// per request does (newProbe).
func (c *h1Conn) usable() bool {
	if t := c.host.t; t.idleTimeout > 0 && time.Since(c.idleSince) >= t.idleTimeout {
		return false
	}
	return c.probe == nil || !c.probe()
}

// dial opens a connection: TCP, then TLS when the transport has a
// config, with the handshake bounded.
func (h *h1Host) dial(ctx context.Context) (*h1Conn, error) {
	t := h.t
	conn, err := t.dial(ctx, "tcp", h.addr)
	if err != nil {
		return nil, err
	}
	c := &h1Conn{host: h}
	if t.tls != nil {
		cfg := t.tls.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName, _, _ = net.SplitHostPort(h.addr)
		}
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(conn, cfg)
		hctx, cancel := context.WithTimeout(ctx, t.handshakeTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			conn.Close()
			return nil, err
		}
		st := tc.ConnectionState()
		c.tlsState = &st
		conn = tc
	}
	c.conn = conn
	c.probe = newProbe(conn)
	c.lim.conn = conn
	c.br = bufio.NewReader(&c.lim)
	c.bw = bufio.NewWriter(conn)
	return c, nil
}

// aLongTimeAgo is a deadline in the past: setting it makes blocked reads
// and writes return at once.
var aLongTimeAgo = time.Unix(1, 0)

// roundTrip sends req on c and reads the response head. Until the
// response body is done with, a cancellation of req's context cuts the
// connection (a deadline in the past), which makes whatever reads or
// writes it fail at once.
func (c *h1Conn) roundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	stop := context.AfterFunc(ctx, c.cut)
	fail := func(err error) (*http.Response, error) {
		stop()
		c.conn.Close()
		if ctx.Err() != nil {
			// As http.Transport: the cancellation, not the broken
			// connection it caused.
			return nil, context.Cause(ctx)
		}
		return nil, err
	}
	c.lim.read = 0
	if err := req.Write(c.bw); err != nil {
		return fail(err)
	}
	if err := c.bw.Flush(); err != nil {
		return fail(err)
	}
	resp, err := c.readResponse(req)
	if err != nil {
		return fail(err)
	}
	resp.TLS = c.tlsState
	// As http.Transport: a connection is kept only when neither side
	// asked to close it and the exchange ended as announced.
	keep := !resp.Close && !req.Close && resp.StatusCode >= 200
	if resp.Body == http.NoBody {
		// No body (HEAD, 204, 304, Content-Length: 0): the connection
		// is free now.
		c.release(stop, keep)
		return resp, nil
	}
	resp.Body = &h1Body{body: resp.Body, c: c, stop: stop, keep: keep, ctx: ctx}
	return resp, nil
}

// cut makes c's pending and future reads and writes fail.
func (c *h1Conn) cut() { c.conn.SetDeadline(aLongTimeAgo) }

// readResponse reads the response to req. As http.Transport does, it
// passes 1xx responses to the request's httptrace.ClientTrace
// (Got1xxResponse), which is how httputil.ReverseProxy forwards them, and
// bounds the size of the heads read: each one's when the trace takes
// them, else all of them together.
func (c *h1Conn) readResponse(req *http.Request) (*http.Response, error) {
	limit := c.host.t.maxHeaderBytes
	c.lim.limited, c.lim.remaining = true, limit
	defer func() { c.lim.limited = false }()
	trace := httptrace.ContextClientTrace(req.Context())
	for {
		resp, err := http.ReadResponse(c.br, req)
		if err != nil {
			if c.lim.remaining <= 0 {
				return nil, errHeadersTooLarge(limit)
			}
			return nil, err
		}
		code := resp.StatusCode
		if code < 100 || code > 199 || code == http.StatusSwitchingProtocols {
			return resp, nil
		}
		if trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(code, textproto.MIMEHeader(resp.Header)); err != nil {
				return nil, err
			}
			c.lim.remaining = limit
		}
	}
}

// release ends c's exchange: the cancellation watch stops, and the
// connection goes back to the pool if keep, no cancellation cut it, and
// the endpoint sent nothing more (unsolicited).
func (c *h1Conn) release(stop func() bool, keep bool) {
	if !stop() || !keep || c.unsolicited() {
		c.conn.Close()
		return
	}
	c.reused = true
	c.host.put(c)
}

// unsolicited reports whether the endpoint sent more than its response
// that is already read from the socket: what br holds and, on a TLS
// connection, decrypted bytes crypto/tls holds, which a read that cannot
// wait (a deadline in the past, which costs no system call and leaves
// crypto/tls's state as it was) finds. What is still in the socket is
// found when the connection is next taken (usable).
func (c *h1Conn) unsolicited() bool {
	if c.br.Buffered() > 0 {
		return true
	}
	if c.tlsState == nil {
		return false
	}
	c.conn.SetReadDeadline(aLongTimeAgo)
	_, err := c.br.Peek(1)
	c.conn.SetReadDeadline(time.Time{})
	return !errors.Is(err, os.ErrDeadlineExceeded)
}

// put returns c to the pool, or closes it when the pool is full.
func (h *h1Host) put(c *h1Conn) {
	t := h.t
	c.idleSince = time.Now()
	h.mu.Lock()
	if h.gone || len(h.idle) >= t.maxIdle {
		h.mu.Unlock()
		c.conn.Close()
		return
	}
	h.idle = append(h.idle, c)
	if t.idleTimeout > 0 && !h.swept {
		h.swept = true
		if h.sweep == nil {
			h.sweep = time.AfterFunc(t.idleTimeout, h.closeExpired)
		} else {
			h.sweep.Reset(t.idleTimeout)
		}
	}
	h.mu.Unlock()
}

// closeExpired closes the connections idle past the idle timeout, and
// schedules itself again for the oldest of the rest. A pool it empties
// leaves the transport (endpoints come and go), as http.Transport's do.
func (h *h1Host) closeExpired() {
	t := h.t
	t.mu.Lock()
	defer t.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for n < len(h.idle) && time.Since(h.idle[n].idleSince) >= t.idleTimeout {
		h.idle[n].conn.Close()
		n++
	}
	rest := copy(h.idle, h.idle[n:])
	clear(h.idle[rest:])
	h.idle = h.idle[:rest]
	if rest == 0 {
		h.swept, h.gone = false, true
		if t.hosts[h.addr] == h {
			delete(t.hosts, h.addr)
		}
		return
	}
	h.sweep.Reset(t.idleTimeout - time.Since(h.idle[0].idleSince))
}

// closeIdle closes every idle connection.
func (t *h1Transport) closeIdle() {
	t.mu.Lock()
	hosts := make([]*h1Host, 0, len(t.hosts))
	for _, h := range t.hosts {
		hosts = append(hosts, h)
	}
	t.mu.Unlock()
	for _, h := range hosts {
		h.mu.Lock()
		for i, c := range h.idle {
			c.conn.Close()
			h.idle[i] = nil
		}
		h.idle = h.idle[:0]
		h.mu.Unlock()
	}
}

// h1Body is the body of a response on the fast path. Reading it to its
// end gives the connection back, as http.Transport does; closing it
// sooner closes the connection (draining what is left could take
// forever). Close may be called while a Read is blocked.
type h1Body struct {
	body io.ReadCloser
	c    *h1Conn
	stop func() bool
	keep bool
	ctx  context.Context

	mu sync.Mutex
	// done is set once the connection was given back or closed; eof
	// tells which.
	done, eof bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	b.mu.Lock()
	done, eof := b.done, b.eof
	b.mu.Unlock()
	switch {
	case eof:
		return 0, io.EOF
	case done:
		return 0, errBodyClosed
	}
	n, err := b.body.Read(p)
	switch {
	case err == io.EOF:
		b.mu.Lock()
		if !b.done {
			b.done, b.eof = true, true
			b.c.release(b.stop, b.keep)
		}
		b.mu.Unlock()
	case err != nil && b.ctx.Err() != nil:
		// As http.Transport: the cancellation, not the cut connection.
		err = context.Cause(b.ctx)
	}
	return n, err
}

// errBodyClosed is what a read of a closed body returns, as net/http's.
var errBodyClosed = errors.New("http: read on closed response body")

func (b *h1Body) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.done {
		b.done = true
		b.stop()
		b.c.conn.Close()
	}
	return nil
}
