package balancer

import (
	"container/heap"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func TestLeastResponseTimeDefaults(t *testing.T) {
	tests := []struct {
		p                LeastResponseTime
		decay, slowStart time.Duration
	}{
		{LeastResponseTime{}, DefaultDecay, DefaultSlowStart},
		{LeastResponseTime{Decay: time.Second, SlowStart: time.Minute}, time.Second, time.Minute},
		{LeastResponseTime{Decay: -1, SlowStart: -1}, DefaultDecay, 0},
	}
	for _, tt := range tests {
		if d, s := tt.p.withDefaults(); d != tt.decay || s != tt.slowStart {
			t.Errorf("%+v: defaults = %v, %v; want %v, %v", tt.p, d, s, tt.decay, tt.slowStart)
		}
	}
}

// observe records a response of rtt from endpoint id at the current time.
func observe(t *testing.T, b *Balancer, id string, rtt time.Duration) {
	t.Helper()
	byID(t, b, id).state.latency.observe(rtt, now())
}

func lrtPicker(b *Balancer) *leastResponseTimePicker {
	return b.picker.Load().Picker.(*leastResponseTimePicker)
}

func TestLeastResponseTimePrefersFastEndpoints(t *testing.T) {
	clock := useFakeClock(t)
	seedRand(t, 1)
	b := newBalancer(t, LeastResponseTime{SlowStart: -1}, snapshot(3))
	latency := map[string]time.Duration{"e0": 5 * time.Millisecond, "e1": 20 * time.Millisecond, "e2": 80 * time.Millisecond}
	// One request at a time, 10ms apart, for about a minute.
	counts := map[string]int{}
	for range 6000 {
		clock.advance(10 * time.Millisecond)
		p := mustPick(t, b, Request{})
		counts[p.Endpoint.ID]++
		clock.advance(latency[p.Endpoint.ID])
		p.Done(Result{Status: 200, Latency: latency[p.Endpoint.ID]})
	}
	t.Logf("picks: %v", counts)
	if counts["e0"] < 3000 {
		t.Errorf("fastest e0 got %d of 6000 picks, want most", counts["e0"])
	}
	if counts["e0"] <= counts["e1"] || counts["e1"] <= counts["e2"] {
		t.Errorf("picks %v are not ordered by speed", counts)
	}
	// The slow endpoint is probed again and again as its estimate decays,
	// never starved: at least every few seconds.
	if counts["e2"] < 10 {
		t.Errorf("slowest e2 got %d picks in a minute, want it probed every few seconds", counts["e2"])
	}
}

func TestLeastResponseTimeIdleEndpointIsProbed(t *testing.T) {
	clock := useFakeClock(t)
	seedRand(t, 2)
	b := newBalancer(t, LeastResponseTime{SlowStart: -1}, snapshot(2))
	observe(t, b, "e0", 5*time.Millisecond)
	observe(t, b, "e1", 500*time.Millisecond)
	// e1 is 100 times slower: it loses every comparison until its estimate
	// has decayed below e0's, ln(100) ≈ 4.6 Decays later.
	var first time.Duration
	start := clock.now()
	for first == 0 {
		clock.advance(10 * time.Millisecond)
		p := mustPick(t, b, Request{})
		if p.Endpoint.ID == "e1" {
			first = clock.since(start)
		}
		p.Done(Result{Status: 200, Latency: 5 * time.Millisecond})
		if clock.since(start) > time.Minute {
			t.Fatal("idle e1 was not probed within a minute")
		}
	}
	want := time.Duration(math.Log(100) * float64(DefaultDecay))
	if first < want-time.Second || first > want+time.Second {
		t.Errorf("idle e1 first probed after %v, want about %v", first, want)
	}
}

func TestLeastResponseTimeNewEndpointIsNeutral(t *testing.T) {
	clock := useFakeClock(t)
	seedRand(t, 3)
	b := newBalancer(t, LeastResponseTime{SlowStart: -1}, snapshot(3))
	observe(t, b, "e0", 10*time.Millisecond)
	observe(t, b, "e1", 20*time.Millisecond)
	observe(t, b, "e2", 30*time.Millisecond)
	b.Update(snapshot(4)) // e3 joins
	e3 := byID(t, b, "e3")
	p := lrtPicker(b)
	if got, ok := p.estimate(e3, clock.now()); !ok || !near(time.Duration(got), 20*time.Millisecond) {
		t.Fatalf("new endpoint's estimate = %v, %v; want the mean, 20ms", time.Duration(got), ok)
	}
	// Neither flooded (as an estimate of 0 would) nor starved (infinity):
	// against e1, also at 20ms, it is an even match.
	a, c := p.costs(e3, byID(t, b, "e1"), clock.now())
	if a != c {
		t.Errorf("costs against an equal endpoint: %v and %v, want equal", a, c)
	}
	// While its first request is out, it is not sent more than its share.
	held := 0
	for range 40 {
		if mustPick(t, b, Request{}).Endpoint == e3 {
			held++
		}
	}
	if held == 0 || held > 15 {
		t.Errorf("new endpoint got %d of 40 requests before answering any, want a fair share (about 10)", held)
	}
	// Its neutral estimate decays like any other, so it cannot be stranded.
	if got, _ := p.estimate(e3, clock.now().Add(DefaultDecay)); !near(time.Duration(got), time.Duration(20e6*math.Exp(-1))) {
		t.Errorf("neutral estimate after one Decay = %v, want 20ms/e", time.Duration(got))
	}
	// Its first response replaces the neutral estimate.
	clock.advance(time.Millisecond)
	e3.state.latency.observe(50*time.Millisecond, clock.now())
	if got, _ := p.estimate(e3, clock.now()); time.Duration(got) != 50*time.Millisecond {
		t.Errorf("estimate after the first response = %v, want 50ms", time.Duration(got))
	}
}

func TestLeastResponseTimeWithoutEstimatesCountsInFlight(t *testing.T) {
	useFakeClock(t)
	seedRand(t, 4)
	b := newBalancer(t, LeastResponseTime{}, snapshot(3))
	byID(t, b, "e0").state.inflight.Add(5)
	if counts := countPicks(t, b, 1000, Request{}); counts["e0"] != 0 {
		t.Errorf("busy e0 got %d picks while no endpoint has an estimate, want 0", counts["e0"])
	}
}

func TestLeastResponseTimeSlowStart(t *testing.T) {
	clock := useFakeClock(t)
	seedRand(t, 5)
	b := newBalancer(t, LeastResponseTime{}, snapshot(2))
	clock.advance(time.Minute) // e0 and e1 are old
	b.Update(snapshot(3))      // e2 is new
	e2 := byID(t, b, "e2")
	p := lrtPicker(b)
	for _, tt := range []struct {
		after time.Duration
		want  float64
	}{{0, 0.1}, {DefaultSlowStart / 2, 0.55}, {DefaultSlowStart, 1}, {time.Hour, 1}} {
		if got := p.weight(e2, clock.now().Add(tt.after)); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("weight %v after joining = %v, want %v", tt.after, got, tt.want)
		}
	}
	if got := p.weight(byID(t, b, "e0"), clock.now()); got != 1 {
		t.Errorf("old endpoint's weight = %v, want 1", got)
	}

	// With equal latencies, the new endpoint's share ramps up to a third:
	// two requests every millisecond, each answered in 10ms.
	for _, id := range []string{"e0", "e1", "e2"} {
		observe(t, b, id, 10*time.Millisecond)
	}
	shares := make([]float64, 7) // by second since e2 joined
	for sec := range shares {
		n := 0
		for range 1000 {
			clock.advance(time.Millisecond)
			p1, p2 := mustPick(t, b, Request{}), mustPick(t, b, Request{})
			for _, p := range []Pick{p1, p2} {
				if p.Endpoint == e2 {
					n++
				}
				p.Done(Result{Status: 200, Latency: 10 * time.Millisecond})
			}
		}
		shares[sec] = float64(n) / 2000
	}
	t.Logf("new endpoint's share by second since it joined: %.3f", shares)
	if shares[0] > 0.1 {
		t.Errorf("share in the first second = %.3f, want small", shares[0])
	}
	if last := shares[len(shares)-1]; last < 0.28 {
		t.Errorf("share after slow start = %.3f, want about 1/3", last)
	}
	if shares[3] <= shares[0]+0.05 {
		t.Errorf("share did not ramp up: %.3f", shares)
	}
}

