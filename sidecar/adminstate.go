package sidecar

import (
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/policy/authn"
	"github.com/sidemesh/sidemesh/sidecar/admin"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/edge"
)

// adminState is the admin API's view of a Sidecar.
type adminState struct{ s *Sidecar }

var _ admin.Provider = adminState{}

// Ready implements admin.Provider: started, every upstream has had a
// first snapshot, and with mTLS a certificate is loaded.
func (a adminState) Ready() (bool, string) {
	s := a.s
	switch {
	case s.stopped.Load():
		return false, "shutting down"
	case !s.started.Load():
		return false, "starting"
	}
	t := s.routes.Load()
	names := make([]string, 0, len(t.byName))
	for n := range t.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		select {
		case <-t.byName[n].w.first:
		default:
			return false, fmt.Sprintf("upstream %s has no discovery snapshot yet", n)
		}
	}
	if s.security != nil && s.security.Current() == nil {
		return false, "no certificate loaded yet"
	}
	if s.sticky.Load() != nil && !s.backends.pool.Synced() && s.clock().Sub(s.startedAt) < stickySyncWait {
		return false, fmt.Sprintf("sticky sessions: the session table has not synced with another edge yet (ready anyway %v after start)", stickySyncWait)
	}
	return true, ""
}

// stickySyncWait is how long a new edge with sticky routes stays not
// ready while it has not reached another edge through its seeds: until
// it has the pool's session table, it would send existing sessions'
// requests elsewhere. Past it, an edge whose seeds are all down serves
// anyway (it may be the only edge left).
var stickySyncWait = 30 * time.Second

// Config implements admin.Provider: the config as it runs, every default
// filled in, as `sidemesh validate --print` shows it (config.Effective).
func (a adminState) Config() any { return a.s.Config().Effective() }

func (a adminState) Profiling() bool {
	c := a.s.Config()
	return c.Admin != nil && c.Admin.Profiling
}

// Upstreams implements admin.Provider.
func (a adminState) Upstreams() []admin.Upstream {
	t := a.s.routes.Load()
	cfg := a.s.Config()
	out := make([]admin.Upstream, 0, len(t.byName))
	for name, u := range t.byName {
		up := admin.Upstream{Service: name, Balancer: u.cfg.Balancer, Sources: cfg.Sources(&u.cfg)}
		for _, ep := range u.bal.Endpoints() {
			e := admin.Endpoint{
				ID: ep.ID, Address: ep.Addr, Weight: ep.Weight, Zone: ep.Zone,
				InFlight: ep.InFlight(), Requests: ep.Requests(), Failures: ep.Failures(), LatencyMS: float64(ep.Latency()) / float64(time.Millisecond),
				Breaker: ep.BreakerState().String(), Healthy: ep.Healthy(), HealthChecked: u.cfg.HealthCheck.Enabled(),
				Draining: ep.Draining(),
			}
			if until := ep.EjectedUntil(); !until.IsZero() {
				e.EjectedUntil = &until
			}
			up.Endpoints = append(up.Endpoints, e)
		}
		out = append(out, up)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Service < out[j].Service })
	return out
}

// Discovery implements admin.Provider: the health of each upstream's
// Consul watch (gossip and static sources have no failure mode of their
// own to report).
func (a adminState) Discovery() []admin.Source {
	var out []admin.Source
	for name, u := range a.s.routes.Load().byName {
		src := u.w.consul
		if src == nil {
			continue
		}
		st := admin.Source{Upstream: name, Backend: config.SourceConsul, Healthy: src.Healthy()}
		if err := src.LastError(); err != nil && !st.Healthy {
			st.Error = err.Error()
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Upstream < out[j].Upstream })
	return out
}

// Members implements admin.Provider.
func (a adminState) Members() []admin.Member {
	if a.s.backends.pool == nil {
		return nil
	}
	var out []admin.Member
	store := a.s.backends.pool.Store()
	for _, m := range a.s.backends.pool.Members() {
		am := admin.Member{Name: m.Name, Addr: m.Addr, State: m.State.String(), Since: m.Since}
		if e, ok := store.Get(routeDigestKey(m.Name)); ok {
			am.RouteDigest = string(e.Value)
		}
		out = append(out, am)
	}
	return out
}

// Routes implements admin.Provider.
func (a adminState) Routes() *admin.Routes {
	cfg := a.s.Config()
	if cfg.Edge == nil {
		return nil
	}
	out := &admin.Routes{Table: edge.Compile(cfg.Edge.Routes).Describe(), Digest: routeDigest(cfg.Edge)}
	for _, r := range cfg.Edge.Routes {
		ar := admin.Route{Name: r.Name, Hostnames: r.Hostnames, Redirect: r.Redirect != nil}
		for _, m := range r.Matches {
			ar.Matches = append(ar.Matches, describeMatch(m))
		}
		if len(ar.Matches) == 0 {
			ar.Matches = []string{"prefix /"}
		}
		for _, b := range r.Backends {
			ar.Backends = append(ar.Backends, admin.Backend{Service: b.Service, Weight: b.Weight})
		}
		if g := r.GRPC; g != nil {
			ar.Backends = append(ar.Backends, admin.Backend{Service: g.Service, Weight: 1})
		}
		if a := r.Aggregate; a != nil {
			for _, l := range a.Legs {
				ar.Legs = append(ar.Legs, admin.Leg{Name: l.Name, Service: l.Service, Required: l.Required})
			}
		}
		out.Routes = append(out.Routes, ar)
	}
	return out
}

