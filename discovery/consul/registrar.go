package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery"
)

// Defaults of RegistrarOptions.
const (
	DefaultHealthInterval          = 10 * time.Second
	DefaultHealthTimeout           = 2 * time.Second
	DefaultDeregisterCriticalAfter = time.Minute
	DefaultTTL                     = 15 * time.Second
)

// defaultAppAddress is where the app's health check connects when
// RegistrarOptions.AppAddress is empty.
const defaultAppAddress = "127.0.0.1"

// minTTL keeps the refresher's ticker sane.
const minTTL = 30 * time.Millisecond

// proxySuffix is appended to the service ID and name to name the sidecar
// registration, as Consul's sidecar_service does.
const proxySuffix = "-sidecar-proxy"

// RegistrarOptions configures a Registrar. Zero fields get the defaults
// stated on each.
type RegistrarOptions struct {
	// AppAddress and AppPort are where the local app listens. AppPort is
	// required. AppAddress is the registered address of the service (what
	// non-mesh clients dial) and the target of its health check; "" means
	// the service is registered without an address (Consul then uses the
	// node's) and the check and the proxy's LocalServiceAddress use
	// 127.0.0.1.
	AppAddress string
	AppPort    int
	// HealthPath, if set, makes the app's check an HTTP GET of
	// http://AppAddress:AppPort/HealthPath (2xx passing, 429 warning,
	// anything else critical); "" makes it a TCP connect to the app.
	HealthPath string
	// HealthInterval and HealthTimeout time the app's check. Zero means
	// DefaultHealthInterval (10s) and DefaultHealthTimeout (2s). Consul
	// runs checks at most once a second, and the first one within one
	// interval of the registration; until it passes the instance is
	// critical.
	HealthInterval, HealthTimeout time.Duration
	// DeregisterCriticalAfter is how long the app's check, or the
	// sidecar's TTL check, may stay critical before the Consul agent
	// removes the registration. Zero means DefaultDeregisterCriticalAfter
	// (1m). While the sidecar runs it registers again whatever the agent
	// removed, so this only cleans up after sidecars that are gone.
	DeregisterCriticalAfter time.Duration
	// TTL is the time to live of the sidecar's own check; the Registrar
	// refreshes it every TTL/3, which is also how soon it notices that
	// the agent lost the registration. Zero means DefaultTTL (15s);
	// values below 30ms count as 30ms.
	TTL time.Duration
	// Logger receives the registrar's logs; nil discards them.
	Logger *slog.Logger
}

// Registrar publishes the local service and its sidecar to the local Consul agent, the way Consul's own mesh does:
//
//   - the service: ID Instance.ID, name Instance.Service, the app's address
//     and port, with an HTTP or TCP check against the app;
//   - its sidecar, of kind connect-proxy: ID "<ID>-sidecar-proxy", name
//     "<service>-sidecar-proxy", the address and port of the sidecar's
//     inbound listener (Instance.Address and Instance.Port), with a TTL
//     check that the Registrar keeps passing while it runs and an alias
//     check on the service, so that the sidecar is critical when the app is.
//
// Register starts a goroutine that refreshes the TTL check and registers
// again when the agent has forgotten the registration (an agent restarted
// without its state, or a registration reaped after
// DeregisterCriticalAfter); Deregister stops it. A Registrar is safe for
// concurrent use; calls to Register and Deregister are serialized.
type Registrar struct {
	client *api.Client
	opts   RegistrarOptions
	log    *slog.Logger

	// callMu serializes Register and Deregister and guards the refresher's
	// lifecycle.
	callMu  sync.Mutex
	stop    context.CancelFunc // stops the refresher; nil when it does not run
	stopped chan struct{}      // closed when the refresher has returned

	// mu guards what the refresher reads and is held across every
	// registration request, so that the refresher and Register never
	// interleave their writes to the agent.
	mu    sync.Mutex
	regs  []*api.AgentServiceRegistration // service, then sidecar; nil when not registered
	ttlID string                          // check ID of the sidecar's TTL check
}

// NewRegistrar returns a Registrar that registers through client, which
// must not be nil and should point at the local agent (registrations are
// agent-local in Consul). o is copied; zero fields get their defaults.
func NewRegistrar(client *api.Client, o RegistrarOptions) *Registrar {
	if o.HealthInterval <= 0 {
		o.HealthInterval = DefaultHealthInterval
	}
	if o.HealthTimeout <= 0 {
		o.HealthTimeout = DefaultHealthTimeout
	}
	if o.DeregisterCriticalAfter <= 0 {
		o.DeregisterCriticalAfter = DefaultDeregisterCriticalAfter
	}
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	o.TTL = max(o.TTL, minTTL)
	log := o.Logger
	if log == nil {
		log = discardLogger
	}
	return &Registrar{client: client, opts: o, log: log.With("component", "consul-registrar")}
}

