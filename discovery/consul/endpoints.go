package consul

import (
	"cmp"
	"maps"
	"slices"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery"
)

// zoneMetaKey is the service meta key that carries an instance's zone. The
// Registrar writes it from Instance.Zone; Sources read it into Endpoint.Zone.
const zoneMetaKey = "zone"

// endpoints maps the health entries of service to endpoints, the way
// Consul's own mesh computes Envoy endpoints: an entry with any critical
// (or maintenance) check is dropped; one with a check in warning gets
// Weights.Warning, any other Weights.Passing; a weight of 0 means "no
// traffic" and drops the entry. Address falls back to the node's address.
// The result is sorted by ID so that snapshots compare stably, and shares
// no memory with entries.
func endpoints(service string, entries []*api.ServiceEntry) []discovery.Endpoint {
	eps := make([]discovery.Endpoint, 0, len(entries))
	for _, e := range entries {
		if e == nil || e.Service == nil {
			continue
		}
		var weight int
		switch e.Checks.AggregatedStatus() {
		case api.HealthPassing:
			weight = e.Service.Weights.Passing
		case api.HealthWarning:
			weight = e.Service.Weights.Warning
		default: // critical, maintenance, or a status this code does not know
			continue
		}
		if weight <= 0 {
			continue
		}
		addr := e.Service.Address
		if addr == "" && e.Node != nil {
			addr = e.Node.Address
		}
		ep := discovery.Endpoint{
			ID:      e.Service.ID,
			Service: service,
			Address: addr,
			Port:    e.Service.Port,
			Weight:  weight,
			Tags:    slices.Clone(e.Service.Tags),
			Meta:    maps.Clone(e.Service.Meta),
			Zone:    e.Service.Meta[zoneMetaKey],
		}
		eps = append(eps, ep)
	}
	slices.SortFunc(eps, func(a, b discovery.Endpoint) int { return cmp.Compare(a.ID, b.ID) })
	return eps
}

// sameEndpoints reports whether a and b describe the same set (both are
// sorted by ID).
func sameEndpoints(a, b []discovery.Endpoint) bool {
	return slices.EqualFunc(a, b, func(x, y discovery.Endpoint) bool {
		return x.ID == y.ID && x.Service == y.Service && x.Address == y.Address &&
			x.Port == y.Port && x.Weight == y.Weight && x.Zone == y.Zone &&
			slices.Equal(x.Tags, y.Tags) && maps.Equal(x.Meta, y.Meta)
	})
}