// Metrics implements admin.Provider.
func (a adminState) Metrics() http.Handler { return a.s.tel.MetricsHandler() }

// Events implements admin.Provider.
func (a adminState) Events() []admin.Event { return a.s.adminEvents() }

// History implements admin.Provider.
func (a adminState) History() admin.History { return a.s.adminHistory() }

// Identity implements admin.Provider.
func (a adminState) Identity() *admin.Identity {
	b := a.s.security.Current()
	if b == nil {
		return nil
	}
	return &admin.Identity{SPIFFEID: b.ID.String(), NotAfter: b.NotAfter, ExpiresInSeconds: time.Until(b.NotAfter).Seconds()}
}

// APIKeys implements admin.Provider.
func (a adminState) APIKeys() []admin.APIKeySet {
	var out []admin.APIKeySet
	for _, st := range a.s.APIKeySets() {
		set := admin.APIKeySet{Name: st.Name, Keys: []admin.APIKeyRef{}, Conflicts: st.Conflicts}
		for _, k := range st.Keys {
			ref := admin.APIKeyRef{ID: k.ID, Source: k.Source, Revoked: st.Revoked[k.ID]}
			if !k.Expires.IsZero() {
				exp := k.Expires
				ref.Expires = &exp
			}
			set.Keys = append(set.Keys, ref)
		}
		out = append(out, set)
	}
	slices.SortFunc(out, func(x, y admin.APIKeySet) int { return strings.Compare(x.Name, y.Name) })
	return out
}

// RevokeAPIKey implements admin.Provider.
func (a adminState) RevokeAPIKey(set, id string, on bool) error { return a.s.RevokeAPIKey(set, id, on) }

// AddAPIKey implements admin.Provider.
func (a adminState) AddAPIKey(set string, k admin.NewAPIKey) error {
	return a.s.AddAPIKey(set, authn.AdminKey{ID: k.ID, SHA256: k.SHA256, Expires: k.Expires, Metadata: k.Metadata})
}

// RemoveAPIKey implements admin.Provider.
func (a adminState) RemoveAPIKey(set, id string) error { return a.s.RemoveAPIKey(set, id) }

// Cache implements admin.Provider.
func (a adminState) Cache() *admin.Cache { return a.s.CacheStats() }

// PurgeCache implements admin.Provider.
func (a adminState) PurgeCache(p admin.CachePurge) (int, error) { return a.s.PurgeCache(p) }

// Drain implements admin.Provider.
func (a adminState) Drain(id string, on bool) error { return a.s.Drain(id, on) }

// Drained implements admin.Provider.
func (a adminState) Drained() []string { return a.s.Drained() }

// RateLimits implements admin.Provider.
func (a adminState) RateLimits() []admin.RateLimit {
	var out []admin.RateLimit
	for _, st := range a.s.RateLimits() {
		out = append(out, admin.RateLimit{
			Route: st.Route, Name: st.Name, Scope: st.Scope, Allowed: st.Allowed, Refused: st.Refused,
			ShadowRefused: st.ShadowRefused, Keys: st.Keys, Evictions: st.Evictions,
			Edges: st.Edges, OvershootBound: st.Bound, Partitioned: st.Partitioned,
		})
	}
	slices.SortFunc(out, func(x, y admin.RateLimit) int { return strings.Compare(x.Route+"\x00"+x.Name, y.Route+"\x00"+y.Name) })
	return out
}

// Sticky implements admin.Provider.
func (a adminState) Sticky() *admin.Sticky {
	table := a.s.sticky.Load()
	if table == nil {
		return nil
	}
	out := &admin.Sticky{Edges: table.Owners(), PendingUpdates: table.Pending()}
	for _, r := range table.Routes() {
		st, cfg := r.Stats(), r.Config()
		out.Routes = append(out.Routes, admin.StickyRoute{
			Route: st.Route, Mode: cfg.Mode, OnUnavailable: cfg.OnUnavailable,
			Sessions: st.Table.Entries, Bytes: st.Table.Bytes, MaxSessions: cfg.MaxSessions, Evictions: st.Table.Evictions,
			Hits: st.Hits, New: st.Created, Rebinds: st.Rebinds, Misses: st.Misses, Refused: st.Refused,
			OwnerLookups: st.OwnerLookups, OwnerFound: st.OwnerFound,
			OwnerMissing: st.OwnerMissing, OwnerErrors: st.OwnerErrors,
			PerEndpoint: r.PerEndpoint(),
		})
	}
	slices.SortFunc(out.Routes, func(x, y admin.StickyRoute) int { return strings.Compare(x.Route, y.Route) })
	return out
}
