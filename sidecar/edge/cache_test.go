package edge_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// cacheOrigin is a backend whose answers a test chooses; it counts the
// requests it gets by path and keeps the last one's header.
type cacheOrigin struct {
	addr string
	ln   net.Listener
	srv  *http.Server

	mu     sync.Mutex
	counts map[string]int
	last   http.Header
	handle func(w http.ResponseWriter, r *http.Request)
}

func startCacheOrigin(t *testing.T, handle func(w http.ResponseWriter, r *http.Request)) *cacheOrigin {
	t.Helper()
	o := &cacheOrigin{counts: map[string]int{}, handle: handle, ln: meshtest.Listen(t)}
	o.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		o.counts[r.URL.Path]++
		o.last = r.Header.Clone()
		o.mu.Unlock()
		o.handle(w, r)
	})}
	go o.srv.Serve(o.ln)
	t.Cleanup(func() { o.srv.Close() })
	o.addr = o.ln.Addr().String()
	return o
}

func (o *cacheOrigin) count(path string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.counts[path]
}

func (o *cacheOrigin) lastHeader() http.Header {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.last
}

// startCacheEdge starts an edge whose route "static" caches every path
// and sends it to origin; it returns the edge's address.
func startCacheEdge(t *testing.T, origin string, routeCache string) string {
	addr, _ := startCacheEdgeWithAdmin(t, origin, routeCache)
	return addr
}

// startCacheEdgeWithAdmin is startCacheEdge that also returns the
// address of the edge's admin listener.
func startCacheEdgeWithAdmin(t *testing.T, origin string, routeCache string) (addr, adminAddr string) {
	t.Helper()
	ln, adminLn := meshtest.Listen(t), meshtest.Listen(t)
	startEdge(t, fmt.Sprintf(`
admin: { listen: %s }
edge:
  listeners: [{ listen: %s }]
  cache: { max_bytes: 1048576, max_entry_bytes: 65536 }
  routes:
    - name: static
      cache: %s
      backends: [{ service: app }]
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
`, adminLn.Addr(), ln.Addr(), routeCache, origin), ln, adminLn)
	return ln.Addr().String(), adminLn.Addr().String()
}

func TestCacheMissThenHitWithAge(t *testing.T) {
	origin := startCacheOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=300")
		w.Header().Set("Age", "7") // as a cache in front of the origin would say
		io.WriteString(w, "logo")
	})
	addr, adminAddr := startCacheEdgeWithAdmin(t, origin.addr, "{}")
	c := newClient(t)
	code, body, h := send(t, c, "GET", addr, "shop.example.com", "/img/logo.png", nil)
	if code != 200 || body != "logo" || h.Get("Cache-Status") != "sidemesh; fwd=miss; stored" {
		t.Fatalf("miss: %d %q %v", code, body, h)
	}
	code, body, h = send(t, c, "GET", addr, "shop.example.com", "/img/logo.png", nil)
	if code != 200 || body != "logo" || h.Get("Cache-Status") != "sidemesh; hit" {
		t.Fatalf("hit: %d %q %v", code, body, h)
	}
	if age := h.Get("Age"); age != "7" && age != "8" {
		t.Fatalf("Age %q, want 7 (or 8 across a second)", age)
	}
	if n := origin.count("/img/logo.png"); n != 1 {
		t.Fatalf("origin saw %d requests, want 1", n)
	}
	// Another host is another key.
	if _, _, h := send(t, c, "GET", addr, "other.example.com", "/img/logo.png", nil); h.Get("Cache-Status") != "sidemesh; fwd=miss; stored" {
		t.Fatalf("other host: %v", h)
	}
	metrics := string(scrape(t, adminAddr))
	for _, want := range []string{
		`sidemesh_cache_requests_total{sidemesh_result="hit"} 1`,
		`sidemesh_cache_requests_total{sidemesh_result="miss"} 2`,
		`sidemesh_cache_entries 2`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestCacheNoStorePrivateAuthorizationNotCached(t *testing.T) {
	origin := startCacheOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/no-store":
			w.Header().Set("Cache-Control", "no-store, max-age=60")
		case "/private":
			w.Header().Set("Cache-Control", "private, max-age=60")
		case "/cookie":
			w.Header().Set("Cache-Control", "max-age=60")
			w.Header().Set("Set-Cookie", "session=1")
		default:
			w.Header().Set("Cache-Control", "max-age=60")
		}
		io.WriteString(w, r.URL.Path)
	})
	addr := startCacheEdge(t, origin.addr, "{}")
	c := newClient(t)
	for _, tc := range []struct {
		path string
		hdr  map[string]string
	}{
		{"/no-store", nil},
		{"/private", nil},
		{"/cookie", nil},
		{"/me", map[string]string{"Authorization": "Bearer t"}},
	} {
		for range 2 {
			if _, _, h := send(t, c, "GET", addr, "shop.example.com", tc.path, tc.hdr); h.Get("Cache-Status") != "sidemesh; fwd=miss" {
				t.Errorf("%s: Cache-Status %q", tc.path, h.Get("Cache-Status"))
			}
		}
		if n := origin.count(tc.path); n != 2 {
			t.Errorf("%s: origin saw %d requests, want 2", tc.path, n)
		}
	}
}

