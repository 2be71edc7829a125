package config

import "time"

// EdgeCache bounds the edge's response cache, which every route with a
// cache section shares (see RouteCache).
type EdgeCache struct {
	// MaxBytes bounds the memory the stored responses take, all routes
	// together (bodies, headers and keys); beyond it the least recently
	// used are evicted. Default 67108864 (64 MiB).
	MaxBytes int `yaml:"max_bytes"`
	// MaxEntryBytes bounds one stored response; a larger one is passed
	// to the client as it comes, not stored. Default 1048576 (1 MiB); at
	// most MaxBytes.
	MaxEntryBytes int `yaml:"max_entry_bytes"`
}

// RouteCache caches a route's GET responses on the edge, as a shared
// cache (RFC 9111): see docs/edge.md.
type RouteCache struct {
	// DefaultTTL is how long a response that says nothing of its
	// freshness (no Cache-Control max-age or s-maxage, no Expires) is
	// fresh. Default 0: only responses that say are stored.
	DefaultTTL time.Duration `yaml:"default_ttl"`
	// StaleIfError and StaleWhileRevalidate are the longest the edge
	// honours a response's stale-if-error and stale-while-revalidate
	// directives (RFC 5861). Default 0: as the response says, up to 24h.
	// A response that asks for neither is never served stale.
	StaleIfError         time.Duration `yaml:"stale_if_error"`
	StaleWhileRevalidate time.Duration `yaml:"stale_while_revalidate"`
	// TagsHeader names the response header whose space-separated values
	// tag a stored response, for purges by tag (DELETE /cache?tag=).
	// Default Surrogate-Key.
	TagsHeader string `yaml:"tags_header"`
}

// Defaults of the cache.
const (
	DefaultCacheMaxBytes      = 64 << 20
	DefaultCacheMaxEntryBytes = 1 << 20
	DefaultCacheTagsHeader    = "Surrogate-Key"
)

func (c *EdgeCache) setDefaults() {
	*c = EdgeCache{MaxBytes: DefaultCacheMaxBytes, MaxEntryBytes: DefaultCacheMaxEntryBytes}
}

func (c *RouteCache) setDefaults() { *c = RouteCache{TagsHeader: DefaultCacheTagsHeader} }

// CacheLimits returns e's cache bounds: those of its cache section, or
// the defaults without one.
func (e *Edge) CacheLimits() EdgeCache {
	if e.Cache != nil {
		return *e.Cache
	}
	var c EdgeCache
	c.setDefaults()
	return c
}

// edgeCache checks the edge's cache section.
func (v *validator) edgeCache(e *Edge) {
	c := e.Cache
	if c == nil {
		return
	}
	if c.MaxBytes < 1 {
		v.errorf("edge.cache.max_bytes", "must be at least 1, got %d", c.MaxBytes)
	}
	switch {
	case c.MaxEntryBytes < 1:
		v.errorf("edge.cache.max_entry_bytes", "must be at least 1, got %d", c.MaxEntryBytes)
	case c.MaxBytes >= 1 && c.MaxEntryBytes > c.MaxBytes:
		v.errorf("edge.cache.max_entry_bytes", "%d is more than max_bytes (%d): no response that large would fit", c.MaxEntryBytes, c.MaxBytes)
	}
}

// routeCache checks the cache section of the route at path.
func (v *validator) routeCache(path string, r *Route) {
	c := r.Cache
	if c == nil {
		return
	}
	path += ".cache"
	v.nonNegative(path+".default_ttl", c.DefaultTTL)
	v.nonNegative(path+".stale_if_error", c.StaleIfError)
	v.nonNegative(path+".stale_while_revalidate", c.StaleWhileRevalidate)
	if c.TagsHeader != "" && !validHeaderName(c.TagsHeader) {
		v.errorf(path+".tags_header", "invalid header name %s", quote(c.TagsHeader))
	}
	if r.Redirect != nil {
		v.errorf(path, "a route that redirects has nothing to cache")
	}
}
