package gossip

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultRetention is how long a Store keeps a tombstone, an expired entry
// or a tied entry whose owner is gone before it forgets it. While it is
// kept, a late, older update of the same key cannot bring it back.
const DefaultRetention = 2 * time.Minute

// ErrClosed is returned by writes to the Store of a pool that has been
// shut down.
var ErrClosed = errors.New("gossip: store is closed")

// Entry is one key of a Store as readers see it.
type Entry struct {
	Key   string
	Value []byte
	// Owner is the name of the node that wrote this version.
	Owner string
	// Version is the Lamport timestamp of the write.
	Version uint64
	// Tied reports that the entry lives only as long as its owner's
	// membership.
	Tied bool
	// Expires is when the entry stops being visible; zero means never.
	Expires time.Time
}

// SetOptions says how long a written entry lives.
type SetOptions struct {
	// Tied ties the entry to this node's membership: every member drops it
	// as soon as this node leaves or is declared dead, and a restarted
	// process with the same node name does not inherit it. Use it for
	// state that describes the node itself, such as its service
	// instances. Untied entries (the default) outlive the node that wrote
	// them, for state that belongs to the cluster, such as sticky
	// sessions.
	Tied bool
	// TTL, if positive, makes the entry expire that long after the write,
	// on every member (expiry is an absolute wall-clock time, so members'
	// clocks should roughly agree). Zero means the entry never expires.
	TTL time.Duration
}

// Store is a replicated key/value map, kept eventually consistent on every
// member of a Pool by gossip. It is not specific to service instances:
// keys are namespaced by a prefix ("svc/<instance id>" for instances,
// "sticky/<session>" for sticky sessions).
//
// Every write takes the next value of a Lamport clock as its version; a
// member keeps, for each key, the version that is greatest by (version,
// owner name, owner incarnation), so applying the same updates in any
// order, any number of times, gives the same state, and an old update
// never overwrites a newer one. Deletes leave tombstones that are kept for
// DefaultRetention so that a late update cannot resurrect the key.
//
// Readers see only live entries: not deleted, not expired, and for tied
// entries, written by the current incarnation of a member that is alive.
// A tied entry whose owner memberlist has not reported yet counts as live
// for a grace period (twice the push/pull interval): the store's gossip
// can outrun memberlist's, and a member can miss a join until its next
// push/pull. An owner still unknown after that is treated as gone.
//
// All methods are safe for concurrent use and hold the store's mutex only
// briefly; none of them waits for the network.
type Store struct {
	node        string
	incarnation uint64
	retention   time.Duration
	grace       time.Duration
	maxQueued   int
	now         func() time.Time
	log         *slog.Logger

	queue memberlist.TransmitLimitedQueue
	alive atomic.Int64 // members alive, self included: the queue's NumNodes

	mu        sync.Mutex
	clock     uint64
	gen       uint64
	records   map[string]*record
	byOwner   map[string]map[string]struct{} // owner -> keys of its tied records
	members   map[string]*member
	subs      map[*subscription]struct{}
	bounds    map[string]*bound // by prefix (Limit)
	pageFrom  string            // the key the next paged push/pull state starts at
	closed    bool
	lastSweep time.Time
}

// record is an entry as stored, with the local time it was applied.
type record struct {
	*entry
	applied time.Time
}

type subscription struct {
	prefix string
	ch     chan struct{}
}

// storeConfig configures a Store; zero fields take the defaults noted.
type storeConfig struct {
	node        string // required
	incarnation uint64 // required: this process's incarnation
	clock       uint64 // initial Lamport clock
	// retransmitMult is the memberlist RetransmitMult for the broadcast
	// queue; default 4.
	retransmitMult int
	// retention defaults to DefaultRetention.
	retention time.Duration
	// grace is how long a tied entry of an owner memberlist has not
	// reported is shown; default 30 s.
	grace time.Duration
	// maxQueued bounds the broadcast queue; default 4096. Updates pruned
	// from it still reach everyone by push/pull.
	maxQueued int
	now       func() time.Time // default time.Now
	log       *slog.Logger     // default: discard
}