func TestCacheVaryVariants(t *testing.T) {
	origin := startCacheOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Vary", "Accept-Language")
		io.WriteString(w, "hello in "+r.Header.Get("Accept-Language"))
	})
	addr := startCacheEdge(t, origin.addr, "{}")
	c := newClient(t)
	for round := range 2 {
		for _, lang := range []string{"en", "fr", "de"} {
			_, body, h := send(t, c, "GET", addr, "shop.example.com", "/greeting", map[string]string{"Accept-Language": lang})
			want := "sidemesh; fwd=miss; stored"
			if round == 1 {
				want = "sidemesh; hit"
			}
			if body != "hello in "+lang || h.Get("Cache-Status") != want {
				t.Fatalf("round %d %s: %q %q", round, lang, body, h.Get("Cache-Status"))
			}
		}
	}
	if n := origin.count("/greeting"); n != 3 {
		t.Fatalf("origin saw %d requests, want 3", n)
	}
}

func TestCacheRevalidationWith304(t *testing.T) {
	origin := startCacheOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=0") // stale at once: every use revalidates
		w.Header().Set("ETag", `"v7"`)
		if r.Header.Get("If-None-Match") == `"v7"` {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("Content-Type", "text/css")
		io.WriteString(w, "body{}")
	})
	addr := startCacheEdge(t, origin.addr, "{}")
	c := newClient(t)
	send(t, c, "GET", addr, "shop.example.com", "/site.css", nil)
	code, body, h := send(t, c, "GET", addr, "shop.example.com", "/site.css", nil)
	if code != 200 || body != "body{}" || h.Get("Content-Type") != "text/css" || h.Get("Cache-Status") != "sidemesh; fwd=stale; fwd-status=304" {
		t.Fatalf("revalidated: %d %q %v", code, body, h)
	}
	if got := origin.lastHeader().Get("If-None-Match"); got != `"v7"` {
		t.Fatalf("the revalidation sent If-None-Match %q", got)
	}
	// The client's own If-None-Match: the edge revalidates, then answers
	// 304 itself.
	code, body, _ = send(t, c, "GET", addr, "shop.example.com", "/site.css", map[string]string{"If-None-Match": `"v7"`})
	if code != 304 || body != "" {
		t.Fatalf("conditional: %d %q", code, body)
	}
	if n := origin.count("/site.css"); n != 3 {
		t.Fatalf("origin saw %d requests, want 3", n)
	}
}

func TestCacheStaleIfErrorWhileBackendDown(t *testing.T) {
	origin := startCacheOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=0, stale-if-error=300")
		io.WriteString(w, "catalog")
	})
	addr := startCacheEdge(t, origin.addr, "{ stale_if_error: 1m }")
	c := newClient(t)
	send(t, c, "GET", addr, "shop.example.com", "/catalog", nil)
	origin.srv.Close() // the backend is down: connections are refused
	code, body, h := send(t, c, "GET", addr, "shop.example.com", "/catalog", nil)
	if code != 200 || body != "catalog" || !strings.HasSuffix(h.Get("Cache-Status"), "detail=stale-if-error") {
		t.Fatalf("backend down: %d %q %v", code, body, h)
	}
	// Without a stored response the failure is the client's.
	if code, _, h := send(t, c, "GET", addr, "shop.example.com", "/other", nil); code < 500 || h.Get("X-Sidemesh-Error") == "" {
		t.Fatalf("uncached path with the backend down: %d %v", code, h)
	}
}

