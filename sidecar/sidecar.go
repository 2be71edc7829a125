// Package sidecar runs one sidemesh process: it binds the listeners a
// config asks for, feeds each upstream's balancer from discovery, routes
// requests through the proxy, and applies new configs without dropping
// connections.
package sidecar

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/sidecar/admin"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/proxy"
	"github.com/sidemesh/sidemesh/telemetry"
)

// Sidecar is a running sidemesh data plane. Create it with New, then Start
// (or Run); Reload and Shutdown may be called from any goroutine and are
// serialised.
type Sidecar struct {
	log *slog.Logger

	// life is the context of background work (discovery watches, servers
	// a reload replaced); it ends with Shutdown.
	life     context.Context
	stopLife context.CancelFunc

	routes atomic.Pointer[routeTable]

	mu        sync.Mutex // serialises Start, Reload, Shutdown; guards below
	cfg       *config.Config
	backends  *backends
	security  *security // nil when mutual TLS is off
	tel       *telemetry.Telemetry
	accessLog io.Closer // the access log file, closed after tel's Shutdown
	upstreams map[string]*upstream
	local     *upstream
	sockets   map[string]*socket // by address
	servers   map[string]*server // by address
	draining  sync.WaitGroup     // servers replaced by a reload, still draining
	started   bool
	stopped   bool
}

// New returns a Sidecar for cfg, which must have passed cfg.Validate.
// Nothing is bound until Start.
func New(cfg *config.Config, log *slog.Logger) *Sidecar {
	if log == nil {
		log = slog.Default()
	}
	s := &Sidecar{
		log:       log,
		cfg:       cfg,
		upstreams: map[string]*upstream{},
		sockets:   map[string]*socket{},
		servers:   map[string]*server{},
	}
	s.life, s.stopLife = context.WithCancel(context.Background())
	s.routes.Store(newRouteTable(nil, nil))
	return s
}

// Start binds every listener and starts serving. If a listener cannot be
// bound, Start releases what it bound and returns the error.
func (s *Sidecar) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("sidecar: already started")
	}
	b, err := startBackends(s.cfg, s.log)
	if err != nil {
		return err
	}
	s.backends = b
	fail := func(err error) error {
		sctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
		defer cancel()
		b.stop(sctx)
		return err
	}
	sec, err := startSecurity(s.cfg, b, s.log)
	if err != nil {
		return fail(err)
	}
	s.security = sec
	tel, accessLog, err := s.startTelemetry(ctx, s.cfg)
	if err != nil {
		sec.close()
		return fail(err)
	}
	s.tel, s.accessLog = tel, accessLog
	if sec != nil {
		sec.metrics = tel.Metrics()
	}
	if err := s.apply(ctx, s.cfg); err != nil {
		sec.close()
		tel.Shutdown(ctx)
		accessLog.Close()
		return fail(err)
	}
	s.started = true
	s.log.Info("sidecar started", "listeners", len(s.servers), "upstreams", len(s.upstreams))
	return nil
}

// Run starts the sidecar, serves until ctx is done, then drains for the
// config's drain_timeout and returns. It returns an error only if the
// sidecar could not start.
func (s *Sidecar) Run(ctx context.Context) error {
	if err := s.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), s.Config().DrainTimeout)
	defer cancel()
	s.Shutdown(sctx)
	return nil
}

// Config returns the config in force: the one given to New, or to the
// last successful Reload.
func (s *Sidecar) Config() *config.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// Reload applies cfg, which must have passed cfg.Validate. Listeners whose
// address and settings are unchanged keep serving untouched; changed ones
// get a new server on the same socket while the old one drains; upstreams
// keep their connections and endpoint state where their settings allow.
// If a new listener cannot be bound, nothing changes and the error is
// returned.
func (s *Sidecar) Reload(ctx context.Context, cfg *config.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started || s.stopped {
		return errors.New("sidecar: reload of a sidecar that is not running")
	}
	if err := s.apply(ctx, cfg); err != nil {
		return err
	}
	s.cfg = cfg
	s.log.Info("config reloaded", "listeners", len(s.servers), "upstreams", len(s.upstreams))
	return nil
}