func newStore(c storeConfig) *Store {
	if c.retransmitMult <= 0 {
		c.retransmitMult = 4
	}
	if c.retention <= 0 {
		c.retention = DefaultRetention
	}
	if c.grace <= 0 {
		c.grace = 30 * time.Second
	}
	if c.maxQueued <= 0 {
		c.maxQueued = 4096
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	now := c.now()
	s := &Store{
		node:        c.node,
		incarnation: c.incarnation,
		retention:   c.retention,
		grace:       c.grace,
		maxQueued:   c.maxQueued,
		now:         c.now,
		log:         c.log,
		clock:       c.clock,
		records:     make(map[string]*record),
		byOwner:     make(map[string]map[string]struct{}),
		members: map[string]*member{
			c.node: {incarnation: c.incarnation, state: MemberAlive, since: now},
		},
		subs:      make(map[*subscription]struct{}),
		bounds:    make(map[string]*bound),
		lastSweep: now,
	}
	s.alive.Store(1)
	s.queue.RetransmitMult = c.retransmitMult
	s.queue.NumNodes = func() int { return int(s.alive.Load()) }
	s.queue.QueueBroadcast(sentinel{})
	return s
}

// Set writes value under key with a new version owned by this node and
// broadcasts it. The value is copied. Keys are at most MaxKeyLen bytes,
// values at most MaxValueLen.
func (s *Store) Set(key string, value []byte, o SetOptions) error {
	_, err := s.set(key, value, o, false)
	return err
}

// set is Set; with onlyIfChanged it does nothing when this node's live
// entry for key already holds the same value and options.
func (s *Store) set(key string, value []byte, o SetOptions, onlyIfChanged bool) (bool, error) {
	if err := checkKey(key); err != nil {
		return false, err
	}
	if len(value) > MaxValueLen {
		return false, fmt.Errorf("gossip: set %q: value is %d bytes, more than %d", key, len(value), MaxValueLen)
	}
	if o.TTL < 0 {
		return false, fmt.Errorf("gossip: set %q: negative TTL %v", key, o.TTL)
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false, ErrClosed
	}
	if cur := s.records[key]; onlyIfChanged && o.TTL == 0 && cur != nil && s.isLocal(cur.entry) &&
		!cur.tombstone && cur.expires == 0 && cur.tied == o.Tied && bytes.Equal(cur.value, value) {
		return false, nil
	}
	e := &entry{
		key:         key,
		value:       bytes.Clone(value),
		owner:       s.node,
		incarnation: s.incarnation,
		version:     s.tick(),
		tied:        o.Tied,
	}
	if o.TTL > 0 {
		e.expires = now.Add(o.TTL).UnixMilli()
	}
	s.putLocked(e, now)
	s.broadcastLocked(e)
	return true, nil
}

// Delete removes key on every member by writing a tombstone owned by this
// node. Deleting a key that is absent or already deleted does nothing.
func (s *Store) Delete(key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	cur := s.records[key]
	if cur == nil || cur.tombstone {
		return nil
	}
	e := &entry{
		key:         key,
		owner:       s.node,
		incarnation: s.incarnation,
		version:     s.tick(),
		tombstone:   true,
		tied:        cur.tied,
	}
	s.putLocked(e, now)
	s.broadcastLocked(e)
	return nil
}

// Get returns the live entry stored under key.
func (s *Store) Get(key string) (Entry, bool) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.records[key]
	if r == nil || !s.visibleLocked(r, now) {
		return Entry{}, false
	}
	return exported(r.entry), true
}

// List returns the live entries whose key starts with prefix, sorted by
// key. Values are copies.
func (s *Store) List(prefix string) []Entry {
	now := s.now()
	s.mu.Lock()
	var out []Entry
	for k, r := range s.records {
		if strings.HasPrefix(k, prefix) && s.visibleLocked(r, now) {
			out = append(out, exported(r.entry))
		}
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// Subscribe returns a channel that receives a signal whenever the live
// entries under prefix may have changed: a write, a merge, an owner
// leaving, an expiry (noticed within a second). The channel has a buffer
// of one and signals are coalesced, never blocking the store; a reader
// calls List after each signal. cancel releases the subscription and
// closes the channel; so does the pool's Shutdown.
func (s *Store) Subscribe(prefix string) (signal <-chan struct{}, cancel func()) {
	sub := &subscription{prefix: prefix, ch: make(chan struct{}, 1)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		close(sub.ch)
		return sub.ch, func() {}
	}
	s.subs[sub] = struct{}{}
	return sub.ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, ok := s.subs[sub]; ok {
			delete(s.subs, sub)
			close(sub.ch)
		}
	}
}

// close closes every subscription and refuses further writes.
func (s *Store) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for sub := range s.subs {
		close(sub.ch)
	}
	clear(s.subs)
	s.queue.Reset()
}

