package sidecar

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
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
	transport *http.Transport
	upgrade   *http.Transport // HTTP/1.1, for WebSocket upgrades

	proxy *proxy.Upstream
	tcp   *proxy.TCPTarget
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

// newBalancer builds the balancer cfg asks for; its events are logged and
// counted in metrics.
func newBalancer(cfg config.Upstream, log *slog.Logger, metrics *telemetry.Metrics) *balancer.Balancer {
	policy, err := balancer.NewPolicy(cfg.Balancer, balancer.PolicyOptions{HashOn: cfg.HashOn})
	if err != nil { // validated by config
		log.Error("balancer", "err", err)
		policy = balancer.RoundRobin{}
	}
	opts := balancer.Options{OnEvent: func(ev balancer.Event) {
		logEvent(log, ev)
		countEvent(metrics, ev)
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
		Attempts:      r.Attempts,
		PerTryTimeout: r.PerTryTimeout,
		NonIdempotent: r.NonIdempotent,
		BufferBytes:   r.BufferBytes,
		Backoff:       r.Backoff,
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

// buildUpstream makes the state for cfg, reusing from old (which may be
// nil) the balancer, watch and transports whose settings did not change.
//
// mtls, when set, is the TLS config toward cfg's endpoints (mutual TLS
// checking their identity); it reads the current certificates at every
// handshake, so it is built once per upstream.
//
// tel records the upstream's tries and balancer events; nil records none.
func buildUpstream(ctx context.Context, cfg config.Upstream, old *upstream, sources sourceFunc, mtls *tls.Config, trusted []netip.Prefix, log *slog.Logger, tel *telemetry.Telemetry) *upstream {
	u := &upstream{cfg: cfg}
	proxyLog := log // the proxy names the upstream in its own log lines
	log = log.With("upstream", cfg.Service)

	if old != nil && reflect.DeepEqual(keyOf(old.cfg), keyOf(cfg)) {
		u.bal = old.bal
	} else {
		u.bal = newBalancer(cfg, log, tel.Metrics())
	}
	if old != nil && old.bal == u.bal && reflect.DeepEqual(old.health.settingsOrZero(), cfg.HealthCheck) {
		u.health = old.health
	} else {
		u.health = startHealth(ctx, cfg, u.bal, mtls, log)
	}
	src, key := sources(cfg)
	switch {
	case old != nil && u.bal == old.bal && reflect.DeepEqual(old.w.key, key):
		u.w = old.w
	case old != nil && u.bal == old.bal:
		// Same balancer, new source: stop the old feed first so a late
		// snapshot from it cannot overwrite the new one.
		old.w.cancel()
		u.w = startWatch(ctx, u.bal, src, key, cfg.Service, log)
	default:
		u.w = startWatch(ctx, u.bal, src, key, cfg.Service, log)
	}

	u.tkey = transportKey{
		http2:          config.HTTP2(cfg.Protocol),
		connectTimeout: cfg.ConnectTimeout,
		idleTimeout:    cfg.IdleTimeout,
		maxIdle:        cfg.MaxIdlePerEndpoint,
		mtls:           mtls != nil,
	}
	if old != nil && old.tkey == u.tkey && old.transport != nil {
		u.transport, u.upgrade = old.transport, old.upgrade
	} else if cfg.Protocol != config.ProtocolTCP {
		opts := proxy.TransportOptions{
			HTTP2:              u.tkey.http2,
			ConnectTimeout:     cfg.ConnectTimeout,
			IdleTimeout:        cfg.IdleTimeout,
			MaxIdlePerEndpoint: cfg.MaxIdlePerEndpoint,
			TLS:                mtls,
		}
		u.transport = proxy.NewTransport(opts)
		u.upgrade = u.transport
		if opts.HTTP2 {
			opts.HTTP2 = false
			u.upgrade = proxy.NewTransport(opts)
		}
	}

	if cfg.Protocol == config.ProtocolTCP {
		u.tcp = &proxy.TCPTarget{
			Name:           cfg.Service,
			Picker:         u.bal,
			ConnectTimeout: cfg.ConnectTimeout,
			IdleTimeout:    cfg.IdleTimeout,
			TLS:            mtls,
			Telemetry:      tel.Client(cfg.Service, cfg.Balancer),
		}
	} else {
		u.proxy = proxy.NewUpstream(proxy.UpstreamOptions{
			Name:             cfg.Service,
			Picker:           u.bal,
			Transport:        u.transport,
			UpgradeTransport: u.upgrade,
			Timeout:          cfg.Timeout,
			Retry:            retryPolicy(cfg.Retries),
			TrustedProxies:   trusted,
			Logger:           proxyLog,
			Telemetry:        tel.Client(cfg.Service, cfg.Balancer),
		})
	}
	return u
}

// watch is a running discovery feed into a balancer.
type watch struct {
	cancel context.CancelFunc
	// key describes the source, to tell on reload whether the watch must
	// restart.
	key sourceKey
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

// sourceFunc returns the discovery source of an upstream and its key.
type sourceFunc func(config.Upstream) (discovery.Source, sourceKey)

// startWatch feeds bal from src. It does not wait for the first
// snapshot; see waitFirst.
func startWatch(ctx context.Context, bal *balancer.Balancer, src discovery.Source, key sourceKey, service string, log *slog.Logger) *watch {
	wctx, cancel := context.WithCancel(ctx)
	w := &watch{cancel: cancel, key: key, first: make(chan struct{})}
	ch, err := src.Watch(wctx, service)
	if err != nil {
		log.Error("discovery watch failed; no endpoints", "err", err)
		return w
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
	return w
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

// routeTable is what the listeners route by; it is replaced whole on
// reload and read without locks.
type routeTable struct {
	byName map[string]*upstream
	local  *upstream
	// known lists upstream names for the 502 message.
	known string
}

func newRouteTable(ups map[string]*upstream, local *upstream) *routeTable {
	names := make([]string, 0, len(ups))
	for n := range ups {
		names = append(names, n)
	}
	sort.Strings(names)
	known := "known upstreams: none"
	if len(names) > 0 {
		known = "known upstreams: " + strings.Join(names, ", ")
	}
	return &routeTable{byName: ups, local: local, known: known}
}
func joinHostPort(host string, port int) string {
	return net.JoinHostPort(host, strconv.Itoa(port))
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, err
	}
	return host, port, nil
}
