package sidecar

import (
	"fmt"
	"strings"

	"github.com/sidemesh/sidemesh/discovery/gossip"
)

// drainPrefix is where drained endpoints are recorded in the gossip pool:
// "drain/<endpoint ID>", an empty entry not tied to the member that wrote
// it, so that a drain outlives the edge or sidecar it was asked of.
const drainPrefix = "drain/"

// Drain drains the endpoint whose discovery ID is id (on), or ends its
// drain (!on). A drained endpoint gets no new work from any balancer of
// this process: no new sticky session, no request that is not pinned to
// it; the sessions it has keep it until they end. With a gossip pool the
// drain is written to the pool, and every member (every edge) applies
// it within moments; without one, it applies to this process only, until
// it exits.
func (s *Sidecar) Drain(id string, on bool) error {
	if id == "" || len(drainPrefix+id) > gossip.MaxKeyLen || strings.ContainsAny(id, "\x00\r\n") {
		return fmt.Errorf("drain: bad endpoint ID %q", id)
	}
	if s.backends != nil && s.backends.pool != nil {
		store := s.backends.pool.Store()
		var err error
		if on {
			err = store.Set(drainPrefix+id, nil, gossip.SetOptions{})
		} else {
			err = store.Delete(drainPrefix + id)
		}
		if err != nil {
			return fmt.Errorf("drain %s: %w", id, err)
		}
		s.applyDrains(store) // at once here; the subscription catches up
		return nil
	}
	s.drainMu.Lock()
	defer s.drainMu.Unlock()
	if on {
		s.localDrains[id] = struct{}{}
	} else {
		delete(s.localDrains, id)
	}
	ids := make([]string, 0, len(s.localDrains))
	for id := range s.localDrains {
		ids = append(ids, id)
	}
	s.drained.Set(ids)
	return nil
}

// Drained returns the IDs of the drained endpoints, sorted.
func (s *Sidecar) Drained() []string { return s.drained.List() }

// watchDrains keeps the drained set equal to the pool's drain entries
// until the pool shuts down. Without a pool it does nothing: drains are
// then this process's own.
func (s *Sidecar) watchDrains() {
	if s.backends == nil || s.backends.pool == nil {
		return
	}
	store := s.backends.pool.Store()
	signal, cancel := store.Subscribe(drainPrefix)
	s.applyDrains(store)
	go func() {
		defer cancel()
		for range signal { // closed by the pool's Shutdown
			s.applyDrains(store)
		}
	}()
}

// applyDrains sets the drained set from the pool's entries.
func (s *Sidecar) applyDrains(store *gossip.Store) {
	s.drainMu.Lock()
	defer s.drainMu.Unlock()
	entries := store.List(drainPrefix)
	ids := make([]string, len(entries))
	for i, e := range entries {
		ids[i] = e.Key[len(drainPrefix):]
	}
	s.drained.Set(ids)
}