// generation returns a counter that changes whenever live entries may
// have changed.
func (s *Store) generation() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen
}

// ownerOf returns the writer of key's current version, unless it is a
// tombstone or absent.
func (s *Store) ownerOf(key string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.records[key]
	if r == nil || r.tombstone {
		return "", false
	}
	return r.owner, true
}

func exported(e *entry) Entry {
	out := Entry{
		Key:     e.key,
		Value:   bytes.Clone(e.value),
		Owner:   e.owner,
		Version: e.version,
		Tied:    e.tied,
	}
	if e.expires != 0 {
		out.Expires = time.UnixMilli(e.expires)
	}
	return out
}

func checkKey(key string) error {
	if key == "" {
		return errors.New("gossip: empty key")
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("gossip: key %.32q... is %d bytes, more than %d", key, len(key), MaxKeyLen)
	}
	return nil
}

// compareEntries orders two versions of a key: the greater one wins. The
// order is total, so merging is commutative and idempotent: version
// first, then owner name, then owner incarnation; the remaining fields
// only matter for corrupt input, where they keep the order deterministic.
func compareEntries(a, b *entry) int {
	if c := cmp.Compare(a.version, b.version); c != 0 {
		return c
	}
	if c := strings.Compare(a.owner, b.owner); c != 0 {
		return c
	}
	if c := cmp.Compare(a.incarnation, b.incarnation); c != 0 {
		return c
	}
	if a.tombstone != b.tombstone {
		if a.tombstone {
			return 1
		}
		return -1
	}
	if a.tied != b.tied {
		if a.tied {
			return 1
		}
		return -1
	}
	if c := cmp.Compare(a.expires, b.expires); c != 0 {
		return c
	}
	return bytes.Compare(a.value, b.value)
}

// tick advances the Lamport clock for a local write. Caller holds s.mu.
func (s *Store) tick() uint64 {
	s.clock++
	return s.clock
}

// isLocal reports whether e was written by this incarnation of this node.
func (s *Store) isLocal(e *entry) bool {
	return e.owner == s.node && e.incarnation == s.incarnation
}

// visibleLocked reports whether readers see r. Caller holds s.mu.
func (s *Store) visibleLocked(r *record, now time.Time) bool {
	e := r.entry
	if e.tombstone || (e.expires != 0 && now.UnixMilli() >= e.expires) {
		return false
	}
	if !e.tied {
		return true
	}
	m := s.members[e.owner]
	if m == nil {
		return now.Sub(r.applied) < s.grace
	}
	return m.state == MemberAlive && m.incarnation == e.incarnation
}

// ownerGoneLocked reports whether e is a tied entry of an incarnation
// known to have died or left. Such entries are neither gossiped nor sent
// in push/pull: a member that never knew the owner would take it for one
// not reported yet. Caller holds s.mu.
func (s *Store) ownerGoneLocked(e *entry) bool {
	if !e.tied {
		return false
	}
	m := s.members[e.owner]
	return m != nil && m.state != MemberAlive && m.incarnation == e.incarnation
}

// putLocked stores e as the current version of its key and signals
// subscribers if what readers see may have changed. Caller holds s.mu.
func (s *Store) putLocked(e *entry, now time.Time) {
	old := s.records[e.key]
	wasVisible := old != nil && s.visibleLocked(old, now)
	if old != nil {
		s.unindexLocked(old.entry)
	}
	r := &record{entry: e, applied: now}
	s.records[e.key] = r
	if e.tied {
		keys := s.byOwner[e.owner]
		if keys == nil {
			keys = make(map[string]struct{})
			s.byOwner[e.owner] = keys
		}
		keys[e.key] = struct{}{}
	}
	if wasVisible || s.visibleLocked(r, now) {
		s.changedLocked(e.key)
	}
	s.boundPutLocked(e)
}

