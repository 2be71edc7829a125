//go:build unix

package main

import (
	"fmt"
	"net"
	"syscall"
)

// bindPort binds a TCP socket, without listening, and a UDP socket to
// port on 127.0.0.1 (0: a free port, for both), and returns the port and
// a function that closes both. While they are open, nobody else can bind
// the port, the kernel does not give it to a connection as its local
// port, and a connection to it is refused, as to a port nobody uses.
func bindPort(port int) (int, func(), error) {
	syscall.ForkLock.RLock() // no child may inherit the socket before it is close-on-exec
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err == nil {
		syscall.CloseOnExec(fd)
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		return 0, nil, fmt.Errorf("hold port %d: %w", port, err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(fd)
		return 0, nil, fmt.Errorf("hold port %d: %w", port, err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		syscall.Close(fd)
		return 0, nil, fmt.Errorf("hold port %d: %w", port, err)
	}
	port = sa.(*syscall.SockaddrInet4).Port
	udp, err := net.ListenPacket("udp", addr(port))
	if err != nil {
		syscall.Close(fd)
		return 0, nil, fmt.Errorf("hold port %d: %w", port, err)
	}
	return port, func() { syscall.Close(fd); udp.Close() }, nil
}