// Register registers self and its sidecar with the local agent, replacing
// their checks, and starts the refresher if it is not running. Calling it
// again re-registers (with self's new values; a changed ID deregisters the
// old one). ctx bounds the requests, not the refresher, which runs until
// Deregister. self needs an ID, a Service and a Port; a Weight below 1
// counts as 1, and a Zone is published as the service meta "zone".
func (r *Registrar) Register(ctx context.Context, self discovery.Instance) error {
	if err := r.validate(self); err != nil {
		return err
	}
	regs := r.registrations(self)

	r.callMu.Lock()
	defer r.callMu.Unlock()

	r.mu.Lock()
	old := r.regs
	err := r.register(ctx, regs)
	if err == nil {
		r.regs = regs
		r.ttlID = regs[1].Checks[0].CheckID
	}
	r.mu.Unlock()
	if err != nil {
		return err
	}
	r.log.Info("registered with consul", "id", self.ID, "service", self.Service, "sidecar_id", regs[1].ID)

	if old != nil && old[0].ID != regs[0].ID {
		if err := r.deregister(ctx, old); err != nil {
			r.log.Warn("consul: deregister the previous registration", "id", old[0].ID, "error", err)
		}
	}
	if r.stop == nil {
		rctx, cancel := context.WithCancel(context.Background())
		r.stop, r.stopped = cancel, make(chan struct{})
		go r.refresh(rctx, r.stopped)
	}
	return nil
}

// Abandon stops the refresher and leaves the registrations in place, for
// another process that registered the same instance to keep (a handover
// to a new sidemesh binary). Register may be called again afterwards.
func (r *Registrar) Abandon() {
	r.callMu.Lock()
	defer r.callMu.Unlock()
	if r.stop != nil {
		r.stop()
		<-r.stopped
		r.stop, r.stopped = nil, nil
	}
	r.mu.Lock()
	r.regs, r.ttlID = nil, ""
	r.mu.Unlock()
}

// Deregister stops the refresher and removes the sidecar and the service
// from the agent. Registrations the agent no longer has are not an error.
// Without a prior Register it does nothing.
func (r *Registrar) Deregister(ctx context.Context) error {
	r.callMu.Lock()
	defer r.callMu.Unlock()

	if r.stop != nil {
		r.stop()
		<-r.stopped
		r.stop, r.stopped = nil, nil
	}
	r.mu.Lock()
	regs := r.regs
	r.regs, r.ttlID = nil, ""
	r.mu.Unlock()
	if regs == nil {
		return nil
	}
	if err := r.deregister(ctx, regs); err != nil {
		return err
	}
	r.log.Info("deregistered from consul", "id", regs[0].ID, "sidecar_id", regs[1].ID)
	return nil
}

func (r *Registrar) validate(self discovery.Instance) error {
	var errs []error
	if self.ID == "" {
		errs = append(errs, errors.New("empty instance ID"))
	}
	if self.Service == "" {
		errs = append(errs, errors.New("empty service name"))
	}
	if self.Port <= 0 || self.Port > 65535 {
		errs = append(errs, fmt.Errorf("invalid sidecar port %d", self.Port))
	}
	if r.opts.AppPort <= 0 || r.opts.AppPort > 65535 {
		errs = append(errs, fmt.Errorf("invalid app port %d", r.opts.AppPort))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("consul: register %s: %w", self.ID, err)
	}
	return nil
}

// registrations returns the service and sidecar registrations of self.
func (r *Registrar) registrations(self discovery.Instance) []*api.AgentServiceRegistration {
	o := r.opts
	appAddr := o.AppAddress
	if appAddr == "" {
		appAddr = defaultAppAddress
	}
	appHostPort := net.JoinHostPort(appAddr, strconv.Itoa(o.AppPort))
	weights := &api.AgentWeights{Passing: max(self.Weight, 1), Warning: 1}
	meta := maps.Clone(self.Meta)
	if self.Zone != "" {
		if meta == nil {
			meta = make(map[string]string, 1)
		}
		if _, ok := meta[zoneMetaKey]; !ok {
			meta[zoneMetaKey] = self.Zone
		}
	}
	deregisterAfter := o.DeregisterCriticalAfter.String()

	appCheck := &api.AgentServiceCheck{
		CheckID:                        "service:" + self.ID,
		Interval:                       o.HealthInterval.String(),
		Timeout:                        o.HealthTimeout.String(),
		DeregisterCriticalServiceAfter: deregisterAfter,
	}
	if o.HealthPath != "" {
		appCheck.Name = "HTTP check of " + self.Service
		appCheck.HTTP = "http://" + appHostPort + "/" + strings.TrimPrefix(o.HealthPath, "/")
		appCheck.Method = http.MethodGet
	} else {
		appCheck.Name = "TCP check of " + self.Service
		appCheck.TCP = appHostPort
	}
	service := &api.AgentServiceRegistration{
		ID:      self.ID,
		Name:    self.Service,
		Address: o.AppAddress,
		Port:    o.AppPort,
		Tags:    slices.Clone(self.Tags),
		Meta:    meta,
		Weights: weights,
		Checks:  api.AgentServiceChecks{appCheck},
	}

	proxyID := self.ID + proxySuffix
	proxy := &api.AgentServiceRegistration{
		Kind:    api.ServiceKindConnectProxy,
		ID:      proxyID,
		Name:    self.Service + proxySuffix,
		Address: self.Address,
		Port:    self.Port,
		Tags:    slices.Clone(self.Tags),
		Meta:    maps.Clone(meta),
		Weights: weights,
		Proxy: &api.AgentServiceConnectProxyConfig{
			DestinationServiceName: self.Service,
			DestinationServiceID:   self.ID,
			LocalServiceAddress:    appAddr,
			LocalServicePort:       o.AppPort,
		},
		Checks: api.AgentServiceChecks{
			{
				CheckID:                        "service:" + proxyID + ":ttl",
				Name:                           "sidemesh sidecar alive",
				TTL:                            o.TTL.String(),
				Status:                         api.HealthPassing,
				Notes:                          "refreshed by the sidecar every " + (o.TTL / 3).String(),
				DeregisterCriticalServiceAfter: deregisterAfter,
			},
			{
				CheckID:      "service:" + proxyID + ":alias",
				Name:         "Connect Sidecar Aliasing " + self.ID,
				AliasService: self.ID,
			},
		},
	}
	return []*api.AgentServiceRegistration{service, proxy}
}

