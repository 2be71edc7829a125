package listener

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"time"
)

// Protocol detection on a plain-text HTTP server, for the connections
// netfilter redirected to it (transparent interception, as linkerd's
// outbound proxy does): the first bytes of such a connection are peeked,
// without consuming them, to tell HTTP, which the HTTP server serves as
// usual, from anything else, which goes to Detection.Opaque. A connection
// made to the listener's own address is an explicit client and is served
// as HTTP at once: it costs one getsockopt at accept and no allocation.

// Detected says what the first bytes of a redirected connection are.
type Detected uint8

// What detection finds.
const (
	// DetectedOpaque: bytes that are neither HTTP nor TLS, or a client
	// that ended its side before they told anything.
	DetectedOpaque Detected = iota
	// DetectedHTTP1: an HTTP/1.x request line.
	DetectedHTTP1
	// DetectedHTTP2: the HTTP/2 connection preface (h2c with prior
	// knowledge).
	DetectedHTTP2
	// DetectedTLS: a TLS handshake record, the app's own TLS.
	DetectedTLS
	// DetectedTimeout: nothing that tells arrived within the timeout, as
	// with a server-first protocol (MySQL, SMTP) whose client waits for
	// the server to speak.
	DetectedTimeout
	// DetectedSkipped: not inspected, because Detection.Timeout said so
	// (an opaque port).
	DetectedSkipped
)

// String names d for logs.
func (d Detected) String() string {
	switch d {
	case DetectedHTTP1:
		return "http/1"
	case DetectedHTTP2:
		return "h2c"
	case DetectedTLS:
		return "tls"
	case DetectedTimeout:
		return "timeout"
	case DetectedSkipped:
		return "skipped"
	}
	return "opaque"
}

// HTTP reports whether d is HTTP, which the HTTP server serves.
func (d Detected) HTTP() bool { return d == DetectedHTTP1 || d == DetectedHTTP2 }

// Detection configures protocol detection on a plain-text HTTP server
// (HTTPOptions.Detection).
type Detection struct {
	// Timeout returns how long to wait for the first bytes of a
	// connection redirected to dst before taking it as opaque; zero or
	// less takes it as opaque at once, without reading (an opaque port).
	// Called once per redirected connection, on that connection's own
	// goroutine; it must not block. Required.
	Timeout func(dst netip.AddrPort) time.Duration
	// Opaque serves a redirected connection that is not HTTP. It is
	// called on the connection's own goroutine with c, whose reads start
	// with the bytes detection read, dst, where the client meant to
	// connect, and what detection found. It must return once ctx is done
	// (the server's Shutdown gave up waiting); c is closed when it
	// returns. Required.
	Opaque func(ctx context.Context, c net.Conn, dst netip.AddrPort, how Detected)
}

// Detection's read limits: what it reads first, and the most it reads to
// find the end of an HTTP/1 request line. A longer request line is taken
// as opaque (net/http's own limit on the whole head is MaxHeaderBytes).
const (
	detectFirstRead = 1 << 10
	detectMaxBytes  = 8 << 10
)

// maxMethod bounds an HTTP method token: the longest registered method
// (UPDATEREDIRECTREF) has 17 bytes. Text with no space in its first
// bytes is not HTTP.
const maxMethod = 24

// h2Preface is what an HTTP/2 client with prior knowledge sends first
// (RFC 9113, section 3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// tlsHandshake and tlsMajor are a TLS record's first two bytes when it
// carries a handshake message (RFC 8446, section 5.1): a ClientHello
// starts every TLS connection.
const (
	tlsHandshake = 0x16
	tlsMajor     = 0x03
)

// detect reads the first bytes of c, within timeout, until they tell
// what c carries, and returns them. A client that ends its side first is
// opaque, as are bytes that are still undecided at the timeout or after
// detectMaxBytes. The error is a read error other than those, with which
// c is of no further use. c's read deadline is cleared before detect
// returns.
func detect(c net.Conn, timeout time.Duration) ([]byte, Detected, error) {
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, 0, err
	}
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 0, detectFirstRead)
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, len(buf))
		}
		n, err := c.Read(buf[len(buf):min(cap(buf), detectMaxBytes)])
		buf = buf[:len(buf)+n]
		how, more := classify(buf)
		switch {
		case !more:
			return buf, how, nil
		case len(buf) >= detectMaxBytes:
			return buf, DetectedOpaque, nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			if len(buf) == 0 {
				return buf, DetectedTimeout, nil
			}
			return buf, DetectedOpaque, nil
		case errors.Is(err, io.EOF):
			return buf, DetectedOpaque, nil
		case err != nil:
			return nil, 0, err
		}
	}
}

