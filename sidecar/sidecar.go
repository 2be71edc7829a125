// Package sidecar runs one sidemesh process. It is wiring only: from a
// config it builds the listeners (sidecar/listener), the chains behind
// them (sidecar/pipeline, with the filters of sidecar/proxy and
// sidecar/security), each upstream's balancer fed by discovery, and the
// proxies; it applies new configs without dropping connections, and
// drains on shutdown.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/edge"
	"github.com/sidemesh/sidemesh/sidecar/listener"
	"github.com/sidemesh/sidemesh/sidecar/security"
	"github.com/sidemesh/sidemesh/sidecar/sticky"
	"github.com/sidemesh/sidemesh/telemetry"
)

// Sidecar is a running sidemesh data plane. Create it with New, then Start
// (or Run); Reload and Shutdown may be called from any goroutine and are
// serialised. What the admin API reads (Config, readiness, routes) is
// published atomically and never waits for a reload or a drain.
type Sidecar struct {
	log *slog.Logger

	// life is the context of background work (discovery watches, servers
	// a reload replaced); it ends with Shutdown.
	life     context.Context
	stopLife context.CancelFunc

	cfg     atomic.Pointer[config.Config]
	routes  atomic.Pointer[routeTable]
	started atomic.Bool
	// startedAt is when Start finished; written before started is set.
	startedAt time.Time
	stopped   atomic.Bool
	// handover is set when another process has taken over the sockets:
	// Shutdown then leaves the service's registration to it.
	handover atomic.Bool

	// adopted are listeners handed to New, by address, until apply binds
	// them.
	adopted map[string]net.Listener

	mu        sync.Mutex // serialises Start, Reload, Shutdown; guards below
	backends  *backends
	security  *security.Security // nil when mutual TLS is off
	tel       *telemetry.Telemetry
	accessLog io.Closer // the access log file, closed after tel's Shutdown
	upstreams map[string]*upstream
	// variants are upstreams with the balancer an edge route chose, by
	// variantKey.
	variants  map[string]*upstream
	edgeCerts map[string]*edgeCerts // by listen address
	// jwt are the edge's JWT providers by name, keySets its API key sets
	// by name, limits its routes' rate limits by route and limit name:
	// replaced whole by apply (under mu), read without the mutex by
	// metrics, the admin API and revocations (see loaded).
	jwt     atomic.Pointer[map[string]*jwtProvider]
	keySets atomic.Pointer[map[string]*keySet]
	limits  atomic.Pointer[map[string]*edge.RouteLimit]
	// sharedLimits shares the cluster-scope rate limits' counts; nil
	// without a gossip pool.
	sharedLimits *sharedLimits
	// sticky is the session table; nil until a route is sticky. Read
	// without the mutex by the admin API and metrics.
	sticky atomic.Pointer[sticky.Table]
	// clock is the wall clock of sticky sessions and the gossip store;
	// tests skew it (WithClock).
	clock func() time.Time
	// drained is the endpoints every balancer of this sidecar gives no
	// new work, as drains (shared by the gossip pool) says (Drain).
	drained balancer.Drained
	drains  *sharedSet
	// revoked holds the revoked API key IDs, "<set>/<id>", shared by the
	// gossip pool.
	revoked *sharedSet
	// added holds the API keys added through the admin API (of any edge),
	// "<set>/<id>" → addedKey, shared by the gossip pool.
	added *sharedSet
	// cache is the edge's response cache and its purges (edgeCache).
	cache edgeCache
	// isolatedSince is when this sidecar was cut off from its gossip
	// pool (Unix nanoseconds); 0 when it is not (watchIsolation).
	isolatedSince atomic.Int64
	local         *upstream
	sockets       map[string]*listener.Socket // by address
	servers       map[string]*server          // by address
	draining      sync.WaitGroup              // servers replaced by a reload, still draining
}

// Option changes how New builds a Sidecar.
type Option func(*Sidecar)

// WithListeners hands the sidecar listeners that are already bound: a
// listen address in the config that equals one's address uses it instead
// of binding. A test binds 127.0.0.1:0 first and writes the address it
// got into the config, so no port is released and taken again. Listeners
// the config never names are closed at Start.
func WithListeners(lns ...net.Listener) Option {
	return func(s *Sidecar) {
		for _, ln := range lns {
			s.adopted[ln.Addr().String()] = ln
		}
	}
}

// WithClock replaces the wall clock that sticky sessions' deadlines and
// the gossip store's expiries are read from, to test edges whose clocks
// disagree. Default time.Now.
func WithClock(now func() time.Time) Option {
	return func(s *Sidecar) { s.clock = now }
}

// New returns a Sidecar for cfg, which must have passed cfg.Validate.
// Nothing is bound until Start.
func New(cfg *config.Config, log *slog.Logger, opts ...Option) *Sidecar {
	if log == nil {
		log = slog.Default()
	}
	s := &Sidecar{
		log:     log,
		adopted: map[string]net.Listener{},

		upstreams: map[string]*upstream{},
		variants:  map[string]*upstream{},
		edgeCerts: map[string]*edgeCerts{},
		sockets:   map[string]*listener.Socket{},
		servers:   map[string]*server{},
		clock:     time.Now,
	}
	for _, o := range opts {
		o(s)
	}
	s.cfg.Store(cfg)
	s.life, s.stopLife = context.WithCancel(context.Background())
	s.routes.Store(newRouteTable(nil, nil))
	return s
}

