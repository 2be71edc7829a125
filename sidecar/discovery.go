package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/discovery/consul"
	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/health"
)

// leaveTimeout bounds the graceful leave of the gossip pool at shutdown,
// which also ends with the drain deadline.
const leaveTimeout = 5 * time.Second

// backends are the discovery backends of a running sidecar: the Consul
// client and registration, the gossip pool and the local instance it
// publishes. They are created at Start; a reload may change what is
// published, not the backends themselves.
type backends struct {
	cfg config.Discovery
	log *slog.Logger

	consul *api.Client
	pool   *gossip.Pool

	// registrar registers the local service with Consul; it is replaced
	// when what it was made with (the app's address, its health check)
	// changes. Guarded by mu; nil when Consul registration is off.
	registrar     *consul.Registrar
	registrarOpts consul.RegistrarOptions

	mu       sync.Mutex // guards below
	self     discovery.Instance
	healthy  bool
	stopLoop context.CancelFunc // registration retry and local health checks
	loops    sync.WaitGroup
}

// instance returns what cfg publishes about the local service.
func instance(cfg *config.Config) discovery.Instance {
	s := cfg.Service
	host, port, _ := splitHostPort(cfg.AdvertiseAddr())
	return discovery.Instance{
		ID: cfg.ServiceID(), Service: s.Name, Address: host, Port: port,
		Weight: s.Weight, Tags: s.Tags, Meta: s.Meta, Zone: s.Zone,
	}
}

// startBackends connects to the backends cfg configures and publishes the
// local service. Consul being down is not an error: registration is
// retried in the background. A gossip pool that cannot start is.
func startBackends(cfg *config.Config, log *slog.Logger, clock func() time.Time) (*backends, error) {
	b := &backends{cfg: cfg.Discovery, log: log, healthy: true}
	if c := cfg.Discovery.Consul; c != nil {
		client, err := consul.NewClient(consul.Config{
			Address: c.Address, TokenFile: c.TokenFile, Datacenter: c.Datacenter,
			CAFile: c.CAFile, CertFile: c.CertFile, KeyFile: c.KeyFile, TLSServerName: c.TLSServerName,
		})
		if err != nil {
			return nil, fmt.Errorf("consul: %w", err)
		}
		b.consul = client
	}
	if g := cfg.Discovery.Gossip; g != nil {
		var key []byte
		if !g.Insecure {
			k, err := gossip.LoadKey(g.KeyFile)
			if err != nil {
				return nil, err
			}
			key = k
		}
		name := g.NodeName
		if name == "" && cfg.Service != nil {
			name = cfg.ServiceID()
		}
		pool, err := gossip.Start(gossip.Config{
			NodeName: name, Bind: g.Bind, Advertise: g.Advertise, Join: g.Join,
			Key: key, Insecure: g.Insecure, Profile: g.Profile, Logger: log.With("backend", "gossip"), Clock: clock,
		})
		if err != nil {
			return nil, err
		}
		b.pool = pool
	}
	if cfg.Service != nil {
		b.publish(cfg)
	}
	return b, nil
}

// publish makes the backends announce cfg's service: it (re)starts the
// Consul registration loop and the local health checks that gossip
// publishes the instance's health from. With no service in cfg, it
// withdraws what was announced.
func (b *backends) publish(cfg *config.Config) {
	b.mu.Lock()
	if b.stopLoop != nil {
		b.stopLoop()
	}
	old := b.self
	b.self = discovery.Instance{}
	if cfg.Service != nil {
		b.self = instance(cfg)
	}
	b.healthy = true
	ctx, cancel := context.WithCancel(context.Background())
	b.stopLoop = cancel
	b.mu.Unlock()
	b.loops.Wait()

	if cfg.Service == nil {
		b.withdraw(old.ID)
		return
	}
	if old.ID != "" && old.ID != b.self.ID {
		b.withdraw(old.ID)
	}
	if b.consul != nil && b.cfg.Consul.Register {
		svc := cfg.Service
		opts := consul.RegistrarOptions{
			AppAddress: svc.Address, AppPort: svc.Port,
			HealthPath: svc.Health.HTTP, HealthInterval: svc.Health.Interval, HealthTimeout: svc.Health.Timeout,
			Logger: b.log.With("backend", "consul"),
		}
		if b.registrar == nil || !sameRegistrarOptions(b.registrarOpts, opts) {
			if b.registrar != nil {
				b.deregister()
			}
			b.registrar, b.registrarOpts = consul.NewRegistrar(b.consul, opts), opts
		}
	}

	if b.pool != nil {
		b.publishGossip()
		if h := cfg.Service.Health; h.HTTP != "" || h.TCP {
			b.loops.Add(1)
			go func() {
				defer b.loops.Done()
				b.checkLocalApp(ctx, cfg.Service)
			}()
		}
	}
	if b.registrar != nil {
		b.loops.Add(1)
		go func() {
			defer b.loops.Done()
			b.registerLoop(ctx)
		}()
	}
}

// withdraw removes the instance with the given ID from the backends.
func (b *backends) withdraw(id string) {
	if id == "" {
		return
	}
	if b.pool != nil {
		if err := b.pool.Withdraw(id); err != nil {
			b.log.Warn("gossip: withdraw instance", "id", id, "err", err)
		}
	}
	if b.registrar != nil {
		b.deregister()
	}
}

// deregister removes the Consul registration and forgets the registrar.
func (b *backends) deregister() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.registrar.Deregister(ctx); err != nil {
		b.log.Warn("consul: deregister", "err", err)
	}
	b.registrar = nil
}

