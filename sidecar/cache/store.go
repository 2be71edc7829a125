// Package cache is the edge's HTTP response cache: a Store, bounded in
// bytes and shared by every cached route of an edge, and the route
// Filter that serves from it (a subset of RFC 9111 for a shared cache;
// see Filter).
//
// A stored response is found by its primary key: the route, the host
// (lower case, without a port), the path and the query as they are sent
// to the backend, after the route's rewrite. GET and HEAD share it:
// only GET responses are stored, and HEAD is answered from them. A
// response with a Vary header is stored as one variant per combination
// of the request headers it names, under the same primary key; the
// latest response's Vary decides which headers those are.
package cache

import (
	"container/list"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of Options.
const (
	DefaultMaxBytes      = 64 << 20
	DefaultMaxEntryBytes = 1 << 20
)

// now is the cache's clock; tests replace it.
var now = time.Now

// Options bound a Store.
type Options struct {
	// MaxBytes bounds the memory the stored responses take, bodies,
	// headers and keys together; beyond it the least recently used are
	// evicted. Zero means DefaultMaxBytes.
	MaxBytes int64
	// MaxEntryBytes bounds one stored response; a larger one is passed
	// to the client as it comes, not stored. Zero means
	// DefaultMaxEntryBytes; it is capped at MaxBytes.
	MaxEntryBytes int64
}

func (o Options) withDefaults() Options {
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.MaxEntryBytes <= 0 {
		o.MaxEntryBytes = DefaultMaxEntryBytes
	}
	o.MaxEntryBytes = min(o.MaxEntryBytes, o.MaxBytes)
	return o
}

// Store holds the cached responses of an edge's routes, least recently
// used evicted first. It is safe for concurrent use; its lock is held
// only to find, add or remove entries, never while a response is
// fetched or written.
type Store struct {
	mu        sync.Mutex
	opts      Options
	lru       list.List                // of *entry, most recently used first
	entries   map[string]*list.Element // by variant key
	primaries map[string]*primary      // by primary key
	flights   map[string]*flight       // by primary key
	bytes     int64

	hits, misses, stores, evictions, purged atomic.Uint64
	waiting                                 atomic.Int64
}

// primary is what the store knows of one primary key: the request
// headers its responses vary on, and the variants it holds.
type primary struct {
	vary     []string // canonical header names; nil without Vary
	variants map[string]struct{}
}

// flight is one request upstream for a primary key that other requests
// for it wait on: done closes when it is over.
type flight struct{ done chan struct{} }

// New returns an empty store bounded by o.
func New(o Options) *Store {
	return &Store{
		opts:      o.withDefaults(),
		entries:   map[string]*list.Element{},
		primaries: map[string]*primary{},
		flights:   map[string]*flight{},
	}
}

// SetOptions changes the store's bounds; a lower MaxBytes evicts at
// once.
func (s *Store) SetOptions(o Options) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts = o.withDefaults()
	s.evictLocked(nil)
}

// maxEntry is the largest response the store takes.
func (s *Store) maxEntry() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opts.MaxEntryBytes
}

// Stats describe a Store.
type Stats struct {
	// Entries counts the stored responses (every variant apart), Bytes
	// the memory they take (an estimate: bodies, headers, keys and a
	// fixed overhead each), within MaxBytes.
	Entries                 int
	Bytes                   int64
	MaxBytes, MaxEntryBytes int64
	// Hits counts requests answered from the store without a request
	// upstream (fresh, stale while revalidating, or shared from another
	// request's); Misses those that went upstream (absent, stale, or
	// revalidated). Stores counts responses stored, Evictions those the
	// byte bound evicted, Purged those purges removed.
	Hits, Misses, Stores, Evictions, Purged uint64
	// Waiting counts the requests waiting now for another request's
	// fetch of the same key.
	Waiting int64
}

// Stats returns the store's counters and size.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	st := Stats{Entries: len(s.entries), Bytes: s.bytes, MaxBytes: s.opts.MaxBytes, MaxEntryBytes: s.opts.MaxEntryBytes}
	s.mu.Unlock()
	st.Hits, st.Misses, st.Stores = s.hits.Load(), s.misses.Load(), s.stores.Load()
	st.Evictions, st.Purged, st.Waiting = s.evictions.Load(), s.purged.Load(), s.waiting.Load()
	return st
}

// variantKey is the key of the variant of primary key pk that a request
// with header h selects, given the header names vary.
func variantKey(pk string, vary []string, h http.Header) string {
	if len(vary) == 0 {
		return pk
	}
	var b strings.Builder
	b.WriteString(pk)
	for _, name := range vary {
		b.WriteByte(0)
		b.WriteString(strings.Join(h.Values(name), ","))
	}
	return b.String()
}

