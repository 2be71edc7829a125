package breaker

import (
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
)

// State is the state of a circuit breaker.
type State int

// The states of a Breaker.
const (
	// Closed lets every request through and counts failures.
	Closed State = iota
	// HalfOpen lets a few probe requests through to find out whether the
	// endpoint has recovered.
	HalfOpen
	// Open refuses requests until its OpenTimeout has passed.
	Open
)

// String returns "closed", "half-open" or "open".
func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case HalfOpen:
		return "half-open"
	case Open:
		return "open"
	default:
		return fmt.Sprintf("state(%d)", int(s))
	}
}

// Defaults of Settings.
const (
	DefaultConsecutiveFailures = 5
	DefaultMinRequests         = 20
	DefaultInterval            = 10 * time.Second
	DefaultOpenTimeout         = 10 * time.Second
	DefaultHalfOpenRequests    = 1
)

// MaxHalfOpenRequests is the largest HalfOpenRequests a Breaker honours;
// larger values are lowered to it.
const MaxHalfOpenRequests = 1<<countBits - 1

// Settings configure a Breaker. The zero value, passed through
// WithDefaults, trips after 5 consecutive failures, stays open for 10s and
// then lets one probe through.
type Settings struct {
	// ConsecutiveFailures trips the breaker after this many failures in a
	// row within Interval. When it and FailureRatio are both zero it takes
	// its default, 5; with FailureRatio set, zero turns this rule off and
	// leaves only the ratio rule.
	ConsecutiveFailures uint32
	// FailureRatio also trips the breaker when failures/requests within
	// Interval reach it, once at least MinRequests requests were seen.
	// Zero (the default) turns this rule off; values above 1 are lowered
	// to 1 (trip only when every request failed).
	FailureRatio float64
	// MinRequests is how many requests must be seen within Interval before
	// FailureRatio applies. Zero means the default, 20.
	MinRequests uint32
	// Interval is the closed-state counting window. It rolls in tenths:
	// requests older than Interval (give or take a tenth) no longer count,
	// for either rule. Zero means the default, 10s.
	Interval time.Duration
	// OpenTimeout is how long an open breaker refuses requests before it
	// admits probes, and how long a round of probes may go without an
	// outcome before a new round is admitted. Zero means the default, 10s.
	OpenTimeout time.Duration
	// HalfOpenRequests is how many probes a round admits; that many
	// consecutive successful probes close the breaker, one failed probe
	// opens it again. Zero means the default, 1; values above
	// MaxHalfOpenRequests are lowered to it.
	HalfOpenRequests uint32
	// FailureStatuses lists the HTTP statuses counted as failures. Nil
	// means every 5xx; an empty, non-nil slice means none (only transport
	// failures count). Transport failures always count.
	FailureStatuses []int
}

// WithDefaults returns s with every zero field set to its default and
// out-of-range values clamped, as documented on each field. Negative
// durations and ratios count as zero. New applies it; callers need not.
func (s Settings) WithDefaults() Settings {
	s.FailureRatio = min(max(s.FailureRatio, 0), 1)
	if s.ConsecutiveFailures == 0 && s.FailureRatio == 0 {
		s.ConsecutiveFailures = DefaultConsecutiveFailures
	}
	if s.MinRequests == 0 {
		s.MinRequests = DefaultMinRequests
	}
	if s.Interval <= 0 {
		s.Interval = DefaultInterval
	}
	if s.OpenTimeout <= 0 {
		s.OpenTimeout = DefaultOpenTimeout
	}
	if s.HalfOpenRequests == 0 {
		s.HalfOpenRequests = DefaultHalfOpenRequests
	}
	s.HalfOpenRequests = min(s.HalfOpenRequests, MaxHalfOpenRequests)
	return s
}

