package telemetry

import (
	"cmp"
	"slices"
	"sync"
	"time"
)

// History keeps, for the admin dashboard, the recent traffic of every
// service a listener served: one point per HistoryInterval, the last
// HistoryPoints of them. It samples counters the request path keeps
// anyway (see serverStats), so it costs the request path nothing more
// than a few atomic adds.
const (
	// HistoryInterval is the length of one point of History.
	HistoryInterval = 5 * time.Second
	// HistoryPoints is how many points History keeps per series: five
	// minutes' worth.
	HistoryPoints = 60
	// memberPollInterval is how often Observed.Members is polled for
	// membership events.
	memberPollInterval = time.Second
)

// Listener names History groups requests by: requests served by the
// listener named ListenerInbound are inbound; those of every other
// listener (the outbound one, a dedicated upstream listener) are
// outbound, under the upstream they were for.
const (
	ListenerInbound  = "inbound"
	ListenerOutbound = "outbound"
)

// HistoryPoint is the traffic of one series over one interval.
type HistoryPoint struct {
	// End is when the interval ended; Seconds is its length.
	End     time.Time
	Seconds float64
	// Requests counts the requests that ended in the interval; Errors
	// those of them answered with a 5xx (the proxy's own failures
	// included) or not answered at all.
	Requests, Errors uint64
	// P50 and P99 are the median and 99th percentile of their durations,
	// within 12.5%; 0 when there were none.
	P50, P99 time.Duration
	// Retries counts the retries sent to the upstream in the interval,
	// RetryBudgetExhausted those its retry budget refused; 0 for an
	// inbound series.
	Retries, RetryBudgetExhausted uint64
}

// HistorySeries is the recent traffic of one service on one side.
type HistorySeries struct {
	// Listener is ListenerInbound or ListenerOutbound.
	Listener string
	// Service is the local service (inbound), or the upstream (outbound;
	// "unknown" for requests whose Host named none).
	Service string
	// Points are oldest first, at most HistoryPoints. A series has a
	// point for every interval since its first request.
	Points []HistoryPoint
	// HasRetries is set for an outbound series of an upstream that
	// retries are counted for; RetriesTotal and
	// RetryBudgetExhaustedTotal then count them since the process
	// started.
	HasRetries                              bool
	RetriesTotal, RetryBudgetExhaustedTotal uint64
}

// History returns the recent traffic of every series that has served a
// request, sorted by listener and service. Safe for concurrent use; nil
// for a nil t.
func (t *Telemetry) History() []HistorySeries {
	if t == nil {
		return nil
	}
	return t.history.snapshot()
}

// history holds the rings of History. sample is called from one
// goroutine; snapshot from any.
type history struct {
	m *Metrics

	mu     sync.Mutex // guards below
	last   time.Time  // the previous sample, or when the history started
	series map[serverKey]*historyRing
}

func newHistory(m *Metrics, start time.Time) *history {
	return &history{m: m, last: start, series: map[serverKey]*historyRing{}}
}

// historyCounts are a series' cumulative counters at one sample.
type historyCounts struct {
	requests, errors uint64
	latency          [latencyBuckets]uint64
	retries, budget  uint64
}

// historyRing is one series: its counters at the previous sample and
// its last points.
type historyRing struct {
	prev    historyCounts
	retries *upstreamCounters // nil for inbound, or until the upstream has a Client
	points  [HistoryPoints]HistoryPoint
	n, next int
}

func (r *historyRing) push(p HistoryPoint) {
	r.points[r.next] = p
	r.next = (r.next + 1) % len(r.points)
	r.n = min(r.n+1, len(r.points))
}

// historyListener is the listener a series of listener is kept under.
func historyListener(listener string) string {
	if listener == ListenerInbound {
		return ListenerInbound
	}
	return ListenerOutbound
}

// sample adds a point ending at now to every series: the difference of
// its counters since the previous sample.
func (h *history) sample(now time.Time) {
	cur := map[serverKey]*historyCounts{}
	h.m.servers.Range(func(k, v any) bool {
		key, s := k.(serverKey), v.(*serverSeries)
		g := serverKey{historyListener(key.listener), key.service}
		c := cur[g]
		if c == nil {
			c = &historyCounts{}
			cur[g] = c
		}
		c.requests += s.stats.requests.Load()
		c.errors += s.stats.errors.Load()
		for i := range c.latency {
			c.latency[i] += s.stats.latency[i].Load()
		}
		return true
	})

	h.mu.Lock()
	defer h.mu.Unlock()
	secs := now.Sub(h.last).Seconds()
	h.last = now
	for g, c := range cur {
		r := h.series[g]
		if r == nil {
			r = &historyRing{}
			h.series[g] = r
		}
		if r.retries == nil && g.listener == ListenerOutbound {
			r.retries = h.m.upstreams.get(g.service, false)
		}
		if r.retries != nil {
			c.retries, c.budget = r.retries.retries.Load(), r.retries.budgetOut.Load()
		}
		p := HistoryPoint{
			End: now, Seconds: secs,
			Requests: delta(c.requests, r.prev.requests), Errors: delta(c.errors, r.prev.errors),
			Retries: delta(c.retries, r.prev.retries), RetryBudgetExhausted: delta(c.budget, r.prev.budget),
		}
		var d [latencyBuckets]uint64
		for i := range d {
			d[i] = delta(c.latency[i], r.prev.latency[i])
		}
		p.P50, p.P99 = latencyQuantile(&d, 0.5), latencyQuantile(&d, 0.99)
		r.push(p)
		r.prev = *c
	}
}

// delta is cur - prev for counters that only grow; 0 if they did not.
func delta(cur, prev uint64) uint64 {
	if cur < prev {
		return 0
	}
	return cur - prev
}

// snapshot copies the series out.
func (h *history) snapshot() []HistorySeries {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]HistorySeries, 0, len(h.series))
	for g, r := range h.series {
		s := HistorySeries{
			Listener: g.listener, Service: g.service, Points: make([]HistoryPoint, 0, r.n),
			HasRetries: r.retries != nil, RetriesTotal: r.prev.retries, RetryBudgetExhaustedTotal: r.prev.budget,
		}
		for i := range r.n {
			s.Points = append(s.Points, r.points[(r.next-r.n+i+len(r.points))%len(r.points)])
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b HistorySeries) int {
		return cmp.Or(cmp.Compare(a.Listener, b.Listener), cmp.Compare(a.Service, b.Service))
	})
	return out
}

// startLoop takes in the gossip pool's members, if members is set, then
// starts the goroutine that samples the history every HistoryInterval
// and polls members every memberPollInterval for membership events,
// until stop is closed. The goroutine closes done when it returns.
func (t *Telemetry) startLoop(members func() []Member, stop <-chan struct{}, done chan<- struct{}) {
	w := &memberWatch{}
	if members != nil {
		// The members present at start are the baseline, taken before
		// New returns: whoever joins after that is news.
		w.poll(members(), t.events)
	}
	go t.loop(members, w, stop, done)
}

func (t *Telemetry) loop(members func() []Member, w *memberWatch, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	hist := time.NewTicker(HistoryInterval)
	defer hist.Stop()
	var poll <-chan time.Time
	if members != nil {
		tk := time.NewTicker(memberPollInterval)
		defer tk.Stop()
		poll = tk.C
	}
	for {
		select {
		case <-stop:
			return
		case now := <-hist.C:
			t.history.sample(now)
		case <-poll:
			w.poll(members(), t.events)
		}
	}
}
