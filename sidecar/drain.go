package sidecar

import "fmt"

// drainPrefix is where drained endpoints are recorded in the gossip pool:
// "drain/<endpoint ID>".
const drainPrefix = "drain/"

// Drain drains the endpoint whose discovery ID is id (on), or ends its
// drain (!on). A drained endpoint gets no new work from any balancer of
// this process: no new sticky session, no request that is not pinned to
// it; the sessions it has keep it until they end. With a gossip pool the
// drain is written to the pool, and every member (every edge) applies
// it within moments, also after this one exits; without one, it applies
// to this process only, until it exits.
func (s *Sidecar) Drain(id string, on bool) error {
	if err := s.drains.set(id, on); err != nil {
		return fmt.Errorf("drain %s: %w", id, err)
	}
	return nil
}

// Drained returns the IDs of the drained endpoints, sorted.
func (s *Sidecar) Drained() []string { return s.drained.List() }
