package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

// kindStatus returns the status a client gets when its request failed
// with kind.
func kindStatus(kind pipeline.Kind) int {
	switch kind {
	case pipeline.KindNoEndpoints, pipeline.KindConnectFailure:
		return http.StatusServiceUnavailable
	case pipeline.KindTimeout:
		return http.StatusGatewayTimeout
	case pipeline.KindBadRequest:
		return http.StatusBadRequest
	default:
		return http.StatusBadGateway
	}
}

// upstreamError is the error a proxied request fails with when it got no
// response from its upstream; endpoint is the "host:port" tried, empty
// when none was picked.
func upstreamError(kind pipeline.Kind, upstream, endpoint string, err error) *pipeline.Error {
	msg := fmt.Sprintf("upstream %q endpoint %s: %v", upstream, endpoint, err)
	if endpoint == "" {
		msg = fmt.Sprintf("upstream %q: %v", upstream, err)
	}
	return &pipeline.Error{Status: kindStatus(kind), Kind: kind, Msg: msg, Err: err}
}

// errTimeout is the cancellation cause when an upstream's timeout expires.
var errTimeout = errors.New("no response headers within the upstream timeout")

// classify maps a transport error to an error kind. ctx is the try's
// context, whose cause tells our timeouts from a client that hung up.
func classify(ctx context.Context, err error) pipeline.Kind {
	if errors.Is(err, balancer.ErrNoEndpoints) {
		return pipeline.KindNoEndpoints
	}
	if cause := context.Cause(ctx); errors.Is(cause, errTimeout) || errors.Is(cause, errPerTryTimeout) {
		return pipeline.KindTimeout
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return pipeline.KindConnectFailure
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return pipeline.KindConnectFailure
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return pipeline.KindTimeout
	}
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return pipeline.KindReset
	}
	return pipeline.KindProtocol
}
