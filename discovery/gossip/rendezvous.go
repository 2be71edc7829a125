package gossip

import (
	"cmp"
	"slices"
)

// Rank orders nodes by rendezvous (highest random weight) hashing of
// key: every member that knows the same nodes ranks them the same way,
// without talking, and removing a node moves only the keys it ranked
// first. Use it to choose a key's owner among members (Rank(...)[0]).
// It returns a new slice.
func Rank(key string, nodes []string) []string {
	type scored struct {
		node  string
		score uint64
	}
	ss := make([]scored, len(nodes))
	for i, n := range nodes {
		ss[i] = scored{n, RendezvousScore(n, key)}
	}
	slices.SortFunc(ss, func(a, b scored) int { return cmp.Compare(b.score, a.score) })
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.node
	}
	return out
}

// RendezvousScore scores node for key: FNV-1a over both, finished with
// splitmix64's mixer so that similar names spread.
func RendezvousScore(node, key string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(node); i++ {
		h = (h ^ uint64(node[i])) * 1099511628211
	}
	h *= 1099511628211 // a NUL between the two
	for i := 0; i < len(key); i++ {
		h = (h ^ uint64(key[i])) * 1099511628211
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	return h ^ h>>31
}
