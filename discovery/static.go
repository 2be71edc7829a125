package discovery

import (
	"context"
	"fmt"
	"slices"
)

// Static is a Source over a fixed set of endpoints, such as the
// upstreams[].endpoints of a config file. It is immutable and safe for
// concurrent use; a config reload builds a new Static.
type Static struct {
	services map[string][]Endpoint
}

// NewStatic returns a Static source serving the given endpoints per service.
// Endpoints without an ID get their "host:port" address as ID, endpoints
// with a weight below 1 get weight 1, and Service is set to the map key.
// The map and slices are copied.
func NewStatic(services map[string][]Endpoint) *Static {
	s := &Static{services: make(map[string][]Endpoint, len(services))}
	for name, eps := range services {
		cp := make([]Endpoint, len(eps))
		for i, e := range eps {
			e.Service = name
			if e.ID == "" {
				e.ID = e.HostPort()
			}
			if e.Weight < 1 {
				e.Weight = 1
			}
			e.Tags = slices.Clone(e.Tags)
			cp[i] = e
		}
		s.services[name] = cp
	}
	return s
}

// Watch delivers the one snapshot of service and closes the channel when
// ctx is cancelled. Watching a service the source does not know is an
// error.
func (s *Static) Watch(ctx context.Context, service string) (<-chan Snapshot, error) {
	eps, ok := s.services[service]
	if !ok {
		return nil, fmt.Errorf("static discovery: no endpoints configured for service %q", service)
	}
	ch := make(chan Snapshot, 1)
	ch <- Snapshot{Service: service, Endpoints: slices.Clone(eps)}
	go func() {
		<-ctx.Done()
		close(ch)
	}()
	return ch, nil
}

var _ Source = (*Static)(nil)