// classify tells what b, the first bytes of a connection, carries; more
// reports that b is too short to tell. It scans b whole at each call, at
// most detectMaxBytes.
func classify(b []byte) (how Detected, more bool) {
	if len(b) == 0 {
		return 0, true
	}
	if b[0] == tlsHandshake {
		switch {
		case len(b) == 1:
			return 0, true
		case b[1] == tlsMajor:
			return DetectedTLS, false
		}
		return DetectedOpaque, false
	}
	if n := min(len(b), len(h2Preface)); string(b[:n]) == h2Preface[:n] {
		if n < len(h2Preface) {
			return 0, true
		}
		return DetectedHTTP2, false
	}
	return requestLine(b)
}

// requestLine tells whether b starts with an HTTP/1.x request line
// (RFC 9112, section 3): a method token, a space, a request target
// without spaces or control characters, a space, "HTTP/1." and a digit,
// then CRLF or LF.
func requestLine(b []byte) (how Detected, more bool) {
	i := 0
	for i < len(b) && i <= maxMethod && isTokenChar(b[i]) {
		i++
	}
	switch {
	case i > maxMethod:
		return DetectedOpaque, false
	case i == len(b):
		return 0, true
	case i == 0 || b[i] != ' ':
		return DetectedOpaque, false
	}
	i++
	target := i
	for i < len(b) && b[i] > ' ' && b[i] != 0x7f {
		i++
	}
	switch {
	case i == len(b):
		return 0, true
	case i == target || b[i] != ' ':
		return DetectedOpaque, false
	}
	rest := b[i+1:]
	const version = "HTTP/1."
	if n := min(len(rest), len(version)); string(rest[:n]) != version[:n] {
		return DetectedOpaque, false
	}
	switch {
	case len(rest) <= len(version):
		return 0, true
	case rest[len(version)] < '0' || rest[len(version)] > '9':
		return DetectedOpaque, false
	}
	rest = rest[len(version)+1:]
	switch {
	case len(rest) == 0 || rest[0] == '\r' && len(rest) == 1:
		return 0, true
	case rest[0] == '\n' || rest[0] == '\r' && rest[1] == '\n':
		return DetectedHTTP1, false
	}
	return DetectedOpaque, false
}

// isTokenChar reports whether c may appear in a token such as a method
// (RFC 9110, section 5.6.2).
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '!', '#', '$', '%', '&', '\'', '*', '+', '-', '.', '^', '_', '`', '|', '~':
		return true
	}
	return false
}

// sniffedConn is a redirected connection after detection: its reads
// return the bytes detection read first. Like any net.Conn it must not be
// read from two goroutines at once.
type sniffedConn struct {
	net.Conn
	head []byte
	// dst is the connection's original destination.
	dst netip.AddrPort
}

func (c *sniffedConn) Read(p []byte) (int, error) {
	if len(c.head) == 0 {
		return c.Conn.Read(p)
	}
	n := copy(p, c.head)
	c.head = c.head[n:]
	if len(c.head) == 0 {
		c.head = nil // let the buffer go
	}
	return n, nil
}