func TestLeastResponseTimeFloodGuard(t *testing.T) {
	clock := useFakeClock(t)
	seedRand(t, 6)
	b := newBalancer(t, LeastResponseTime{SlowStart: -1}, snapshot(3))
	observe(t, b, "e2", 80*time.Millisecond)
	clock.advance(time.Minute) // e2 idle for 30 Decays: its estimate is ~0
	observe(t, b, "e0", time.Millisecond)
	observe(t, b, "e1", time.Millisecond)
	// 10,000 requests a second for the 80ms e2 takes to answer; e0 and e1
	// answer in 1ms.
	r := newSim(b, clock, 7)
	r.latency = func(id string) time.Duration {
		if id == "e2" {
			return 80 * time.Millisecond
		}
		return time.Millisecond
	}
	counts := r.run(10000, 80*time.Millisecond)
	t.Logf("picks while e2's first answer is out: %v", counts)
	if counts["e2"] > 200 {
		t.Errorf("idle e2 got %d of %d requests before answering one, want it bounded", counts["e2"], r.picks)
	}
	if counts["e2"] == 0 {
		t.Error("idle e2 was not probed")
	}
}

// TestLeastResponseTimeSimulation runs backends of 5ms, 20ms and 80ms
// under Poisson traffic on a simulated clock, then makes the slow one fast.
func TestLeastResponseTimeSimulation(t *testing.T) {
	clock := useFakeClock(t)
	seedRand(t, 8)
	b := newBalancer(t, LeastResponseTime{}, snapshot(3))
	s := newSim(b, clock, 9)
	slow := 80 * time.Millisecond
	s.latency = func(id string) time.Duration {
		return map[string]time.Duration{"e0": 5 * time.Millisecond, "e1": 20 * time.Millisecond, "e2": slow}[id]
	}
	const rps = 500
	s.run(rps, 10*time.Second) // warm up
	counts := s.run(rps, 20*time.Second)
	total := float64(s.picks)
	t.Logf("shares over 20s at %d rps: e0 %.3f, e1 %.3f, e2 %.4f", rps,
		float64(counts["e0"])/total, float64(counts["e1"])/total, float64(counts["e2"])/total)
	if float64(counts["e0"]) < 0.5*total {
		t.Errorf("the 5ms e0 got %.2f of the traffic, want most", float64(counts["e0"])/total)
	}
	for _, id := range []string{"e0", "e1", "e2"} {
		if counts[id] == 0 {
			t.Errorf("%s got no traffic in 20s", id)
		}
	}

	// e2 turns fast: within a few seconds it has a share like e0's.
	slow = 5 * time.Millisecond
	var recovered time.Duration
	for at := 500 * time.Millisecond; at <= 10*time.Second; at += 500 * time.Millisecond {
		c := s.run(rps, 500*time.Millisecond)
		if recovered == 0 && float64(c["e2"]) >= 0.8*float64(c["e0"]) {
			recovered = at
			t.Logf("e2 recovered within %v: last 500ms %v", at, c)
		}
	}
	if recovered == 0 || recovered > 5*time.Second {
		t.Errorf("e2 took %v to win back its share after turning fast, want a few seconds", recovered)
	}
}

