package sidecar

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sidemesh/sidemesh/discovery/gossip"
)

// sharedSet is a set of names that every member of the gossip pool
// shares, each name with a value (empty for a plain set): each is an
// entry under prefix, not tied to the member that wrote it, so that it
// outlives that member. Without a pool the set is this process's own.
// Each change, local or learned by gossip, hands the whole set to apply,
// from one goroutine at a time. Safe for concurrent use.
type sharedSet struct {
	prefix string
	store  *gossip.Store // nil without a pool
	apply  func(map[string][]byte)

	mu    sync.Mutex
	local map[string][]byte
}

// newSharedSet returns the set under prefix in pool's store (pool may be
// nil), and, with a pool, keeps applying its names until the pool shuts
// down.
func newSharedSet(pool *gossip.Pool, prefix string, apply func([]string)) *sharedSet {
	return newSharedMap(pool, prefix, func(m map[string][]byte) { apply(slices.Collect(maps.Keys(m))) })
}

// newSharedMap is newSharedSet for names with values: apply gets each
// name's value, which it must not modify.
func newSharedMap(pool *gossip.Pool, prefix string, apply func(map[string][]byte)) *sharedSet {
	s := &sharedSet{prefix: prefix, apply: apply, local: map[string][]byte{}}
	if pool == nil {
		return s
	}
	s.store = pool.Store()
	signal, cancel := s.store.Subscribe(prefix)
	s.refresh()
	go func() {
		defer cancel()
		for range signal { // closed by the pool's Shutdown
			s.refresh()
		}
	}()
	return s
}

// set adds name (on) or removes it.
func (s *sharedSet) set(name string, on bool) error {
	if on {
		return s.put(name, nil, 0)
	}
	return s.remove(name)
}

// put adds name with value, or replaces its value. With a pool and a
// positive ttl the entry expires on every member that long after the
// write; without a pool ttl is ignored (the reader checks expiry).
func (s *sharedSet) put(name string, value []byte, ttl time.Duration) error {
	if err := s.checkName(name); err != nil {
		return err
	}
	if s.store == nil {
		s.mu.Lock()
		s.local[name] = slices.Clone(value)
		s.mu.Unlock()
	} else if err := s.store.Set(s.prefix+name, value, gossip.SetOptions{TTL: max(ttl, 0)}); err != nil {
		return err
	}
	s.refresh() // at once here; the subscription catches up too
	return nil
}

// remove removes name.
func (s *sharedSet) remove(name string) error {
	if err := s.checkName(name); err != nil {
		return err
	}
	if s.store == nil {
		s.mu.Lock()
		delete(s.local, name)
		s.mu.Unlock()
	} else if err := s.store.Delete(s.prefix + name); err != nil {
		return err
	}
	s.refresh()
	return nil
}

func (s *sharedSet) checkName(name string) error {
	if name == "" || len(s.prefix+name) > gossip.MaxKeyLen || strings.ContainsAny(name, "\x00\r\n") {
		return fmt.Errorf("bad name %q", name)
	}
	return nil
}

// refresh hands the current set to apply.
func (s *sharedSet) refresh() {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := map[string][]byte{}
	if s.store == nil {
		maps.Copy(m, s.local)
	} else {
		for _, e := range s.store.List(s.prefix) {
			m[e.Key[len(s.prefix):]] = e.Value
		}
	}
	s.apply(m)
}
