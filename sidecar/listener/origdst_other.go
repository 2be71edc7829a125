//go:build !linux

package listener

import (
	"net"
	"net/netip"
)

// OriginalDestination is only implemented on Linux, where netfilter
// records it; elsewhere it always returns ErrNoOriginalDestination.
func OriginalDestination(net.Conn) (netip.AddrPort, error) {
	return netip.AddrPort{}, ErrNoOriginalDestination
}
