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

// RequestOriginalDestination returns the original destination of the
// connection r arrived on, for a request served by a plain-text HTTP
// server of this package (NewHTTP without TLS); otherwise, or when the
// connection was not redirected, ErrNoOriginalDestination. It costs one
// getsockopt per call.
func RequestOriginalDestination(r *http.Request) (netip.AddrPort, error) {
	fc, _ := r.Context().Value(framingKey{}).(*framingConn)
	if fc == nil {
		return netip.AddrPort{}, ErrNoOriginalDestination
	}
	return OriginalDestination(fc.Conn)
}
