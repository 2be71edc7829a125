package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery"
)

// Defaults of SourceOptions.
const (
	DefaultWaitTime   = 5 * time.Minute
	DefaultMinBackoff = 250 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
	// DefaultRecoveryGrace is how long a watch keeps its last endpoints
	// when Consul, answering again after being unreachable, says there are
	// none (see SourceOptions.RecoveryGrace).
	DefaultRecoveryGrace = 30 * time.Second
)

// queryGrace is how much longer than WaitTime a blocking query may take
// before the Source gives up on it: Consul adds up to WaitTime/16 of jitter,
// and a connection to a vanished agent must not hang the watch for the many
// minutes TCP keepalives take to notice.
const queryGrace = 15 * time.Second

// randFloat64 is the source of backoff jitter; tests replace it.
var randFloat64 = rand.Float64

// SourceOptions configures a Source. The zero value watches plain instances
// (no sidecars) in the agent's datacenter with the defaults below.
type SourceOptions struct {
	// Mesh selects what the endpoints are. True: the sidecars of the
	// service (/v1/health/connect/<service>), whose Address and Port are
	// their inbound listeners, for traffic that goes sidecar to sidecar.
	// False (the zero value): the plain instances
	// (/v1/health/service/<service>), for services without sidecars.
	Mesh bool
	// OnlyPassing drops instances with a check in warning as well, with
	// Consul's ?passing filter. False (the zero value) keeps them at their
	// Weights.Warning, as Consul's own mesh does; critical instances are
	// always dropped.
	OnlyPassing bool
	// Datacenter to query; "" means the client's default (usually the
	// agent's own datacenter).
	Datacenter string
	// Tags filters instances: all of them must be present. Empty means no
	// filter. For Mesh the tags are those of the sidecar registrations
	// (which the Registrar copies from the service).
	Tags []string
	// WaitTime bounds each blocking query. Zero means DefaultWaitTime
	// (5m); Consul caps it at 10m.
	WaitTime time.Duration
	// MinBackoff and MaxBackoff bound the exponential backoff, with jitter,
	// between failed queries. Zero means DefaultMinBackoff (250ms) and
	// DefaultMaxBackoff (30s).
	MinBackoff, MaxBackoff time.Duration
	// RecoveryGrace is how long a watch keeps serving its last endpoints
	// when Consul, answering again after being unreachable, reports none:
	// an agent that restarted without its state (a -dev agent, a wiped
	// data dir) lists nothing until the services register again, while
	// the instances themselves are fine. An answer with instances ends the
	// grace at once. Zero means DefaultRecoveryGrace (30s); negative turns
	// it off.
	RecoveryGrace time.Duration
	// Logger receives the source's logs; nil discards them.
	Logger *slog.Logger
}

// Source is a discovery.Source backed by Consul's health endpoints. It is
// safe for concurrent use; each Watch runs its own blocking-query loop.
type Source struct {
	client *api.Client
	opts   SourceOptions
	log    *slog.Logger

	mu      sync.Mutex
	nextID  uint64
	failing map[uint64]error // watch id → the error of its last query, while it fails
	lastErr error            // the most recent entry put in failing
	errors  uint64           // failed queries since the source was made
}

// NewSource returns a Source that queries Consul through client, which
// must not be nil. o is copied; zero fields get their defaults.
func NewSource(client *api.Client, o SourceOptions) *Source {
	log := watchDefaults(&o.WaitTime, &o.MinBackoff, &o.MaxBackoff, o.Logger)
	o.Tags = slices.Clone(o.Tags)
	if o.RecoveryGrace == 0 {
		o.RecoveryGrace = DefaultRecoveryGrace
	}
	return &Source{
		client:  client,
		opts:    o,
		log:     log.With("component", "consul-source"),
		failing: make(map[uint64]error),
	}
}

// Watch implements discovery.Source. It starts a goroutine that runs
// blocking queries for service, first without an index, and sends a full
// Snapshot whenever the set of endpoints changes (an unchanged result, such
// as a query that timed out or a change that does not affect any endpoint,
// sends nothing). The first snapshot is sent as soon as the first query
// succeeds, even when it is empty.
//
// The channel has a buffer of one, and a newer snapshot replaces an unread
// older one: the loop never blocks on a slow reader. While Consul cannot be
// queried nothing is sent, so the reader keeps serving the last snapshot;
// the loop retries with backoff, and Healthy and LastError report the
// outage. Cancelling ctx aborts the query in flight, stops the goroutine
// and closes the channel.
//
// Watch fails only on an empty service name; it does not wait for Consul.
func (s *Source) Watch(ctx context.Context, service string) (<-chan discovery.Snapshot, error) {
	if service == "" {
		return nil, errors.New("consul: watch: empty service name")
	}
	s.mu.Lock()
	s.nextID++
	id := s.nextID
	s.mu.Unlock()

	ch := make(chan discovery.Snapshot, 1)
	go s.run(ctx, id, service, ch)
	return ch, nil
}

// Healthy reports whether every watch of the source got an answer to its
// last query. It is true before the first query returns and after the
// watches stop.
func (s *Source) Healthy() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.failing) == 0
}

// LastError returns the most recent query error while the source is not
// Healthy, and nil while it is.
func (s *Source) LastError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.failing) == 0 {
		return nil
	}
	return s.lastErr
}

// setErr records the outcome of watch id's last query.
func (s *Source) setErr(id uint64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		delete(s.failing, id)
		if len(s.failing) == 0 {
			s.lastErr = nil
		}
		return
	}
	s.failing[id] = err
	s.lastErr = err
	s.errors++
}