// register sends regs, in order, to the agent. Must be called with r.mu
// held.
func (r *Registrar) register(ctx context.Context, regs []*api.AgentServiceRegistration) error {
	opts := api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)
	for _, reg := range regs {
		if err := r.client.Agent().ServiceRegisterOpts(reg, opts); err != nil {
			return fmt.Errorf("consul: register %s: %w", reg.ID, err)
		}
	}
	return nil
}

// deregister removes regs, sidecar first, ignoring those the agent does
// not know.
func (r *Registrar) deregister(ctx context.Context, regs []*api.AgentServiceRegistration) error {
	q := (&api.QueryOptions{}).WithContext(ctx)
	var errs []error
	for _, reg := range slices.Backward(regs) {
		if err := r.client.Agent().ServiceDeregisterOpts(reg.ID, q); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("consul: deregister %s: %w", reg.ID, err))
		}
	}
	return errors.Join(errs...)
}

// refresh keeps the sidecar's TTL check passing, every TTL/3, until ctx is
// cancelled, then closes done. When the agent does not know the check or
// the service (it restarted without its state, or reaped a critical
// registration), it registers both again.
func (r *Registrar) refresh(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	every := r.opts.TTL / 3
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// One round must not outlast the next tick by much, nor hold mu
		// (and so Register) for long when the agent hangs.
		rctx, cancel := context.WithTimeout(ctx, max(every, time.Second))
		err := r.refreshOnce(rctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil && !failing:
			failing = true
			r.log.Warn("consul: cannot refresh the sidecar's TTL check; retrying", "error", err, "every", every)
		case err != nil:
			r.log.Debug("consul: TTL refresh failed", "error", err)
		case failing:
			failing = false
			r.log.Info("consul: TTL refresh works again")
		}
	}
}

// refreshOnce passes the TTL check and, if the agent has lost the sidecar
// or the service, registers them again.
func (r *Registrar) refreshOnce(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.regs == nil {
		return nil
	}
	agent := r.client.Agent()
	q := (&api.QueryOptions{}).WithContext(ctx)
	err := agent.UpdateTTLOpts(r.ttlID, "sidecar running", api.HealthPassing, q)
	lost := ""
	switch {
	case isNotFound(err) || isUnknownTTL(err):
		lost = r.regs[1].ID
	case err != nil:
		return fmt.Errorf("consul: refresh TTL check %s: %w", r.ttlID, err)
	default:
		// The sidecar is there; the service may have been reaped after
		// staying critical for DeregisterCriticalAfter.
		_, _, err := agent.Service(r.regs[0].ID, q)
		switch {
		case isNotFound(err):
			lost = r.regs[0].ID
		case err != nil:
			return fmt.Errorf("consul: look up service %s: %w", r.regs[0].ID, err)
		}
	}
	if lost == "" {
		return nil
	}
	r.log.Info("consul agent lost the registration; registering again", "missing", lost)
	if err := r.register(ctx, r.regs); err != nil {
		return err
	}
	r.log.Info("registered with consul again", "id", r.regs[0].ID, "sidecar_id", r.regs[1].ID)
	return nil
}

// isNotFound reports whether err is Consul's answer for an unknown service
// or check ID.
func isNotFound(err error) bool {
	var se api.StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// isUnknownTTL reports whether err says the check is not a TTL check the
// agent knows, which older agents answer with a 500.
func isUnknownTTL(err error) bool {
	return err != nil && strings.Contains(err.Error(), "does not have associated TTL")
}
