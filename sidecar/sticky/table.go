package sticky

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/sidecar/config"
)

// Prefix is the namespace of sticky sessions in the gossip store: a
// session of route R is under "sticky/R/<hash of its token>".
const Prefix = "sticky/"

// Session is what the table holds for one session: where its requests
// go, and its wall-clock deadlines' starting points.
type Session struct {
	// Service is the backend service of the route the session uses.
	Service string
	// Endpoint is the endpoint's discovery ID, stable across restarts of
	// the instance and never reused by another: not its address, which a
	// new instance may get.
	Endpoint string
	// Created is when the session began; Touched when a request last
	// refreshed it (at most every quarter of the idle timeout).
	Created, Touched time.Time
}

// Table is the session table of an edge: the sessions of every sticky
// route, in the gossip pool's replicated store, so that every edge sees
// every session. A session's entry expires on every member with its
// deadlines. Safe for concurrent use.
type Table struct {
	store *gossip.Store
	now   func() time.Time
	skew  time.Duration
	ring  atomic.Pointer[keyring]
	peers Peers

	mu     sync.Mutex
	routes map[string]*Route
}

// keyring is a set of Keys in use, with a pool of HMACs per table key
// and per cookie key (current first): an HMAC costs several allocations
// to create, none to reset.
type keyring struct {
	keys    *Keys
	hashers []sync.Pool
	signers []sync.Pool
}

func newKeyring(keys *Keys) *keyring {
	kr := &keyring{keys: keys, hashers: make([]sync.Pool, len(keys.table)), signers: make([]sync.Pool, len(keys.cookie))}
	for i, k := range keys.table {
		kr.hashers[i].New = func() any { return hmac.New(sha256.New, k) }
	}
	for i, k := range keys.cookie {
		kr.signers[i].New = func() any { return hmac.New(sha256.New, k) }
	}
	return kr
}

// mac writes HMAC(route name, NUL, msg) with the pooled HMAC of p into
// sum.
func (r *Route) mac(p *sync.Pool, msg []byte, sum *[sha256.Size]byte) {
	h := p.Get().(hash.Hash)
	h.Reset()
	h.Write(r.label) // the route's name and a NUL
	h.Write(msg)
	h.Sum(sum[:0])
	p.Put(h)
}

// Peers is the pool's direct messaging: how an edge hands a session it
// created to the session's owner edge, and asks the owner for a session
// it has not learned by gossip yet. *gossip.Pool implements it.
type Peers interface {
	Name() string
	PushKey(ctx context.Context, node, key string) error
	PullKey(ctx context.Context, node, key string) (bool, error)
}

// OwnerTimeout bounds each exchange with a session's owner edge. On a
// miss the request waits at most this long before it is balanced as new;
// a new session's response at most this long before it goes out. An
// owner that just died is usually refused at once; this bounds the case
// of a host that does not answer at all.
const OwnerTimeout = 100 * time.Millisecond

// TableOptions configure NewTable.
type TableOptions struct {
	// ClockSkew is how far apart the edges' clocks may be: sessions are
	// kept this much past their deadlines. Zero trusts the clocks to
	// agree exactly; the configuration's default is 5s.
	ClockSkew time.Duration
	// Now is the wall clock; default time.Now. Tests skew it.
	Now func() time.Time
	// Peers, when set, makes every session known to its owner at once:
	// the edge that rendezvous hashing on the session's key picks among
	// the edges sharing the table (each announces itself under
	// OwnersPrefix, tied to its membership). Without it sessions spread
	// by gossip alone, and an edge that has not heard of a session yet
	// balances its request as new.
	Peers Peers
}

// OwnersPrefix is where the edges sharing a session table announce
// themselves in the gossip store: "sticky-edge/<node name>", an empty
// entry tied to the edge's membership.
const OwnersPrefix = "sticky-edge/"

