package balancer

import (
	"fmt"
	"net/textproto"
	"slices"
	"strings"
)

// The hash_on forms of ConsistentHash.
const (
	hashOnSourceIP = "source_ip"
	hashOnPath     = "path"
	hashOnHeader   = "header:"
	hashOnCookie   = "cookie:"
)

// ConsistentHash sends requests with the same key to the same endpoint,
// and moves only about 1/n of the keys when one of n endpoints joins or
// leaves. The key is what HashOn names; a request without one (no such
// header, say, or a TCP connection hashed on a header) goes to an endpoint
// drawn at random in proportion to weight.
//
// Endpoints are placed in a Maglev lookup table (Eisenbud et al., NSDI
// 2016) with weights as in Envoy: an endpoint of weight 2 fills about twice
// as many of the table's slots. The table is built once per picker from the
// endpoints sorted by ID, and keys are hashed with FNV-1a and a 64-bit
// finaliser, so every sidecar that sees the same endpoints sends a key to
// the same endpoint. A retry walks the table forward from the key's slot
// to the next endpoint it has not tried, which is again the same on every
// sidecar; an unavailable endpoint's requests go to the next available one
// in ID order.
type ConsistentHash struct {
	// HashOn is what is hashed: "source_ip" (Request.ClientAddr), "path"
	// (the URL path), "header:NAME" (the first value of header NAME) or
	// "cookie:NAME" (the value of cookie NAME). Empty means source_ip.
	// NewPolicy validates it; if it is invalid anyway, no request has a key
	// and every request goes to a random endpoint.
	HashOn string
}

// Name returns "consistent_hash".
func (ConsistentHash) Name() string { return "consistent_hash" }

// Build returns a picker that hashes on p.HashOn over a Maglev table.
func (p ConsistentHash) Build(endpoints []*Endpoint) Picker {
	key, err := parseHashOn(p.HashOn)
	if err != nil {
		key = hashKey{kind: hashNothing}
	}
	return newHashPicker(endpoints, key)
}

// IPHash sends every request from one client address to the same endpoint:
// it is ConsistentHash on source_ip.
type IPHash struct{}

// Name returns "ip_hash".
func (IPHash) Name() string { return "ip_hash" }

// Build returns a picker that hashes on the client address.
func (IPHash) Build(endpoints []*Endpoint) Picker {
	return newHashPicker(endpoints, hashKey{kind: hashSourceIP})
}

type hashKind uint8

const (
	hashSourceIP hashKind = iota
	hashPath
	hashHeader
	hashCookie
	hashNothing // an invalid HashOn: every key is missing
)

// hashKey says where a request's key is found.
type hashKey struct {
	kind hashKind
	name string // canonical header key, or cookie name
}

// parseHashOn parses a hash_on value; "" means source_ip.
func parseHashOn(s string) (hashKey, error) {
	switch {
	case s == "" || s == hashOnSourceIP:
		return hashKey{kind: hashSourceIP}, nil
	case s == hashOnPath:
		return hashKey{kind: hashPath}, nil
	case strings.HasPrefix(s, hashOnHeader):
		name := s[len(hashOnHeader):]
		if !isToken(name) {
			return hashKey{}, fmt.Errorf("hash_on %q: %q is not a valid header name", s, name)
		}
		return hashKey{kind: hashHeader, name: textproto.CanonicalMIMEHeaderKey(name)}, nil
	case strings.HasPrefix(s, hashOnCookie):
		name := s[len(hashOnCookie):]
		if !isToken(name) {
			return hashKey{}, fmt.Errorf("hash_on %q: %q is not a valid cookie name", s, name)
		}
		return hashKey{kind: hashCookie, name: name}, nil
	default:
		return hashKey{}, fmt.Errorf("hash_on %q: want %s, %s, %sNAME or %sNAME",
			s, hashOnSourceIP, hashOnPath, hashOnHeader, hashOnCookie)
	}
}

// isToken reports whether s is a non-empty RFC 9110 token, the syntax of
// header field names and cookie names.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// hash returns the hash of r's key; false when r has none.
func (k hashKey) hash(r *Request) (uint64, bool) {
	switch k.kind {
	case hashSourceIP:
		a := r.ClientAddr()
		if !a.IsValid() {
			return 0, false
		}
		b := a.As16()
		return hashBytes(b[:]), true
	case hashNothing:
		return 0, false
	}
	if r.HTTP == nil {
		return 0, false
	}
	var v string
	switch k.kind {
	case hashPath:
		if r.HTTP.URL != nil {
			v = r.HTTP.URL.Path
		}
	case hashHeader:
		if vs := r.HTTP.Header[k.name]; len(vs) > 0 {
			v = vs[0]
		}
	case hashCookie:
		v, _ = cookieValue(r.HTTP.Header["Cookie"], k.name)
	}
	if v == "" {
		return 0, false
	}
	return hashString(v), true
}

// cookieValue returns the value of the first valid cookie called name in
// the Cookie header lines, parsed as net/http's Request.Cookie does (the
// fuzz test holds it to that) but without allocating.
func cookieValue(lines []string, name string) (string, bool) {
	for _, line := range lines {
		line = trimOWS(line)
		for len(line) > 0 {
			var part string
			part, line, _ = strings.Cut(line, ";")
			part = trimOWS(part)
			if part == "" {
				continue
			}
			n, v, _ := strings.Cut(part, "=")
			if trimOWS(n) != name {
				continue
			}
			if len(v) > 1 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			if validCookieValue(v) {
				return v, true
			}
		}
	}
	return "", false
}

