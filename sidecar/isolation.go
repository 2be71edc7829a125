package sidecar

import (
	"context"
	"time"

	"github.com/sidemesh/sidemesh/discovery/gossip"
)

// isolationCheck is how often the sidecar checks whether it is cut off
// from its gossip pool.
var isolationCheck = 250 * time.Millisecond

// watchIsolation keeps s.isolatedSince: set when every other member of
// the pool this one knew is gone and at least one of them died (failure
// detection: this member may be the one cut off), cleared as soon as
// another member is alive. Members that left gracefully do not make an
// edge isolated: a fleet scaled down to one edge is not cut off. It runs
// until ctx ends.
func (s *Sidecar) watchIsolation(ctx context.Context, pool *gossip.Pool) {
	t := time.NewTicker(isolationCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		alive, died := false, false
		for _, m := range pool.Members() {
			if m.Name == pool.Name() {
				continue
			}
			alive = alive || m.State == gossip.MemberAlive
			died = died || m.State == gossip.MemberDead
		}
		switch {
		case alive:
			s.isolatedSince.Store(0)
		case died:
			s.isolatedSince.CompareAndSwap(0, s.clock().UnixNano())
		}
	}
}

// IsolatedFor returns how long this sidecar has been cut off from every
// other member of its gossip pool; 0 when it is not (or has no pool).
func (s *Sidecar) IsolatedFor() time.Duration {
	since := s.isolatedSince.Load()
	if since == 0 {
		return 0
	}
	return s.clock().Sub(time.Unix(0, since))
}