// Start binds every listener and starts serving. If a listener cannot be
// bound, Start releases what it bound and returns the error.
func (s *Sidecar) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started.Load() {
		return errors.New("sidecar: already started")
	}
	cfg := s.cfg.Load()
	// Before anything starts: what it allocates meanwhile in the heap
	// caches of CPUs the config then takes away stays resident.
	applyConcurrency(cfg.Concurrency, s.log)
	b, err := startBackends(cfg, s.log, s.clock)
	if err != nil {
		return err
	}
	s.backends = b
	s.drains = newSharedSet(b.pool, drainPrefix, s.drained.Set)
	s.revoked = newSharedSet(b.pool, revokedPrefix, s.applyRevoked)
	s.added = newSharedMap(b.pool, addedPrefix, s.applyAddedKeys)
	if b.pool != nil {
		s.cache.purges = newSharedMap(b.pool, cachePurgePrefix, s.applyCachePurges)
	}
	if b.pool != nil {
		go s.watchIsolation(s.life, b.pool)
		s.sharedLimits = newSharedLimits(b.pool, s.log)
		go s.sharedLimits.run(s.life)
	}
	tel, accessLog, err := s.startTelemetry(ctx, cfg)
	if err != nil {
		return s.abortStart(err)
	}
	s.tel, s.accessLog = tel, accessLog
	sec, err := security.Start(cfg, b.consul, tel.Metrics(), s.log)
	if err != nil {
		return s.abortStart(err)
	}
	s.security = sec
	if err := s.apply(ctx, cfg); err != nil {
		return s.abortStart(err)
	}
	for addr, ln := range s.adopted {
		ln.Close() // handed over, but the config does not listen there
		delete(s.adopted, addr)
	}
	s.startedAt = s.clock()
	s.started.Store(true) // the caller says it runs: each listener said where
	return nil
}

// abortStart releases what Start set up before failing with err.
func (s *Sidecar) abortStart(err error) error {
	ctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
	defer cancel()
	s.security.Close()
	if s.tel != nil {
		s.tel.Shutdown(ctx)
		s.accessLog.Close()
	}
	s.backends.stop(ctx, true)
	for _, ln := range s.adopted {
		ln.Close()
	}
	s.stopLife()
	return err
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
// last successful Reload. It never blocks.
func (s *Sidecar) Config() *config.Config { return s.cfg.Load() }

// Reload applies cfg, which must have passed cfg.Validate. Listeners whose
// address and settings are unchanged keep serving untouched; changed ones
// get a new server on the same socket while the old one drains; upstreams
// keep their connections and endpoint state where their settings allow.
// If cfg cannot be applied (a section that needs a restart changed, a new
// listener cannot be bound), nothing changes and the error is returned.
func (s *Sidecar) Reload(ctx context.Context, cfg *config.Config) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started.Load() || s.stopped.Load() {
		return errors.New("sidecar: reload of a sidecar that is not running")
	}
	if err := s.apply(ctx, cfg); err != nil {
		s.RecordReload(err)
		return err
	}
	s.RecordReload(nil)
	s.log.Info("config reloaded", "listeners", len(s.servers), "upstreams", len(s.upstreams))
	return nil
}