// trimOWS trims ASCII whitespace as textproto.TrimString does.
func trimOWS(s string) string {
	for len(s) > 0 && isASCIISpace(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && isASCIISpace(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	return s
}

func isASCIISpace(b byte) bool { return b == ' ' || b == '\t' || b == '\n' || b == '\r' }

func validCookieValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if b := v[i]; b < 0x20 || b >= 0x7f || b == '"' || b == ';' || b == '\\' {
			return false
		}
	}
	return true
}

// FNV-1a, 64 bits.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// hashString returns the 64-bit FNV-1a hash of s passed through mix64.
// It is the same on every platform and in every process.
func hashString(s string) uint64 {
	h := uint64(fnvOffset)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return mix64(h)
}

// hashBytes is hashString for a byte slice.
func hashBytes(b []byte) uint64 {
	h := uint64(fnvOffset)
	for _, c := range b {
		h ^= uint64(c)
		h *= fnvPrime
	}
	return mix64(h)
}

// mix64 is MurmurHash3's 64-bit finaliser; it spreads FNV-1a's weak high
// bits over the whole word.
func mix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// Maglev table sizes: primes, the smaller used while it gives every
// endpoint at least maglevSlotsPerEndpoint slots (Envoy's guidance for an
// imbalance within about 1%).
const (
	maglevSmall            = 65537
	maglevLarge            = 655373
	maglevSlotsPerEndpoint = 100
	// maglevMaxWeight bounds the weights the table is built with (after
	// reduction by their GCD); finer ratios than this cannot show in a
	// table of maglevSmall slots anyway.
	maglevMaxWeight = 1 << 16
	// maglevMaxWalk bounds how far a retry walks the table looking for an
	// endpoint it has not tried before leaving it to choose.
	maglevMaxWalk = 256
)

const emptySlot = ^uint32(0)

type hashPicker struct {
	endpoints []*Endpoint // sorted by ID
	table     []uint32    // slot -> index into endpoints
	key       hashKey
}

func newHashPicker(endpoints []*Endpoint, key hashKey) *hashPicker {
	sorted := slices.Clone(endpoints)
	slices.SortFunc(sorted, func(a, b *Endpoint) int { return strings.Compare(a.ID, b.ID) })
	size := maglevSmall
	if len(sorted)*maglevSlotsPerEndpoint > maglevSmall {
		size = maglevLarge
	}
	return &hashPicker{endpoints: sorted, table: maglevTable(sorted, size), key: key}
}

func (p *hashPicker) Pick(r Request) (Pick, error) {
	m := uint64(len(p.table))
	h, ok := p.key.hash(&r)
	if !ok {
		h = randUint64() // a random slot: a draw weighted like the table
	}
	slot := h % m
	idx := p.table[slot]
	if r.ntried > 0 && r.Tried(p.endpoints[idx]) {
		// The same walk on every sidecar: the next endpoint in the table
		// that was not tried.
		for k := uint64(1); k <= maglevMaxWalk; k++ {
			j := p.table[(slot+k)%m]
			if j != idx && !r.Tried(p.endpoints[j]) {
				idx = j
				break
			}
		}
	}
	return choose(p.endpoints, int(idx), &r, now()).pick(), nil
}

// maglevTable fills a table of size slots (a prime) with indices into
// endpoints, each endpoint taking slots in the order of its own
// permutation of the table (offset and skip from the hash of its ID) and
// taking turns in proportion to its weight, as Envoy's weighted Maglev
// does: an endpoint of the largest weight takes a slot every round, one of
// a third of it every third round.
func maglevTable(endpoints []*Endpoint, size int) []uint32 {
	type entry struct {
		pos, skip      uint64 // next slot of its permutation, and the step
		weight, target uint64
	}
	m := uint64(size)
	entries := make([]entry, len(endpoints))
	weights := maglevWeights(endpoints)
	var maxW uint64
	for i, ep := range endpoints {
		h := hashString(ep.ID)
		entries[i] = entry{pos: h % m, skip: mix64(h^0x9e3779b97f4a7c15)%(m-1) + 1, weight: weights[i]}
		maxW = max(maxW, weights[i])
	}
	table := make([]uint32, size)
	for i := range table {
		table[i] = emptySlot
	}
	filled := 0
	for round := uint64(0); filled < size; round++ {
		for i := range entries {
			if filled == size {
				break
			}
			e := &entries[i]
			if round*e.weight < e.target {
				continue // not this endpoint's turn in this round
			}
			e.target += maxW
			for table[e.pos] != emptySlot {
				e.pos = (e.pos + e.skip) % m
			}
			table[e.pos] = uint32(i)
			e.pos = (e.pos + e.skip) % m
			filled++
		}
	}
	return table
}

// maglevWeights returns the endpoints' weights reduced by their GCD and,
// if the largest is still above maglevMaxWeight, scaled down in
// proportion, each staying at least 1.
func maglevWeights(endpoints []*Endpoint) []uint64 {
	w := make([]uint64, len(endpoints))
	var g, maxW uint64
	for i, ep := range endpoints {
		w[i] = weight(ep)
		g = gcdU(g, w[i])
		maxW = max(maxW, w[i])
	}
	for i := range w {
		w[i] /= g
	}
	maxW /= g
	if maxW > maglevMaxWeight {
		for i := range w {
			w[i] = max(1, w[i]*maglevMaxWeight/maxW)
		}
	}
	return w
}

func gcdU(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

var (
	_ Policy = ConsistentHash{}
	_ Policy = IPHash{}
	_ Picker = (*hashPicker)(nil)
)
