package sidecar

import (
	"fmt"
	"strings"
	"sync"

	"github.com/sidemesh/sidemesh/discovery/gossip"
)

// sharedSet is a set of names that every member of the gossip pool
// shares: each is an empty entry under prefix, not tied to the member
// that wrote it, so that it outlives that member. Without a pool the set
// is this process's own. Each change, local or learned by gossip, hands
// the whole set to apply. Safe for concurrent use.
type sharedSet struct {
	prefix string
	store  *gossip.Store // nil without a pool
	apply  func(names []string)

	mu    sync.Mutex
	local map[string]struct{}
}

// newSharedSet returns the set under prefix in pool's store (pool may be
// nil), and, with a pool, keeps applying it until the pool shuts down.
func newSharedSet(pool *gossip.Pool, prefix string, apply func([]string)) *sharedSet {
	s := &sharedSet{prefix: prefix, apply: apply, local: map[string]struct{}{}}
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
	if name == "" || len(s.prefix+name) > gossip.MaxKeyLen || strings.ContainsAny(name, "\x00\r\n") {
		return fmt.Errorf("bad name %q", name)
	}
	if s.store == nil {
		s.mu.Lock()
		if on {
			s.local[name] = struct{}{}
		} else {
			delete(s.local, name)
		}
		s.mu.Unlock()
		s.refresh()
		return nil
	}
	var err error
	if on {
		err = s.store.Set(s.prefix+name, nil, gossip.SetOptions{})
	} else {
		err = s.store.Delete(s.prefix + name)
	}
	if err != nil {
		return err
	}
	s.refresh() // at once here; the subscription catches up too
	return nil
}

// refresh hands the current set to apply.
func (s *sharedSet) refresh() {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	if s.store == nil {
		for n := range s.local {
			names = append(names, n)
		}
	} else {
		for _, e := range s.store.List(s.prefix) {
			names = append(names, e.Key[len(s.prefix):])
		}
	}
	s.apply(names)
}
