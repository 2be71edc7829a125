package config

import (
	"strings"
	"testing"
	"time"
)

// TestCacheDefaults: a route's empty cache section takes the defaults,
// and an edge without a cache section gets the default bounds.
func TestCacheDefaults(t *testing.T) {
	c := mustParse(t, `
edge:
  listeners: [{ listen: 127.0.0.1:8080 }]
  routes:
    - { name: api, cache: {}, backends: [{ service: cart }] }
    - { name: swr, cache: { default_ttl: 30s, stale_while_revalidate: 1m, tags_header: X-Tags }, backends: [{ service: cart }] }
upstreams: [{ service: cart, endpoints: [{ address: 127.0.0.1:9000 }] }]
`)
	if got := *c.Edge.Routes[0].Cache; got != (RouteCache{TagsHeader: "Surrogate-Key"}) {
		t.Errorf("route cache defaults %+v", got)
	}
	if got := *c.Edge.Routes[1].Cache; got != (RouteCache{DefaultTTL: 30 * time.Second, StaleWhileRevalidate: time.Minute, TagsHeader: "X-Tags"}) {
		t.Errorf("route cache %+v", got)
	}
	if got := c.Edge.CacheLimits(); got != (EdgeCache{MaxBytes: 64 << 20, MaxEntryBytes: 1 << 20}) {
		t.Errorf("edge cache limits without a section %+v", got)
	}
	c = mustParse(t, `
edge:
  listeners: [{ listen: 127.0.0.1:8080 }]
  cache: { max_bytes: 1048576 }
  routes: [{ name: api, cache: {}, backends: [{ service: cart }] }]
upstreams: [{ service: cart, endpoints: [{ address: 127.0.0.1:9000 }] }]
`)
	if got := c.Edge.CacheLimits(); got != (EdgeCache{MaxBytes: 1 << 20, MaxEntryBytes: 1 << 20}) {
		t.Errorf("edge cache limits %+v", got)
	}
}

// TestCacheBoundsMustBePositive: zero bounds are refused, each once.
func TestCacheBoundsMustBePositive(t *testing.T) {
	_, err := Parse("edge.yaml", []byte(`
edge:
  listeners: [{ listen: 127.0.0.1:8080 }]
  cache: { max_bytes: 0, max_entry_bytes: 0 }
  routes: [{ name: api, backends: [{ service: cart }] }]
upstreams: [{ service: cart, endpoints: [{ address: 127.0.0.1:9000 }] }]
`))
	if err == nil {
		t.Fatal("zero cache bounds accepted")
	}
	for _, want := range []string{"edge.cache.max_bytes: must be at least 1, got 0", "edge.cache.max_entry_bytes: must be at least 1, got 0"} {
		if strings.Count(err.Error(), want) != 1 {
			t.Errorf("errors %q lack %q once", err, want)
		}
	}
}