func (s *Store) unindexLocked(e *entry) {
	if !e.tied {
		return
	}
	if keys := s.byOwner[e.owner]; keys != nil {
		delete(keys, e.key)
		if len(keys) == 0 {
			delete(s.byOwner, e.owner)
		}
	}
}

func (s *Store) deleteLocked(r *record) {
	delete(s.records, r.key)
	s.unindexLocked(r.entry)
	s.boundDeleteLocked(r.key)
}

// changedLocked bumps the generation and signals the subscribers of key,
// without blocking. Caller holds s.mu.
func (s *Store) changedLocked(key string) {
	s.gen++
	for sub := range s.subs {
		if strings.HasPrefix(key, sub.prefix) {
			select {
			case sub.ch <- struct{}{}:
			default:
			}
		}
	}
}

// broadcastLocked queues e for gossip, replacing any queued broadcast of
// an older version of the same key. Caller holds s.mu, which keeps queued
// versions of a key in order.
func (s *Store) broadcastLocked(e *entry) {
	s.queueLocked("k"+e.key, encodeEntryMsg(e))
}

// queueLocked queues a named broadcast; names are "k"+key for entries and
// "l"+node for leave intents. Caller holds s.mu.
func (s *Store) queueLocked(name string, msg []byte) {
	if s.closed {
		return
	}
	s.queue.QueueBroadcast(&broadcast{name: name, msg: msg})
	if s.numQueued() > s.maxQueued {
		s.queue.Prune(s.maxQueued + 1) // the sentinel sorts first and is kept
	}
}

// Pending returns the number of updates queued for gossip on this member
// (the sends still owed of each, counting one): how far behind its
// writes its peers may be. It stays high under a burst of writes, and
// drops as gossip catches up.
func (s *Store) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.numQueued()
}

// numQueued returns the number of queued broadcasts, not counting the
// sentinel.
func (s *Store) numQueued() int {
	return s.queue.NumQueued() - 1
}

// applyLocked merges a remote version of a key; a version that wins is
// queued for gossip, so updates spread epidemically. That includes
// versions learned by push/pull: when a member joins, the seed learns its
// state by push/pull while the joiner's own broadcasts may have used up
// their transmits before it knew anyone else. fromBroadcast is set for
// versions that arrived by gossip, whose sender may be behind and will not
// get our push/pull state in return. Caller holds s.mu.
func (s *Store) applyLocked(e *entry, fromBroadcast bool, now time.Time) {
	if e.version > s.clock {
		s.clock = e.version
	}
	cur := s.records[e.key]
	if e.owner == s.node && e.incarnation != s.incarnation {
		// Written by an earlier process with this node's name: memberlist
		// lets a restarted node reuse its name, and its Lamport clock may
		// be behind its old self's.
		if cur != nil && s.isLocal(cur.entry) {
			if compareEntries(e, cur.entry) > 0 {
				// Our write is newer in real time: refute the old one by
				// re-stamping ours above everything seen (as memberlist
				// refutes a stale alive message with a higher incarnation).
				ne := *cur.entry
				ne.version = s.tick()
				s.putLocked(&ne, now)
				s.broadcastLocked(&ne)
				s.log.Debug("gossip: refuted a write of an earlier incarnation",
					"key", e.key, "old_version", e.version, "version", ne.version)
			} else if fromBroadcast {
				s.broadcastLocked(cur.entry)
			}
			return
		}
		if e.tied {
			return // the old incarnation is gone, and so are its tied entries
		}
	}
	if cur != nil {
		c := compareEntries(e, cur.entry)
		if c <= 0 {
			if c < 0 && cur.owner == e.owner && cur.incarnation != e.incarnation {
				// A restarted node is writing below the version its old
				// incarnation reached; gossip ours back so that it sees
				// the old version and refutes it (our push/pull state may
				// leave it out: see ownerGoneLocked).
				s.broadcastLocked(cur.entry)
			}
			return
		}
	}
	s.putLocked(e, now)
	if !s.ownerGoneLocked(e) {
		s.broadcastLocked(e)
	}
}

