package sidecar

import (
	"context"
	"crypto/tls"
	"log/slog"
	"reflect"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/discovery/consul"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/breaker"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/health"
	"github.com/sidemesh/sidemesh/sidecar/proxy"
	"github.com/sidemesh/sidemesh/telemetry"
)

// initialFetchTimeout bounds how long starting an upstream waits for its
// first discovery snapshot before serving without endpoints (requests get
// 503 until one arrives).
const initialFetchTimeout = 5 * time.Second

// transportKey holds the settings a pooled transport depends on; an
// upstream whose key is unchanged across a reload keeps its connections.
type transportKey struct {
	http2          bool
	connectTimeout time.Duration
	idleTimeout    time.Duration
	maxIdle        int
	mtls           bool
}

// upstream is the running state of one upstream (or of the local app,
// for the inbound listener): its balancer fed by a discovery watch, its
// transports, and the proxy built on them.
type upstream struct {
	cfg config.Upstream

	bal    *balancer.Balancer
	w      *watch
	health *healthRun // nil when health checks are off

	tkey      transportKey
	transport *proxy.Transport
	upgrade   *proxy.Transport // HTTP/1.1, for WebSocket upgrades

	proxy *proxy.Upstream
	// proxyOpts built proxy; an edge route with its own timeout or
	// retries gets a proxy of its own from them.
	proxyOpts proxy.UpstreamOptions
	tcp       *proxy.TCPTarget
}

// localUpstream turns the service section into the upstream the inbound
// listener forwards to: one static endpoint, the local app.
func localUpstream(svc *config.Service) config.Upstream {
	return config.Upstream{
		Service:            svc.Name,
		Protocol:           svc.Protocol,
		Balancer:           balancer.DefaultPolicy,
		Endpoints:          []config.Endpoint{{Address: joinHostPort(svc.Address, svc.Port), Weight: 1}},
		Timeout:            0, // the caller's sidecar enforces its own timeout
		ConnectTimeout:     config.DefaultConnectTimeout,
		IdleTimeout:        config.DefaultPoolIdleTimeout,
		MaxIdlePerEndpoint: config.DefaultMaxIdlePerEndpoint,
		// One endpoint and a caller that retries and balances on its own
		// side: breakers, ejection and retries here would only add delay
		// and multiply load.
		CircuitBreaker: config.CircuitBreaker{Enabled: false},
		Outlier:        config.Outlier{Enabled: false},
		Retries:        config.Retries{Attempts: 0},
	}
}

// balancerKey holds the settings a balancer depends on; an upstream whose
// key is unchanged across a reload keeps its balancer and so the state of
// its endpoints (in-flight, latency, breakers, ejections).
type balancerKey struct {
	Policy  string
	HashOn  string
	Breaker config.CircuitBreaker
	Outlier config.Outlier
}

func keyOf(cfg config.Upstream) balancerKey {
	return balancerKey{cfg.Balancer, cfg.HashOn, cfg.CircuitBreaker, cfg.Outlier}
}

// newBalancer builds the balancer cfg asks for; its events are logged,
// counted in metrics and kept in the admin API's event log.
func newBalancer(cfg config.Upstream, log *slog.Logger, metrics *telemetry.Metrics, drained *balancer.Drained) *balancer.Balancer {
	policy, err := balancer.NewPolicy(cfg.Balancer, balancer.PolicyOptions{HashOn: cfg.HashOn})
	if err != nil { // validated by config
		log.Error("balancer", "err", err)
		policy = balancer.RoundRobin{}
	}
	opts := balancer.Options{Drained: drained, OnEvent: func(ev balancer.Event) {
		logEvent(log, ev)
		countEvent(metrics, ev)
		recordEvent(metrics, ev)
	}}
	if cb := cfg.CircuitBreaker; cb.Enabled {
		opts.Breaker = &breaker.Settings{
			ConsecutiveFailures: uint32(cb.ConsecutiveFailures),
			FailureRatio:        cb.FailureRatio,
			MinRequests:         uint32(cb.MinRequests),
			Interval:            cb.Interval,
			OpenTimeout:         cb.OpenTimeout,
			HalfOpenRequests:    uint32(cb.HalfOpenRequests),
			FailureStatuses:     cb.FailureStatuses,
		}
	}
	if o := cfg.Outlier; o.Enabled {
		opts.Outlier = &breaker.OutlierSettings{
			Consecutive5xx:           o.Consecutive5xx,
			ConsecutiveGatewayErrors: o.ConsecutiveGatewayErrors,
			BaseEjection:             o.BaseEjection,
			MaxEjection:              o.MaxEjection,
			MaxEjectionPercent:       o.MaxEjectionPercent,
		}
	}
	return balancer.New(cfg.Service, policy, opts)
}

