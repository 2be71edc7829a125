package gossip

import (
	"container/list"
	"fmt"
	"strings"
)

// bound keeps the live untied records under a prefix at most max on this
// member, forgetting the least recently used beyond it (Store.Limit).
// Guarded by the store's mutex.
type bound struct {
	prefix    string
	max       int
	order     list.List                // keys, most recently used first
	elems     map[string]*list.Element // key -> its element in order
	sizes     map[string]int           // key -> recordBytes of its record
	bytes     int
	evictions uint64
}

// PrefixStats describe the records under a bounded prefix on this member.
type PrefixStats struct {
	// Entries is the number of records held: written or learned, not
	// deleted, not yet swept (an expired record counts until the sweep
	// forgets it).
	Entries int
	// Bytes estimates the memory they take: keys, values and owners, plus
	// recordOverhead each.
	Bytes int
	// Evictions counts the records the bound made this member forget.
	Evictions uint64
}

// recordOverhead estimates what a record costs beyond its key, value and
// owner name: the entry and record structs, the records map's slot, and
// the bound's list element and map slots, and a share of the broadcast
// queue (TestLimitFlood measures the heap's growth against it).
const recordOverhead = 440

// recordBytes estimates the memory of e's record.
func recordBytes(e *entry) int { return len(e.key) + len(e.value) + len(e.owner) + recordOverhead }

// Limit bounds the live untied records whose key starts with prefix to
// max on this member: when a write, or an update learned from another
// member, would hold more, the least recently used (written, learned, or
// marked with Touch) are forgotten here, without a tombstone or a
// broadcast; other members keep their copies, and a push/pull may bring
// one back, counted again as fresh. A session-creation flood so costs
// each member at most max records of the prefix. Calling it again
// changes max (a lower one evicts at once). Bounded prefixes must not
// overlap: Limit panics if prefix contains another, or is contained.
func (s *Store) Limit(prefix string, max int) {
	if max < 1 {
		panic(fmt.Sprintf("gossip: Limit(%q, %d): max must be positive", prefix, max))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.bounds[prefix]
	if b == nil {
		for other := range s.bounds {
			if strings.HasPrefix(prefix, other) || strings.HasPrefix(other, prefix) {
				panic(fmt.Sprintf("gossip: Limit(%q) overlaps the bounded prefix %q", prefix, other))
			}
		}
		b = &bound{prefix: prefix, elems: map[string]*list.Element{}, sizes: map[string]int{}}
		s.bounds[prefix] = b
		for _, r := range s.records {
			if strings.HasPrefix(r.key, prefix) && !r.tombstone && !r.tied {
				b.use(r.entry)
			}
		}
	}
	b.max = max
	s.evictLocked(b)
}

// Touch marks key as used now, so that Limit forgets it last; it writes
// and sends nothing. Keys outside a bounded prefix are ignored.
func (s *Store) Touch(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b := s.boundOf(key); b != nil {
		if el := b.elems[key]; el != nil {
			b.order.MoveToFront(el)
		}
	}
}

// PrefixStats returns what this member holds under a prefix given to
// Limit; zero for another prefix.
func (s *Store) PrefixStats(prefix string) PrefixStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.bounds[prefix]
	if b == nil {
		return PrefixStats{}
	}
	return PrefixStats{Entries: len(b.elems), Bytes: b.bytes, Evictions: b.evictions}
}

// boundOf returns the bound key falls under, or nil. Caller holds s.mu.
func (s *Store) boundOf(key string) *bound {
	for p, b := range s.bounds { // a few prefixes at most
		if strings.HasPrefix(key, p) {
			return b
		}
	}
	return nil
}

// boundPutLocked accounts for e, just stored, in its prefix's bound, and
// enforces the bound. Caller holds s.mu.
func (s *Store) boundPutLocked(e *entry) {
	b := s.boundOf(e.key)
	if b == nil {
		return
	}
	if e.tombstone || e.tied {
		b.remove(e.key)
		return
	}
	b.use(e)
	s.evictLocked(b)
}

// boundDeleteLocked forgets key in its prefix's bound. Caller holds s.mu.
func (s *Store) boundDeleteLocked(key string) {
	if b := s.boundOf(key); b != nil {
		b.remove(key)
	}
}

// evictLocked forgets the least recently used records of b while it
// holds more than its max. Caller holds s.mu.
func (s *Store) evictLocked(b *bound) {
	for len(b.elems) > b.max {
		key := b.order.Back().Value.(string)
		b.remove(key)
		b.evictions++
		if r := s.records[key]; r != nil {
			delete(s.records, key)
			s.unindexLocked(r.entry)
			s.changedLocked(key)
		}
	}
}

// use records e's key as the most recently used, with e's size.
func (b *bound) use(e *entry) {
	size := recordBytes(e)
	if el := b.elems[e.key]; el != nil {
		b.order.MoveToFront(el)
		b.bytes += size - b.sizes[e.key]
	} else {
		b.elems[e.key] = b.order.PushFront(e.key)
		b.bytes += size
	}
	b.sizes[e.key] = size
}

// remove forgets key.
func (b *bound) remove(key string) {
	if el := b.elems[key]; el != nil {
		b.order.Remove(el)
		delete(b.elems, key)
		b.bytes -= b.sizes[key]
		delete(b.sizes, key)
	}
}
