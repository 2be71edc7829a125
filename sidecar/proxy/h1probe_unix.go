//go:build unix

package proxy

import (
	"crypto/tls"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// newProbe returns a function reporting whether the endpoint closed the
// connection or sent something on it since the last response, which an
// HTTP/1.1 endpoint has no business doing (a TLS close_notify counts):
// one look at the socket that neither waits nor consumes. It is built
// once per connection, so a look allocates nothing. Nil for a connection
// it cannot look at.
func newProbe(conn net.Conn) func() bool {
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var (
		b    [1]byte
		busy bool
	)
	look := func(fd uintptr) bool {
		err := peek(int(fd), b[:])
		// Nothing to read (EAGAIN) is an open, quiet connection; a byte,
		// the end of the stream (no error) or a reset is not.
		busy = err != unix.EAGAIN && err != unix.EINTR
		return true
	}
	return func() bool {
		if err := raw.Read(look); err != nil {
			return true
		}
		return busy
	}
}
