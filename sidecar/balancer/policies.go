package balancer

import "sort"

// policies maps every balancer name accepted in configuration to its Policy.
var policies = map[string]Policy{
	RoundRobin{}.Name(): RoundRobin{},
}

// DefaultPolicy is the policy used when an upstream names none.
const DefaultPolicy = "round_robin"

// Lookup returns the policy registered under name.
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
