package ratelimit

import (
	"container/list"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Cluster is one limit whose quota the edges of a pool share (scope:
// cluster), with no central store. The quota is Burst requests in any
// window of Burst/Rate seconds, a sliding window estimated from two
// fixed ones (the previous window's count weighted by how much of it
// still overlaps, plus the current one's), which is what the
// RateLimit-Policy header's q and w say.
//
// A last-writer-wins store cannot add counts, so each edge counts only
// the requests it admits, per key and window, and hands its counts to
// the others (Changed, Active); each merges the others' (Merge) and
// admits a request while its own counts plus theirs stay within the
// quota: a G-counter per key and window. Counts arrive late, so edges
// admitting at once can overshoot; each edge therefore also paces itself
// per key (View.Pace requests at once, refilled at Rate), which bounds
// what the other edges can admit unseen during one sync interval plus
// delivery delay T at (N-1) × Pace, with Pace = ⌈Rate × T⌉: Bound.
// Pacing applies only while more than one edge shares the limit; a lone
// edge admits the whole burst at once.
//
// Keys are identified between edges by the first 8 bytes of their
// SHA-256: finding another key with the same 8 bytes as a given one
// takes 2^64 tries. At most MaxKeys keys of this edge are tracked (least
// recently used forgotten, as Limiter does). Safe for concurrent use.
type Cluster struct {
	limit   Limit
	window  time.Duration
	maxKeys int
	now     func() time.Time

	view atomic.Pointer[View]

	mu    sync.Mutex
	order list.List // of *clusterKey, most recently used first
	keys  map[string]*list.Element
	dirty map[*clusterKey]struct{}
	peers map[uint64]map[string]Count // by key hash, by edge

	evictions atomic.Uint64
}

// View is what a Cluster knows of the edges sharing it; the owner of the
// Cluster sets it as membership changes (SetView). The zero View is one
// edge alone: no pacing, the whole quota.
type View struct {
	// Edges counts the edges sharing the limit, this one included.
	Edges int
	// Pace is the requests per key one edge admits at once while more
	// than one edge shares the limit (refilled at the limit's rate);
	// 0 turns pacing off.
	Pace int
	// Partitioned reports that this edge is cut off from most of the
	// edges it knew; Closed and Share say what it does about it.
	Partitioned bool
	// Closed refuses every request (on_partition: fail_closed).
	Closed bool
	// Share, when above 0, makes this edge enforce that fraction of the
	// quota by its own counts alone, ignoring the other edges'
	// (on_partition: local_share).
	Share float64
}

// Count is one edge's count of one key: the requests it admitted in
// Window (Cur) and in the window before (Prev). Windows are numbered
// from the Unix epoch in units of the limit's window, so edges whose
// clocks roughly agree number them alike.
type Count struct {
	Hash      uint64
	Window    int64
	Cur, Prev uint32
}

type clusterKey struct {
	key       string
	hash      uint64
	window    int64
	cur, prev uint32
	// tokens and filled are the edge's pacing bucket.
	tokens float64
	filled time.Time
}

// NewCluster returns the shared limit l, tracking at most maxKeys keys
// (at least 1) and reading time from now (nil: time.Now).
func NewCluster(l Limit, maxKeys int, now func() time.Time) *Cluster {
	if now == nil {
		now = time.Now
	}
	c := &Cluster{
		limit: l, window: Window(l), maxKeys: max(maxKeys, 1), now: now,
		keys: map[string]*list.Element{}, dirty: map[*clusterKey]struct{}{}, peers: map[uint64]map[string]Count{},
	}
	c.view.Store(&View{Edges: 1})
	return c
}

// Window returns the length of l's sliding window: the time an empty
// bucket takes to fill, Burst/Rate.
func Window(l Limit) time.Duration {
	return max(time.Millisecond, time.Duration(float64(l.Burst)/l.Rate*float64(time.Second)))
}

// Limit returns the limit's shape.
func (c *Cluster) Limit() Limit { return c.limit }

// SetView tells c how many edges share it and how to behave; see View.
func (c *Cluster) SetView(v View) { c.view.Store(&v) }

// View returns what SetView last set.
func (c *Cluster) View() View { return *c.view.Load() }

// Bound returns the most requests the edges may admit beyond the quota
// in one window while counts arrive within the delay the pace was
// computed for: (Edges - 1) × Pace.
func (c *Cluster) Bound() int {
	v := c.view.Load()
	return max(v.Edges-1, 0) * v.Pace
}

// KeyHash returns the identity of key between edges.
func KeyHash(key string) uint64 {
	sum := sha256.Sum256([]byte(key))
	return binary.BigEndian.Uint64(sum[:8])
}

// Allow admits the request of key if the shared count leaves room, and
// counts it.
func (c *Cluster) Allow(key string) Decision {
	now := c.now()
	v := c.view.Load()
	w, frac := c.windowAt(now)
	if v.Closed {
		return Decision{RetryAfter: time.Second, Reset: c.window}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	k := c.bucket(key, now)
	k.roll(w)
	quota := float64(c.limit.Burst)
	var pc, pp uint64
	if v.Share > 0 {
		quota *= v.Share
	} else {
		pc, pp = c.peerSum(k.hash, w)
	}
	cur, prev := float64(uint64(k.cur)+pc), float64(uint64(k.prev)+pp)
	est := prev*(1-frac) + cur
	reset := c.window - time.Duration(frac*float64(c.window))
	if cur > 0 {
		reset += c.window
	}
	if est+1 > quota {
		return Decision{RetryAfter: c.retryAfter(quota, cur, prev, frac), Reset: reset}
	}
	if v.Pace > 0 && v.Edges > 1 && v.Share == 0 {
		k.tokens = min(float64(v.Pace), k.tokens+now.Sub(k.filled).Seconds()*c.limit.Rate)
		k.filled = now
		if k.tokens < 1 {
			return Decision{Remaining: int(quota - est), RetryAfter: seconds((1 - k.tokens) / c.limit.Rate), Reset: reset}
		}
		k.tokens--
	}
	k.cur++
	c.dirty[k] = struct{}{}
	return Decision{Allowed: true, Remaining: int(quota - est - 1), Reset: reset}
}

// retryAfter returns how long until the estimate leaves room for one
// request, if no more are admitted.
func (c *Cluster) retryAfter(quota, cur, prev, frac float64) time.Duration {
	room := quota - 1 - cur
	if room >= 0 && prev > 0 { // the previous window's weight decays within this one
		f := 1 - room/prev
		return max(time.Millisecond, time.Duration((f-frac)*float64(c.window)))
	}
	// Only the next window has room: there, this one's count decays.
	f := 0.0
	if cur > 0 {
		f = max(0, 1-(quota-1)/cur)
	}
	return time.Duration((1 - frac + f) * float64(c.window))
}

// windowAt returns the number of the window now is in and how far into
// it, from 0 to 1.
func (c *Cluster) windowAt(now time.Time) (int64, float64) {
	ns := now.UnixNano()
	w := ns / int64(c.window)
	return w, float64(ns-w*int64(c.window)) / float64(c.window)
}

// roll moves k's counts to window w.
func (k *clusterKey) roll(w int64) {
	switch {
	case k.window == w:
	case k.window == w-1:
		k.window, k.prev, k.cur = w, k.cur, 0
	default:
		k.window, k.prev, k.cur = w, 0, 0
	}
}

// peerSum returns the other edges' counts of hash in window w and in
// the one before.
func (c *Cluster) peerSum(hash uint64, w int64) (cur, prev uint64) {
	for _, n := range c.peers[hash] {
		switch n.Window {
		case w:
			cur += uint64(n.Cur)
			prev += uint64(n.Prev)
		case w - 1:
			prev += uint64(n.Cur)
		}
	}
	return cur, prev
}

// bucket returns key's counts, marking them recently used; c.mu is held.
func (c *Cluster) bucket(key string, now time.Time) *clusterKey {
	if e := c.keys[key]; e != nil {
		c.order.MoveToFront(e)
		return e.Value.(*clusterKey)
	}
	for len(c.keys) >= c.maxKeys {
		oldest := c.order.Back()
		c.order.Remove(oldest)
		k := oldest.Value.(*clusterKey)
		delete(c.keys, k.key)
		delete(c.dirty, k)
		c.evictions.Add(1)
	}
	k := &clusterKey{key: key, hash: KeyHash(key), tokens: float64(c.view.Load().Pace), filled: now}
	c.keys[key] = c.order.PushFront(k)
	return k
}

// Changed returns this edge's counts of the keys that admitted a request
// since the last call, for the other edges, and forgets the other edges'
// counts of windows that have passed.
func (c *Cluster) Changed() []Count {
	w, _ := c.windowAt(c.now())
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Count, 0, len(c.dirty))
	for k := range c.dirty {
		k.roll(w)
		out = append(out, Count{Hash: k.hash, Window: w, Cur: k.cur, Prev: k.prev})
	}
	clear(c.dirty)
	for h, byEdge := range c.peers {
		for edge, n := range byEdge {
			if n.Window < w-1 {
				delete(byEdge, edge)
			}
		}
		if len(byEdge) == 0 {
			delete(c.peers, h)
		}
	}
	return out
}

// Active returns this edge's counts of every key that admitted a request
// in the current or the previous window: what an edge that just joined,
// or missed an update, needs.
func (c *Cluster) Active() []Count {
	w, _ := c.windowAt(c.now())
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Count
	for e := c.order.Front(); e != nil; e = e.Next() {
		k := e.Value.(*clusterKey)
		k.roll(w)
		if k.cur > 0 || k.prev > 0 {
			out = append(out, Count{Hash: k.hash, Window: w, Cur: k.cur, Prev: k.prev})
		}
	}
	return out
}

// Merge records the counts edge sent, each replacing that edge's
// previous count of the key unless older. Counts of windows that have
// passed are ignored; at most MaxKeys × 4 keys of other edges are held
// (beyond, new keys are ignored until windows pass: they are the keys
// this edge's own clients did not use recently).
func (c *Cluster) Merge(edge string, counts []Count) {
	w, _ := c.windowAt(c.now())
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range counts {
		if n.Window < w-1 || n.Window > w+1 {
			continue // passed, or from a clock far ahead
		}
		byEdge := c.peers[n.Hash]
		if byEdge == nil {
			if len(c.peers) >= 4*c.maxKeys {
				continue
			}
			byEdge = map[string]Count{}
			c.peers[n.Hash] = byEdge
		}
		if old, ok := byEdge[edge]; ok && old.Window > n.Window {
			continue
		}
		byEdge[edge] = n
	}
}

// Stats returns c's key count and evictions.
func (c *Cluster) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Stats{Keys: len(c.keys), Evictions: c.evictions.Load()}
}

// maxCounts bounds the counts one message carries (each at most 8 + 10 +
// 5 + 5 bytes).
const maxCounts = 1 << 16

// AppendCounts appends the wire form of counts to b.
func AppendCounts(b []byte, counts []Count) []byte {
	b = binary.AppendUvarint(b, uint64(len(counts)))
	for _, n := range counts {
		b = binary.BigEndian.AppendUint64(b, n.Hash)
		b = binary.AppendVarint(b, n.Window)
		b = binary.AppendUvarint(b, uint64(n.Cur))
		b = binary.AppendUvarint(b, uint64(n.Prev))
	}
	return b
}

var errCounts = errors.New("ratelimit: malformed counts")

// ReadCounts reads counts that AppendCounts wrote at the start of b and
// returns them and the rest of b.
func ReadCounts(b []byte) ([]Count, []byte, error) {
	n, l := binary.Uvarint(b)
	if l <= 0 || n > maxCounts || n > uint64(len(b)) {
		return nil, nil, errCounts
	}
	b = b[l:]
	out := make([]Count, 0, n)
	for range n {
		if len(b) < 8 {
			return nil, nil, errCounts
		}
		c := Count{Hash: binary.BigEndian.Uint64(b)}
		b = b[8:]
		w, l := binary.Varint(b)
		if l <= 0 {
			return nil, nil, errCounts
		}
		c.Window, b = w, b[l:]
		for _, v := range []*uint32{&c.Cur, &c.Prev} {
			n, l := binary.Uvarint(b)
			if l <= 0 || n > math.MaxUint32 {
				return nil, nil, fmt.Errorf("%w: count out of range", errCounts)
			}
			*v, b = uint32(n), b[l:]
		}
		out = append(out, c)
	}
	return out, b, nil
}
