package aggregate

import (
	"testing"

	"github.com/sidemesh/sidemesh/sidecar/config"
)

// BenchmarkHandler: the aggregation's own cost, three legs answered at
// once in process (goroutines, leg requests, recording, merge).
func BenchmarkHandler(b *testing.B) {
	h, _ := build(b, config.Aggregate{Legs: []config.Leg{
		{Name: "user", Service: "users", Path: "/users/1", Required: true},
		{Name: "orders", Service: "orders", Path: "/orders?user=1", Required: true},
		{Name: "recs", Service: "recs", Path: "/recs", Under: config.UnderTop},
	}}, 0, map[string]fakeService{
		"users":  jsonService(`{"id": 1, "name": "Ada", "email": "ada@example.com"}`, "Cache-Control", "max-age=60"),
		"orders": jsonService(`[{"id": 1, "total": 12.5}, {"id": 2, "total": 3}]`, "Cache-Control", "max-age=30"),
		"recs":   jsonService(`{"recs": [1, 2, 3, 4, 5]}`, "Cache-Control", "max-age=60"),
	}, nil)
	b.ReportAllocs()
	for b.Loop() {
		if w, err := serve(h); err != nil || w.Code != 200 {
			b.Fatal(w.Code, err)
		}
	}
}
