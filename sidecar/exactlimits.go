package sidecar

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/policy/ratelimit"
	"github.com/sidemesh/sidemesh/sidecar/config"
)

// An exact limit (scope: exact) has one token bucket per key, held by
// the key's owner: the first edge in the rendezvous ranking of the key
// over the edges. Every other edge leases small batches of tokens from
// the owner (a direct Call over the gossip pool's encrypted stream) and
// spends them on its own requests for that key. The owner saves the
// bucket on the second edge of the ranking, its backup, before it admits
// a request or answers a lease, so that when the owner dies the backup,
// which becomes the owner, goes on from that state: no fresh limit. An
// edge that becomes a key's owner (a new edge joined, or the owner died)
// first gathers the key's state from every other edge, and an edge that
// held the bucket hands it over and stops granting; with no state
// anywhere the key is new. While a key's owner cannot be reached, its
// requests are refused (fail closed): leases only ever subtract from the
// owner's bucket. Leased tokens not spent within the time the bucket
// takes to refill them (at most exactLeaseTTL) are dropped, so a lease
// never adds to a later burst. Each request the owner admits costs a
// round trip to its backup, and each lease one to the owner: exact
// limits are for small limits (logins, expensive calls), not for
// client_ip keys of a busy route.
const (
	exactLeaseCall  = "ratelimit/lease"
	exactBackupCall = "ratelimit/backup"
	exactStateCall  = "ratelimit/state"
	// exactLeaseTTL caps how long leased tokens may be spent.
	exactLeaseTTL = 10 * time.Second
	// exactCallTimeout bounds each exchange between edges.
	exactCallTimeout = time.Second
	// exactMaxLease caps a lease.
	exactMaxLease = 16
)

// exactLimit is one exact limit on this edge: the buckets of the keys it
// owns, the leases it holds from other owners, and the states other
// owners saved here. Safe for concurrent use.
type exactLimit struct {
	id     string
	cfg    config.RateLimit
	limit  ratelimit.Limit
	shared *sharedLimits // the pool and its edges
	now    func() time.Time
	owned  *ratelimit.Limiter // by hashKey

	adopting sync.Mutex // serializes gathering a new key's state

	mu      sync.Mutex
	leases  map[uint64]*exactLease
	backups map[uint64]exactState
	handed  map[uint64]string // keys handed over to that edge
	adopted map[uint64]bool   // owned keys whose state was gathered

	backupErrors, ownerErrors atomic.Uint64
}

type exactLease struct {
	tokens  int
	expires time.Time
}

// exactState is a bucket's tokens at a time (Unix ns).
type exactState struct {
	tokens float64
	at     int64
}

func newExactLimit(id string, cfg config.RateLimit, shared *sharedLimits, now func() time.Time) *exactLimit {
	l := cfg.Bucket()
	return &exactLimit{
		id: id, cfg: cfg, limit: l, shared: shared, now: now,
		owned:   ratelimit.New(l, cfg.MaxKeys, now),
		leases:  map[uint64]*exactLease{},
		backups: map[uint64]exactState{},
		handed:  map[uint64]string{},
		adopted: map[uint64]bool{},
	}
}

func hashKey(h uint64) string { return strconv.FormatUint(h, 16) }

// owners returns the owner of key hash h and its backup ("" when the
// owner is alone).
func (x *exactLimit) owners(h uint64) (owner, backup string) {
	edges := x.shared.edgeNames()
	x.mu.Lock()
	to, handed := x.handed[h]
	x.mu.Unlock()
	rank := gossip.Rank(x.id+"/"+hashKey(h), edges)
	if handed {
		for _, e := range edges {
			if e == to {
				return to, "" // the new owner is alive; it saves its own backup
			}
		}
		x.mu.Lock()
		delete(x.handed, h) // the edge it went to is gone: the ranking decides again
		x.mu.Unlock()
	}
	if len(rank) > 1 {
		return rank[0], rank[1]
	}
	return rank[0], ""
}

