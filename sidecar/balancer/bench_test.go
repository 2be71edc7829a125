package balancer

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkPick measures Pick+Done of every policy over 3, 100 and 1000
// endpoints, from all Ps at once. Hash policies get a request carrying
// their key.
func BenchmarkPick(b *testing.B) {
	for _, tp := range allPolicies(b) {
		b.Run(tp.name, func(b *testing.B) {
			for _, n := range []int{3, 100, 1000} {
				b.Run(fmt.Sprint(n), func(b *testing.B) {
					s := bigSnapshot(n)
					for i := range s.Endpoints {
						s.Endpoints[i].Weight = 1 + i%4
					}
					bal := New("svc", tp.p, Options{})
					bal.Update(s)
					r := keyedRequest(7)
					b.ReportAllocs()
					b.ResetTimer()
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							p, _ := bal.Pick(r)
							p.Done(Result{Status: 200, Latency: time.Millisecond})
						}
					})
				})
			}
		})
	}
}

// BenchmarkBuild measures building a picker, which happens on every
// discovery update: weighted_round_robin computes its schedule and the hash
// policies their Maglev table.
func BenchmarkBuild(b *testing.B) {
	for _, name := range []string{"weighted_round_robin", "consistent_hash", "least_response_time"} {
		p, _ := Lookup(name)
		b.Run(name, func(b *testing.B) {
			for _, n := range []int{3, 100, 1000} {
				b.Run(fmt.Sprint(n), func(b *testing.B) {
					s := bigSnapshot(n)
					for i := range s.Endpoints {
						s.Endpoints[i].Weight = 1 + i%4
					}
					bal := New("svc", p, Options{})
					bal.Update(s)
					list := make([]*Endpoint, 0, n)
					for _, e := range s.Endpoints {
						list = append(list, bal.endpoints[e.ID])
					}
					b.ReportAllocs()
					b.ResetTimer()
					for b.Loop() {
						p.Build(list)
					}
				})
			}
		})
	}
}
