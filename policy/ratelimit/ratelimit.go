// Package ratelimit answers whether a request may pass a rate limit: a
// token bucket per key (a client address, a principal, a header's
// value), with a bounded number of keys. It knows nothing of HTTP.
//
// The buckets are golang.org/x/time/rate's Limiter: well kept, exact
// under concurrency (each decision takes the bucket's mutex), and able
// to say how many tokens are left and when the next one comes, which
// the RateLimit headers need.
package ratelimit

import (
	"container/list"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Limit is a token bucket's shape: Rate tokens a second, at most Burst
// held (and so at most Burst requests at once after a quiet period).
type Limit struct {
	Rate  float64
	Burst int
}

// ParseRate parses "100/s", "6000/m" or "10/h" (a count per second,
// minute or hour) into tokens per second.
func ParseRate(s string) (float64, error) {
	n, unit, ok := strings.Cut(s, "/")
	count, err := strconv.ParseFloat(strings.TrimSpace(n), 64)
	if !ok || err != nil || count <= 0 || math.IsInf(count, 0) {
		return 0, fmt.Errorf("rate %q: want a positive count per s, m or h, e.g. 100/s", s)
	}
	switch strings.TrimSpace(unit) {
	case "s":
		return count, nil
	case "m":
		return count / 60, nil
	case "h":
		return count / 3600, nil
	}
	return 0, fmt.Errorf("rate %q: the unit after / must be s, m or h", s)
}

// Decision is what Allow answers.
type Decision struct {
	// Allowed reports whether the request may pass.
	Allowed bool
	// Remaining is the whole tokens left after this request.
	Remaining int
	// RetryAfter, for a refused request, is how long until a token is
	// there; Reset is how long until the bucket is full again.
	RetryAfter, Reset time.Duration
}

// Limiter holds the buckets of one limit, one per key, at most MaxKeys:
// beyond, the least recently used key is forgotten (its next request
// finds a full bucket, as a new key's does, so forgetting grants nothing
// a new key would not). Safe for concurrent use.
type Limiter struct {
	limit   Limit
	maxKeys int
	now     func() time.Time

	mu      sync.Mutex
	order   list.List // of *bucket, most recently used first
	buckets map[string]*list.Element

	evictions atomic.Uint64
}

type bucket struct {
	key string
	lim *rate.Limiter
}

// New returns a Limiter for l, keeping at most maxKeys keys (at least
// 1), reading time from now (nil: time.Now).
func New(l Limit, maxKeys int, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	return &Limiter{limit: l, maxKeys: max(maxKeys, 1), now: now, buckets: map[string]*list.Element{}}
}

// Limit returns the limit's shape.
func (l *Limiter) Limit() Limit { return l.limit }

// Allow takes a token from key's bucket if there is one.
func (l *Limiter) Allow(key string) Decision {
	now := l.now()
	b := l.bucket(key)
	ok := b.lim.AllowN(now, 1)
	tokens := b.lim.TokensAt(now)
	d := Decision{Allowed: ok, Remaining: max(int(tokens), 0)}
	if l.limit.Rate > 0 {
		d.Reset = seconds((float64(l.limit.Burst) - tokens) / l.limit.Rate)
		if !ok {
			d.RetryAfter = seconds((1 - tokens) / l.limit.Rate)
		}
	}
	return d
}

// Take takes up to n tokens from key's bucket, as many as there are, and
// returns how many it took; when none, also how long until one comes.
func (l *Limiter) Take(key string, n int) (int, time.Duration) {
	now := l.now()
	b := l.bucket(key)
	for k := min(n, int(b.lim.TokensAt(now))); k > 0; k-- {
		if b.lim.AllowN(now, k) { // fails only when a concurrent Take got there first
			return k, 0
		}
	}
	return 0, seconds((1 - b.lim.TokensAt(now)) / l.limit.Rate)
}

// Tokens returns the tokens in key's bucket and whether l holds one for
// key; it does not create one.
func (l *Limiter) Tokens(key string) (float64, bool) {
	l.mu.Lock()
	e := l.buckets[key]
	l.mu.Unlock()
	if e == nil {
		return 0, false
	}
	return e.Value.(*bucket).lim.TokensAt(l.now()), true
}

// Restore makes key's bucket hold tokens (rounded down) now, as another
// holder of the key's state said it did.
func (l *Limiter) Restore(key string, tokens float64) {
	b := l.bucket(key)
	now := l.now()
	b.lim.SetLimitAt(now, rate.Limit(l.limit.Rate)) // refill to now before taking
	if take := int(math.Ceil(b.lim.TokensAt(now) - max(tokens, 0))); take > 0 {
		b.lim.AllowN(now, min(take, l.limit.Burst))
	}
}

// Forget drops key's bucket.
func (l *Limiter) Forget(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.buckets[key]; e != nil {
		l.order.Remove(e)
		delete(l.buckets, key)
	}
}

// seconds converts a count of seconds to a duration, at least zero.
func seconds(s float64) time.Duration {
	if s <= 0 {
		return 0
	}
	return time.Duration(s * float64(time.Second))
}

// bucket returns key's bucket, made full if new, marking it recently
// used.
func (l *Limiter) bucket(key string) *bucket {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.buckets[key]; e != nil {
		l.order.MoveToFront(e)
		return e.Value.(*bucket)
	}
	for len(l.buckets) >= l.maxKeys {
		oldest := l.order.Back()
		l.order.Remove(oldest)
		delete(l.buckets, oldest.Value.(*bucket).key)
		l.evictions.Add(1)
	}
	b := &bucket{key: key, lim: rate.NewLimiter(rate.Limit(l.limit.Rate), l.limit.Burst)}
	b.lim.SetLimitAt(l.now(), rate.Limit(l.limit.Rate)) // the bucket starts full at now on the injected clock
	l.buckets[key] = l.order.PushFront(b)
	return b
}

// Stats are a limiter's key count and evictions.
type Stats struct {
	Keys      int
	Evictions uint64
}

// Stats returns l's key count and evictions.
func (l *Limiter) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Stats{Keys: len(l.buckets), Evictions: l.evictions.Load()}
}
