package gossip

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// BenchmarkPropagation measures how long an entry written on one member
// takes to be readable on every other member of a pool on loopback
// ("local" profile), by gossip alone: 1,000 entries written at 100 or
// 1,000 a second, as an edge begins sticky sessions. It reports the p50,
// p99 and maximum over the entries, for pools of 3 and 10 members.
// (Sticky sessions do not wait for it: their owners get them directly.)
func BenchmarkPropagation(b *testing.B) {
	for _, c := range []struct {
		members int
		every   time.Duration
	}{{3, 10 * time.Millisecond}, {3, time.Millisecond}, {10, 10 * time.Millisecond}, {10, time.Millisecond}} {
		n := c.members
		b.Run(fmt.Sprintf("members=%d/rate=%d", n, time.Second/c.every), func(b *testing.B) {
			first := startPool(b, testConfig("m0"))
			pools := []*Pool{first}
			for i := 1; i < n; i++ {
				pools = append(pools, startPool(b, testConfig(fmt.Sprintf("m%d", i), first.Addr())))
			}
			meshtest.WaitFor(b, 30*time.Second, "every member to see every other", func() bool {
				for _, p := range pools {
					if p.NumMembers() != n {
						return false
					}
				}
				return true
			})
			var lat []time.Duration
			for iter := 0; iter < b.N; iter++ {
				lat = append(lat, propagate(b, pools, fmt.Sprintf("sticky/bench-%d/", iter), 1000, c.every)...)
			}
			slices.Sort(lat)
			at := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))]) / float64(time.Millisecond) }
			b.ReportMetric(at(0.5), "p50-ms")
			b.ReportMetric(at(0.99), "p99-ms")
			b.ReportMetric(at(1), "max-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// propagate writes count entries under prefix on pools[0], one every
// every, and returns for each how long it took until every other member
// could read it.
func propagate(b *testing.B, pools []*Pool, prefix string, count int, every time.Duration) []time.Duration {
	var mu sync.Mutex
	written := make(map[string]time.Time, count)
	last := make(map[string]time.Time, count)
	var wg sync.WaitGroup
	done := make(chan struct{})
	for _, p := range pools[1:] {
		signal, cancel := p.Store().Subscribe(prefix)
		wg.Go(func() {
			defer cancel()
			seen := map[string]bool{}
			for len(seen) < count {
				select {
				case <-signal:
				case <-done:
					return
				}
				now := time.Now()
				for _, e := range p.Store().List(prefix) {
					if seen[e.Key] {
						continue
					}
					seen[e.Key] = true
					mu.Lock()
					if now.After(last[e.Key]) {
						last[e.Key] = now
					}
					mu.Unlock()
				}
			}
		})
	}
	for i := range count {
		key := fmt.Sprintf("%s%04d", prefix, i)
		mu.Lock()
		written[key] = time.Now()
		mu.Unlock()
		if err := pools[0].Store().Set(key, []byte("app-1"), SetOptions{TTL: time.Hour}); err != nil {
			b.Fatal(err)
		}
		time.Sleep(every)
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(60 * time.Second):
		close(done)
		<-finished
		b.Fatalf("after 60 s, not every member had every entry")
	}
	out := make([]time.Duration, 0, count)
	for key, at := range written {
		out = append(out, last[key].Sub(at))
	}
	return out
}
