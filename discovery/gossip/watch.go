package gossip

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/sidemesh/sidemesh/discovery"
)

// instanceRecord is the Store value of a published instance.
type instanceRecord struct {
	ID      string            `json:"id"`
	Service string            `json:"service"`
	Address string            `json:"address"`
	Port    int               `json:"port"`
	Weight  int               `json:"weight,omitempty"`
	Tags    []string          `json:"tags,omitempty"`
	Meta    map[string]string `json:"meta,omitempty"`
	Zone    string            `json:"zone,omitempty"`
	Healthy bool              `json:"healthy"`
}

// encodeInstance validates inst and returns its Store value.
func encodeInstance(inst discovery.Instance, healthy bool) ([]byte, error) {
	var errs []error
	if inst.ID == "" {
		errs = append(errs, errors.New("empty instance ID"))
	}
	if len(instanceKey(inst.ID)) > MaxKeyLen {
		errs = append(errs, fmt.Errorf("instance ID longer than %d bytes", MaxKeyLen-len(instancePrefix)))
	}
	if inst.Service == "" {
		errs = append(errs, errors.New("empty service name"))
	}
	if inst.Address == "" {
		errs = append(errs, errors.New("empty address"))
	}
	if inst.Port < 1 || inst.Port > 65535 {
		errs = append(errs, fmt.Errorf("port %d out of range", inst.Port))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	b, err := json.Marshal(instanceRecord{
		ID: inst.ID, Service: inst.Service, Address: inst.Address, Port: inst.Port,
		Weight: inst.Weight, Tags: inst.Tags, Meta: inst.Meta, Zone: inst.Zone, Healthy: healthy,
	})
	if err != nil {
		return nil, err
	}
	if len(b) > MaxValueLen {
		return nil, fmt.Errorf("instance encodes to %d bytes, more than the %d one gossip packet carries (trim tags and meta)", len(b), MaxValueLen)
	}
	return b, nil
}

// decodedInstance caches the endpoint decoded from one version of a key.
type decodedInstance struct {
	version uint64
	owner   string
	ep      discovery.Endpoint
	healthy bool
	ok      bool
}

func decodeInstance(e Entry) decodedInstance {
	d := decodedInstance{version: e.Version, owner: e.Owner}
	var r instanceRecord
	if err := json.Unmarshal(e.Value, &r); err != nil ||
		instanceKey(r.ID) != e.Key || r.Service == "" || r.Port < 1 || r.Port > 65535 {
		return d
	}
	d.ok, d.healthy = true, r.Healthy
	d.ep = discovery.Endpoint{
		ID: r.ID, Service: r.Service, Address: r.Address, Port: r.Port,
		Weight: max(r.Weight, 1), Tags: r.Tags, Meta: r.Meta, Zone: r.Zone,
	}
	return d
}

// endpoints returns the healthy endpoints of service, sorted by ID. The
// slice is shared and must not be modified. The view is rebuilt only when
// the store changed since the last call, reusing decoded values of keys
// whose version did not change.
func (p *Pool) endpoints(service string) []discovery.Endpoint {
	p.viewMu.Lock()
	defer p.viewMu.Unlock()
	if gen := p.store.generation(); p.view == nil || gen != p.viewGen {
		entries := p.store.List(instancePrefix)
		view := make(map[string][]discovery.Endpoint)
		decoded := make(map[string]decodedInstance, len(entries))
		for _, e := range entries {
			d, ok := p.decoded[e.Key]
			if !ok || d.version != e.Version || d.owner != e.Owner {
				d = decodeInstance(e)
				if !d.ok {
					p.log.Warn("gossip: ignoring an undecodable instance", "key", e.Key, "owner", e.Owner)
				}
			}
			decoded[e.Key] = d
			if d.ok && d.healthy {
				view[d.ep.Service] = append(view[d.ep.Service], d.ep)
			}
		}
		for _, eps := range view {
			slices.SortFunc(eps, func(a, b discovery.Endpoint) int { return strings.Compare(a.ID, b.ID) })
		}
		p.view, p.viewGen, p.decoded = view, gen, decoded
	}
	return p.view[service]
}

// Watch implements discovery.Source: it delivers full snapshots of the
// healthy instances of service published by every member, this one
// included, sorted by ID. The first snapshot (possibly empty: an unknown
// service is not an error, its instances may appear later) is in the
// channel when Watch returns; later ones are sent only when the set
// changes. The channel has a buffer of one and a newer snapshot replaces
// an unread one, so a slow reader never blocks the pool. The channel is
// closed after ctx is cancelled or the pool shuts down. Snapshots are
// copies the reader may keep.
func (p *Pool) Watch(ctx context.Context, service string) (<-chan discovery.Snapshot, error) {
	if service == "" {
		return nil, errors.New("gossip: watch: empty service name")
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, fmt.Errorf("gossip: watch %s: pool is shut down", service)
	}
	p.wg.Add(1)
	p.mu.Unlock()

	signal, cancel := p.store.Subscribe(instancePrefix)
	last := p.endpoints(service)
	out := make(chan discovery.Snapshot, 1)
	out <- discovery.Snapshot{Service: service, Endpoints: cloneEndpoints(last)}
	go func() {
		defer p.wg.Done()
		defer close(out)
		defer cancel()
		for {
			select {
			case <-ctx.Done():
				return
			case <-p.done:
				return
			case _, ok := <-signal:
				if !ok {
					return
				}
				eps := p.endpoints(service)
				if slices.EqualFunc(eps, last, endpointEqual) {
					continue
				}
				last = eps
				select { // newest replaces unread; we are the only sender
				case <-out:
				default:
				}
				out <- discovery.Snapshot{Service: service, Endpoints: cloneEndpoints(eps)}
			}
		}
	}()
	return out, nil
}

func endpointEqual(a, b discovery.Endpoint) bool {
	return a.ID == b.ID && a.Service == b.Service && a.Address == b.Address && a.Port == b.Port &&
		a.Weight == b.Weight && a.Zone == b.Zone && slices.Equal(a.Tags, b.Tags) && maps.Equal(a.Meta, b.Meta)
}

func cloneEndpoints(eps []discovery.Endpoint) []discovery.Endpoint {
	out := make([]discovery.Endpoint, len(eps))
	for i, e := range eps {
		e.Tags = slices.Clone(e.Tags)
		e.Meta = maps.Clone(e.Meta)
		out[i] = e
	}
	return out
}
