package balancer

import (
	"slices"
	"sync/atomic"
	"time"
)

// Drained is a set of endpoint IDs that take no new work: a balancer
// whose Options name it picks a drained endpoint only for a request whose
// Affinity names it (a sticky session that began there keeps it until it
// ends), or when every endpoint is drained or down (as it does when all
// are down: traffic keeps flowing). One Drained is shared by every
// balancer of a process, so that draining an instance applies to every
// upstream and route that reaches it. Safe for concurrent use; Has is
// lock-free and, with nothing drained, a single atomic load.
type Drained struct {
	ids atomic.Pointer[map[string]struct{}]
}

// Set replaces the drained IDs with ids.
func (d *Drained) Set(ids []string) {
	m := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		m[id] = struct{}{}
	}
	d.ids.Store(&m)
}

// Has reports whether the endpoint with ID id is drained. A nil Drained
// holds nothing.
func (d *Drained) Has(id string) bool {
	if d == nil {
		return false
	}
	m := d.ids.Load()
	if m == nil || len(*m) == 0 {
		return false
	}
	_, ok := (*m)[id]
	return ok
}

// List returns the drained IDs, sorted.
func (d *Drained) List() []string {
	if d == nil {
		return nil
	}
	m := d.ids.Load()
	if m == nil {
		return nil
	}
	out := make([]string, 0, len(*m))
	for id := range *m {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// admitNew is admit for work that is not pinned to e: it also refuses a
// drained endpoint.
func (e *Endpoint) admitNew(t time.Time) bool {
	return !e.state.drained.Has(e.ID) && e.admit(t)
}

// Draining reports whether e is drained.
func (e *Endpoint) Draining() bool { return e.state.drained.Has(e.ID) }