// countEvent counts breaker transitions and ejections in metrics, by the
// endpoint's address (its ID if it has already left).
func countEvent(metrics *telemetry.Metrics, ev balancer.Event) {
	if metrics == nil {
		return
	}
	addr := ev.Addr
	if addr == "" {
		addr = ev.Endpoint
	}
	switch ev.Kind {
	case balancer.BreakerOpened:
		metrics.BreakerTransition(ev.Service, addr, breaker.Open.String())
	case balancer.BreakerHalfOpen:
		metrics.BreakerTransition(ev.Service, addr, breaker.HalfOpen.String())
	case balancer.BreakerClosed:
		metrics.BreakerTransition(ev.Service, addr, breaker.Closed.String())
	case balancer.Ejected:
		metrics.Ejection(ev.Service, addr)
	}
}

// recordEvent keeps an endpoint's availability change in the event log
// the admin API serves at /events (see events.go).
func recordEvent(metrics *telemetry.Metrics, ev balancer.Event) {
	subject, detail := describeEvent(ev)
	metrics.RecordEvent(string(ev.Kind), subject, detail)
}

// logEvent logs a change in an endpoint's availability; losing an
// endpoint is a warning, getting it back is news.
func logEvent(log *slog.Logger, ev balancer.Event) {
	level := slog.LevelInfo
	switch ev.Kind {
	case balancer.BreakerOpened, balancer.Ejected, balancer.Unhealthy:
		level = slog.LevelWarn
	}
	attrs := []any{"endpoint", ev.Endpoint, "addr", ev.Addr, "event", string(ev.Kind)}
	if !ev.Until.IsZero() {
		attrs = append(attrs, "until", ev.Until.Format(time.RFC3339))
	}
	log.Log(context.Background(), level, "endpoint availability changed", attrs...)
}

// retryPolicy turns the retries section into the proxy's policy.
func retryPolicy(r config.Retries) proxy.RetryPolicy {
	p := proxy.RetryPolicy{
		Attempts:       r.Attempts,
		PerTryTimeout:  r.PerTryTimeout,
		NonIdempotent:  r.NonIdempotent,
		RetryForwarded: r.RetryForwarded,
		BufferBytes:    r.BufferBytes,
		Backoff:        r.Backoff,
	}
	for _, cond := range r.On {
		switch cond {
		case config.RetryConnectFailure:
			p.OnConnectFailure = true
		case config.RetryReset:
			p.OnReset = true
		case config.RetryTimeout:
			p.OnTimeout = true
		case config.Retry5xx:
			for code := 500; code < 600; code++ {
				p.Statuses.Add(code)
			}
		case config.RetryGatewayError:
			p.Statuses.Add(502)
			p.Statuses.Add(503)
			p.Statuses.Add(504)
		default:
			code, _ := strconv.Atoi(cond) // validated by config
			p.Statuses.Add(code)
		}
	}
	if r.Attempts > 0 {
		p.Budget = proxy.NewRetryBudget(r.Budget, r.MinRetriesPerSecond)
	}
	return p
}

// healthRun is a running active health checker.
type healthRun struct {
	settings config.HealthCheck
	cancel   context.CancelFunc
	done     chan struct{}
}

func (h *healthRun) settingsOrZero() config.HealthCheck {
	if h == nil {
		return config.HealthCheck{}
	}
	return h.settings
}

func (h *healthRun) stop() {
	if h != nil {
		h.cancel()
		<-h.done
	}
}

