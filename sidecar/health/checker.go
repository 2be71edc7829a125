// Package health runs active health checks against the endpoints of one
// upstream: an HTTP GET of a path (or a TCP connect) every Interval, and a
// report only when an endpoint's state flips, after HealthyThreshold
// consecutive passes or UnhealthyThreshold consecutive failures.
//
// Endpoints start healthy: an endpoint is innocent until proven guilty, so
// a new endpoint takes traffic at once instead of waiting for checks to
// pass. The checks complement passive failure detection (breakers, outlier
// ejection), which needs traffic to notice anything.
package health

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
)

// maxInFlight bounds the checks one Checker runs at once, so that a large
// upstream does not open hundreds of connections in the same instant.
const maxInFlight = 32

// Target is one endpoint to check.
type Target struct {
	// ID identifies the endpoint from round to round (the discovery
	// endpoint ID); setHealthy is called with it.
	ID string
	// Addr is the "host:port" to check.
	Addr string
}

// Checker probes the targets returned by its targets function every
// Interval and calls setHealthy when a target's state flips. Targets start
// healthy, so setHealthy is first called, if ever, with false.
//
// The targets function is called at the start of every round, so endpoints
// that come and go are followed: a new target is checked from that round
// on; a vanished target's state is dropped, no call is made for it
// afterwards, and if it comes back it starts afresh, healthy. A target
// whose ID stays but whose Addr changes keeps its state (the caller still
// holds it) but counts passes and failures anew at the new address.
//
// Each target has at most one check in flight; a check still running when
// the next round starts (Timeout longer than Interval, or more targets than
// checks allowed in flight) makes the target skip that round. A check that
// Run's context cuts short is not counted as a failure.
type Checker struct {
	settings   Settings
	targets    func() []Target
	setHealthy func(id string, healthy bool)
	log        *slog.Logger
	prober     prober
	sem        chan struct{} // a slot per check in flight

	mu    sync.Mutex // guards state; held while setHealthy runs, serialising its calls
	state map[string]*target
}

// target is what a Checker knows about one endpoint. Its fields are
// guarded by Checker.mu.
type target struct {
	addr    string
	healthy bool
	passes  int  // consecutive passes while unhealthy
	fails   int  // consecutive failures while healthy
	busy    bool // a check is scheduled or in flight
}

// New returns a Checker for the endpoints that targets returns, checked as
// s describes (zero fields take their defaults; see Settings).
//
// targets is called from Run's goroutine once per round; it must not block
// and must not modify the returned slice afterwards. setHealthy is called
// from check goroutines, never concurrently with itself, and must not
// block: it runs under the Checker's lock. Neither may be nil. log receives
// failed checks at debug, an endpoint turning healthy at info and turning
// unhealthy at warn, each with "id", "addr" and "reason"; callers usually
// add the upstream's name with With. A nil log discards.
func New(s Settings, targets func() []Target, setHealthy func(id string, healthy bool), log *slog.Logger) *Checker {
	s = s.WithDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Checker{
		settings:   s,
		targets:    targets,
		setHealthy: setHealthy,
		log:        log,
		prober:     newProber(s),
		sem:        make(chan struct{}, maxInFlight),
		state:      map[string]*target{},
	}
}

// Run checks the targets, a round every Interval starting at once, until
// ctx is done. It returns only after every check goroutine it started has
// ended. It returns at once if the Settings are not Enabled. Run must not
// be called more than once.
func (c *Checker) Run(ctx context.Context) {
	if !c.settings.Enabled() {
		return
	}
	var wg sync.WaitGroup
	defer c.prober.close()
	defer wg.Wait()
	for ctx.Err() == nil {
		c.round(ctx, &wg)
		select {
		case <-ctx.Done():
		case <-timeAfter(c.settings.Interval):
		}
	}
}

// round reconciles the state with the current targets and starts a check
// goroutine for every target that has none.
func (c *Checker) round(ctx context.Context, wg *sync.WaitGroup) {
	list := c.targets()
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := make(map[string]bool, len(list))
	for _, tg := range list {
		if seen[tg.ID] {
			continue // the first of a duplicated ID wins
		}
		seen[tg.ID] = true
		t, ok := c.state[tg.ID]
		switch {
		case !ok:
			t = &target{addr: tg.Addr, healthy: true}
			c.state[tg.ID] = t
		case t.addr != tg.Addr:
			t.addr, t.passes, t.fails = tg.Addr, 0, 0
		}
		if t.busy {
			continue
		}
		t.busy = true
		id, addr := tg.ID, tg.Addr
		wg.Go(func() { c.check(ctx, id, t, addr) })
	}
	for id := range c.state {
		if !seen[id] {
			delete(c.state, id)
		}
	}
}

// check waits for the target's place in the round and a free slot, checks
// addr, and records the result.
func (c *Checker) check(ctx context.Context, id string, t *target, addr string) {
	err := c.waitAndProbe(ctx, addr)
	c.mu.Lock()
	defer c.mu.Unlock()
	t.busy = false
	if ctx.Err() != nil {
		return // cut short by the end of Run: says nothing about the endpoint
	}
	c.record(id, t, addr, err)
}

// waitAndProbe runs one check of addr after its spread delay, holding a
// slot. It returns ctx's error if ctx ends first.
func (c *Checker) waitAndProbe(ctx context.Context, addr string) error {
	if d := spread(c.settings.Interval); d > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timeAfter(d):
		}
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case c.sem <- struct{}{}:
	}
	defer func() { <-c.sem }()
	return c.checkOnce(ctx, addr)
}

// checkOnce runs one check of addr, bounded by Timeout.
func (c *Checker) checkOnce(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, c.settings.Timeout)
	defer cancel()
	return c.prober.probe(ctx, addr)
}

// record counts a check's result (err nil for a pass) and reports a flip.
// c.mu is held.
func (c *Checker) record(id string, t *target, addr string, err error) {
	if c.state[id] != t || t.addr != addr {
		return // the target vanished or moved while it was checked
	}
	s := c.settings
	if err != nil {
		c.log.Debug("health check failed", "id", id, "addr", addr, "reason", err)
		t.passes = 0
		if !t.healthy {
			return
		}
		if t.fails++; t.fails < s.UnhealthyThreshold {
			return
		}
		t.healthy, t.fails = false, 0
		c.log.Warn("endpoint unhealthy", "id", id, "addr", addr, "reason",
			fmt.Sprintf("%d consecutive checks failed, last: %v", s.UnhealthyThreshold, err))
		c.setHealthy(id, false)
		return
	}
	t.fails = 0
	if t.healthy {
		return
	}
	if t.passes++; t.passes < s.HealthyThreshold {
		return
	}
	t.healthy, t.passes = true, 0
	c.log.Info("endpoint healthy", "id", id, "addr", addr, "reason",
		fmt.Sprintf("%d consecutive checks passed", s.HealthyThreshold))
	c.setHealthy(id, true)
}