// apply makes the running state match cfg. Called with s.mu held.
func (s *Sidecar) apply(ctx context.Context, cfg *config.Config) error {
	if err := s.backends.compatible(cfg); err != nil {
		return err
	}
	if err := s.security.compatible(cfg); err != nil {
		return err
	}
	if err := telemetryCompatible(s.cfg, cfg); err != nil {
		return err
	}
	if s.security != nil {
		if err := s.security.setPolicy(cfg); err != nil {
			return err
		}
	}
	specs := listenerSpecs(cfg)

	// 1. Bind new addresses first: the only step that can fail.
	bound := map[string]*socket{}
	for addr := range specs {
		if _, ok := s.sockets[addr]; ok {
			continue
		}
		sock, err := listen(ctx, addr)
		if err != nil {
			for _, b := range bound {
				b.close()
			}
			return fmt.Errorf("listen %s (%s): %w", addr, specs[addr].role, err)
		}
		bound[addr] = sock
	}
	maps.Copy(s.sockets, bound)

	// 2. Upstreams, reusing what is unchanged.
	trusted := cfg.TrustedPrefixes()
	sources := func(u config.Upstream) (discovery.Source, sourceKey) { return s.backends.source(cfg, u) }
	next := make(map[string]*upstream, len(cfg.Upstreams))
	for _, uc := range cfg.Upstreams {
		var mtls *tls.Config
		if uc.MTLS {
			mtls = s.security.clientTLS(uc.Service)
		}
		next[uc.Service] = buildUpstream(s.life, uc, s.upstreams[uc.Service], sources, mtls, trusted, s.log, s.tel)
	}
	var local *upstream
	if cfg.Service != nil {
		var old *upstream
		if s.local != nil && s.local.cfg.Service == cfg.Service.Name {
			old = s.local
		}
		local = buildUpstream(s.life, localUpstream(cfg.Service), old, sources, nil, trusted, s.log.With("role", roleInbound), s.tel)
	}
	waitFirst(next, s.log)
	s.routes.Store(newRouteTable(next, local))
	for name, old := range s.upstreams {
		old.retire(next[name])
	}
	if s.local != nil {
		s.local.retire(local)
	}
	s.upstreams, s.local = next, local
	if s.started && serviceChanged(s.cfg, cfg) {
		s.backends.publish(cfg)
	}

	// 3. Servers: keep the unchanged, start the new, drain the replaced.
	for addr, spec := range specs {
		old := s.servers[addr]
		if old != nil && old.spec == spec {
			continue
		}
		srv := s.newServer(spec)
		srv.serve(s.sockets[addr], s.log)
		s.servers[addr] = srv
		if old != nil {
			s.drainInBackground(old, cfg.DrainTimeout)
		}
	}
	for addr, old := range s.servers {
		if _, ok := specs[addr]; ok {
			continue
		}
		delete(s.servers, addr)
		sock := s.sockets[addr]
		delete(s.sockets, addr)
		sock.close()
		s.drainInBackground(old, cfg.DrainTimeout)
	}
	return nil
}

// serviceChanged reports whether what the backends publish about the
// local service differs between two configs.
func serviceChanged(old, next *config.Config) bool {
	if old.Service == nil || next.Service == nil {
		return old.Service != next.Service
	}
	return !reflect.DeepEqual(instance(old), instance(next)) ||
		!reflect.DeepEqual(old.Service.Health, next.Service.Health) ||
		old.Service.Address != next.Service.Address || old.Service.Port != next.Service.Port
}

// drainInBackground shuts srv down gracefully without holding up a reload.
// Shutdown of the sidecar cuts the drain short.
func (s *Sidecar) drainInBackground(srv *server, timeout time.Duration) {
	s.draining.Add(1)
	go func() {
		defer s.draining.Done()
		ctx, cancel := context.WithTimeout(s.life, timeout)
		defer cancel()
		srv.shutdown(ctx)
	}()
}

// newServer builds the server for spec. Its handler finds upstreams
// through the route table at request time, so routes change on reload
// without touching the server.
func (s *Sidecar) newServer(spec listenerSpec) *server {
	log := s.log.With("listener", spec.role, "addr", spec.addr)
	switch {
	case spec.role == roleInbound && spec.tcp:
		var admit func(context.Context, net.Conn) error
		if s.security != nil {
			admit = s.security.admit
		}
		return newTCPServer(spec, func() *proxy.TCPTarget {
			if u := s.routes.Load().local; u != nil {
				return u.tcp
			}
			return nil
		}, s.security.serverTLS(), admit, log)
	case spec.role == roleInbound:
		var h http.Handler = &proxy.Handler{Router: localRouter{s}}
		if s.security != nil {
			h = s.security.authorize(h)
		} else {
			h = stripIdentity(h)
		}
		h = s.withTelemetry(h, roleInbound, s.inboundService)
		return newHTTPServer(spec, h, s.security.serverTLS(), log)
	case spec.role == roleAdmin:
		return newHTTPServer(spec, admin.Handler(adminState{s}), nil, log)
	case spec.role == roleOutbound:
		h := s.withTelemetry(&proxy.Handler{Router: hostRouter{s}, Describe: func() string {
			return s.routes.Load().known
		}}, roleOutbound, s.outboundService)
		return newHTTPServer(spec, h, nil, log)
	case spec.tcp:
		name := spec.role[len(roleUpstreamPrefix):]
		return newTCPServer(spec, func() *proxy.TCPTarget {
			if u := s.routes.Load().byName[name]; u != nil {
				return u.tcp
			}
			return nil
		}, nil, nil, log)
	default:
		name := spec.role[len(roleUpstreamPrefix):]
		h := s.withTelemetry(&proxy.Handler{Router: namedRouter{s, name}}, roleOutbound, func(*http.Request) string { return name })
		return newHTTPServer(spec, h, nil, log)
	}
}

