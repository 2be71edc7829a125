package sidecar

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/sidecar/admin"
)

// TestCachePurgeReachesEveryEdge: three edges share a gossip pool, each
// with its own cache of the same route; a purge through edge A's admin
// API, by tag and then by URL, makes the next request on A a miss at
// once, and on B and C within 2 s.
func TestCachePurgeReachesEveryEdge(t *testing.T) {
	var mu sync.Mutex
	served := map[string]int{}
	app := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		served[r.URL.Path]++
		mu.Unlock()
		w.Header().Set("Cache-Control", "max-age=3600")
		w.Header().Set("Surrogate-Key", "products "+strings.TrimPrefix(r.URL.Path, "/p/"))
		io.WriteString(w, r.URL.Path)
	})}
	ln := meshtest.Listen(t)
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })
	pool := newEdgePool(t, 3, func(addr string) string {
		return fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes: [{ name: shop, cache: {}, backends: [{ service: app }] }]
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
`, addr, ln.Addr())
	})
	c := &http.Client{Timeout: 5 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	status := func(edge int, path string) string {
		resp, err := c.Get("http://" + pool.addrs[edge] + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.Header.Get("Cache-Status")
	}
	fill := func(path string) {
		t.Helper()
		for i := range 3 {
			status(i, path)
			if got := status(i, path); got != "sidemesh; hit" {
				t.Fatalf("edge-%d %s: Cache-Status %q, want a hit", i, path, got)
			}
		}
	}
	// waitMiss checks that edge-0 misses path at once, and waits for
	// edge-1 and edge-2 to miss it; seen remembers those that did, as a
	// miss stores the response again.
	waitMiss := func(what, path string) {
		t.Helper()
		if got := status(0, path); !strings.HasPrefix(got, "sidemesh; fwd=miss") {
			t.Fatalf("%s: edge-0, where it was purged, says %q", what, got)
		}
		seen := map[int]bool{}
		took := meshtest.WaitFor(t, 2*time.Second, what+" to reach edge-1 and edge-2", func() bool {
			for _, i := range []int{1, 2} {
				if !seen[i] && strings.HasPrefix(status(i, path), "sidemesh; fwd=miss") {
					seen[i] = true
				}
			}
			return seen[1] && seen[2]
		})
		t.Logf("%s reached edge-1 and edge-2 %v after edge-0 took it", what, took.Round(time.Millisecond))
	}

	fill("/p/1")
	fill("/p/2")
	if code, body := adminDo(pool.edges[0], "DELETE", "/cache?tag=1", ""); code != 200 || !strings.Contains(body, `"purged_here": 1`) {
		t.Fatalf("purge by tag: %d %s", code, body)
	}
	waitMiss("the purge by tag", "/p/1")
	for i := range 3 {
		if got := status(i, "/p/2"); got != "sidemesh; hit" {
			t.Errorf("edge-%d: /p/2, which the purge did not name, says %q", i, got)
		}
	}

	key := "http://" + pool.addrs[1] + "/p/2" // the Host the clients send
	if code, body := adminDo(pool.edges[0], "DELETE", "/cache?key="+url.QueryEscape(key), ""); code != 200 {
		t.Fatalf("purge by URL: %d %s", code, body)
	}
	// Hosts differ by port only: the key's host matches every edge's.
	waitMiss("the purge by URL", "/p/2")

	// Each purge is applied once: the entries stay in the pool for a
	// minute, and new responses are not purged again by them.
	for i := range 3 {
		if got := status(i, "/p/1"); got != "sidemesh; hit" {
			t.Errorf("edge-%d: /p/1 after the purges settled: %q", i, got)
		}
		if st := pool.edges[i].CacheStats(); st == nil || st.Purged != 2 {
			t.Errorf("edge-%d: cache stats %+v, want 2 purged", i, st)
		}
	}
	if _, err := pool.edges[0].PurgeCache(admin.CachePurge{Key: "no-slash"}); err == nil {
		t.Error("a key that is neither a path nor a URL was accepted")
	}
}

// TestCacheKeptAcrossReload: a reload keeps the store and what it holds,
// applies new bounds, and drops the responses of a route that no longer
// caches; a reload without cached routes removes the cache.
func TestCacheKeptAcrossReload(t *testing.T) {
	app := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=3600")
		io.WriteString(w, r.URL.Path)
	})}
	ln := meshtest.Listen(t)
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })
	addr := listenAddr(t)
	cfgWith := func(cache, bCache string) string {
		return fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  %s
  routes:
    - { name: a, matches: [{ path: { prefix: /a } }], cache: {}, backends: [{ service: app }] }
    - { name: b, matches: [{ path: { prefix: /b } }], %s backends: [{ service: app }] }
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
`, addr, cache, bCache, ln.Addr())
	}
	s := start(t, parse(t, cfgWith("", "cache: {},")))
	c := &http.Client{Timeout: 5 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	status := func(path string) string {
		resp, err := c.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.Header.Get("Cache-Status")
	}
	status("/a")
	status("/b")
	if st := s.CacheStats(); st == nil || st.Entries != 2 || st.MaxBytes != 64<<20 {
		t.Fatalf("before the reload: %+v", st)
	}
	if err := s.Reload(t.Context(), parse(t, cfgWith("cache: { max_bytes: 100000, max_entry_bytes: 1000 }", ""))); err != nil {
		t.Fatal(err)
	}
	if st := s.CacheStats(); st == nil || st.Entries != 1 || st.MaxBytes != 100000 || st.MaxEntryBytes != 1000 {
		t.Fatalf("after the reload: %+v", st)
	}
	if got := status("/a"); got != "sidemesh; hit" {
		t.Errorf("/a after the reload: %q, want a hit", got)
	}
	if got := status("/b"); got != "" {
		t.Errorf("/b, which no longer caches: Cache-Status %q", got)
	}
	noCache := strings.Replace(cfgWith("", ""), "cache: {},", "", 1)
	if err := s.Reload(t.Context(), parse(t, noCache)); err != nil {
		t.Fatal(err)
	}
	if st := s.CacheStats(); st != nil {
		t.Errorf("without cached routes: %+v", st)
	}
	if _, err := s.PurgeCache(admin.CachePurge{Tag: "x"}); err == nil || !strings.Contains(err.Error(), "no route has a cache section") {
		t.Errorf("purge without a cache: %v", err)
	}
}