// Errors returns how many queries of the source's watches have failed.
func (s *Source) Errors() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.errors
}

// run is the blocking-query loop of one watch, modelled on Consul's
// api/watch/plan.go and the blocking-query guidance in Consul's API docs.
func (s *Source) run(ctx context.Context, id uint64, service string, ch chan discovery.Snapshot) {
	defer close(ch)
	defer s.setErr(id, nil) // a stopped watch no longer makes the source unhealthy
	log := s.log.With("service", service, "mesh", s.opts.Mesh)

	var (
		index    uint64               // X-Consul-Index to block on; 0 = answer at once
		last     []discovery.Endpoint // what the reader has, valid once sent
		sent     bool
		failures int
		// holdUntil, when set, is the end of the recovery grace: empty
		// answers until then keep the last endpoints.
		holdUntil time.Time
	)
	for {
		wait := s.opts.WaitTime
		if !holdUntil.IsZero() {
			// Come back when the grace ends, to publish the empty set then.
			wait = max(min(wait, time.Until(holdUntil)), time.Millisecond)
		}
		entries, meta, err := s.query(ctx, service, index, wait)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			// The index may be meaningless now (the agent may have
			// restarted with a fresh state): ask for the current state.
			index = 0
			err = fmt.Errorf("consul: watch %s: %w", service, err)
			s.setErr(id, err)
			wait := backoff(failures, s.opts.MinBackoff, s.opts.MaxBackoff)
			if failures == 1 {
				log.Warn("consul unreachable; serving the last snapshot", "error", err, "retry_in", wait)
			} else {
				log.Debug("consul still unreachable", "error", err, "failures", failures, "retry_in", wait)
			}
			if !sleep(ctx, wait) {
				return
			}
			continue
		}
		recovered := failures > 0
		if recovered {
			log.Info("consul answers again", "failures", failures)
			s.setErr(id, nil)
			failures = 0
		}
		index = nextIndex(index, meta.LastIndex)

		eps := endpoints(service, entries)
		switch {
		case len(eps) > 0:
			holdUntil = time.Time{}
		case recovered && len(last) > 0 && s.opts.RecoveryGrace > 0:
			holdUntil = time.Now().Add(s.opts.RecoveryGrace)
			log.Warn("consul lists no instances right after being unreachable; keeping the last ones while it repopulates",
				"endpoints", len(last), "for", s.opts.RecoveryGrace.String())
			continue
		case !holdUntil.IsZero() && time.Now().Before(holdUntil):
			continue
		case !holdUntil.IsZero():
			holdUntil = time.Time{}
			log.Warn("consul still lists no instances after the recovery grace; dropping the last ones")
		}
		if sent && sameEndpoints(last, eps) {
			continue
		}
		publish(ch, discovery.Snapshot{Service: service, Endpoints: eps})
		log.Debug("snapshot sent", "endpoints", len(eps), "index", meta.LastIndex)
		// Keep a private copy: the reader owns what it received.
		last, sent = slices.Clone(eps), true
	}
}

// query runs one (blocking for up to wait, unless index is 0) health query. It gives up
// after WaitTime plus Consul's jitter plus queryGrace, and as soon as ctx
// is cancelled.
func (s *Source) query(ctx context.Context, service string, index uint64, wait time.Duration) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	ctx, cancel := context.WithTimeout(ctx, wait+wait/16+queryGrace)
	defer cancel()
	q := (&api.QueryOptions{
		Datacenter: s.opts.Datacenter,
		WaitIndex:  index,
		WaitTime:   wait,
	}).WithContext(ctx)
	h := s.client.Health()
	if s.opts.Mesh {
		return h.ConnectMultipleTags(service, s.opts.Tags, s.opts.OnlyPassing, q)
	}
	return h.ServiceMultipleTags(service, s.opts.Tags, s.opts.OnlyPassing, q)
}

// nextIndex returns the index to block on after a query that was sent with
// prev and answered with got. Following Consul's guidance: an index that
// goes backwards (the state was rebuilt, say by a restarted agent or a
// snapshot restore) resets to 0, so the next query returns the current
// state at once instead of waiting for the new index to catch up with the
// old one; an index of 0, which Consul should never return, is treated as
// 1 so that the next query still blocks instead of looping hot.
func nextIndex(prev, got uint64) uint64 {
	switch {
	case got < prev:
		return 0
	case got == 0:
		return 1
	default:
		return got
	}
}

// backoff returns the wait after the given number of consecutive failures
// (at least 1): min doubled per failure, capped at max, with "equal jitter"
// (uniform in [d/2, d]) so that many sidecars do not retry in lockstep.
func backoff(failures int, minWait, maxWait time.Duration) time.Duration {
	d := minWait
	for i := 1; i < failures && d < maxWait; i++ {
		d *= 2
	}
	d = min(d, maxWait)
	return d/2 + time.Duration(randFloat64()*float64(d/2))
}

// sleep waits for d or until ctx is done, and reports whether it waited
// the full d.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// publish sends snap on ch, first dropping an unread older snapshot if the
// buffer is full, so it never blocks. ch must have a buffer of at least one
// and publish must be its only sender.
func publish(ch chan discovery.Snapshot, snap discovery.Snapshot) {
	for {
		select {
		case ch <- snap:
			return
		default:
		}
		// Full: drop the stale snapshot. The reader may have taken it
		// meanwhile; then the send above succeeds on the next round.
		select {
		case <-ch:
		default:
		}
	}
}

var _ discovery.Source = (*Source)(nil)
