//go:build unix

package proxy

import (
	"crypto/tls"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// peerClosed reports whether the endpoint closed an idle connection or
// sent something on it, which an HTTP/1.1 endpoint has no reason to do
// between responses (a TLS close_notify is such a thing): one read of the
// socket that neither waits nor consumes. A connection it cannot look at
// counts as open.
func peerClosed(conn net.Conn) bool {
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	closed := false
	err = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		// Nothing to read (EAGAIN) is an open, idle connection; a byte,
		// the end of the stream (no error) or a reset is not.
		closed = err != unix.EAGAIN && err != unix.EINTR
		return true
	})
	return closed || err != nil
}
