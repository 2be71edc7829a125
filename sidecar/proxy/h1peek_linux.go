package proxy

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// peek reads into b what the socket fd holds without consuming it or
// waiting: recvfrom(2) with MSG_PEEK and MSG_DONTWAIT, and no source
// address, which unix.Recvfrom would allocate on every call.
func peek(fd int, b []byte) error {
	_, _, errno := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		uintptr(unix.MSG_PEEK|unix.MSG_DONTWAIT), 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}
