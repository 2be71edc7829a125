package ratelimit

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"
)

// windowStart is the start of a window of every limit used here (their
// windows divide a second evenly).
var windowStart = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// TestClusterAloneIsExact: one edge alone admits exactly the quota in a
// window, and the sliding window lets requests in again as the previous
// window's weight decays.
func TestClusterAloneIsExact(t *testing.T) {
	clk := &fakeClock{t: windowStart}
	c := NewCluster(Limit{Rate: 10, Burst: 10}, 100, clk.now) // 10 per second
	admitted := 0
	for range 30 {
		if c.Allow("k").Allowed {
			admitted++
		}
	}
	if admitted != 10 {
		t.Fatalf("%d of 30 admitted at once, want the burst of 10", admitted)
	}
	d := c.Allow("k")
	if d.Allowed || d.RetryAfter < 900*time.Millisecond || d.RetryAfter > 1100*time.Millisecond {
		t.Fatalf("over the quota: %+v, want refused until about the next window", d)
	}
	clk.add(time.Second + 500*time.Millisecond) // half-way through the next window: 10 × 0.5 still count
	admitted = 0
	for range 30 {
		if c.Allow("k").Allowed {
			admitted++
		}
	}
	if admitted != 5 {
		t.Fatalf("half-way through the next window: %d admitted, want 5", admitted)
	}
	if c.Allow("other").Allowed != true {
		t.Fatal("another key shares the first one's count")
	}
}

// exchange hands every cluster's changed counts to every other.
func exchange(edges []*Cluster) {
	for i, from := range edges {
		counts := from.Changed()
		for j, to := range edges {
			if i != j {
				to.Merge(fmt.Sprint(i), counts)
			}
		}
	}
}

// TestClusterSumsTheEdges: with counts exchanged after every request,
// three edges together admit exactly the quota.
func TestClusterSumsTheEdges(t *testing.T) {
	clk := &fakeClock{t: windowStart}
	var edges []*Cluster
	for range 3 {
		c := NewCluster(Limit{Rate: 100, Burst: 100}, 100, clk.now)
		c.SetView(View{Edges: 3}) // no pacing: exchanges are instant here
		edges = append(edges, c)
	}
	admitted := 0
	for i := range 300 {
		if edges[i%3].Allow("k").Allowed {
			admitted++
		}
		exchange(edges)
	}
	if admitted != 100 {
		t.Fatalf("%d of 300 admitted over three edges, want exactly 100", admitted)
	}
}

// TestClusterOvershootWithinBound plays three edges whose counts reach
// each other only every sync interval plus delay, under random arrival
// orders and rates far above the limit, and checks that each window
// admits at most the quota plus Bound, and in steady state at least the
// quota less what pacing holds back.
func TestClusterOvershootWithinBound(t *testing.T) {
	const (
		edgesN = 3
		tick   = time.Millisecond
		sync   = 150 * time.Millisecond // interval 100 ms + delay 50 ms
	)
	l := Limit{Rate: 100, Burst: 100}
	pace := int(l.Rate * sync.Seconds())
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 1))
		clk := &fakeClock{t: windowStart}
		var edges []*Cluster
		for range edgesN {
			c := NewCluster(l, 100, clk.now)
			c.SetView(View{Edges: edgesN, Pace: pace})
			edges = append(edges, c)
		}
		bound := edges[0].Bound()
		if bound != (edgesN-1)*pace {
			t.Fatalf("Bound() = %d, want (N-1) × pace = %d", bound, (edgesN-1)*pace)
		}
		perWindow := map[int64]int{}
		// pending holds each edge's counts until they are delivered.
		type delivery struct {
			at     time.Time
			from   int
			counts []Count
		}
		var pending []delivery
		nextSync := windowStart.Add(sync)
		for step := 0; step < 3000; step++ { // three seconds
			now := clk.now()
			for len(pending) > 0 && !pending[0].at.After(now) {
				d := pending[0]
				pending = pending[1:]
				for j, to := range edges {
					if j != d.from {
						to.Merge(fmt.Sprint(d.from), d.counts)
					}
				}
			}
			if !now.Before(nextSync) {
				for i, c := range edges {
					pending = append(pending, delivery{at: now.Add(sync - 100*time.Millisecond), from: i, counts: c.Changed()})
				}
				nextSync = now.Add(100 * time.Millisecond)
			}
			for range rng.IntN(4) { // 0-3 requests a millisecond: about 1,500/s
				if edges[rng.IntN(edgesN)].Allow("k").Allowed {
					perWindow[now.UnixNano()/int64(time.Second)]++
				}
			}
			clk.add(tick)
		}
		for w, n := range perWindow {
			if n > l.Burst+bound {
				t.Fatalf("seed %d, window %d: %d admitted, more than quota %d + bound %d", seed, w, n, l.Burst, bound)
			}
		}
		if first := perWindow[windowStart.Unix()]; first < l.Burst/2 {
			t.Fatalf("seed %d: only %d admitted in the first window of a quota of %d", seed, first, l.Burst)
		}
	}
}

