package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/listener"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
	"github.com/sidemesh/sidemesh/sidecar/proxy"
	"github.com/sidemesh/sidemesh/telemetry"
)

// Opaque TCP on the outbound listener, for transparent interception: a
// redirected connection that is not HTTP (listener.Detection) is routed
// by its original destination, as linkerd routes opaque traffic.
//
//   - An instance of an upstream of protocol tcp: the bytes go to that
//     upstream as they go through its dedicated listener, balanced over
//     its instances, over mutual TLS to their sidecars' inbound listeners
//     (which take TCP, since their service is tcp).
//   - An instance of an upstream of another protocol (http, http2, grpc):
//     refused, with a warning. That upstream's sidecars serve HTTP on
//     their inbound listeners and would answer the bytes with 400; and
//     passing them through to the instance would bypass the mesh's mutual
//     TLS and policy. A service that takes other TCP is declared
//     protocol: tcp.
//   - Any other address: passed through unchanged (a TCP splice to it)
//     or refused (closed), as outbound.original_destination says.
//
// Like the TCP proxy of a tcp upstream, it records connection metrics
// (open, ended, bytes each way) under the upstream's name, under
// "unknown" for an address passed through or refused, without the
// address; it writes no access log and no span, there being no request.

// outboundDetection is the outbound listener's protocol detection.
func (s *Sidecar) outboundDetection() *listener.Detection {
	return &listener.Detection{Timeout: s.detectTimeout, Opaque: s.serveOpaque}
}

// detectTimeout is listener.Detection.Timeout: zero (no detection) for a
// connection to an opaque port or to an instance of a tcp upstream, else
// outbound.detect_timeout.
func (s *Sidecar) detectTimeout(dst netip.AddrPort) time.Duration {
	out := s.cfg.Load().Outbound
	if slices.Contains(out.OpaquePorts, int(dst.Port())) {
		return 0
	}
	t := s.routes.Load()
	if u := t.byName[t.serviceAt(dst)]; u != nil && u.tcp != nil {
		return 0
	}
	if out.DetectTimeout <= 0 {
		return config.DefaultDetectTimeout
	}
	return out.DetectTimeout
}

// serveOpaque is listener.Detection.Opaque: it proxies c, redirected to
// dst, where opaqueTarget says, until the connection ends or ctx is done.
func (s *Sidecar) serveOpaque(ctx context.Context, c net.Conn, dst netip.AddrPort, how listener.Detected) {
	log := s.log.With("listener", roleOutbound, "original_destination", dst.String(), "detected", how.String())
	if how == listener.DetectedTimeout {
		noteSilentPort(log, dst.Port())
	}
	target, tel, err := s.routes.Load().opaqueTarget(dst, s.cfg.Load().Outbound.OriginalDestination, s.tel)
	if err != nil {
		tel.StartConn().End("", string(pipeline.KindNoRoute), 0, 0)
		level := slog.LevelWarn // a service that is not declared tcp
		if errors.Is(err, errRefuseUnknown) {
			level = slog.LevelInfo // as configured
		}
		log.Log(ctx, level, "opaque connection refused", "client", c.RemoteAddr().String(), "err", err)
		return
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	p := &proxy.TCPProxy{Target: func() *proxy.TCPTarget { return target }, Logger: log}
	p.ServeConn(c)
}

// opaqueTarget returns where an opaque connection redirected to dst goes,
// policy being outbound.original_destination; or why it is refused, with
// the telemetry that counts the refusal. tel makes the telemetry of
// addresses passed through.
func (t *routeTable) opaqueTarget(dst netip.AddrPort, policy string, tel *telemetry.Telemetry) (*proxy.TCPTarget, *telemetry.Client, error) {
	name := t.serviceAt(dst)
	if u := t.byName[name]; u != nil {
		if u.tcp == nil {
			return nil, u.proxyOpts.Telemetry, fmt.Errorf(
				"%s is an instance of %s, an upstream of protocol %s, whose sidecars take HTTP only: declare it protocol: tcp to carry other TCP",
				dst, name, u.cfg.Protocol)
		}
		target := *u.tcp
		target.Dial = listener.DialGuarded
		return &target, nil, nil
	}
	unknown := tel.Client(unknownService, "")
	if policy == config.OriginalDestinationRefuse {
		return nil, unknown, fmt.Errorf("%s is no instance of a known service: %w", dst, errRefuseUnknown)
	}
	return &proxy.TCPTarget{
		Name:           unknownService,
		Picker:         destinationPicker{&balancer.Endpoint{Addr: dst.String()}},
		ConnectTimeout: config.DefaultConnectTimeout,
		IdleTimeout:    config.DefaultTCPIdleTimeout,
		Telemetry:      unknown,
		HideEndpoints:  true,
		Dial:           listener.DialGuarded,
	}, nil, nil
}

// errRefuseUnknown is why an opaque connection to an address the mesh
// does not know is refused.
var errRefuseUnknown = errors.New("outbound.original_destination is refuse")

// destinationPicker picks its one endpoint: a connection passed through
// goes where its client meant it to.
type destinationPicker struct{ ep *balancer.Endpoint }

func (p destinationPicker) Pick(balancer.Request) (balancer.Pick, error) {
	return balancer.Pick{Endpoint: p.ep, Done: ignoreResult}, nil
}

// ignoreResult is the Done of destinationPicker's picks: there is no
// endpoint state to feed.
func ignoreResult(balancer.Result) {}

// silentPorts has a bit set for each port a client was silent on (sent
// nothing within outbound.detect_timeout), so that the hint is logged
// once per port and process.
var silentPorts [65536 / 64]atomic.Uint64

// noteSilentPort logs, the first time for port, that a client on it was
// taken as opaque after waiting for detect_timeout, and how to skip the
// wait.
func noteSilentPort(log *slog.Logger, port uint16) {
	bit := uint64(1) << (port % 64)
	if silentPorts[port/64].Or(bit)&bit != 0 {
		return
	}
	log.Info("a redirected client sent nothing within outbound.detect_timeout: taken as opaque TCP (a server-first protocol?)",
		"port", port, "hint", "list the port in outbound.opaque_ports to skip the wait; logged once per port")
}

var _ balancer.Picker = destinationPicker{}