// Allow implements edge.Buckets. On the minority side of a partition it
// refuses every request: the owners it can reach may not hold the keys'
// state.
func (x *exactLimit) Allow(key string) ratelimit.Decision {
	if x.shared.state.Load().Partitioned {
		return ratelimit.Decision{RetryAfter: time.Second, Reset: x.reset(0)}
	}
	h := ratelimit.KeyHash(key)
	owner, backup := x.owners(h)
	if owner == x.shared.pool.Name() {
		n, retry, left := x.take(h, 1, backup)
		return ratelimit.Decision{Allowed: n == 1, Remaining: left, RetryAfter: retry, Reset: x.reset(left)}
	}
	now := x.now()
	x.mu.Lock()
	if l := x.leases[h]; l != nil && l.tokens > 0 && now.Before(l.expires) {
		l.tokens--
		x.mu.Unlock()
		return ratelimit.Decision{Allowed: true, Reset: x.reset(0)}
	}
	x.mu.Unlock()
	want := max(1, min(exactMaxLease, x.limit.Burst/(4*len(x.shared.edgeNames()))))
	n, retry, left, err := x.lease(owner, h, want)
	if err != nil {
		x.ownerErrors.Add(1)
		x.shared.log.Debug("rate limits: lease tokens", "limit", x.cfg.LimitName(), "owner", owner, "err", err)
		return ratelimit.Decision{RetryAfter: time.Second, Reset: x.reset(0)}
	}
	if n == 0 {
		return ratelimit.Decision{RetryAfter: retry, Reset: x.reset(left)}
	}
	if n > 1 {
		x.mu.Lock()
		l := x.leases[h]
		if l == nil || !now.Before(l.expires) {
			l = &exactLease{}
			x.leases[h] = l
		}
		l.tokens += n - 1
		l.expires = now.Add(min(exactLeaseTTL, time.Duration(float64(n)/x.limit.Rate*float64(time.Second))))
		x.mu.Unlock()
	}
	return ratelimit.Decision{Allowed: true, Remaining: left, Reset: x.reset(left)}
}

// reset is how long the bucket takes to fill from left tokens.
func (x *exactLimit) reset(left int) time.Duration {
	return time.Duration(float64(x.limit.Burst-left) / x.limit.Rate * float64(time.Second))
}

// take takes up to n tokens of the owned key h, after gathering its
// state if it is new here, and saves the bucket on backup. It returns
// the tokens taken, when none how long until one comes, and the tokens
// left.
func (x *exactLimit) take(h uint64, n int, backup string) (int, time.Duration, int) {
	x.adopt(h)
	k := hashKey(h)
	got, retry := x.owned.Take(k, n)
	tokens, _ := x.owned.Tokens(k)
	if got > 0 && backup != "" {
		if err := x.save(backup, h, tokens); err != nil {
			x.backupErrors.Add(1)
			x.shared.log.Debug("rate limits: save a bucket on its backup", "limit", x.cfg.LimitName(), "backup", backup, "err", err)
		}
	}
	return got, retry, max(0, int(tokens))
}

// adopt gathers the state of the owned key h from the other edges the
// first time this edge owns it: the fewest tokens any of them (a former
// owner, a backup) holds, refilled to now. A former owner hands the key
// over as it answers.
func (x *exactLimit) adopt(h uint64) {
	x.mu.Lock()
	done := x.adopted[h]
	x.mu.Unlock()
	if done {
		return
	}
	x.adopting.Lock()
	defer x.adopting.Unlock()
	x.mu.Lock()
	done = x.adopted[h]
	local, haveLocal := x.backups[h]
	x.mu.Unlock()
	if done {
		return
	}
	states := []exactState{}
	if haveLocal {
		states = append(states, local)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	self := x.shared.pool.Name()
	for _, e := range x.shared.edgeNames() {
		if e == self {
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), exactCallTimeout)
			defer cancel()
			ans, err := x.shared.pool.Call(ctx, e, exactStateCall, appendExactHeader(nil, x.id, h))
			if err != nil || len(ans) == 0 {
				return
			}
			if st, ok := readExactState(ans); ok {
				mu.Lock()
				states = append(states, st)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(states) > 0 {
		now := x.now().UnixNano()
		least := math.Inf(1)
		for _, st := range states {
			least = min(least, st.tokens+x.limit.Rate*float64(now-st.at)/1e9)
		}
		x.owned.Restore(hashKey(h), least)
	}
	x.mu.Lock()
	x.adopted[h] = true
	delete(x.handed, h)
	x.mu.Unlock()
}

// save sends the bucket of h (tokens now) to backup and waits for it to
// be stored.
func (x *exactLimit) save(backup string, h uint64, tokens float64) error {
	ctx, cancel := context.WithTimeout(context.Background(), exactCallTimeout)
	defer cancel()
	req := appendExactState(appendExactHeader(nil, x.id, h), exactState{tokens: tokens, at: x.now().UnixNano()})
	_, err := x.shared.pool.Call(ctx, backup, exactBackupCall, req)
	return err
}

// lease asks owner for up to n tokens of h.
func (x *exactLimit) lease(owner string, h uint64, n int) (got int, retry time.Duration, left int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), exactCallTimeout)
	defer cancel()
	ans, err := x.shared.pool.Call(ctx, owner, exactLeaseCall, binary.AppendUvarint(appendExactHeader(nil, x.id, h), uint64(n)))
	if err != nil {
		return 0, 0, 0, err
	}
	var vals [3]uint64
	for i := range vals {
		v, l := binary.Uvarint(ans)
		if l <= 0 {
			return 0, 0, 0, errors.New("malformed lease answer")
		}
		vals[i], ans = v, ans[l:]
	}
	if vals[0] == exactNotOwner {
		return 0, 0, 0, errors.New("not the owner of the key")
	}
	return int(vals[0]), time.Duration(vals[1]), int(vals[2]), nil
}

