package balancer

// Random sends each request to an endpoint drawn at random in proportion to
// its weight. When the drawn endpoint is unavailable or already tried, the
// next one in snapshot order takes the request, as with every policy.
type Random struct{}

// Name returns "random".
func (Random) Name() string { return "random" }

// Build returns a weighted random picker over endpoints.
func (Random) Build(endpoints []*Endpoint) Picker {
	return &randomPicker{endpoints: endpoints, sampler: newSampler(endpoints)}
}

type randomPicker struct {
	endpoints []*Endpoint
	sampler   sampler
}

func (p *randomPicker) Pick(r Request) (Pick, error) {
	return choose(p.endpoints, p.sampler.one(), &r, now()).pick(), nil
}

// sampler draws endpoint indices at random in proportion to weight.
type sampler struct {
	n int
	// cumulative holds the running sums of the weights; nil when every
	// weight is the same and a uniform draw will do.
	cumulative []uint64
}

func newSampler(endpoints []*Endpoint) sampler {
	s := sampler{n: len(endpoints)}
	uniform := true
	for _, ep := range endpoints {
		uniform = uniform && weight(ep) == weight(endpoints[0])
	}
	if uniform {
		return s
	}
	s.cumulative = make([]uint64, len(endpoints))
	var sum uint64
	for i, ep := range endpoints {
		sum += weight(ep)
		s.cumulative[i] = sum
	}
	return s
}

// one returns the index of an endpoint drawn with probability
// proportional to its weight.
func (s *sampler) one() int {
	if s.cumulative == nil {
		return randn(s.n)
	}
	// x in [0, total): the first endpoint whose running sum exceeds it.
	x := randn64(s.cumulative[len(s.cumulative)-1])
	lo, hi := 0, len(s.cumulative)-1
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if s.cumulative[mid] > x {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// samplerRedraws is how many times two draws a second candidate equal to
// the first before it takes a uniformly random other one.
const samplerRedraws = 3

// two returns two distinct indices, n >= 2, each drawn in proportion to
// weight (the second among the others, approximately when one endpoint
// holds most of the weight), for the power of two choices: uniform draws
// would put an endpoint holding most of the weight in too few pairs for
// it to get its share.
func (s *sampler) two() (i, j int) {
	if s.cumulative == nil {
		return randPair(s.n)
	}
	i = s.one()
	for range samplerRedraws {
		if j = s.one(); j != i {
			return i, j
		}
	}
	if j = randn(s.n - 1); j >= i {
		j++
	}
	return i, j
}

var (
	_ Policy = Random{}
	_ Picker = (*randomPicker)(nil)
)