// NewTable returns the table over store, with keys.
func NewTable(store *gossip.Store, keys *Keys, o TableOptions) *Table {
	if o.Now == nil {
		o.Now = time.Now
	}
	t := &Table{store: store, now: o.Now, skew: o.ClockSkew, routes: map[string]*Route{}}
	if o.Peers != nil {
		t.peers = o.Peers
		// Fails only on a shut-down pool, which serves nothing more.
		_ = store.Set(OwnersPrefix+o.Peers.Name(), nil, gossip.SetOptions{Tied: true})
	}
	t.ring.Store(newKeyring(keys))
	return t
}

// SetKeys replaces the keys (a reload after a rotation): requests from
// now on sign and hash with the new ones.
func (t *Table) SetKeys(keys *Keys) { t.ring.Store(newKeyring(keys)) }

// Route returns the sticky state of the route named rc.Name, configured
// by rc.Sticky (which must not be nil): the same Route for the same name,
// its configuration replaced (on a reload), so that its counters last.
// It bounds the route's sessions to rc.Sticky.MaxSessions.
func (t *Table) Route(rc *config.Route) *Route {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.routes[rc.Name]
	if r == nil {
		r = &Route{name: rc.Name, label: append([]byte(rc.Name), 0), prefix: Prefix + rc.Name + "/", table: t}
		t.routes[rc.Name] = r
	}
	r.cfg.Store(&routeConfig{Sticky: *rc.Sticky, cookieName: rc.CookieName(), cookiePath: rc.CookiePath()})
	t.store.Limit(r.prefix, rc.Sticky.MaxSessions)
	return r
}

// Pending returns the updates of the pool's store still queued for
// gossip on this edge: sessions (and other entries) its peers may not
// have yet, its replication lag.
func (t *Table) Pending() int { return t.store.Pending() }

// Routes returns the routes the table has served, by name.
func (t *Table) Routes() []*Route {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*Route, 0, len(t.routes))
	for _, r := range t.routes {
		out = append(out, r)
	}
	return out
}

// Route is one sticky route: its configuration and counters. Safe for
// concurrent use.
type Route struct {
	name, prefix string
	label        []byte // the name and a NUL, for HMACs
	table        *Table
	cfg          atomic.Pointer[routeConfig]
	stats        counters
}

type routeConfig struct {
	config.Sticky
	cookieName, cookiePath string
}

// counters count what a route's filter did.
type counters struct {
	hits, misses, created, rebinds, refused atomic.Uint64
	ownerLookups, ownerFound, ownerMissing  atomic.Uint64
	ownerErrors                             atomic.Uint64
}

// Stats are a route's counters and table size.
type Stats struct {
	Route string
	// Hits are requests that reached their session's endpoint; Misses
	// requests whose token named no live session (unknown, expired,
	// tampered); Created sessions begun here; Rebinds sessions moved off
	// an unavailable endpoint here; Refused requests a strict session's
	// unavailable endpoint could not take.
	Hits, Misses, Created, Rebinds, Refused uint64
	// OwnerLookups are asks this edge sent a session's owner edges about
	// a token it missed: OwnerFound those an owner knew, OwnerMissing
	// those it did not; OwnerErrors exchanges with an owner (lookups, or
	// hand-overs of new sessions) that failed or timed out.
	OwnerLookups, OwnerFound, OwnerMissing, OwnerErrors uint64
	// Table is what this edge holds of the route's sessions.
	Table gossip.PrefixStats
}

// Stats returns r's counters.
func (r *Route) Stats() Stats {
	return Stats{
		Route: r.name, Hits: r.stats.hits.Load(), Misses: r.stats.misses.Load(), Created: r.stats.created.Load(),
		Rebinds: r.stats.rebinds.Load(), Refused: r.stats.refused.Load(), Table: r.table.store.PrefixStats(r.prefix),
		OwnerLookups: r.stats.ownerLookups.Load(), OwnerFound: r.stats.ownerFound.Load(),
		OwnerMissing: r.stats.ownerMissing.Load(), OwnerErrors: r.stats.ownerErrors.Load(),
	}
}

