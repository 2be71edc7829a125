package listener

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"sync/atomic"
)

// framingConn watches the bytes an HTTP/1 server reads from a plain-text
// connection for a request head that carries both Content-Length and
// Transfer-Encoding. net/http serves such a request by its
// Transfer-Encoding and deletes the Content-Length before the handler sees
// it; RFC 9112 (section 6.1) asks that the connection then be closed after
// the response, since a proxy in front may have framed the message by its
// Content-Length and what follows is where a smuggled request hides.
//
// The scan looks at the start of every line, wherever it is (it does not
// track framing): a body that happens to hold such lines only costs its
// connection a close, while a real head is never missed. It stops at the
// HTTP/2 preface. TLS connections are not watched: net/http must see the
// *tls.Conn itself (for ALPN and Request.TLS), and what talks HTTP/1 to a
// TLS listener is a client or an L4 balancer, not a proxy framing by
// Content-Length.
type framingConn struct {
	net.Conn
	// ambiguous is set once a head with both fields was read.
	ambiguous atomic.Bool
	// line holds the start of the current line, lower-cased, up to
	// len(headerTE) bytes; n is how much of it is filled, -1 once the line
	// is longer than anything looked for.
	line       [len(headerTE)]byte
	n          int
	sawCL      bool
	sawTE      bool
	first, off bool // the first read was seen; watching stopped
}

const (
	headerCL = "content-length:"
	headerTE = "transfer-encoding:"
)

func newFramingConn(c net.Conn) *framingConn {
	return &framingConn{Conn: c}
}

func (c *framingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.off {
		c.scan(p[:n])
	}
	return n, err
}

// scan advances the line state over b.
func (c *framingConn) scan(b []byte) {
	if !c.first {
		c.first = true
		if bytes.HasPrefix(b, []byte("PRI * HTTP/2")) {
			c.off = true
			return
		}
	}
	for len(b) > 0 {
		if c.n >= 0 {
			// Collect the start of the line until its end or until it is
			// as long as the longest name looked for.
			i := 0
			for ; i < len(b) && b[i] != '\n' && c.n < len(c.line); i++ {
				ch := b[i]
				if 'A' <= ch && ch <= 'Z' {
					ch += 'a' - 'A'
				}
				c.line[c.n] = ch
				c.n++
			}
			b = b[i:]
			if len(b) == 0 {
				return // the line goes on in the next read
			}
			if b[0] != '\n' {
				c.check() // enough to tell; the rest of the line does not matter
				c.n = -1
			}
		}
		if c.n < 0 {
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				return
			}
			b = b[i:]
		}
		c.endLine() // b[0] is the line's '\n'
		b = b[1:]
	}
}

// check notes the field the current line starts with.
func (c *framingConn) check() {
	switch {
	case c.n >= len(headerCL) && string(c.line[:len(headerCL)]) == headerCL:
		c.sawCL = true
	case c.n >= len(headerTE) && string(c.line[:len(headerTE)]) == headerTE:
		c.sawTE = true
	}
	if c.sawCL && c.sawTE {
		c.ambiguous.Store(true)
	}
}

// endLine ends the current line: a blank one ends a head.
func (c *framingConn) endLine() {
	if c.n >= 0 {
		c.check()
	}
	if c.n == 0 || c.n == 1 && c.line[0] == '\r' {
		c.sawCL, c.sawTE = false, false
	}
	c.n = 0
}

// framingListener wraps every accepted connection in a framingConn.
type framingListener struct{ net.Listener }

func (l framingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return newFramingConn(c), nil
}

type framingKey struct{}

// connContext puts a watched connection in its requests' context.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if fc, ok := c.(*framingConn); ok {
		return context.WithValue(ctx, framingKey{}, fc)
	}
	return ctx
}

// closeIfAmbiguous marks the response to r "Connection: close" when a head
// read on its connection carried both Content-Length and
// Transfer-Encoding. Called before the handler runs: by then r's head has
// been read (a pipelined request read ahead may set the flag too, which
// only closes the connection one response early).
func closeIfAmbiguous(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor != 1 {
		return
	}
	if fc, ok := r.Context().Value(framingKey{}).(*framingConn); ok && fc.ambiguous.Load() {
		w.Header().Set("Connection", "close")
	}
}
