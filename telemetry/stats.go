package telemetry

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// The server side keeps, next to its OpenTelemetry instruments, a few
// counters of its own per listener and service, for the admin API's
// history: plain atomics and a fixed-bucket latency histogram, updated in
// EndServer without allocating and read every HistoryInterval.

// Buckets of a latency histogram: bucket 0 holds durations under 2^10 ns
// (about 1 µs); from there every power of two is split into
// latencySub buckets, up to 2^latencyMaxExp ns (about 137 s); the last
// bucket holds anything longer. A quantile read from them is within 12.5%
// of the truth.
const (
	latencyMinExp  = 10
	latencyMaxExp  = 37
	latencySub     = 4
	latencyBuckets = 1 + (latencyMaxExp-latencyMinExp)*latencySub + 1
)

// latencyBucket returns the bucket of d.
func latencyBucket(d time.Duration) int {
	if d < 1<<latencyMinExp {
		return 0
	}
	ns := uint64(d)
	e := bits.Len64(ns) - 1 // ns is in [2^e, 2^(e+1))
	if e >= latencyMaxExp {
		return latencyBuckets - 1
	}
	sub := int(ns>>(e-2)) & (latencySub - 1) // the quarter of [2^e, 2^(e+1)) ns falls in
	return 1 + (e-latencyMinExp)*latencySub + sub
}

// latencyBounds returns the range [lo, hi) of bucket i, in nanoseconds.
// The last bucket is open above; its hi is its lo.
func latencyBounds(i int) (lo, hi float64) {
	switch {
	case i <= 0:
		return 0, 1 << latencyMinExp
	case i >= latencyBuckets-1:
		return 1 << latencyMaxExp, 1 << latencyMaxExp
	}
	e := (i-1)/latencySub + latencyMinExp
	sub := (i - 1) % latencySub
	base := float64(uint64(1) << e)
	return base * float64(latencySub+sub) / latencySub, base * float64(latencySub+sub+1) / latencySub
}

// latencyQuantile estimates quantile q (0 < q <= 1) of the durations
// counted in counts, interpolating linearly within a bucket; 0 when
// counts is empty.
func latencyQuantile(counts *[latencyBuckets]uint64, q float64) time.Duration {
	var total uint64
	for _, c := range counts {
		total += c
	}
	if total == 0 {
		return 0
	}
	rank := q * float64(total)
	var cum float64
	for i, c := range counts {
		if c == 0 {
			continue
		}
		if cum+float64(c) >= rank {
			lo, hi := latencyBounds(i)
			frac := (rank - cum) / float64(c)
			return time.Duration(lo + frac*(hi-lo))
		}
		cum += float64(c)
	}
	lo, _ := latencyBounds(latencyBuckets - 1)
	return time.Duration(lo)
}

// serverStats counts the requests one listener served for one service.
// Safe for concurrent use; record does not allocate.
type serverStats struct {
	requests atomic.Uint64
	// errors counts 5xx answers and requests no response was written
	// for: the proxy's own failures and the upstream's.
	errors  atomic.Uint64
	latency [latencyBuckets]atomic.Uint64
}

// record counts one request that ended with status (0: no response)
// after d.
func (s *serverStats) record(status int, d time.Duration) {
	s.requests.Add(1)
	if status >= 500 || status == 0 {
		s.errors.Add(1)
	}
	s.latency[latencyBucket(d)].Add(1)
}

// serverKey identifies a serverSeries.
type serverKey struct{ listener, service string }

// serverSeries is what the server side keeps per listener and service:
// the requests in flight, their gauge's attributes, and the history
// counters.
type serverSeries struct {
	active   *series
	inflight atomic.Int64
	stats    serverStats
}

// maxServerSeries bounds Metrics.servers. Services are configured names
// (or "unknown") and listeners are few, so it is never reached in
// practice; past it, requests are still counted in OpenTelemetry but not
// in the history.
const maxServerSeries = 10000

// server returns the series of listener and service, creating it the
// first time.
func (m *Metrics) server(listener, service string) *serverSeries {
	k := serverKey{listener, service}
	if s, ok := m.servers.Load(k); ok {
		return s.(*serverSeries)
	}
	s := &serverSeries{active: m.serverActiveSeries(listener, service)}
	if m.serverCount.Load() >= maxServerSeries {
		return s
	}
	if prev, loaded := m.servers.LoadOrStore(k, s); loaded {
		return prev.(*serverSeries)
	}
	m.serverCount.Add(1)
	return s
}

// upstreamCounters count one upstream's retries. Safe for concurrent use.
type upstreamCounters struct {
	retries   atomic.Uint64
	budgetOut atomic.Uint64
}

// upstreamMap holds the retry counters of every upstream a Client was
// made for, by name; entries are never removed, so a counter keeps
// counting across reloads.
type upstreamMap struct {
	mu sync.Mutex
	m  map[string]*upstreamCounters
}

// get returns the counters of upstream, creating them if create is set;
// nil when they do not exist and create is not set.
func (u *upstreamMap) get(upstream string, create bool) *upstreamCounters {
	u.mu.Lock()
	defer u.mu.Unlock()
	c := u.m[upstream]
	if c == nil && create {
		if u.m == nil {
			u.m = map[string]*upstreamCounters{}
		}
		c = &upstreamCounters{}
		u.m[upstream] = c
	}
	return c
}

// names returns the upstreams that have counters.
func (u *upstreamMap) names() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make([]string, 0, len(u.m))
	for n := range u.m {
		out = append(out, n)
	}
	return out
}
