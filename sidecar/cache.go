package sidecar

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/sidecar/admin"
	"github.com/sidemesh/sidemesh/sidecar/cache"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

// cachePurgePrefix is where purges of the edges' response caches are
// recorded in the gossip pool: "cache-purge/<random id>", each an untied
// entry holding a cachePurge, expiring after cachePurgeTTL. Every edge
// applies each purge once.
const cachePurgePrefix = "cache-purge/"

// cachePurgeTTL is how long a purge stays in the gossip pool: long
// enough for every edge to see it, short enough that the pool does not
// fill with them.
const cachePurgeTTL = time.Minute

// edgeCache is the edge's response cache: the store, kept across
// reloads while a route caches, and the purges shared by the gossip
// pool.
type edgeCache struct {
	// store is nil while no route has a cache section; read without a
	// lock by the admin API.
	store atomic.Pointer[cache.Store]
	// purges holds the purges of every edge; nil without a pool (a purge
	// is then this edge's alone).
	purges *sharedSet

	mu sync.Mutex
	// applied are the IDs of the purges this edge has applied, among
	// those the pool still holds.
	applied map[string]bool
}

// cachePurge is a purge as the gossip pool holds it: a URL or path
// (Key), or a tag, and when it was asked for.
type cachePurge struct {
	Key  string    `json:"key,omitempty"`
	Tag  string    `json:"tag,omitempty"`
	Time time.Time `json:"time"`
}

// apply removes what p names from store, and returns how many responses.
func (p cachePurge) apply(store *cache.Store) (int, error) {
	if p.Tag != "" {
		return store.PurgeTag(p.Tag), nil
	}
	host, path, query, err := purgeTarget(p.Key)
	if err != nil {
		return 0, err
	}
	return store.PurgeURL(host, path, query), nil
}

// purgeTarget splits a purge key into the host (empty for a bare path:
// every host), escaped path and query it names.
func purgeTarget(key string) (host, path, query string, err error) {
	u, err := url.Parse(key)
	switch {
	case err != nil:
		return "", "", "", fmt.Errorf("key %q: %w", key, err)
	case u.Scheme != "" && u.Host == "", u.Scheme == "" && !strings.HasPrefix(key, "/"):
		return "", "", "", fmt.Errorf("key %q: want a path (/img/logo.png) or a URL (https://shop.example.com/img/logo.png)", key)
	}
	path = u.EscapedPath()
	if path == "" {
		path = "/"
	}
	return u.Hostname(), path, u.RawQuery, nil
}

// cacheFilter returns the edge router's Cache option for cfg, nil when
// no route has a cache section. The first cached route creates the
// store; a reload changes its bounds and drops the responses of routes
// that no longer cache. Called under s.mu.
func (s *Sidecar) cacheFilter(cfg *config.Config) func(*config.Route) pipeline.Filter {
	routes := map[string]bool{}
	for _, r := range cfg.Edge.Routes {
		if r.Cache != nil {
			routes[r.Name] = true
		}
	}
	store := s.cache.store.Load()
	if len(routes) == 0 {
		s.cache.store.Store(nil)
		return nil
	}
	lim := cfg.Edge.CacheLimits()
	o := cache.Options{MaxBytes: int64(lim.MaxBytes), MaxEntryBytes: int64(lim.MaxEntryBytes)}
	if store == nil {
		store = cache.New(o)
		s.cache.store.Store(store)
	} else {
		store.SetOptions(o)
		store.Retain(func(route string) bool { return routes[route] })
	}
	return func(rc *config.Route) pipeline.Filter {
		c := rc.Cache
		return cache.Filter(store, cache.RouteOptions{
			Route: rc.Name, DefaultTTL: c.DefaultTTL, StaleIfError: c.StaleIfError,
			StaleWhileRevalidate: c.StaleWhileRevalidate, TagsHeader: c.TagsHeader,
		})
	}
}

// applyCachePurges applies the purges of entries (by ID) this edge has
// not applied yet, and forgets the IDs the pool no longer holds. The
// sharedSet calls it one call at a time.
func (s *Sidecar) applyCachePurges(entries map[string][]byte) {
	c := &s.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.applied == nil {
		c.applied = map[string]bool{}
	}
	store := c.store.Load()
	for id, value := range entries {
		if c.applied[id] {
			continue
		}
		c.applied[id] = true
		var p cachePurge
		if err := json.Unmarshal(value, &p); err != nil {
			s.log.Warn("cache: ignoring a purge from the gossip pool", "id", id, "error", err)
			continue
		}
		if store == nil {
			continue
		}
		if _, err := p.apply(store); err != nil {
			s.log.Warn("cache: ignoring a purge from the gossip pool", "id", id, "error", err)
		}
	}
	for id := range c.applied {
		if _, ok := entries[id]; !ok {
			delete(c.applied, id)
		}
	}
}

// PurgeCache removes the stored responses p names from this edge's
// cache at once and, with a gossip pool, from every edge's within
// moments (about a second on a LAN; edges that join within a minute
// apply it too). It returns how many responses this edge removed. A key
// that is a path matches every host; a URL, its host only; either
// matches every route, method and Vary variant, with the path and query
// as sent to the backend (after a route's rewrite). Without a cached
// route it is an error wrapping admin.ErrNotFound. Safe for concurrent
// use.
func (s *Sidecar) PurgeCache(p admin.CachePurge) (int, error) {
	if (p.Key == "") == (p.Tag == "") {
		return 0, errors.New("cache purge: give exactly one of key and tag")
	}
	store := s.cache.store.Load()
	if store == nil {
		return 0, fmt.Errorf("cache purge: %w: no route has a cache section", admin.ErrNotFound)
	}
	cp := cachePurge{Key: p.Key, Tag: p.Tag, Time: s.clock().UTC()}
	if cp.Key != "" {
		if _, _, _, err := purgeTarget(cp.Key); err != nil {
			return 0, fmt.Errorf("cache purge: %w", err)
		}
	}
	value, err := json.Marshal(cp)
	if err != nil {
		return 0, fmt.Errorf("cache purge: %w", err)
	}
	if len(value) > gossip.MaxValueLen {
		return 0, fmt.Errorf("cache purge: the key or tag takes %d bytes encoded; at most %d", len(value), gossip.MaxValueLen)
	}
	n, _ := cp.apply(store) // the key was checked
	if s.cache.purges == nil {
		return n, nil
	}
	var b [8]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	s.cache.mu.Lock()
	if s.cache.applied == nil {
		s.cache.applied = map[string]bool{}
	}
	s.cache.applied[id] = true
	s.cache.mu.Unlock()
	if err := s.cache.purges.put(id, value, cachePurgeTTL); err != nil {
		return n, fmt.Errorf("cache purge: purged %d responses here, but could not tell the other edges: %w", n, err)
	}
	return n, nil
}

// CacheStats returns the counters of the edge's response cache; nil
// when no route caches.
func (s *Sidecar) CacheStats() *admin.Cache {
	store := s.cache.store.Load()
	if store == nil {
		return nil
	}
	st := store.Stats()
	return &admin.Cache{
		Entries: st.Entries, Bytes: st.Bytes, MaxBytes: st.MaxBytes, MaxEntryBytes: st.MaxEntryBytes,
		Hits: st.Hits, Misses: st.Misses, Stores: st.Stores, Evictions: st.Evictions, Purged: st.Purged, Waiting: st.Waiting,
	}
}
