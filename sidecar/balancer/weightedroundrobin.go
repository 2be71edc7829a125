package balancer

import (
	"math"
	"sync/atomic"
)

// MaxSchedule bounds the length of a weighted_round_robin schedule. When
// the weights, reduced by their greatest common divisor, still add up to
// more, they are scaled down in proportion (each staying at least 1), so
// shares are kept to within about n/MaxSchedule.
const MaxSchedule = 1 << 16

// WeightedRoundRobin sends each endpoint a share of requests proportional
// to its weight, interleaved smoothly with nginx's algorithm: weights 5:1:1
// give a,a,b,a,c,a,a rather than a,a,a,a,a,b,c.
//
// The schedule is computed once per picker, in Build, whose cost is
// O(n·min(Σweight, MaxSchedule)); Pick walks it with an atomic counter
// from a random start, so it takes no lock. Endpoints that are unavailable
// or already tried are skipped as by every policy, their turns going to the
// next endpoint in snapshot order.
type WeightedRoundRobin struct{}

// Name returns "weighted_round_robin".
func (WeightedRoundRobin) Name() string { return "weighted_round_robin" }

// Build returns a smooth weighted round-robin picker over endpoints.
func (WeightedRoundRobin) Build(endpoints []*Endpoint) Picker {
	p := &weightedRoundRobinPicker{endpoints: endpoints, schedule: smoothSchedule(scheduleWeights(endpoints))}
	p.next.Store(randUint64())
	return p
}

type weightedRoundRobinPicker struct {
	endpoints []*Endpoint
	schedule  []uint32 // indices into endpoints, one period of the smooth sequence
	next      atomic.Uint64
}

func (p *weightedRoundRobinPicker) Pick(r Request) (Pick, error) {
	i := p.next.Add(1) - 1
	idx := int(p.schedule[i%uint64(len(p.schedule))])
	return choose(p.endpoints, idx, &r, now()).pick(), nil
}

// scheduleWeights returns the endpoints' weights reduced by their greatest
// common divisor and, when they still add up to more than MaxSchedule,
// scaled down in proportion with each kept at least 1.
func scheduleWeights(endpoints []*Endpoint) []int64 {
	w := make([]int64, len(endpoints))
	var g int64
	var sum float64
	for i, ep := range endpoints {
		w[i] = int64(weight(ep))
		g = gcd(g, w[i])
		sum += float64(w[i])
	}
	if sum/float64(g) <= MaxSchedule {
		for i := range w {
			w[i] /= g
		}
		return w
	}
	scale := MaxSchedule / sum
	g = 0
	for i := range w {
		w[i] = max(1, int64(math.Floor(float64(w[i])*scale)))
		g = gcd(g, w[i])
	}
	for i := range w {
		w[i] /= g
	}
	return w
}

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// smoothSchedule returns one period (Σw picks) of nginx's smooth weighted
// round robin over weights w: at each step every endpoint's current value
// grows by its weight, the largest (the first on ties) is picked and loses
// the total. After a period every current value is back to zero, so the
// period repeats exactly.
func smoothSchedule(w []int64) []uint32 {
	var total int64
	for _, x := range w {
		total += x
	}
	cur := make([]int64, len(w))
	schedule := make([]uint32, total)
	for s := range schedule {
		best := 0
		for i, x := range w {
			cur[i] += x
			if cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= total
		schedule[s] = uint32(best)
	}
	return schedule
}

var (
	_ Policy = WeightedRoundRobin{}
	_ Picker = (*weightedRoundRobinPicker)(nil)
)
