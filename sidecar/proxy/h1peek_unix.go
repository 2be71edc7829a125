//go:build unix && !linux

package proxy

import "golang.org/x/sys/unix"

// peek reads into b what the socket fd holds without consuming it or
// waiting (MSG_PEEK, MSG_DONTWAIT).
func peek(fd int, b []byte) error {
	_, _, err := unix.Recvfrom(fd, b, unix.MSG_PEEK|unix.MSG_DONTWAIT)
	return err
}