func TestCacheConcurrentColdMissesOneUpstreamRequest(t *testing.T) {
	release := make(chan struct{})
	var arrived atomic.Int32
	origin := startCacheOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		<-release
		w.Header().Set("Cache-Control", "max-age=60")
		io.WriteString(w, "cold")
	})
	ln := meshtest.Listen(t)
	s := startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes: [{ name: static, cache: {}, backends: [{ service: app }] }]
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
`, ln.Addr(), origin.addr), ln)
	addr := ln.Addr().String()
	tr := &http.Transport{MaxIdleConnsPerHost: 200}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	const n = 200
	var wg sync.WaitGroup
	var collapsed atomic.Int32
	for range n {
		wg.Go(func() {
			resp, err := c.Get("http://" + addr + "/cold")
			if err != nil {
				t.Error(err)
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "cold" {
				t.Errorf("%d %q", resp.StatusCode, b)
			}
			if resp.Header.Get("Cache-Status") == "sidemesh; hit; collapsed" {
				collapsed.Add(1)
			}
		})
	}
	meshtest.WaitFor(t, 15*time.Second, "199 requests waiting on the first one's fetch", func() bool {
		return arrived.Load() == 1 && s.CacheStats().Waiting == n-1
	})
	close(release)
	wg.Wait()
	if got := origin.count("/cold"); got != 1 {
		t.Fatalf("origin saw %d requests, want 1", got)
	}
	if got := collapsed.Load(); got != n-1 {
		t.Fatalf("%d requests were served from the first one's fetch, want %d", got, n-1)
	}
}

func TestCacheHeadAndRangeFromStoredResponse(t *testing.T) {
	origin := startCacheOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("Content-Type", "application/octet-stream")
		io.WriteString(w, "abcdefghij")
	})
	addr := startCacheEdge(t, origin.addr, "{}")
	c := newClient(t)
	send(t, c, "GET", addr, "shop.example.com", "/file.bin", nil)
	code, body, h := send(t, c, "HEAD", addr, "shop.example.com", "/file.bin", nil)
	if code != 200 || body != "" || h.Get("Content-Length") != "10" || h.Get("Cache-Status") != "sidemesh; hit" {
		t.Fatalf("HEAD: %d %q %v", code, body, h)
	}
	code, body, h = send(t, c, "GET", addr, "shop.example.com", "/file.bin", map[string]string{"Range": "bytes=3-5"})
	if code != 206 || body != "def" || h.Get("Content-Range") != "bytes 3-5/10" {
		t.Fatalf("Range: %d %q %v", code, body, h)
	}
	code, _, h = send(t, c, "GET", addr, "shop.example.com", "/file.bin", map[string]string{"Range": "bytes=20-"})
	if code != 416 || h.Get("Content-Range") != "bytes */10" {
		t.Fatalf("unsatisfiable Range: %d %v", code, h)
	}
	if n := origin.count("/file.bin"); n != 1 {
		t.Fatalf("origin saw %d requests, want 1", n)
	}
}

// TestCacheAdminPurge: on a single edge without a gossip pool, DELETE
// /cache purges by path (any host) and by tag, and GET /cache counts.
func TestCacheAdminPurge(t *testing.T) {
	origin := startCacheOrigin(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=60")
		w.Header().Set("X-Tags", "product-"+strings.TrimPrefix(r.URL.Path, "/p/"))
		io.WriteString(w, r.URL.Path)
	})
	edgeLn, adminLn := meshtest.Listen(t), meshtest.Listen(t)
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes: [{ name: shop, cache: { tags_header: X-Tags }, backends: [{ service: app }] }]
admin: { listen: %s }
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
`, edgeLn.Addr(), adminLn.Addr(), origin.addr), edgeLn, adminLn)
	addr, admin := edgeLn.Addr().String(), adminLn.Addr().String()
	c := newClient(t)
	for _, host := range []string{"a.example.com", "b.example.com"} {
		send(t, c, "GET", addr, host, "/p/1", nil)
		send(t, c, "GET", addr, host, "/p/2", nil)
	}
	purge := func(query string) string {
		req, _ := http.NewRequest("DELETE", "http://"+admin+"/cache?"+query, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%d %s", resp.StatusCode, strings.Join(strings.Fields(string(b)), " "))
	}
	if got := purge("key=/p/1"); !strings.Contains(got, `"purged_here": 2`) {
		t.Fatalf("purge by path: %s", got)
	}
	if got := purge("tag=product-2"); !strings.Contains(got, `"purged_here": 2`) {
		t.Fatalf("purge by tag: %s", got)
	}
	if got := purge("key=http://a.example.com/p/1"); !strings.Contains(got, `"purged_here": 0`) {
		t.Fatalf("purge of a purged URL: %s", got)
	}
	if _, _, h := send(t, c, "GET", addr, "a.example.com", "/p/2", nil); h.Get("Cache-Status") != "sidemesh; fwd=miss; stored" {
		t.Fatalf("after the purge: %v", h)
	}
	var stats struct{ Entries, Hits, Misses, Purged int }
	adminJSON(t, admin, "/cache", &stats)
	if stats.Entries != 1 || stats.Misses != 5 || stats.Purged != 4 {
		t.Fatalf("/cache = %+v", stats)
	}
}
