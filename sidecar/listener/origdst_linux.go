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
	local, _ := tc.LocalAddr().(*net.TCPAddr)
	raw, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	var dst netip.AddrPort
	var opErr error
	err = raw.Control(func(fd uintptr) {
		if local != nil && local.IP.To4() == nil {
			dst, opErr = originalDst6(int(fd))
		} else {
			dst, opErr = originalDst4(int(fd))
		}
	})
	if err == nil {
		err = opErr
	}
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOPROTOOPT) {
			// No conntrack entry with a translation: not redirected.
			return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", tc.RemoteAddr(), ErrNoOriginalDestination)
		}
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: getsockopt: %w", tc.RemoteAddr(), err)
	}
	if local != nil && dst == local.AddrPort() {
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", tc.RemoteAddr(), ErrNoOriginalDestination)
	}
	return dst, nil
}

func originalDst4(fd int) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet4
	if err := getsockopt(fd, unix.SOL_IP, unsafe.Pointer(&sa), unsafe.Sizeof(sa)); err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), ntohs(sa.Port)), nil
}

func originalDst6(fd int) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet6
	if err := getsockopt(fd, unix.SOL_IPV6, unsafe.Pointer(&sa), unsafe.Sizeof(sa)); err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), ntohs(sa.Port)), nil
}

func getsockopt(fd, level int, p unsafe.Pointer, size uintptr) error {
	l := uint32(size)
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), soOriginalDst, uintptr(p), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return syscall.Errno(errno)
	}
	return nil
}

// ntohs turns a port in network byte order, as the kernel fills it into
// a sockaddr's uint16, into a number.
func ntohs(p uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(&p))
	return uint16(b[0])<<8 | uint16(b[1])
}