// apply makes the running state match cfg, and publishes cfg. Every step
// that can fail comes before the first that changes anything. Called with
// s.mu held.
func (s *Sidecar) apply(ctx context.Context, cfg *config.Config) error {
	old := s.cfg.Load()
	if err := s.backends.compatible(cfg); err != nil {
		return err
	}
	if err := s.security.Compatible(cfg); err != nil {
		return err
	}
	if err := telemetryCompatible(old, cfg); err != nil {
		return err
	}
	pol, err := s.security.CheckPolicy(cfg)
	if s.security != nil && err != nil {
		return err
	}
	certs, err := s.loadEdgeCerts(cfg)
	if err != nil {
		return err
	}
	stickyKeys, err := loadStickyKeys(cfg)
	if err != nil {
		return err
	}
	jwt, err := s.loadJWTProviders(cfg)
	if err != nil {
		return err
	}
	keySets, err := s.loadKeySets(cfg)
	if err != nil {
		return err
	}
	specs := listenerSpecs(cfg)

	// Bind new addresses: the last step that can fail.
	bound := map[string]*listener.Socket{}
	for addr := range specs {
		if _, ok := s.sockets[addr]; ok {
			continue
		}
		sock, err := s.bind(ctx, addr)
		if err != nil {
			for _, b := range bound {
				b.Close()
			}
			return fmt.Errorf("listen %s (%s): %w", addr, specs[addr].role, err)
		}
		bound[addr] = sock
	}
	maps.Copy(s.sockets, bound)
	applyConcurrency(cfg.Concurrency, s.log)
	s.security.ApplyPolicy(pol)

	// Upstreams, reusing what is unchanged.
	next := make(map[string]*upstream, len(cfg.Upstreams))
	for _, uc := range cfg.Upstreams {
		next[uc.Service] = s.buildUpstream(cfg, uc, s.upstreams[uc.Service], s.log)
	}
	variants := map[string]*upstream{}
	for key, uc := range edgeVariants(cfg) {
		variants[key] = s.buildUpstream(cfg, uc, s.variants[key], s.log)
	}
	var local *upstream
	if cfg.Service != nil {
		var prev *upstream
		if s.local != nil && s.local.cfg.Service == cfg.Service.Name {
			prev = s.local
		}
		local = s.buildUpstream(cfg, localUpstream(cfg.Service), prev, s.log.With("role", roleInbound))
	}
	waitFirst(next, s.log)
	s.startEdgeCerts(certs)
	s.useStickyKeys(cfg, stickyKeys)
	s.startJWTProviders(jwt)
	s.useKeySets(keySets)
	t := s.newRouteTable(cfg, next, local)
	t.edge = s.edgeRouters(cfg, next, variants, certs)
	s.routes.Store(t)
	for name, old := range s.upstreams {
		old.retire(next[name])
	}
	for key, old := range s.variants {
		old.retire(variants[key])
	}
	s.variants = variants
	if s.local != nil {
		s.local.retire(local)
	}
	s.upstreams, s.local = next, local
	if s.started.Load() && serviceChanged(old, cfg) {
		s.backends.publish(cfg)
	}
	s.cfg.Store(cfg)
	s.publishRouteDigest(cfg)

	// Servers: keep the unchanged, start the new, drain the replaced.
	for addr, spec := range specs {
		prev := s.servers[addr]
		if prev != nil && prev.spec == spec {
			continue
		}
		srv := s.newServer(spec)
		srv.Serve(s.sockets[addr])
		s.servers[addr] = srv
		if prev != nil {
			s.drainInBackground(prev, cfg.DrainTimeout)
		}
		if _, isNew := bound[addr]; isNew {
			logListening(s.log, spec, s.sockets[addr].Addr().String())
		}
	}
	for addr, prev := range s.servers {
		if _, ok := specs[addr]; ok {
			continue
		}
		delete(s.servers, addr)
		sock := s.sockets[addr]
		delete(s.sockets, addr)
		sock.Close()
		s.drainInBackground(prev, cfg.DrainTimeout)
	}
	return nil
}

// bind returns a socket on addr: the listener handed to New for it, if
// any, else a new one.
func (s *Sidecar) bind(ctx context.Context, addr string) (*listener.Socket, error) {
	if ln, ok := s.adopted[addr]; ok {
		delete(s.adopted, addr)
		return listener.Adopt(ln, s.log), nil
	}
	return listener.Listen(ctx, addr, s.log)
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
		srv.Shutdown(ctx)
	}()
}

// ListenerFiles returns, by address, a duplicate of the file descriptor
// of every bound listener, for a new sidemesh process to take over
// (WithListeners, with net.FileListener) before this one shuts down: both
// accept on the same sockets meanwhile, so no connection is refused. The
// caller closes the files.
func (s *Sidecar) ListenerFiles() (map[string]*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	files := make(map[string]*os.File, len(s.sockets))
	for addr, sock := range s.sockets {
		f, err := sock.File()
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, err
		}
		files[addr] = f
	}
	return files, nil
}

// HandedOver tells the sidecar that another process serves its sockets
// and its service now: the Shutdown that follows drains as usual but does
// not withdraw the service from Consul, since the new process registered
// the same instance. (A gossip pool cannot be handed over: its port is
// bound by memberlist; the command line refuses a handover with gossip.)
func (s *Sidecar) HandedOver() { s.handover.Store(true) }

// Shutdown stops accepting on every listener, waits for in-flight
// requests and connections until ctx is done, then closes what remains
// and stops discovery. It is safe to call more than once.
func (s *Sidecar) Shutdown(ctx context.Context) {
	if s.stopped.Swap(true) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started.Load() {
		for _, ln := range s.adopted {
			ln.Close()
		}
		s.stopLife()
		return
	}
	// Withdraw from discovery first, so peers stop choosing this sidecar
	// while it drains; a peer that still does gets a refused connection,
	// which it retries elsewhere.
	s.backends.stop(ctx, !s.handover.Load())
	for _, sock := range s.sockets {
		sock.StopAccepting() // refuse new connections at once, on every address
	}
	for _, sock := range s.sockets {
		sock.Close() // and hand what was accepted to the servers before they stop
	}
	var wg sync.WaitGroup
	for _, srv := range s.servers {
		wg.Go(func() { srv.Shutdown(ctx) })
	}
	wg.Wait()
	for _, sock := range s.sockets {
		sock.Close()
	}
	s.stopLife() // ends watches and cuts short drains started by reloads
	s.draining.Wait()
	for _, u := range s.upstreams {
		u.retire(nil)
	}
	for _, u := range s.variants {
		u.retire(nil)
	}
	if s.local != nil {
		s.local.retire(nil)
	}
	s.security.Close()
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