// exactNotOwner is the lease answer of an edge that does not own the key.
const exactNotOwner = math.MaxUint32

// handleLease answers a lease: up to the tokens asked for, and not more
// than a fair share of what is left, so that one edge's lease does not
// starve the others.
func (x *exactLimit) handleLease(h uint64, n int) []byte {
	owner, backup := x.owners(h)
	if owner != x.shared.pool.Name() {
		return binary.AppendUvarint(nil, exactNotOwner)
	}
	if tokens, ok := x.owned.Tokens(hashKey(h)); ok {
		n = min(n, max(1, int(tokens)/len(x.shared.edgeNames())))
	}
	got, retry, left := x.take(h, min(n, exactMaxLease), backup)
	b := binary.AppendUvarint(nil, uint64(got))
	b = binary.AppendUvarint(b, uint64(retry))
	return binary.AppendUvarint(b, uint64(left))
}

// handleState answers an edge gathering h's state: this edge's bucket,
// which it hands over to asker (and stops granting from), or the state
// saved here as a backup; nothing when it has neither.
func (x *exactLimit) handleState(asker string, h uint64) []byte {
	k := hashKey(h)
	x.mu.Lock()
	defer x.mu.Unlock()
	if tokens, ok := x.owned.Tokens(k); ok {
		x.owned.Forget(k)
		delete(x.adopted, h)
		x.handed[h] = asker
		return appendExactState(nil, exactState{tokens: tokens, at: x.now().UnixNano()})
	}
	if st, ok := x.backups[h]; ok {
		return appendExactState(nil, st)
	}
	return nil
}

// sweep drops expired leases and saved states that have refilled.
func (x *exactLimit) sweep() {
	now := x.now()
	full := time.Duration(float64(x.limit.Burst) / x.limit.Rate * float64(time.Second))
	x.mu.Lock()
	defer x.mu.Unlock()
	for h, l := range x.leases {
		if !now.Before(l.expires) {
			delete(x.leases, h)
		}
	}
	for h, st := range x.backups {
		if now.Sub(time.Unix(0, st.at)) > full {
			delete(x.backups, h)
		}
	}
}

// Edges returns how many edges share the limit and whether this one is
// partitioned from most of them, for edge.LimitStats.
func (x *exactLimit) Edges() (int, bool) {
	st := x.shared.state.Load()
	return st.Edges, st.Partitioned
}

// Stats implements edge.Buckets.
func (x *exactLimit) Stats() ratelimit.Stats { return x.owned.Stats() }

// appendExactHeader appends the limit ID and key hash that start every
// exact-limit message.
func appendExactHeader(b []byte, id string, h uint64) []byte {
	b = binary.AppendUvarint(b, uint64(len(id)))
	b = append(b, id...)
	return binary.BigEndian.AppendUint64(b, h)
}

// readExactHeader reads what appendExactHeader wrote.
func readExactHeader(b []byte) (id string, h uint64, rest []byte, ok bool) {
	n, l := binary.Uvarint(b)
	if l <= 0 || n > uint64(len(b)-l) || len(b)-l-int(n) < 8 {
		return "", 0, nil, false
	}
	id = string(b[l : l+int(n)])
	b = b[l+int(n):]
	return id, binary.BigEndian.Uint64(b), b[8:], true
}

func appendExactState(b []byte, st exactState) []byte {
	b = binary.BigEndian.AppendUint64(b, math.Float64bits(st.tokens))
	return binary.AppendVarint(b, st.at)
}

func readExactState(b []byte) (exactState, bool) {
	if len(b) < 8 {
		return exactState{}, false
	}
	st := exactState{tokens: math.Float64frombits(binary.BigEndian.Uint64(b))}
	at, l := binary.Varint(b[8:])
	if l <= 0 || math.IsNaN(st.tokens) || math.IsInf(st.tokens, 0) {
		return exactState{}, false
	}
	st.at = at
	return st, true
}

// handleExact dispatches the exact-limit Calls named call.
func (cl *sharedLimits) handleExact(call string) gossip.Handler {
	return func(from string, req []byte) []byte {
		id, h, rest, ok := readExactHeader(req)
		if !ok {
			return nil
		}
		x := (*cl.exact.Load())[id]
		if x == nil {
			return nil
		}
		switch call {
		case exactLeaseCall:
			n, l := binary.Uvarint(rest)
			if l <= 0 || n == 0 {
				return nil
			}
			return x.handleLease(h, int(min(n, exactMaxLease)))
		case exactBackupCall:
			if st, ok := readExactState(rest); ok {
				x.mu.Lock()
				x.backups[h] = st
				x.mu.Unlock()
			}
			return []byte{}
		case exactStateCall:
			return x.handleState(from, h)
		}
		return nil
	}
}