// mergeRemoteState applies a push/pull state from another member.
func (s *Store) mergeRemoteState(buf []byte) error {
	clock, entries, err := decodeState(buf)
	if err != nil {
		return err
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if clock > s.clock {
		s.clock = clock
	}
	for _, e := range entries {
		s.applyLocked(e, false, now)
	}
	return nil
}

// handleMessage applies a broadcast from another member.
func (s *Store) handleMessage(buf []byte) error {
	m, err := decodeMessage(buf)
	if err != nil {
		return err
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if m.entry != nil {
		s.applyLocked(m.entry, true, now)
		return nil
	}
	if s.memberLeavingLocked(m.leaveNode, m.leaveIncarnation, now) {
		s.queueLocked("l"+m.leaveNode, encodeLeaveMsg(m.leaveNode, m.leaveIncarnation))
	}
	return nil
}

// localState encodes the state for a push/pull: every record, tombstones
// included so that a member that missed a delete learns it, and entries
// of other incarnations included so that a restarted node sees its old
// self's versions and refutes them; only tied entries of owners known to
// be gone are left out. The mutex is held only to copy pointers to the
// immutable entries.
//
// A state larger than stateLimit is paged: each push/pull carries the
// entries in key order from where the previous one stopped, wrapping
// around, so that every entry gets to every member within a known number
// of push/pulls (the size over the limit, rounded up) instead of an
// unbounded random wait.
func (s *Store) localState() []byte {
	s.mu.Lock()
	clock := s.clock
	entries := make([]*entry, 0, len(s.records))
	size := 0
	for _, r := range s.records {
		if !s.ownerGoneLocked(r.entry) {
			entries = append(entries, r.entry)
			size += len(r.key) + len(r.value) + len(r.owner) + 32
		}
	}
	from := s.pageFrom
	s.mu.Unlock()
	if size+64 <= stateLimit {
		b, omitted := encodeState(clock, entries, stateLimit)
		if omitted == 0 {
			return b
		}
	}
	slices.SortFunc(entries, func(a, b *entry) int { return strings.Compare(a.key, b.key) })
	start, _ := slices.BinarySearchFunc(entries, from, func(e *entry, k string) int { return strings.Compare(e.key, k) })
	entries = append(entries[start:], entries[:start]...)
	b, omitted := encodeState(clock, entries, stateLimit)
	next := ""
	if omitted > 0 {
		next = entries[len(entries)-omitted].key
	}
	s.mu.Lock()
	s.pageFrom = next
	s.mu.Unlock()
	s.log.Debug("gossip: state larger than a push/pull; sent a page",
		"entries", len(entries), "sent", len(entries)-omitted, "from", from, "limit_bytes", stateLimit)
	return b
}

// sweep forgets what has been dead longer than the retention period
// (tombstones, expired entries, tied entries whose owner incarnation is
// gone, records of departed members) and signals expiries. A Pool calls it
// every second.
func (s *Store) sweep(now time.Time) {
	nowMs := now.UnixMilli()
	s.mu.Lock()
	defer s.mu.Unlock()
	lastMs := s.lastSweep.UnixMilli()
	defer func() { s.lastSweep = now }()
	for key, r := range s.records {
		switch {
		case r.tombstone:
			if now.Sub(r.applied) > s.retention {
				s.deleteLocked(r)
			}
		case r.expires != 0 && nowMs >= r.expires:
			if r.expires > lastMs {
				s.changedLocked(key) // expired since the last sweep
			}
			if nowMs-r.expires > s.retention.Milliseconds() && now.Sub(r.applied) > s.retention {
				s.deleteLocked(r)
			}
		case r.tied:
			m := s.members[r.owner]
			if end := r.applied.Add(s.grace); m == nil && end.After(s.lastSweep) && !end.After(now) {
				s.changedLocked(key) // grace for an unknown owner ended
			}
			if s.visibleLocked(r, now) {
				break
			}
			hiddenSince := r.applied
			if m != nil && m.since.After(hiddenSince) {
				hiddenSince = m.since
			}
			if now.Sub(hiddenSince) > s.retention {
				s.deleteLocked(r)
			}
		}
	}
	for name, m := range s.members {
		if name != s.node && m.state != MemberAlive && now.Sub(m.since) > s.retention {
			delete(s.members, name)
		}
	}
}