// Breaker is the circuit breaker of one endpoint. It is safe for
// concurrent use: Allow and State are lock-free and never allocate; Record
// takes gobreaker's mutex briefly.
//
// gobreaker is the single state machine: Record runs each outcome through
// its Execute, so counting, tripping, generations and the
// open, half-open, closed cycle are gobreaker's. Allow reads a lock-free
// mirror of that state (updated from gobreaker's OnStateChange) and admits
// probes itself. gobreaker moves from open to half-open lazily, when the
// first outcome after OpenTimeout is recorded; until then State reports
// Open even while Allow admits probes.
type Breaker struct {
	cb       *gobreaker.CircuitBreaker[struct{}]
	statuses []int // FailureStatuses; nil: every 5xx

	probes    uint64 // HalfOpenRequests
	timeoutMs int64  // OpenTimeout in milliseconds, rounded up
	timeout   time.Duration

	// state is the mirror of gobreaker's state, a State.
	state atomic.Int32
	// gate packs, in one word so that it changes atomically, the probe
	// round of an open or half-open breaker: the probes admitted in the
	// current round (low countBits bits) and a time in Unix milliseconds
	// (the rest). While the round has room the time is when probes may
	// start (the open-until time); once it is full, when it filled up.
	gate atomic.Uint64

	notes *notifier[transition] // nil when there is no callback
}

type transition struct{ from, to State }

// errFailed is what Record's request function returns for a failure.
var errFailed = errors.New("breaker: request failed")

// The request functions handed to Execute, built once so that Record does
// not allocate a closure per call.
var (
	succeed = func() (struct{}, error) { return struct{}{}, nil }
	fail    = func() (struct{}, error) { return struct{}{}, errFailed }
)

// New returns a closed Breaker for the endpoint called name, configured by
// s.WithDefaults(). FailureStatuses is copied.
//
// onChange, when not nil, is told of every state change (from, to). It is
// called after the change, in the order the changes happened, one call at
// a time, from a goroutine that is calling Record (not necessarily the one
// whose outcome caused the change), with no lock of the Breaker held: it
// may call the Breaker's methods, including Record. It must not block for
// long, as it holds up that Record call and the request it belongs to.
func New(name string, s Settings, onChange func(from, to State)) *Breaker {
	s = s.WithDefaults()
	b := &Breaker{
		probes:    uint64(s.HalfOpenRequests),
		timeout:   s.OpenTimeout,
		timeoutMs: ceilMillis(s.OpenTimeout),
	}
	if s.FailureStatuses != nil {
		b.statuses = slices.Clone(s.FailureStatuses)
		if b.statuses == nil {
			b.statuses = []int{}
		}
	}
	if onChange != nil {
		b.notes = &notifier[transition]{deliver: func(t transition) { onChange(t.from, t.to) }}
	}
	b.cb = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:          name,
		MaxRequests:   s.HalfOpenRequests,
		Interval:      s.Interval,
		BucketPeriod:  s.Interval / 10,
		Timeout:       s.OpenTimeout,
		ReadyToTrip:   readyToTrip(s),
		OnStateChange: b.changed,
	})
	return b
}

// readyToTrip returns gobreaker's ReadyToTrip for s.
func readyToTrip(s Settings) func(gobreaker.Counts) bool {
	return func(c gobreaker.Counts) bool {
		if s.ConsecutiveFailures > 0 && c.ConsecutiveFailures >= s.ConsecutiveFailures {
			return true
		}
		return s.FailureRatio > 0 && c.Requests >= s.MinRequests && c.Requests > 0 &&
			float64(c.TotalFailures)/float64(c.Requests) >= s.FailureRatio
	}
}

// changed is gobreaker's OnStateChange. It runs with gobreaker's mutex
// held, so it only updates the mirror and queues the notification.
func (b *Breaker) changed(_ string, from, to gobreaker.State) {
	f, t := fromGobreaker(from), fromGobreaker(to)
	if t == Open {
		// A new round, with no probe admitted, starting when the open
		// period ends. Stored before the state, so that Allow never sees
		// Open with the previous round's gate. time.Now is a little after
		// gobreaker's own now, so no probe is admitted before gobreaker
		// accepts it (when Allow's clock is time.Now too).
		b.gate.Store(pack(ceilMillis(time.Duration(time.Now().UnixNano()))+b.timeoutMs, 0))
	}
	b.state.Store(int32(t))
	b.notes.push(transition{f, t})
}

