package edge_test

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/edge"
)

// benchTable compiles n routes over 10 hostnames, each route a few
// prefix matches with headers and a method, as a large API gateway has.
func benchTable(b *testing.B, n int) *edge.Table {
	var y strings.Builder
	y.WriteString("edge:\n  listeners: [{ listen: 127.0.0.1:1 }]\n  routes:\n")
	for i := range n {
		fmt.Fprintf(&y, "    - { name: r%d, hostnames: [h%d.example.com], matches: [{ path: { prefix: /api/v%d/svc%d }, method: GET }, { path: { exact: /svc%d/health } }, { path: { prefix: /svc%d }, headers: [{ name: X-Tenant, exact: t%d }] }], backends: [{ service: app }] }\n",
			i, i%10, i%3, i, i, i, i%7)
	}
	y.WriteString("upstreams: [{ service: app, endpoints: [{ address: 127.0.0.1:2 }] }]\n")
	cfg, err := config.Parse("bench.yaml", []byte(y.String()))
	if err != nil {
		b.Fatal(err)
	}
	return edge.Compile(cfg.Edge.Routes)
}

// BenchmarkMatch: the cost of matching one request against 10 and 1,000
// routes (the last route's, the worst case of a linear table).
func BenchmarkMatch(b *testing.B) {
	for _, n := range []int{10, 1000} {
		b.Run(fmt.Sprint(n, "_routes"), func(b *testing.B) {
			tab := benchTable(b, n)
			last := n - 1
			path := fmt.Sprintf("/api/v%d/svc%d/items/42", last%3, last)
			r := httptest.NewRequest("GET", "http://h9.example.com"+path, nil)
			host := edge.HostOf(r.Host)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				m, _ := tab.Match(host, path, r)
				if m.Route == nil {
					b.Fatal("no match")
				}
			}
		})
	}
}