// Shutdown stops accepting on every listener, waits for in-flight
// requests and connections until ctx is done, then closes what remains
// and stops discovery. It is safe to call more than once.
func (s *Sidecar) Shutdown(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	s.stopped = true
	// Withdraw from discovery first, so peers stop choosing this sidecar
	// while it drains; a peer that still does gets a refused connection,
	// which it retries elsewhere.
	s.backends.stop(ctx)
	for _, sock := range s.sockets {
		sock.ln.Close() // refuse new connections at once, on every address
	}
	var wg sync.WaitGroup
	for _, srv := range s.servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			srv.shutdown(ctx)
		}()
	}
	wg.Wait()
	for _, sock := range s.sockets {
		sock.close()
	}
	s.stopLife() // ends watches and cuts short drains started by reloads
	s.draining.Wait()
	for _, u := range s.upstreams {
		u.retire(nil)
	}
	if s.local != nil {
		s.local.retire(nil)
	}
	s.security.close()
	// Spans of the requests just drained are still queued: flush them
	// within what is left of the drain deadline.
	if err := s.tel.Shutdown(ctx); err != nil {
		s.log.Warn("telemetry not flushed", "err", err)
	}
	if s.accessLog != nil {
		s.accessLog.Close()
	}
	s.log.Info("sidecar stopped")
}

// Listener roles.
const (
	roleInbound        = "inbound"
	roleOutbound       = "outbound"
	roleAdmin          = "admin"
	roleUpstreamPrefix = "upstream/"
)

// listenerSpecs returns what should listen where for cfg, by address.
func listenerSpecs(cfg *config.Config) map[string]listenerSpec {
	specs := map[string]listenerSpec{}
	if cfg.Service != nil {
		specs[cfg.Inbound.Listen] = listenerSpec{
			addr: cfg.Inbound.Listen, role: roleInbound,
			tcp: cfg.Service.Protocol == config.ProtocolTCP, mtls: cfg.TLS.Enabled(), opts: cfg.Inbound,
		}
	}
	specs[cfg.Outbound.Listen] = listenerSpec{addr: cfg.Outbound.Listen, role: roleOutbound, opts: cfg.Outbound}
	if cfg.Admin != nil {
		specs[cfg.Admin.Listen] = listenerSpec{addr: cfg.Admin.Listen, role: roleAdmin, opts: cfg.Outbound}
	}
	for _, u := range cfg.Upstreams {
		if u.Listen == "" {
			continue
		}
		specs[u.Listen] = listenerSpec{
			addr: u.Listen, role: roleUpstreamPrefix + u.Service,
			tcp: u.Protocol == config.ProtocolTCP, opts: cfg.Outbound,
		}
	}
	return specs
}

// hostRouter routes the outbound listener by Host header.
type hostRouter struct{ s *Sidecar }

func (r hostRouter) Route(req *http.Request) *proxy.Upstream {
	if u := r.s.routes.Load().byName[proxy.ServiceFromHost(req.Host)]; u != nil {
		return u.proxy
	}
	return nil
}

// namedRouter routes an upstream's dedicated listener.
type namedRouter struct {
	s    *Sidecar
	name string
}

func (r namedRouter) Route(*http.Request) *proxy.Upstream {
	if u := r.s.routes.Load().byName[r.name]; u != nil {
		return u.proxy
	}
	return nil
}

// localRouter routes the inbound listener to the local app.
type localRouter struct{ s *Sidecar }

func (r localRouter) Route(*http.Request) *proxy.Upstream {
	if u := r.s.routes.Load().local; u != nil {
		return u.proxy
	}
	return nil
}
