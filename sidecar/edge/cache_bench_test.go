package edge_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// BenchmarkCacheHit: GETs of a 1 KiB response, in one run, sent to the
// backend directly (direct), through an edge route without a cache
// (edge), and through an edge route that answers from its cache
// (edge+cache-hit); parallel (requests/s, as req/s) and one at a time
// (latency, as ns/op).
func BenchmarkCacheHit(b *testing.B) {
	ln := meshtest.Listen(b)
	body := []byte(strings.Repeat("x", 1024))
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "max-age=3600")
		w.Write(body)
	})}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	backend := ln.Addr().String()
	edgeLn := meshtest.Listen(b)
	addr := edgeLn.Addr().String()
	startEdgeB(b, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - { name: plain, matches: [{ path: { prefix: /plain } }], backends: [{ service: app }] }
    - { name: cached, matches: [{ path: { prefix: /cached } }], cache: {}, backends: [{ service: app }] }
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
`, addr, backend), edgeLn)
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	resp, err := c.Get("http://" + addr + "/cached/items")
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	for _, tc := range []struct{ name, url string }{
		{"direct", "http://" + backend + "/items"},
		{"edge", "http://" + addr + "/plain/items"},
		{"edge+cache-hit", "http://" + addr + "/cached/items"},
	} {
		b.Run(tc.name+"/parallel", func(b *testing.B) {
			benchGet(b, c, tc.url)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		})
		b.Run(tc.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				resp, err := c.Get(tc.url)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}