// TestClusterPaceAndPartition: with other edges sharing the limit, one
// edge admits Pace requests at once; local_share enforces this edge's
// share alone; fail_closed refuses all.
func TestClusterPaceAndPartition(t *testing.T) {
	clk := &fakeClock{t: windowStart}
	c := NewCluster(Limit{Rate: 100, Burst: 100}, 100, clk.now)
	c.SetView(View{Edges: 3, Pace: 15})
	count := func(n int, key string) (admitted int) {
		for range n {
			if c.Allow(key).Allowed {
				admitted++
			}
		}
		return admitted
	}
	if got := count(100, "paced"); got != 15 {
		t.Fatalf("paced burst: %d admitted, want 15", got)
	}
	clk.add(100 * time.Millisecond) // 10 more tokens at 100/s
	if got := count(100, "paced"); got != 10 {
		t.Fatalf("after 100 ms: %d admitted, want 10", got)
	}
	c.SetView(View{Edges: 3, Share: 1.0 / 3})
	if got := count(100, "shared"); got != 33 {
		t.Fatalf("local share of a third: %d admitted, want 33", got)
	}
	c.SetView(View{Edges: 3, Closed: true})
	if d := c.Allow("closed"); d.Allowed || d.RetryAfter <= 0 {
		t.Fatalf("fail_closed: %+v, want refused with a Retry-After", d)
	}
}

// TestClusterActiveAndMerge: Active lists the keys counted in this or
// the last window; Merge keeps an edge's newest count and ignores
// windows that have passed.
func TestClusterActiveAndMerge(t *testing.T) {
	clk := &fakeClock{t: windowStart}
	c := NewCluster(Limit{Rate: 10, Burst: 10}, 100, clk.now)
	c.Allow("a")
	c.Allow("a")
	c.Allow("b")
	w, _ := c.windowAt(clk.now())
	if got := c.Active(); len(got) != 2 {
		t.Fatalf("Active() = %+v, want keys a and b", got)
	}
	if got := c.Changed(); len(got) != 2 || len(c.Changed()) != 0 {
		t.Fatalf("Changed() = %+v, then more: want both keys once", got)
	}
	h := KeyHash("a")
	c.Merge("x", []Count{{Hash: h, Window: w, Cur: 5}})
	c.Merge("x", []Count{{Hash: h, Window: w - 1, Cur: 9}}) // older: ignored
	c.Merge("y", []Count{{Hash: h, Window: w - 5, Cur: 9}}) // passed: ignored
	if cur, prev := c.peerSum(h, w); cur != 5 || prev != 0 {
		t.Fatalf("peer sum %d/%d, want 5/0", cur, prev)
	}
	admitted := 0
	for range 10 {
		if c.Allow("a").Allowed {
			admitted++
		}
	}
	if admitted != 3 { // 10 - own 2 - x's 5
		t.Fatalf("%d admitted with 7 counted, want 3", admitted)
	}
	clk.add(3 * time.Second)
	if got := c.Active(); len(got) != 0 {
		t.Fatalf("Active() three windows later = %+v, want none", got)
	}
	c.Changed()
	if len(c.peers) != 0 {
		t.Fatalf("peers' counts of passed windows kept: %v", c.peers)
	}
}

func TestCountsCodec(t *testing.T) {
	in := []Count{{Hash: 1, Window: 123456789, Cur: 7, Prev: 0}, {Hash: 1 << 63, Window: -1, Cur: 1 << 31, Prev: 3}}
	b := AppendCounts([]byte("x"), in)[1:]
	out, rest, err := ReadCounts(append(b, "tail"...))
	if err != nil || !reflect.DeepEqual(out, in) || string(rest) != "tail" {
		t.Fatalf("round trip: %+v %q %v", out, rest, err)
	}
	for _, bad := range [][]byte{nil, {2, 0}, b[:len(b)-1], {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 0}} {
		if _, _, err := ReadCounts(bad); err == nil {
			t.Errorf("ReadCounts(%x) accepted garbage", bad)
		}
	}
}

func FuzzReadCounts(f *testing.F) {
	f.Add(AppendCounts(nil, []Count{{Hash: 9, Window: 5, Cur: 1, Prev: 2}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		counts, rest, err := ReadCounts(b)
		if err != nil {
			return
		}
		again, _, err := ReadCounts(AppendCounts(nil, counts))
		if err != nil || !reflect.DeepEqual(again, counts) || len(rest) > len(b) {
			t.Fatalf("counts %+v do not round-trip: %v", counts, err)
		}
	})
}

func BenchmarkClusterAllow(b *testing.B) {
	c := NewCluster(Limit{Rate: 1e9, Burst: 1 << 30}, 100000, nil)
	c.SetView(View{Edges: 3, Pace: 1 << 20})
	for i := range 3 {
		c.Merge(fmt.Sprint(i), []Count{{Hash: KeyHash("client"), Window: time.Now().UnixNano() / int64(Window(c.Limit())), Cur: 1}})
	}
	b.ReportAllocs()
	for b.Loop() {
		c.Allow("client")
	}
}