// startHealth starts active checks of bal's endpoints, if cfg asks for them.
func startHealth(ctx context.Context, cfg config.Upstream, bal *balancer.Balancer, mtls *tls.Config, log *slog.Logger) *healthRun {
	hc := cfg.HealthCheck
	if !hc.Enabled() {
		return nil
	}
	checker := health.New(health.Settings{
		Path:               hc.Path,
		TCP:                hc.TCP,
		Host:               cfg.Service,
		HTTP2:              config.HTTP2(cfg.Protocol),
		Interval:           hc.Interval,
		Timeout:            hc.Timeout,
		HealthyThreshold:   hc.HealthyThreshold,
		UnhealthyThreshold: hc.UnhealthyThreshold,
		TLS:                mtls,
	}, func() []health.Target {
		eps := bal.Endpoints()
		targets := make([]health.Target, len(eps))
		for i, ep := range eps {
			targets[i] = health.Target{ID: ep.ID, Addr: ep.Addr}
		}
		return targets
	}, bal.SetHealthy, log)
	hctx, cancel := context.WithCancel(ctx)
	h := &healthRun{settings: hc, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(h.done)
		checker.Run(hctx)
	}()
	return h
}

// buildUpstream makes the state for uc, an upstream of cfg, reusing from
// old (which may be nil) the balancer, watch and transports whose settings
// did not change. With mutual TLS and uc.MTLS, the transport speaks mutual
// TLS checking the endpoints' identity; its config reads the current
// certificates at every handshake, so it is built once per upstream.
func (s *Sidecar) buildUpstream(cfg *config.Config, uc config.Upstream, old *upstream, log *slog.Logger) *upstream {
	ctx, tel := s.life, s.tel
	var mtls *tls.Config
	if uc.MTLS {
		mtls = s.security.ClientTLS(uc.Service)
	}
	u := &upstream{cfg: uc}
	proxyLog := log // the proxy names the upstream in its own log lines
	log = log.With("upstream", uc.Service)

	if old != nil && reflect.DeepEqual(keyOf(old.cfg), keyOf(uc)) {
		u.bal = old.bal
	} else {
		u.bal = newBalancer(uc, log, tel.Metrics(), &s.drained)
	}
	if old != nil && old.bal == u.bal && reflect.DeepEqual(old.health.settingsOrZero(), uc.HealthCheck) {
		u.health = old.health
	} else {
		u.health = startHealth(ctx, uc, u.bal, mtls, log)
	}
	key := s.backends.sourceKey(cfg, uc)
	switch {
	case old != nil && u.bal == old.bal && reflect.DeepEqual(old.w.key, key):
		u.w = old.w
	case old != nil && u.bal == old.bal:
		// Same balancer, new source: stop the old feed first so a late
		// snapshot from it cannot overwrite the new one.
		old.w.cancel()
		u.w = s.backends.startWatch(ctx, cfg, uc, key, u.bal, log)
	default:
		u.w = s.backends.startWatch(ctx, cfg, uc, key, u.bal, log)
	}

	u.tkey = transportKey{
		http2:          config.HTTP2(uc.Protocol),
		connectTimeout: uc.ConnectTimeout,
		idleTimeout:    uc.IdleTimeout,
		maxIdle:        uc.MaxIdlePerEndpoint,
		mtls:           mtls != nil,
	}
	if old != nil && old.tkey == u.tkey && old.transport != nil {
		u.transport, u.upgrade = old.transport, old.upgrade
	} else if uc.Protocol != config.ProtocolTCP {
		opts := proxy.TransportOptions{
			HTTP2:              u.tkey.http2,
			ConnectTimeout:     uc.ConnectTimeout,
			IdleTimeout:        uc.IdleTimeout,
			MaxIdlePerEndpoint: uc.MaxIdlePerEndpoint,
			TLS:                mtls,
		}
		u.transport = proxy.NewTransport(opts)
		u.upgrade = u.transport
		if opts.HTTP2 {
			opts.HTTP2 = false
			u.upgrade = proxy.NewTransport(opts)
		}
	}

	if uc.Protocol == config.ProtocolTCP {
		u.tcp = &proxy.TCPTarget{
			Name:           uc.Service,
			Picker:         u.bal,
			ConnectTimeout: uc.ConnectTimeout,
			IdleTimeout:    uc.IdleTimeout,
			TLS:            mtls,
			Telemetry:      tel.Client(uc.Service, uc.Balancer),
		}
	} else {
		u.proxyOpts = proxy.UpstreamOptions{
			Name:             uc.Service,
			Picker:           u.bal,
			Transport:        u.transport,
			UpgradeTransport: u.upgrade,
			Timeout:          uc.Timeout,
			Retry:            retryPolicy(uc.Retries),
			Logger:           proxyLog,
			Telemetry:        tel.Client(uc.Service, uc.Balancer),
		}
		u.proxy = proxy.NewUpstream(u.proxyOpts)
	}
	return u
}