// sim drives a Balancer with Poisson arrivals on a fake clock; each request
// ends after its endpoint's latency.
type sim struct {
	b       *Balancer
	clock   *fakeClock
	rng     *rand.Rand
	latency func(id string) time.Duration
	pending completions
	picks   int
}

func newSim(b *Balancer, clock *fakeClock, seed uint64) *sim {
	return &sim{b: b, clock: clock, rng: rand.New(rand.NewPCG(seed, seed))}
}

type completion struct {
	at   time.Time
	pick Pick
	rtt  time.Duration
}

type completions []completion

func (c completions) Len() int           { return len(c) }
func (c completions) Less(i, j int) bool { return c[i].at.Before(c[j].at) }
func (c completions) Swap(i, j int)      { c[i], c[j] = c[j], c[i] }
func (c *completions) Push(x any)        { *c = append(*c, x.(completion)) }
func (c *completions) Pop() any {
	old := *c
	x := old[len(old)-1]
	*c = old[:len(old)-1]
	return x
}

// run sends rps requests a second for d and returns the picks by ID.
func (s *sim) run(rps float64, d time.Duration) map[string]int {
	counts := map[string]int{}
	s.picks = 0
	end := s.clock.now().Add(d)
	next := s.clock.now()
	for {
		next = next.Add(time.Duration(s.rng.ExpFloat64() / rps * float64(time.Second)))
		if next.After(end) {
			break
		}
		for len(s.pending) > 0 && !s.pending[0].at.After(next) {
			c := heap.Pop(&s.pending).(completion)
			s.clock.set(c.at)
			c.pick.Done(Result{Status: 200, Latency: c.rtt})
		}
		s.clock.set(next)
		p, err := s.b.Pick(Request{})
		if err != nil {
			panic(fmt.Sprint("sim: ", err))
		}
		counts[p.Endpoint.ID]++
		s.picks++
		rtt := s.latency(p.Endpoint.ID)
		heap.Push(&s.pending, completion{at: next.Add(rtt), pick: p, rtt: rtt})
	}
	s.clock.set(end)
	return counts
}
