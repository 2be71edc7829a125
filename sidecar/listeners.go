package sidecar

import (
	"log/slog"
	"strings"

	"github.com/sidemesh/sidemesh/sidecar/admin"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/listener"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
	"github.com/sidemesh/sidemesh/sidecar/proxy"
)

// Listener roles.
const (
	roleInbound        = "inbound"
	roleOutbound       = "outbound"
	roleAdmin          = "admin"
	roleUpstreamPrefix = "upstream/"
)

// listenerSpec says what server runs behind an address. Two equal specs
// can share one running server across a reload.
type listenerSpec struct {
	addr string
	// role is one of the roles above; "upstream/<name>" for a dedicated
	// listener.
	role string
	tcp  bool
	// mtls terminates mutual TLS (the inbound listener with tls on).
	mtls bool
	opts config.Listener
	// edge describes an edge listener's TLS or redirect (edgeKey).
	edge string
}

// logListening logs, once per bound address, what listens there.
func logListening(log *slog.Logger, spec listenerSpec, addr string) {
	attrs := []any{"role", spec.role, "addr", addr}
	switch {
	case spec.role == roleAdmin:
		attrs = append(attrs, "url", "http://"+addr+"/")
	case spec.mtls:
		attrs = append(attrs, "tls", "mutual")
	case spec.role == roleEdge && strings.HasPrefix(spec.edge, "tls"):
		attrs = append(attrs, "tls", "terminated")
	}
	if spec.tcp {
		attrs = append(attrs, "protocol", "tcp")
	}
	log.Info("listening", attrs...)
}

// server is a running server and the spec it was built for.
type server struct {
	*listener.Server
	spec listenerSpec
}

// listenerSpecs returns what should listen where for cfg, by address.
func listenerSpecs(cfg *config.Config) map[string]listenerSpec {
	specs := map[string]listenerSpec{}
	if cfg.Service != nil {
		specs[cfg.Inbound.Listen] = listenerSpec{
			addr: cfg.Inbound.Listen, role: roleInbound,
			tcp: cfg.Service.Protocol == config.ProtocolTCP, mtls: cfg.TLS.Enabled(), opts: cfg.Inbound,
		}
	}
	if cfg.OutboundEnabled() {
		specs[cfg.Outbound.Listen] = listenerSpec{addr: cfg.Outbound.Listen, role: roleOutbound, opts: cfg.Outbound.Listener}
	}
	if cfg.Edge != nil {
		for _, l := range cfg.Edge.Listeners {
			specs[l.Listen] = listenerSpec{addr: l.Listen, role: roleEdge, opts: l.Listener, mtls: false, edge: edgeKey(l)}
		}
	}
	if cfg.Admin != nil {
		specs[cfg.Admin.Listen] = listenerSpec{addr: cfg.Admin.Listen, role: roleAdmin, opts: cfg.Outbound.Listener}
	}
	for _, u := range cfg.Upstreams {
		if u.Listen == "" {
			continue
		}
		specs[u.Listen] = listenerSpec{
			addr: u.Listen, role: roleUpstreamPrefix + u.Service,
			tcp: u.Protocol == config.ProtocolTCP, opts: cfg.Outbound.Listener,
		}
	}
	return specs
}

// newServer builds the server for spec. Its handler finds its route in
// the route table at request time, so routes change on reload without
// touching the server.
func (s *Sidecar) newServer(spec listenerSpec) *server {
	log := s.log.With("listener", spec.role, "addr", spec.addr)
	httpOpts := listener.HTTPOptions{
		ReadHeaderTimeout: spec.opts.ReadHeaderTimeout,
		IdleTimeout:       spec.opts.IdleTimeout,
		MaxHeaderBytes:    spec.opts.MaxHeaderBytes,
		Logger:            log,
	}
	serve := func(r pipeline.Router) *listener.Server {
		return listener.NewHTTP(pipeline.NewListener(pipeline.ListenerOptions{
			Name: spec.role, Router: r, Observer: pipeline.Telemetry(s.tel), BodyTimeout: spec.opts.BodyTimeout,
		}), httpOpts)
	}
	var srv *listener.Server
	switch {
	case spec.role == roleInbound && spec.tcp:
		p := &proxy.TCPProxy{Target: func() *proxy.TCPTarget {
			if u := s.routes.Load().local; u != nil {
				return u.tcp
			}
			return nil
		}, Logger: log}
		if s.security != nil {
			p.Admit = s.security.Admit
		}
		srv = listener.NewTCP(p, s.security.ServerTLS(), log)
	case spec.role == roleInbound:
		httpOpts.TLS = s.security.ServerTLS()
		srv = serve(inboundRouter{s})
	case spec.role == roleAdmin:
		srv = listener.NewHTTP(admin.Handler(adminState{s}), httpOpts)
	case spec.role == roleOutbound:
		httpOpts.Detection = s.outboundDetection()
		srv = serve(outboundRouter{s})
	case spec.role == roleEdge:
		if ec := s.edgeCerts[spec.addr]; ec != nil {
			min := config.TLSVersion12
			for _, l := range s.cfg.Load().Edge.Listeners {
				if l.Listen == spec.addr && l.TLS != nil {
					min = l.TLS.MinVersion
				}
			}
			httpOpts.TLS = ec.certs.TLSConfig(min)
		}
		srv = listener.NewHTTP(pipeline.NewListener(pipeline.ListenerOptions{
			Name: roleEdge, Router: edgeRouter{s, spec.addr}, Renderer: pipeline.JSON,
			Observer: pipeline.Telemetry(s.tel), BodyTimeout: spec.opts.BodyTimeout,
		}), httpOpts)
	case spec.tcp:
		name := spec.role[len(roleUpstreamPrefix):]
		srv = listener.NewTCP(&proxy.TCPProxy{Target: func() *proxy.TCPTarget {
			if u := s.routes.Load().byName[name]; u != nil {
				return u.tcp
			}
			return nil
		}, Logger: log}, nil, log)
	default:
		srv = serve(dedicatedRouter{s, spec.role[len(roleUpstreamPrefix):]})
	}
	return &server{Server: srv, spec: spec}
}