// watch is a running discovery feed into a balancer.
type watch struct {
	cancel context.CancelFunc
	// key describes the source, to tell on reload whether the watch must
	// restart.
	key sourceKey
	// consul is the feed's Consul source, for its health in the admin API
	// and metrics; nil when the feed does not use Consul.
	consul *consul.Source
	// first is closed when the first snapshot has reached the balancer.
	first chan struct{}
	// last is when the latest snapshot reached it, in Unix nanoseconds.
	last atomic.Int64
}

// lastSnapshot returns when the latest snapshot reached the balancer; the
// zero Time before the first.
func (w *watch) lastSnapshot() time.Time {
	if ns := w.last.Load(); ns != 0 {
		return time.Unix(0, ns)
	}
	return time.Time{}
}

// sourceKey holds what an upstream's discovery feed depends on.
type sourceKey struct {
	Sources   []string
	Endpoints []config.Endpoint
	Consul    config.UpstreamConsul
}

// feed feeds bal from src, marking w as it goes. It does not wait for the
// first snapshot; see waitFirst.
func (w *watch) feed(ctx context.Context, bal *balancer.Balancer, src discovery.Source, service string, log *slog.Logger) {
	ch, err := src.Watch(ctx, service)
	if err != nil {
		log.Error("discovery watch failed; no endpoints", "err", err)
		return
	}
	go func() {
		got := false
		for snap := range ch {
			bal.Update(snap)
			w.last.Store(time.Now().UnixNano())
			if !got {
				got = true
				close(w.first)
			}
		}
	}()
}

// waitFirst waits until every upstream's watch has delivered its first
// snapshot, for at most initialFetchTimeout in all, so that a sidecar
// serves with endpoints from its first request, yet starts (answering
// 503 for the rest) when a backend such as Consul is down.
func waitFirst(ups map[string]*upstream, log *slog.Logger) {
	timer := time.NewTimer(initialFetchTimeout)
	defer timer.Stop()
	for _, u := range ups {
		select {
		case <-u.w.first:
		case <-timer.C:
			for name, u := range ups {
				select {
				case <-u.w.first:
				default:
					log.Warn("no endpoints yet; answering 503 until discovery delivers some",
						"upstream", name, "waited", initialFetchTimeout)
				}
			}
			return
		}
	}
}

// staticSource returns the static source over an upstream's endpoints.
func staticSource(u config.Upstream) discovery.Source {
	eps := make([]discovery.Endpoint, 0, len(u.Endpoints))
	for _, e := range u.Endpoints {
		host, port, err := splitHostPort(e.Address)
		if err != nil {
			continue // validated by config
		}
		eps = append(eps, discovery.Endpoint{Address: host, Port: port, Weight: e.Weight, Zone: e.Zone})
	}
	return discovery.NewStatic(map[string][]discovery.Endpoint{u.Service: eps})
}

// retire releases what a replaced upstream holds that its successor (nil
// when the upstream is gone) does not share. In-flight requests keep
// working on what they already have.
func (u *upstream) retire(next *upstream) {
	if next == nil || next.w != u.w {
		u.w.cancel()
	}
	if next == nil || next.health != u.health {
		u.health.stop()
	}
	if u.transport != nil && (next == nil || next.transport != u.transport) {
		u.transport.CloseIdleConnections()
		if u.upgrade != u.transport {
			u.upgrade.CloseIdleConnections()
		}
	}
}