func fromGobreaker(s gobreaker.State) State {
	switch s {
	case gobreaker.StateOpen:
		return Open
	case gobreaker.StateHalfOpen:
		return HalfOpen
	default:
		return Closed
	}
}

// Allow reports whether a request may go to the endpoint at now. It is
// lock-free, does not allocate and never blocks.
//
// A closed breaker allows every request. An open one refuses them until
// OpenTimeout has passed since it opened; then it admits up to
// HalfOpenRequests probes, each true result taking one. If the probes
// neither close nor re-open the breaker within another OpenTimeout of the
// last one being admitted (they hang, or their outcomes are lost), a new
// round is admitted, so an endpoint never stays stuck. A caller that gets
// true must send the request and Record its outcome.
//
// Probe timing has millisecond resolution; times before 1970 count as 1970.
func (b *Breaker) Allow(now time.Time) bool {
	if State(b.state.Load()) == Closed {
		return true
	}
	t := unixMillis(now)
	for {
		g := b.gate.Load()
		at, n := unpack(g)
		var next uint64
		switch {
		case n < b.probes: // room in this round, from at on
			if t < at {
				return false
			}
			if n+1 == b.probes {
				next = pack(t, n+1) // full: remember when
			} else {
				next = pack(at, n+1)
			}
		case t < at+b.timeoutMs: // full since at; its probes are pending
			return false
		default: // a new round, and this is its first probe
			next = pack(t, 1)
		}
		if b.gate.CompareAndSwap(g, next) {
			return true
		}
	}
}

// Record reports the outcome of a request sent to the endpoint. Local
// outcomes are ignored. It runs the outcome through gobreaker, which may
// change the state, and then delivers pending onChange calls.
//
// Outcomes gobreaker refuses are dropped: those recorded while it is open
// (requests admitted before it tripped) and those beyond HalfOpenRequests
// in half-open. An outcome recorded in half-open counts as a probe even if
// its request was admitted while the breaker was closed.
func (b *Breaker) Record(o Outcome) {
	if o.Local {
		return
	}
	req := succeed
	if b.Failed(o) {
		req = fail
	}
	_, _ = b.cb.Execute(req) // errFailed, or ErrOpenState/ErrTooManyRequests: dropped
	b.notes.flush()
}

// State returns the breaker's state as gobreaker last reported it. It is
// lock-free. An open breaker whose OpenTimeout has passed reports Open
// until the first outcome after it is recorded.
func (b *Breaker) State() State { return State(b.state.Load()) }

// Failed reports whether the breaker counts o as a failure: a transport
// failure, or a status in FailureStatuses (every 5xx when it is nil).
// Local outcomes, 4xx and a zero Status without Transport are not failures.
func (b *Breaker) Failed(o Outcome) bool {
	switch {
	case o.Local:
		return false
	case o.Transport:
		return true
	case b.statuses == nil:
		return o.Status >= 500 && o.Status <= 599
	default:
		return o.Status != 0 && slices.Contains(b.statuses, o.Status)
	}
}

// countBits is how many low bits of Breaker.gate count admitted probes;
// the other 44 hold Unix milliseconds, enough until the year 2527.
const countBits = 20

const maxMillis = 1<<(64-countBits) - 1

func pack(ms int64, n uint64) uint64 {
	ms = min(max(ms, 0), maxMillis)
	return uint64(ms)<<countBits | n
}

func unpack(g uint64) (ms int64, n uint64) {
	return int64(g >> countBits), g & (1<<countBits - 1)
}

// unixMillis returns t in Unix milliseconds, rounded down and clamped to
// what gate can hold.
func unixMillis(t time.Time) int64 {
	return min(max(t.UnixMilli(), 0), maxMillis)
}

// ceilMillis returns d in milliseconds, rounded up.
func ceilMillis(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}
