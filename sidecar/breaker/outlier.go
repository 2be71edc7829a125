package breaker

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of OutlierSettings.
const (
	DefaultConsecutive5xx           = 5
	DefaultConsecutiveGatewayErrors = 5
	DefaultBaseEjection             = 30 * time.Second
	DefaultMaxEjection              = 300 * time.Second
	DefaultMaxEjectionPercent       = 50
)

// OutlierSettings configure outlier ejection for one upstream. The zero
// value, passed through WithDefaults, ejects an endpoint after 5
// consecutive 5xx or gateway errors for 30s (growing by 30s with each
// ejection, up to 300s), and never more than half of the endpoints.
type OutlierSettings struct {
	// Consecutive5xx ejects an endpoint after this many consecutive 5xx
	// responses; transport failures count as 5xx. When it and
	// ConsecutiveGatewayErrors are both zero, both take their default, 5;
	// otherwise zero (or negative) turns this rule off.
	Consecutive5xx int
	// ConsecutiveGatewayErrors ejects an endpoint after this many
	// consecutive gateway errors: 502, 503, 504 or transport failures (any
	// other 5xx breaks the run). Default and zero as for Consecutive5xx.
	ConsecutiveGatewayErrors int
	// BaseEjection is the length of a first ejection; the n-th ejection
	// lasts n times as long, up to MaxEjection. Zero means the default, 30s.
	BaseEjection time.Duration
	// MaxEjection caps the length of one ejection. An endpoint that has
	// gone MaxEjection since its last ejection ended starts again from
	// BaseEjection. Zero means the default, 300s; values below
	// BaseEjection are raised to it.
	MaxEjection time.Duration
	// MaxEjectionPercent caps the share of the upstream's endpoints (as
	// told by SetSize) ejected at once, rounded down; one endpoint may
	// always be ejected. Zero means the default, 50; values above 100 are
	// lowered to 100.
	MaxEjectionPercent int
}

// WithDefaults returns s with every zero field set to its default and
// out-of-range values clamped, as documented on each field. Negative
// values count as zero, except that a negative threshold stays off.
// NewOutlier applies it; callers need not.
func (s OutlierSettings) WithDefaults() OutlierSettings {
	if s.Consecutive5xx == 0 && s.ConsecutiveGatewayErrors == 0 {
		s.Consecutive5xx = DefaultConsecutive5xx
		s.ConsecutiveGatewayErrors = DefaultConsecutiveGatewayErrors
	}
	s.Consecutive5xx = max(s.Consecutive5xx, 0)
	s.ConsecutiveGatewayErrors = max(s.ConsecutiveGatewayErrors, 0)
	if s.BaseEjection <= 0 {
		s.BaseEjection = DefaultBaseEjection
	}
	if s.MaxEjection <= 0 {
		s.MaxEjection = DefaultMaxEjection
	}
	s.MaxEjection = max(s.MaxEjection, s.BaseEjection)
	if s.MaxEjectionPercent <= 0 {
		s.MaxEjectionPercent = DefaultMaxEjectionPercent
	}
	s.MaxEjectionPercent = min(s.MaxEjectionPercent, 100)
	return s
}

// Outlier detects and ejects the endpoints of one upstream that keep
// failing. It is safe for concurrent use. Record counts without a lock and
// takes the Outlier's mutex only when an endpoint reaches a threshold or
// an ejection has run out.
type Outlier struct {
	s        OutlierSettings
	maxTimes int // ejections beyond this many last MaxEjection anyway

	size atomic.Int64
	// nextEnd is the earliest end, in Unix nanoseconds, of an ejection in
	// ejected; 0 when there is none. Record prunes once it has passed.
	nextEnd atomic.Int64

	mu      sync.Mutex
	ejected map[*Host]string // hosts ejected and not yet reported restored, to their IDs

	notes *notifier[ejection] // nil when there is no callback
}

type ejection struct {
	id      string
	ejected bool
	until   time.Time
}

// NewOutlier returns an Outlier configured by s.WithDefaults(), for an
// upstream with no endpoints until SetSize is called.
//
// onChange, when not nil, is told when an endpoint is ejected (ejected
// true, until when the ejection ends) and when it is restored (ejected
// false, until when the ejection ended). Restoration is lazy: Host.Ejected
// turns false as soon as the time passes, but onChange hears of it only at
// the next Record on this Outlier (for any endpoint), so it may be reported
// late, or never if no request follows. onChange is called in the order
// the changes happened, one call at a time, from a goroutine calling
// Record, with no lock of the Outlier held: it may call the Outlier's
// methods. It must not block for long, as it holds up that Record call and
// the request it belongs to.
func NewOutlier(s OutlierSettings, onChange func(id string, ejected bool, until time.Time)) *Outlier {
	s = s.WithDefaults()
	o := &Outlier{
		s:        s,
		maxTimes: int(s.MaxEjection/s.BaseEjection) + 1,
		ejected:  map[*Host]string{},
	}
	if onChange != nil {
		o.notes = &notifier[ejection]{deliver: func(e ejection) { onChange(e.id, e.ejected, e.until) }}
	}
	return o
}