// lookup returns the entry of primary key pk that a request with header
// h selects; nil when there is none.
func (s *Store) lookup(pk string, h http.Header) *entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.primaries[pk]
	if p == nil {
		return nil
	}
	el := s.entries[variantKey(pk, p.vary, h)]
	if el == nil {
		return nil
	}
	s.lru.MoveToFront(el)
	return el.Value.(*entry)
}

// put stores e, replacing the variant it is for; when the response's
// Vary names other headers than the primary key's before, the variants
// stored under those are dropped. It reports false for an entry larger
// than the per-entry bound.
func (s *Store) put(e *entry) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.size > s.opts.MaxEntryBytes {
		return false
	}
	p := s.primaries[e.primary]
	if p != nil && !slices.Equal(p.vary, e.vary) {
		for vk := range p.variants {
			s.removeLocked(s.entries[vk])
		}
		p = nil
	}
	if p == nil {
		p = &primary{vary: e.vary, variants: map[string]struct{}{}}
		s.primaries[e.primary] = p
	}
	if old := s.entries[e.key]; old != nil {
		s.removeLocked(old)
		s.primaries[e.primary] = p // removeLocked drops a primary left empty
	}
	p.variants[e.key] = struct{}{}
	s.entries[e.key] = s.lru.PushFront(e)
	s.bytes += e.size
	s.stores.Add(1)
	s.evictLocked(e)
	return true
}

// evictLocked evicts the least recently used entries, but keep, until
// the store is within its byte bound.
func (s *Store) evictLocked(keep *entry) {
	for s.bytes > s.opts.MaxBytes {
		el := s.lru.Back()
		if el == nil {
			return
		}
		if el.Value.(*entry) == keep {
			el = el.Prev()
			if el == nil {
				return
			}
		}
		s.removeLocked(el)
		s.evictions.Add(1)
	}
}

// removeLocked removes the entry of el.
func (s *Store) removeLocked(el *list.Element) {
	e := s.lru.Remove(el).(*entry)
	delete(s.entries, e.key)
	s.bytes -= e.size
	if p := s.primaries[e.primary]; p != nil {
		delete(p.variants, e.key)
		if len(p.variants) == 0 {
			delete(s.primaries, e.primary)
		}
	}
}

// remove removes e if it is still stored.
func (s *Store) remove(e *entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if el := s.entries[e.key]; el != nil && el.Value.(*entry) == e {
		s.removeLocked(el)
	}
}

// purge removes every entry match returns true for, and returns how
// many.
func (s *Store) purge(match func(*entry) bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for el := s.lru.Front(); el != nil; {
		next := el.Next()
		if match(el.Value.(*entry)) {
			s.removeLocked(el)
			n++
		}
		el = next
	}
	s.purged.Add(uint64(n))
	return n
}

// PurgeURL removes the responses stored for host, path and query, of
// every route, every variant; an empty host matches every host. The
// path is matched as the backend was sent it (after a route's rewrite),
// escaped; the query exactly as sent (a path without a query matches
// the responses to requests without one). It returns how many it
// removed.
func (s *Store) PurgeURL(host, path, query string) int {
	host = strings.ToLower(host)
	return s.purge(func(e *entry) bool {
		return e.path == path && e.query == query && (host == "" || e.host == host)
	})
}

// PurgeTag removes the responses that carry tag in their route's tags
// header (Surrogate-Key by default), and returns how many.
func (s *Store) PurgeTag(tag string) int {
	return s.purge(func(e *entry) bool { return slices.Contains(e.tags, tag) })
}

// Retain removes the responses of the routes keep returns false for (a
// route a reload removed, or whose cache section it removed), and
// returns how many.
func (s *Store) Retain(keep func(route string) bool) int {
	return s.purge(func(e *entry) bool { return !keep(e.route) })
}

// join returns the flight of primary key pk, and whether the caller
// leads it: a leader makes the request upstream and must call land; the
// others wait for done.
func (s *Store) join(pk string) (f *flight, leader bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.flights[pk]; f != nil {
		return f, false
	}
	f = &flight{done: make(chan struct{})}
	s.flights[pk] = f
	return f, true
}

// land ends the flight f of pk: its waiters look again.
func (s *Store) land(pk string, f *flight) {
	s.mu.Lock()
	if s.flights[pk] == f {
		delete(s.flights, pk)
	}
	s.mu.Unlock()
	close(f.done)
}
