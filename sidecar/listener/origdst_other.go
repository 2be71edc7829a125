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

// originalDestination is OriginalDestination's core; outside Linux no
// connection was redirected.
func originalDestination(*net.TCPConn) (netip.AddrPort, error) {
	return netip.AddrPort{}, errNotRedirected
}

// bindAnyPort leaves the socket alone outside Linux, where nothing is
// redirected back: DialGuarded remembers no port.
func bindAnyPort(uintptr, string) (uint16, error) { return 0, nil }