// SetSize tells the Outlier how many endpoints the upstream has, the base
// of MaxEjectionPercent. Call it on every discovery snapshot. An endpoint
// that leaves the upstream while ejected keeps counting as ejected until
// its ejection ends.
func (o *Outlier) SetSize(n int) { o.size.Store(int64(max(n, 0))) }

// Host is the outlier state of one endpoint. The zero value is ready to
// use: not ejected, never ejected. A Host belongs to one Outlier and must
// not be copied after first use. Its methods are safe for concurrent use.
type Host struct {
	// until is when the current or last ejection ends, in Unix
	// nanoseconds; 0 when the host was never ejected.
	until    atomic.Int64
	fails    atomic.Int64 // consecutive 5xx
	gateways atomic.Int64 // consecutive gateway errors

	times int // ejections, decayed; guarded by the Outlier's mu
}

// Ejected reports whether the host is ejected at now. It is lock-free,
// does not allocate and never blocks.
func (h *Host) Ejected(now time.Time) bool {
	u := h.until.Load()
	return u != 0 && now.UnixNano() < u
}

// EjectedUntil returns when the host's current or last ejection ends; the
// zero Time when it was never ejected. Compare it with the current time to
// tell whether the host is still ejected.
func (h *Host) EjectedUntil() time.Time {
	if u := h.until.Load(); u != 0 {
		return time.Unix(0, u)
	}
	return time.Time{}
}

// Record counts the outcome of a request sent to the endpoint id, whose
// state is h, and ejects it when it reaches a threshold and
// MaxEjectionPercent leaves room; a host refused for want of room is
// ejected at its next failure once there is room. now is the time the
// request ended. Local outcomes are ignored, and so are outcomes recorded
// while the host is ejected (requests sent before the ejection, or while
// every endpoint was down). Record first reports ejections of the upstream
// that have run out by now.
func (o *Outlier) Record(id string, h *Host, oc Outcome, now time.Time) {
	if oc.Local {
		return
	}
	ns := now.UnixNano()
	if e := o.nextEnd.Load(); e != 0 && ns >= e {
		o.mu.Lock()
		o.pruneLocked(ns)
		o.mu.Unlock()
		o.notes.flush()
	}
	if u := h.until.Load(); u != 0 && ns < u {
		return
	}
	if !oc.is5xx() {
		// Load before Store: a healthy host's counters stay shared, not
		// written, in every core's cache.
		if h.fails.Load() != 0 {
			h.fails.Store(0)
		}
		if h.gateways.Load() != 0 {
			h.gateways.Store(0)
		}
		return
	}
	trip := false
	if oc.isGatewayError() {
		n := h.gateways.Add(1)
		trip = o.s.ConsecutiveGatewayErrors > 0 && n >= int64(o.s.ConsecutiveGatewayErrors)
	} else if h.gateways.Load() != 0 {
		h.gateways.Store(0)
	}
	n := h.fails.Add(1)
	trip = trip || o.s.Consecutive5xx > 0 && n >= int64(o.s.Consecutive5xx)
	if trip {
		o.eject(id, h, ns)
	}
}

// eject ejects h at ns if no concurrent Record did and there is room.
func (o *Outlier) eject(id string, h *Host, ns int64) {
	o.mu.Lock()
	o.pruneLocked(ns)
	last := h.until.Load()
	if last != 0 && ns < last || len(o.ejected) >= o.maxEjectedLocked() {
		o.mu.Unlock()
		o.notes.flush()
		return
	}
	if h.times > 0 && ns-last >= int64(o.s.MaxEjection) {
		h.times = 0 // decayed
	}
	h.times = min(h.times+1, o.maxTimes)
	d := o.s.MaxEjection
	if h.times <= int(o.s.MaxEjection/o.s.BaseEjection) {
		d = o.s.BaseEjection * time.Duration(h.times)
	}
	until := ns + int64(d)
	h.until.Store(until)
	h.fails.Store(0)
	h.gateways.Store(0)
	o.ejected[h] = id
	o.setNextEndLocked()
	o.notes.push(ejection{id: id, ejected: true, until: time.Unix(0, until)})
	o.mu.Unlock()
	o.notes.flush()
}

// maxEjectedLocked returns how many hosts may be ejected at once.
func (o *Outlier) maxEjectedLocked() int {
	return max(int(o.size.Load()*int64(o.s.MaxEjectionPercent)/100), 1)
}

// pruneLocked forgets the ejections that have ended by ns and queues their
// restoration, earliest first. The caller flushes after unlocking.
func (o *Outlier) pruneLocked(ns int64) {
	var restored []ejection
	for h, id := range o.ejected {
		if u := h.until.Load(); ns >= u {
			delete(o.ejected, h)
			restored = append(restored, ejection{id: id, until: time.Unix(0, u)})
		}
	}
	if restored == nil {
		return
	}
	slices.SortFunc(restored, func(a, b ejection) int {
		return cmp.Or(a.until.Compare(b.until), cmp.Compare(a.id, b.id))
	})
	for _, e := range restored {
		o.notes.push(e)
	}
	o.setNextEndLocked()
}

func (o *Outlier) setNextEndLocked() {
	var next int64
	for h := range o.ejected {
		if u := h.until.Load(); next == 0 || u < next {
			next = u
		}
	}
	o.nextEnd.Store(next)
}
