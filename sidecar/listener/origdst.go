package listener

import (
	"errors"
	"net/http"
	"net/netip"
)

// ErrNoOriginalDestination is returned by OriginalDestination for a
// connection netfilter did not redirect (the client dialled the listener
// itself), and outside Linux for every connection.
var ErrNoOriginalDestination = errors.New("listener: connection has no original destination")

// errNotRedirected is originalDestination's answer for a connection that
// was not redirected; OriginalDestination wraps ErrNoOriginalDestination
// instead.
var errNotRedirected = errors.New("not redirected")

// RequestOriginalDestination returns the original destination of the
// connection r arrived on, for a request served by a plain-text HTTP
// server of this package (NewHTTP without TLS); otherwise, or when the
// connection was not redirected, ErrNoOriginalDestination. With
// HTTPOptions.Detection it is what detection found, else it costs one
// getsockopt per call.
func RequestOriginalDestination(r *http.Request) (netip.AddrPort, error) {
	fc, _ := r.Context().Value(framingKey{}).(*framingConn)
	if fc == nil {
		return netip.AddrPort{}, ErrNoOriginalDestination
	}
	if sc, ok := fc.Conn.(*sniffedConn); ok {
		return sc.dst, nil
	}
	return OriginalDestination(fc.Conn)
}