// CloseWrite half-closes the connection, for a TCP proxy that passes on
// the end of the client's stream. (sniffedConn embeds a net.Conn, not the
// *net.TCPConn it holds, so that no method of the latter, such as
// WriteTo, reads around the bytes detection read.)
func (c *sniffedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// NetConn returns the accepted connection, for OriginalDestination.
func (c *sniffedConn) NetConn() net.Conn { return c.Conn }

// sniffing returns the listener the HTTP server of s accepts from: the
// handoff itself without Detection, else a sniffListener over it.
func (s *Server) sniffing(sock *Socket) net.Listener {
	if s.detection == nil {
		return s.handoff
	}
	ap, _ := netip.ParseAddrPort(sock.Addr().String())
	return &sniffListener{handoff: s.handoff, srv: s, sock: sock, addr: ap}
}

// sniffListener passes on the connections that were not redirected as
// they come, and detects the protocol of the redirected ones, each on a
// goroutine of its own: HTTP comes back through the socket (as a
// *sniffedConn, which Accept then passes on), the rest goes to
// Detection.Opaque. Accept is called from one goroutine (the HTTP
// server's).
type sniffListener struct {
	*handoff
	srv  *Server
	sock *Socket
	// addr is the socket's bound address.
	addr netip.AddrPort
}

func (l *sniffListener) Accept() (net.Conn, error) {
	for {
		c, err := l.handoff.Accept()
		if err != nil {
			return nil, err
		}
		tc, ok := c.(*net.TCPConn)
		if !ok {
			return c, nil // a *sniffedConn detected as HTTP
		}
		dst, err := originalDestination(tc)
		if err != nil {
			// Not redirected, or the kernel cannot say (no conntrack):
			// an explicit client, served as HTTP as it always was.
			return c, nil
		}
		// Shutdown waits for active once Serve has returned, that is
		// after this Accept: the Add comes first.
		l.srv.active.Add(1)
		go l.detect(tc, dst)
	}
}

// detect serves a connection redirected to dst: it refuses a loop, and
// hands the rest on by what detection finds.
func (l *sniffListener) detect(c *net.TCPConn, dst netip.AddrPort) {
	defer l.srv.active.Done()
	log := l.srv.log.With("client", c.RemoteAddr().String(), "original_destination", dst.String())
	if why := l.loop(c, dst); why != "" {
		log.Error("redirected connection refused: "+why, "hint", loopHint)
		c.Close()
		return
	}
	var head []byte
	how := DetectedSkipped
	if timeout := l.srv.detection.Timeout(dst); timeout > 0 {
		// A Shutdown that gives up waiting does not wait for the timeout.
		stop := context.AfterFunc(l.srv.hard, func() { c.Close() })
		var err error
		head, how, err = detect(c, timeout)
		if !stop() || err != nil {
			log.Debug("redirected connection lost during protocol detection", "err", err)
			c.Close()
			return
		}
	}
	sc := &sniffedConn{Conn: c, head: head, dst: dst}
	if how.HTTP() {
		l.deliver(sc)
		return
	}
	defer sc.Close()
	l.srv.detection.Opaque(l.srv.hard, sc, dst, how)
}

// loopHint is how an operator ends a redirect loop.
const loopHint = "run the sidecar as the --proxy-uid or --proxy-gid given to sidemesh redirect, so that its own connections are not redirected"

// loop says why c, redirected to dst, would make a loop if it were
// passed on, or returns "": when its original destination is this
// listener, or when it is a connection this process opened with
// DialGuarded that netfilter redirected back here.
func (l *sniffListener) loop(c net.Conn, dst netip.AddrPort) string {
	if own, _ := c.RemoteAddr().(*net.TCPAddr); own != nil && ownPorts.has(uint16(own.Port)) {
		return "it is this process's own connection to a redirected connection's destination, redirected back"
	}
	if dst.Port() == l.addr.Port() && (dst.Addr() == l.addr.Addr() ||
		dst.Addr().IsLoopback() && (l.addr.Addr().IsUnspecified() || l.addr.Addr().IsLoopback())) {
		return "its original destination is this listener"
	}
	return ""
}

// deliver hands c, detected as HTTP, to the server that serves the socket
// now (this one, or its successor after a reload), or closes it when
// none does.
func (l *sniffListener) deliver(c net.Conn) {
	for {
		h := l.sock.current.Load()
		if h == nil {
			c.Close()
			return
		}
		if h.deliver(c) {
			return
		}
		if l.sock.current.Load() == h {
			c.Close() // its server shut down, and no other took over
			return
		}
	}
}

var (
	_ net.Listener = (*sniffListener)(nil)
	_ net.Conn     = (*sniffedConn)(nil)
)
