package listener

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (SOL_IP) and IP6T_SO_ORIGINAL_DST
// (SOL_IPV6): both are 80 in linux/netfilter_ipv4.h and
// linux/netfilter_ipv6/ip6_tables.h.
const soOriginalDst = 80

// OriginalDestination returns where c's client meant to connect before a
// netfilter REDIRECT or DNAT rule sent it to this listener
// (SO_ORIGINAL_DST for IPv4, IP6T_SO_ORIGINAL_DST for IPv6). c must be a
// *net.TCPConn or wrap one (a NetConn method, as *tls.Conn has). For a
// connection that was not redirected the kernel returns the listener's
// own address: OriginalDestination returns ErrNoOriginalDestination
// then. Safe for concurrent use; it does not touch c's data.
func OriginalDestination(c net.Conn) (netip.AddrPort, error) {
	for {
		w, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = w.NetConn()
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination of a %T: %w", c, ErrNoOriginalDestination)
	}
	dst, err := originalDestination(tc)
	switch {
	case errors.Is(err, errNotRedirected):
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", tc.RemoteAddr(), ErrNoOriginalDestination)
	case err != nil:
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", tc.RemoteAddr(), err)
	}
	return dst, nil
}

// originalDestination is OriginalDestination for a *net.TCPConn, without
// allocating when c was not redirected: the accept path asks it of every
// connection of a listener with Detection. Its errors are
// errNotRedirected, an errno, or what SyscallConn reports.
func originalDestination(c *net.TCPConn) (netip.AddrPort, error) {
	local, _ := c.LocalAddr().(*net.TCPAddr)
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var dst netip.AddrPort
	var errno syscall.Errno
	err = raw.Control(func(fd uintptr) {
		if local != nil && local.IP.To4() == nil {
			dst, errno = originalDst6(int(fd))
		} else {
			dst, errno = originalDst4(int(fd))
		}
	})
	switch {
	case err != nil:
		return netip.AddrPort{}, err
	case errno == unix.ENOENT || errno == unix.ENOPROTOOPT:
		// No conntrack entry with a translation: not redirected.
		return netip.AddrPort{}, errNotRedirected
	case errno != 0:
		return netip.AddrPort{}, fmt.Errorf("getsockopt: %w", errno)
	case local != nil && dst == local.AddrPort():
		return netip.AddrPort{}, errNotRedirected
	}
	return dst, nil
}

func originalDst4(fd int) (netip.AddrPort, syscall.Errno) {
	var sa unix.RawSockaddrInet4
	if errno := getsockopt(fd, unix.SOL_IP, unsafe.Pointer(&sa), unsafe.Sizeof(sa)); errno != 0 {
		return netip.AddrPort{}, errno
	}
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), ntohs(sa.Port)), 0
}

func originalDst6(fd int) (netip.AddrPort, syscall.Errno) {
	var sa unix.RawSockaddrInet6
	if errno := getsockopt(fd, unix.SOL_IPV6, unsafe.Pointer(&sa), unsafe.Sizeof(sa)); errno != 0 {
		return netip.AddrPort{}, errno
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), ntohs(sa.Port)), 0
}

func getsockopt(fd, level int, p unsafe.Pointer, size uintptr) syscall.Errno {
	l := uint32(size)
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), soOriginalDst, uintptr(p), uintptr(unsafe.Pointer(&l)), 0)
	return errno
}

// ntohs turns a port in network byte order, as the kernel fills it into
// a sockaddr's uint16, into a number.
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// bindAnyPort binds the socket fd, of network "tcp4" or "tcp6", to a free
// port on every address before it connects, and returns the port.
func bindAnyPort(fd uintptr, network string) (uint16, error) {
	var sa unix.Sockaddr = &unix.SockaddrInet4{}
	if network == "tcp6" {
		sa = &unix.SockaddrInet6{}
	}
	if err := unix.Bind(int(fd), sa); err != nil {
		return 0, err
	}
	got, err := unix.Getsockname(int(fd))
	if err != nil {
		return 0, err
	}
	switch a := got.(type) {
	case *unix.SockaddrInet4:
		return uint16(a.Port), nil
	case *unix.SockaddrInet6:
		return uint16(a.Port), nil
	}
	return 0, fmt.Errorf("bound to a %T", got)
}
