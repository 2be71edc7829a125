package balancer

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"sort"
	"strings"
)

// randUint64 is the source of randomness of every policy; tests replace it
// with a seeded generator (and restore it with t.Cleanup).
var randUint64 = rand.Uint64

// randn returns a random int in [0, n), n > 0, from one call to
// randUint64 (Lemire's multiply-shift: the bias is below n/2^64).
func randn(n int) int { return int(randn64(uint64(n))) }

// randn64 returns a random uint64 in [0, n), n > 0.
func randn64(n uint64) uint64 {
	hi, _ := bits.Mul64(randUint64(), n)
	return hi
}

// MaxWeight is the largest endpoint weight policies honour; larger weights
// count as MaxWeight (so that sums of weights cannot overflow).
const MaxWeight = 1 << 32

// weight returns ep's weight as policies use it: at least 1, at most
// MaxWeight.
func weight(ep *Endpoint) uint64 { return uint64(min(max(ep.Weight, 1), MaxWeight)) }

// randPair returns two distinct random indices in [0, n), n >= 2, for the
// power of two choices.
func randPair(n int) (i, j int) {
	i = randn(n)
	j = randn(n - 1)
	if j >= i {
		j++
	}
	return i, j
}

// policies maps every balancer name accepted in configuration to its Policy
// with default settings.
var policies = map[string]Policy{
	RoundRobin{}.Name():         RoundRobin{},
	WeightedRoundRobin{}.Name(): WeightedRoundRobin{},
	Random{}.Name():             Random{},
	LeastConnections{}.Name():   LeastConnections{},
	LeastResponseTime{}.Name():  LeastResponseTime{},
	ConsistentHash{}.Name():     ConsistentHash{},
	IPHash{}.Name():             IPHash{},
}

// DefaultPolicy is the policy used when an upstream names none.
const DefaultPolicy = "round_robin"

// Lookup returns the policy registered under name, with default settings.
func Lookup(name string) (Policy, bool) {
	p, ok := policies[name]
	return p, ok
}

// Names returns the names of all policies, sorted.
func Names() []string {
	names := make([]string, 0, len(policies))
	for n := range policies {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// PolicyOptions are the per-upstream settings of a policy that come from
// configuration. The zero value means every default.
type PolicyOptions struct {
	// HashOn is what consistent_hash hashes: "source_ip", "path",
	// "header:NAME" or "cookie:NAME" (see ValidHashOn). Empty means
	// source_ip. Only consistent_hash accepts it, and ip_hash accepts
	// "source_ip", which it always hashes on; any other policy refuses it.
	HashOn string
}

// NewPolicy returns the policy called name configured by o. The error
// names the policy and, for an unknown name or hash_on, what is allowed.
func NewPolicy(name string, o PolicyOptions) (Policy, error) {
	p, ok := Lookup(name)
	if !ok {
		return nil, fmt.Errorf("balancer: unknown policy %q, want one of %s", name, strings.Join(Names(), ", "))
	}
	if o.HashOn == "" {
		return p, nil
	}
	switch name {
	case ConsistentHash{}.Name():
		if err := ValidHashOn(o.HashOn); err != nil {
			return nil, fmt.Errorf("balancer: %s: %w", name, err)
		}
		return ConsistentHash{HashOn: o.HashOn}, nil
	case IPHash{}.Name():
		if o.HashOn != hashOnSourceIP {
			return nil, fmt.Errorf("balancer: %s: hash_on %q: ip_hash always hashes on %s; use consistent_hash to hash on anything else",
				name, o.HashOn, hashOnSourceIP)
		}
		return p, nil
	default:
		return nil, fmt.Errorf("balancer: %s: hash_on %q: hash_on applies only to consistent_hash and ip_hash", name, o.HashOn)
	}
}

// ValidHashOn reports whether s is a valid hash_on: "source_ip", "path",
// "header:NAME" (NAME an HTTP header field name) or "cookie:NAME" (NAME a
// cookie name). The empty string is valid and means source_ip.
func ValidHashOn(s string) error {
	_, err := parseHashOn(s)
	return err
}