// key returns the table key of token under the i-th table key (0: the
// current one), and a 64-bit hash of it for rendezvous rebinding. The
// token itself never leaves this function.
func (r *Route) key(kr *keyring, i int, token []byte) (string, uint64) {
	var sum [sha256.Size]byte
	r.mac(&kr.hashers[i], token, &sum)
	var b strings.Builder
	b.Grow(len(r.prefix) + 22)
	b.WriteString(r.prefix)
	enc := base64.RawURLEncoding
	var text [22]byte
	enc.Encode(text[:], sum[:16])
	b.Write(text[:])
	return b.String(), binary.BigEndian.Uint64(sum[16:24]) | 1 // never 0: RebindKey 0 means none
}

// lookup finds token's live session, trying the current key and then the
// previous one, then asking the session's owner edge. It returns the
// session's table key (the current key's when there is none), its rebind
// key, and whether it was found.
func (r *Route) lookup(ctx context.Context, token []byte, cfg *routeConfig) (key string, rebind uint64, s Session, found bool) {
	kr := r.table.ring.Load()
	for i := range kr.hashers {
		k, rk := r.key(kr, i, token)
		if i == 0 {
			key, rebind = k, rk
		}
		if s, ok := r.get(k, cfg); ok {
			return k, rk, s, true
		}
	}
	for _, owner := range r.table.owners(key) {
		r.stats.ownerLookups.Add(1)
		ctx, cancel := context.WithTimeout(ctx, OwnerTimeout)
		ok, err := r.table.peers.PullKey(ctx, owner, key)
		cancel()
		if err != nil {
			r.stats.ownerErrors.Add(1)
			continue // dead or slow: ask the other owner
		}
		if ok {
			if s, ok := r.get(key, cfg); ok {
				r.stats.ownerFound.Add(1)
				return key, rebind, s, true
			}
		}
		r.stats.ownerMissing.Add(1) // unknown, or ended
		break
	}
	return key, rebind, Session{}, false
}

// get returns the live session stored under table key k, marking it
// recently used.
func (r *Route) get(k string, cfg *routeConfig) (Session, bool) {
	e, ok := r.table.store.Get(k)
	if !ok {
		return Session{}, false
	}
	s, err := decodeSession(e.Value)
	if err != nil || !r.live(s, cfg, r.table.now()) {
		return Session{}, false
	}
	r.table.store.Touch(k)
	return s, true
}

// Owners returns the node names of the edges sharing the table that this
// edge knows of, itself included, sorted: those a session's owner is
// chosen among. An edge counts once its announcement has arrived and the
// pool reports it alive: announcements can outrun membership, and an
// owner this edge cannot reach yet is one it cannot hand sessions to.
func (t *Table) Owners() []string {
	var out []string
	for _, e := range t.store.List(OwnersPrefix) {
		name := e.Key[len(OwnersPrefix):]
		if t.store.MemberAlive(name) || (t.peers != nil && name == t.peers.Name()) {
			out = append(out, name)
		}
	}
	return out
}

// Owners is how many edges own each session: the edges that rendezvous
// hashing on the session's key ranks first among those sharing the
// table. The edge that begins a session hands it to its owners before
// the response goes out, so that at least two edges hold it at once
// (losing any one edge loses none), and an edge that misses a token asks
// them, in rank order, before balancing the request as new.
const Owners = 2

// owners returns the owners of table key k other than this edge, in
// rank order; none without Peers. While an edge's announcement spreads
// (well under a second on a LAN) or a dead edge's is not yet dropped,
// edges may disagree on owners, or ask a dead one (refused at once, or
// OwnerTimeout): a session begun in that window may reach some edges by
// gossip alone.
func (t *Table) owners(k string) []string {
	if t.peers == nil {
		return nil
	}
	ranked := gossip.Rank(k, t.Owners())
	ranked = ranked[:min(Owners, len(ranked))]
	return slices.DeleteFunc(ranked, func(n string) bool { return n == t.peers.Name() })
}