// sameRegistrarOptions compares options but for the logger.
func sameRegistrarOptions(a, b consul.RegistrarOptions) bool {
	a.Logger, b.Logger = nil, nil
	return a == b
}

func (b *backends) publishGossip() {
	b.mu.Lock()
	self, healthy := b.self, b.healthy
	b.mu.Unlock()
	if err := b.pool.Publish(self, healthy); err != nil {
		b.log.Error("gossip: publish instance", "id", self.ID, "err", err)
	}
}

// checkLocalApp runs health checks against the local app and republishes
// the instance over gossip whenever its health flips.
func (b *backends) checkLocalApp(ctx context.Context, svc *config.Service) {
	target := health.Target{ID: "local", Addr: joinHostPort(svc.Address, svc.Port)}
	checker := health.New(health.Settings{
		Path: svc.Health.HTTP, TCP: svc.Health.TCP, Host: svc.Name, HTTP2: config.HTTP2(svc.Protocol),
		Interval: svc.Health.Interval, Timeout: svc.Health.Timeout,
		HealthyThreshold: 1, UnhealthyThreshold: 2,
	}, func() []health.Target { return []health.Target{target} }, func(_ string, healthy bool) {
		b.mu.Lock()
		b.healthy = healthy
		b.mu.Unlock()
		b.publishGossip()
	}, b.log.With("check", "local app"))
	checker.Run(ctx)
}

// registerLoop registers with Consul, retrying with backoff while the
// agent is unreachable, so a sidecar starts even when Consul is down.
func (b *backends) registerLoop(ctx context.Context) {
	b.mu.Lock()
	self, registrar := b.self, b.registrar
	b.mu.Unlock()
	backoff := 250 * time.Millisecond
	for {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := registrar.Register(rctx, self)
		cancel()
		if err == nil {
			b.log.Info("registered with consul", "id", self.ID, "service", self.Service)
			return
		}
		if ctx.Err() != nil {
			return
		}
		b.log.Warn("consul registration failed; retrying", "err", err, "in", backoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// sourceKey returns what the discovery feed of upstream u depends on.
func (b *backends) sourceKey(cfg *config.Config, u config.Upstream) sourceKey {
	return sourceKey{Sources: cfg.Sources(&u), Endpoints: u.Endpoints, Consul: u.Consul}
}

// startWatch starts the discovery feed of upstream u (whose key is key)
// into bal.
func (b *backends) startWatch(ctx context.Context, cfg *config.Config, u config.Upstream, key sourceKey, bal *balancer.Balancer, log *slog.Logger) *watch {
	wctx, cancel := context.WithCancel(ctx)
	w := &watch{cancel: cancel, key: key, first: make(chan struct{})}
	var srcs []discovery.Source
	for _, kind := range key.Sources {
		switch kind {
		case config.SourceStatic:
			srcs = append(srcs, staticSource(u))
		case config.SourceConsul:
			dc := u.Consul.Datacenter
			if dc == "" {
				dc = cfg.Discovery.Consul.Datacenter
			}
			w.consul = consul.NewSource(b.consul, consul.SourceOptions{
				Mesh: u.Consul.Mesh, Datacenter: dc, Tags: u.Consul.Tags,
				Logger: b.log.With("backend", "consul", "upstream", u.Service),
			})
			srcs = append(srcs, w.consul)
		case config.SourceGossip:
			srcs = append(srcs, b.pool)
		}
	}
	w.feed(wctx, bal, discovery.Merge(srcs...), u.Service, log)
	return w
}

// compatible reports whether cfg can be applied to the running backends:
// the discovery section itself cannot change without a restart.
func (b *backends) compatible(cfg *config.Config) error {
	if b == nil {
		return errors.New("sidecar: not started")
	}
	if !reflect.DeepEqual(b.cfg, cfg.Discovery) {
		return errors.New("the discovery section changed; restart sidemesh to apply it")
	}
	return nil
}

// stop withdraws the local service (Consul deregistration, unless
// withdraw is false because another process took it over; gossip leave)
// so peers stop sending to it, then closes the backends.
func (b *backends) stop(ctx context.Context, withdraw bool) {
	if b == nil {
		return // the sidecar never started
	}
	b.mu.Lock()
	if b.stopLoop != nil {
		b.stopLoop()
	}
	b.mu.Unlock()
	b.loops.Wait()
	switch {
	case b.registrar != nil && withdraw:
		if err := b.registrar.Deregister(ctx); err != nil { // it logs success itself
			b.log.Warn("consul deregistration failed", "err", err)
		}
		b.registrar = nil
	case b.registrar != nil:
		b.registrar.Abandon() // the process that took over keeps it
		b.registrar = nil
	}
	if b.pool != nil {
		// The leave gets what is left of the drain deadline, at most
		// leaveTimeout. It returns early when no peer is left to hear it
		// (the whole pool stopping at once), and errs only when live
		// peers may not have heard: they then drop this member after
		// failure detection, sending to it meanwhile.
		lctx, cancel := context.WithTimeout(ctx, leaveTimeout)
		err := b.pool.Leave(lctx)
		cancel()
		if err != nil {
			b.log.Warn("gossip leave not confirmed; peers will drop this member after failure detection", "err", err)
		}
		if err := b.pool.Shutdown(); err != nil {
			b.log.Warn("gossip shutdown failed", "err", err)
		}
	}
}
