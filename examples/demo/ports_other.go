//go:build !unix

package main

import (
	"fmt"
	"net"
)

// bindPort returns port, or a free port when port is 0, that was free for
// TCP and UDP a moment ago. Outside Unix it holds nothing: the returned
// function does nothing.
func bindPort(port int) (int, func(), error) {
	ln, err := net.Listen("tcp", addr(port))
	if err != nil {
		return 0, nil, fmt.Errorf("hold port %d: %w", port, err)
	}
	defer ln.Close()
	port = ln.Addr().(*net.TCPAddr).Port
	udp, err := net.ListenPacket("udp", addr(port))
	if err != nil {
		return 0, nil, fmt.Errorf("hold port %d: %w", port, err)
	}
	udp.Close()
	return port, func() {}, nil
}