// live reports whether s has not passed either deadline, give or take
// the clock skew the edges may have.
func (r *Route) live(s Session, cfg *routeConfig, now time.Time) bool {
	return now.Before(s.Touched.Add(cfg.IdleTimeout+r.table.skew)) && now.Before(s.Created.Add(cfg.AbsoluteTimeout+r.table.skew))
}

// handOver makes the session under key known to its owner edges before
// the response goes out, so that the client's next request finds it
// through any edge before gossip has spread it, and so that losing any
// one edge loses it nowhere.
func (r *Route) handOver(ctx context.Context, key string) {
	owners := r.table.owners(key)
	if len(owners) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, OwnerTimeout)
	defer cancel()
	var wg sync.WaitGroup
	for _, owner := range owners {
		wg.Go(func() {
			if err := r.table.peers.PushKey(ctx, owner, key); err != nil {
				r.stats.ownerErrors.Add(1)
			}
		})
	}
	wg.Wait()
}

// bind writes s under key; every edge learns it by gossip. The entry
// expires with the earlier of the session's deadlines, plus the skew.
func (r *Route) bind(key string, s Session, cfg *routeConfig) error {
	end := s.Touched.Add(cfg.IdleTimeout)
	if abs := s.Created.Add(cfg.AbsoluteTimeout); abs.Before(end) {
		end = abs
	}
	ttl := end.Sub(r.table.now()) + r.table.skew
	if ttl <= 0 {
		return nil // over already
	}
	return r.table.store.Set(key, encodeSession(s), gossip.SetOptions{TTL: ttl})
}

// A session's value: "1" then service, endpoint ID, created and touched
// in Unix milliseconds, separated by NUL (which neither name holds).
func encodeSession(s Session) []byte {
	b := make([]byte, 0, 2+len(s.Service)+len(s.Endpoint)+30)
	b = append(b, '1', 0)
	b = append(b, s.Service...)
	b = append(b, 0)
	b = append(b, s.Endpoint...)
	b = append(b, 0)
	b = strconv.AppendInt(b, s.Created.UnixMilli(), 10)
	b = append(b, 0)
	b = strconv.AppendInt(b, s.Touched.UnixMilli(), 10)
	return b
}

var errBadSession = errors.New("sticky: malformed session entry")

func decodeSession(b []byte) (Session, error) {
	rest := string(b) // one copy; the fields share it
	var parts [5]string
	for i := range parts {
		var ok bool
		parts[i], rest, ok = strings.Cut(rest, "\x00")
		if ok != (i < len(parts)-1) {
			return Session{}, errBadSession
		}
	}
	if parts[0] != "1" || parts[1] == "" || parts[2] == "" {
		return Session{}, errBadSession
	}
	created, err1 := strconv.ParseInt(parts[3], 10, 64)
	touched, err2 := strconv.ParseInt(parts[4], 10, 64)
	if err1 != nil || err2 != nil {
		return Session{}, fmt.Errorf("%w: %q", errBadSession, b)
	}
	return Session{Service: parts[1], Endpoint: parts[2], Created: time.UnixMilli(created), Touched: time.UnixMilli(touched)}, nil
}

// Config returns the route's sticky configuration in force.
func (r *Route) Config() config.Sticky { return r.cfg.Load().Sticky }

// PerEndpoint counts the route's live sessions on each endpoint, by its
// discovery ID. It reads the whole of this edge's copy of the route's
// table: for the admin API, not for requests.
func (r *Route) PerEndpoint() map[string]int {
	cfg, now := r.cfg.Load(), r.table.now()
	out := map[string]int{}
	for _, e := range r.table.store.List(r.prefix) {
		if s, err := decodeSession(e.Value); err == nil && r.live(s, cfg, now) {
			out[s.Endpoint]++
		}
	}
	return out
}
