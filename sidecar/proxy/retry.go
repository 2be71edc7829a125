package proxy

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// RetryPolicy says which failed tries of an upstream request are tried
// again, on another endpoint when there is one. The zero value retries
// nothing.
type RetryPolicy struct {
	// Attempts is the number of retries after the first try.
	Attempts int
	// PerTryTimeout bounds each try's wait for response headers; zero
	// means only the upstream's overall timeout applies.
	PerTryTimeout time.Duration
	// OnConnectFailure retries tries that could not connect. Nothing was
	// sent, so these are retried whatever the method.
	OnConnectFailure bool
	// OnReset retries tries whose connection broke before the response
	// headers arrived.
	OnReset bool
	// OnTimeout retries tries that hit PerTryTimeout.
	OnTimeout bool
	// Statuses are the response statuses that are retried.
	Statuses StatusSet
	// NonIdempotent allows retrying methods that are not idempotent
	// (POST, PATCH, CONNECT) after something was sent.
	NonIdempotent bool
	// BufferBytes is the largest request body (by Content-Length) kept for
	// replay. Bodies of unknown length are streamed, never buffered, and
	// such requests are retried only when nothing of the body was read.
	BufferBytes int
	// Backoff is the base of the exponential backoff between tries, with
	// full jitter, capped at ten times the base. Zero means no wait.
	Backoff time.Duration
	// Budget, when set, caps retries to a share of recent requests.
	Budget *RetryBudget
	// RetryForwarded retries requests that another sidecar forwarded
	// (they carry X-Sidemesh-Attempt). Off, such a request is tried once:
	// the sidecar before retries already, and retrying at every hop
	// multiplies the load on a failing service.
	RetryForwarded bool
}

// headerAttempt names the header on every try a retrying upstream sends:
// the try's number, 1 for the first. The next hop reads it as "a sidecar
// that retries forwarded this" and the app as which attempt it sees.
const headerAttempt = "X-Sidemesh-Attempt"

// attemptValues are the X-Sidemesh-Attempt values, shared so that setting
// one allocates nothing.
var attemptValues = func() [maxAttempts + 1][]string {
	var vs [maxAttempts + 1][]string
	for i := range vs {
		vs[i] = []string{strconv.Itoa(i + 1)}
	}
	return vs
}()

// maxAttempts bounds RetryPolicy.Attempts (the config allows 10).
const maxAttempts = 10

// StatusSet is a set of HTTP statuses (100-599). The zero value is empty.
type StatusSet [10]uint64

// Add puts code in the set; codes outside 100-599 are ignored.
func (s *StatusSet) Add(code int) {
	if code >= 100 && code <= 599 {
		s[code/64] |= 1 << (code % 64)
	}
}

// Has reports whether code is in the set.
func (s *StatusSet) Has(code int) bool {
	return code >= 0 && code < 640 && s[code/64]&(1<<(code%64)) != 0
}

// idempotent reports whether RFC 9110 calls method idempotent.
func idempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace, http.MethodPut, http.MethodDelete:
		return true
	}
	return false
}

// backoff waits before retry number n (1-based), or until ctx is done; it
// reports whether the wait completed. A wait that would last until the
// deadline (the upstream's timeout; zero for none) is not begun: the
// timeout would end it.
func (p *RetryPolicy) backoff(ctx context.Context, n int, deadline time.Time) bool {
	if p.Backoff <= 0 {
		return ctx.Err() == nil
	}
	ceiling := min(p.Backoff<<min(n-1, 10), 10*p.Backoff)
	d := time.Duration(rand.Int64N(int64(ceiling) + 1))
	if !deadline.IsZero() && time.Until(deadline) <= d {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// RetryBudget caps retries at a share of the requests of a sliding window
// (the last 10 seconds), with a floor of MinPerSecond retries per second,
// so a failing upstream sees at most (1+ratio) times its normal load
// rather than (1+attempts) times. Safe for concurrent use, without locks;
// the counts are approximate under contention: a request counted at the
// instant its bucket is reset for a new second may be lost, which errs on
// the side of fewer retries.
type RetryBudget struct {
	ratio   float64
	reserve int64 // minimum retries per window
	buckets [budgetBuckets]budgetBucket
	clock   func() time.Time
}

const budgetBuckets = 10 // one per second

type budgetBucket struct {
	second   atomic.Int64 // the unix second the counts belong to
	requests atomic.Int64
	retries  atomic.Int64
}

// NewRetryBudget returns a budget allowing retries of up to ratio of
// recent requests, and at least minPerSecond retries per second.
func NewRetryBudget(ratio float64, minPerSecond int) *RetryBudget {
	return &RetryBudget{ratio: ratio, reserve: int64(minPerSecond) * budgetBuckets, clock: time.Now}
}

// bucket returns the bucket of the current second, reset if it holds an
// older second's counts.
func (b *RetryBudget) bucket(sec int64) *budgetBucket {
	bk := &b.buckets[sec%budgetBuckets]
	if old := bk.second.Load(); old != sec && bk.second.CompareAndSwap(old, sec) {
		bk.requests.Store(0)
		bk.retries.Store(0)
	}
	return bk
}

// Request records one request (not a retry).
func (b *RetryBudget) Request() {
	b.bucket(b.clock().Unix()).requests.Add(1)
}

// Withdraw records a retry and reports true if the budget allows it;
// otherwise it records nothing and reports false.
func (b *RetryBudget) Withdraw() bool {
	sec := b.clock().Unix()
	var requests, retries int64
	for i := range b.buckets {
		bk := &b.buckets[i]
		if s := bk.second.Load(); s > sec-budgetBuckets && s <= sec {
			requests += bk.requests.Load()
			retries += bk.retries.Load()
		}
	}
	if float64(retries) >= max(b.ratio*float64(requests), float64(b.reserve)) {
		return false
	}
	b.bucket(sec).retries.Add(1)
	return true
}
