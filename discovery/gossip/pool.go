// Package gossip is serverless service discovery over hashicorp/memberlist:
// every sidecar is a member of a gossip pool, publishes its local instance
// into a replicated Store, and watches the instances every member
// publishes. The Store is generic (namespaced keys, per-entry lifetimes),
// so other components, such as the edge gateway's sticky-session table,
// replicate their own state through the same pool.
package gossip

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/sidemesh/sidemesh/discovery"
)

// Config configures a Pool member. Start fills in the defaults noted.
type Config struct {
	// NodeName names this member; it must be unique in the pool. Default:
	// the host name, "-", and a random suffix, so that a restarted process
	// never collides with its predecessor.
	NodeName string
	// Bind is the "host:port" to listen on for gossip (UDP and TCP); the
	// host must be an IP address. Default "0.0.0.0:7946". Port 0 picks a
	// free port.
	Bind string
	// Advertise is the "host:port" other members reach this one at; a host
	// name is resolved once at Start, and port 0 means the bound port.
	// Default: memberlist's choice (the bound IP, or a private IP of this
	// host when bound to 0.0.0.0).
	Advertise string
	// Join lists seeds ("host:port", host names allowed) to join through.
	// Joining runs in the background and is retried with capped
	// exponential backoff until a seed answers and the pool has another
	// member than this one. Empty: wait to be joined.
	Join []string
	// Key is the AES key (16, 24 or 32 bytes) that encrypts and
	// authenticates all gossip: a member without it can neither join nor
	// inject state. Required unless Insecure.
	Key []byte
	// Insecure must be set explicitly to run without a Key; it cannot be
	// combined with one.
	Insecure bool
	// Profile selects memberlist's timing: "lan" (default;
	// memberlist.DefaultLANConfig) or "local" (DefaultLocalConfig: faster
	// failure detection, for tests and loopback).
	Profile string
	// Logger receives the pool's logs; memberlist's own log is routed to
	// it at debug level. Default slog.Default().
	Logger *slog.Logger
	// Clock is the wall clock the store reads TTL expiries and sweeps
	// from; default time.Now. Tests skew it to play members whose clocks
	// disagree.
	Clock func() time.Time
}

// Tunables that tests replace (and restore with t.Cleanup).
var (
	// joinBackoffMin and joinBackoffMax bound the wait between join
	// attempts.
	joinBackoffMin = 250 * time.Millisecond
	joinBackoffMax = 15 * time.Second
	// joinResync is when a member repeats its push/pull with the seeds
	// after joining.
	joinResync = 2 * time.Second
	// stateLimit bounds the push/pull state this member sends; larger
	// states are paged (Store.localState).
	stateLimit = MaxStateSize
	// sweepInterval is how often a pool garbage-collects its store.
	sweepInterval = time.Second
	// reconnectInterval is how often a pool tries to reach one member it
	// declared dead, and reconnectTimeout how long after its death it
	// stops trying (as serf does: memberlist alone gossips to the dead for
	// GossipToTheDeadTime only, 15-30 s, so the two sides of a longer
	// partition would never merge again).
	reconnectInterval = 10 * time.Second
	reconnectTimeout  = 24 * time.Hour
	// clockSeed is the initial value of a new store's Lamport clock. Seeding
	// it with the wall clock (in microseconds) means a restarted process
	// usually starts above every version its predecessor wrote, so its
	// writes win at once; when clocks disagree, the store's refutation
	// rule still makes them win (see Store.applyLocked).
	clockSeed = func() uint64 { return uint64(time.Now().UnixMicro()) }
	// newIncarnation identifies one process's membership: random, so a
	// restarted process is told apart from its predecessor of the same
	// name without relying on clocks.
	newIncarnation = func() uint64 {
		var b [8]byte
		_, _ = rand.Read(b[:])
		return binary.LittleEndian.Uint64(b[:]) | 1
	}
)

// minRetransmitMult is the least retransmit multiplier of the store's
// broadcast queue. memberlist's "local" profile uses 2, which in a pool of
// 10-99 members sends each update only 4 times per member; an update
// (or leave intent) whose epidemic dies out early then waits for a
// push/pull. The LAN profile's 4 is used as a floor.
const minRetransmitMult = 4

// Pool is this process's membership in a gossip pool. It publishes the
// local instance, serves discovery.Source over every member's instances
// and gives access to the replicated Store. All methods are safe for
// concurrent use.
type Pool struct {
	name   string
	log    *slog.Logger
	ml     *memberlist.Memberlist
	store  *Store
	direct *direct
	done   chan struct{}

	life sync.Mutex // serializes Leave and Shutdown (memberlist panics on Leave after Shutdown)

	seeded bool        // the config lists seeds
	joined atomic.Bool // a join through the seeds reached another member

	mu     sync.Mutex // guards closed, left and wg.Add
	closed bool
	left   bool
	wg     sync.WaitGroup

	// leaving tracks memberlist's wait for the leave announcement, which
	// Leave may return before (see Leave); Shutdown does not wait for it,
	// the package's tests do, so that none outlives a test.
	leaving sync.WaitGroup

	viewMu  sync.Mutex
	viewGen uint64
	view    map[string][]discovery.Endpoint // service -> healthy endpoints by ID; never mutated
	decoded map[string]decodedInstance      // key -> decoded value, reused while unchanged
}

// Start creates a member, binds its listeners and, if c.Join is set,
// starts joining in the background. It fails on a missing or malformed
// key, a bad address or profile, or a bind failure; every configuration
// problem is reported at once.
func Start(c Config) (*Pool, error) {
	mlc, err := c.memberlistConfig()
	if err != nil {
		return nil, err
	}
	logger := c.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("node", mlc.Name)
	store := newStore(storeConfig{
		node:           mlc.Name,
		incarnation:    newIncarnation(),
		clock:          clockSeed(),
		retransmitMult: max(mlc.RetransmitMult, minRetransmitMult),
		grace:          2 * mlc.PushPullInterval,
		now:            c.Clock,
		log:            logger,
	})
	dm := newDirect(store, mlc.Name, logger)
	mlc.Delegate = &delegate{store: store, direct: dm, log: logger}
	mlc.Events = &events{store: store, log: logger}
	mlc.Logger = log.New(logWriter{log: logger}, "", 0)

	ml, err := memberlist.Create(mlc)
	if err != nil {
		store.close()
		return nil, fmt.Errorf("gossip: start %s on %s: %w", mlc.Name, c.Bind, err)
	}
	dm.ml.Store(ml)
	p := &Pool{name: mlc.Name, log: logger, ml: ml, store: store, direct: dm, done: make(chan struct{})}
	p.seeded = len(c.Join) > 0
	p.wg.Add(2)
	go p.sweepLoop()
	go p.reconnectLoop(c.Join)
	if len(c.Join) > 0 {
		p.wg.Add(1)
		go p.joinLoop(c.Join)
	}
	logger.Info("listening", "role", "gossip", "addr", p.Addr(), "encrypted", len(mlc.SecretKey) > 0)
	return p, nil
}

// memberlistConfig validates c and builds the memberlist configuration:
// the profile's defaults, then c's fields.
func (c Config) memberlistConfig() (*memberlist.Config, error) {
	var errs []error
	var mlc *memberlist.Config
	switch c.Profile {
	case "", "lan":
		mlc = memberlist.DefaultLANConfig()
	case "local":
		mlc = memberlist.DefaultLocalConfig()
	default:
		errs = append(errs, fmt.Errorf("gossip: profile %q: want \"lan\" or \"local\"", c.Profile))
		mlc = memberlist.DefaultLANConfig()
	}

	mlc.Name = c.NodeName
	if mlc.Name == "" {
		mlc.Name = defaultNodeName()
	}
	if len(mlc.Name) > MaxNodeNameLen {
		errs = append(errs, fmt.Errorf("gossip: node name is %d bytes, more than %d", len(mlc.Name), MaxNodeNameLen))
	}

	bind := c.Bind
	if bind == "" {
		bind = "0.0.0.0:7946"
	}
	if host, port, err := splitHostPort(bind); err != nil {
		errs = append(errs, fmt.Errorf("gossip: bind %q: %w", bind, err))
	} else {
		if host == "" {
			host = "0.0.0.0"
		}
		if net.ParseIP(host) == nil {
			errs = append(errs, fmt.Errorf("gossip: bind %q: host must be an IP address", bind))
		}
		mlc.BindAddr, mlc.BindPort, mlc.AdvertisePort = host, port, port
	}

	if c.Advertise != "" {
		host, port, err := splitHostPort(c.Advertise)
		if err == nil && net.ParseIP(host) == nil {
			host, err = resolveHost(host)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("gossip: advertise %q: %w", c.Advertise, err))
		}
		mlc.AdvertiseAddr = host
		if port != 0 {
			mlc.AdvertisePort = port
		}
	}

	for _, seed := range c.Join {
		if _, _, err := splitHostPort(seed); err != nil {
			errs = append(errs, fmt.Errorf("gossip: join %q: %w", seed, err))
		}
	}

	switch {
	case len(c.Key) == 0 && !c.Insecure:
		errs = append(errs, errors.New("gossip: a key is required unless insecure: true"))
	case len(c.Key) > 0 && c.Insecure:
		errs = append(errs, errors.New("gossip: a key and insecure: true are mutually exclusive"))
	case len(c.Key) > 0:
		if err := checkKeyLen(c.Key); err != nil {
			errs = append(errs, fmt.Errorf("gossip: %w", err))
		}
		mlc.SecretKey = append([]byte(nil), c.Key...)
		mlc.GossipVerifyIncoming = true
		mlc.GossipVerifyOutgoing = true
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return mlc, nil
}

// splitHostPort splits "host:port" and requires a port in 0-65535.
func splitHostPort(hostport string) (string, int, error) {
	host, ps, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", ps)
	}
	return host, port, nil
}

// resolveHost returns an IP address of host, preferring IPv4.
func resolveHost(host string) (string, error) {
	ips, err := net.LookupIP(host)
	if err != nil {
		return "", err
	}
	if len(ips) == 0 {
		return "", fmt.Errorf("no address for %q", host)
	}
	for _, ip := range ips {
		if ip.To4() != nil {
			return ip.String(), nil
		}
	}
	return ips[0].String(), nil
}

func defaultNodeName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "sidemesh"
	}
	var suffix [3]byte
	_, _ = rand.Read(suffix[:])
	return host + "-" + hex.EncodeToString(suffix[:])
}

// joinLoop joins the pool through seeds, retrying with capped, jittered
// exponential backoff until the pool has another member than this one
// (joining oneself, when the seed list includes this node, does not
// count) or the pool shuts down.
func (p *Pool) joinLoop(seeds []string) {
	defer p.wg.Done()
	backoff := joinBackoffMin
	for attempt := 1; ; attempt++ {
		select {
		case <-p.done:
			return
		default:
		}
		n, err := p.ml.Join(p.otherSeeds(seeds))
		if err == nil && p.ml.NumMembers() > 1 {
			p.joined.Store(true)
			p.log.Info("gossip: joined", "seeds_reached", n, "members", p.ml.NumMembers(), "attempts", attempt)
			p.resync(seeds)
			return
		}
		if err == nil {
			err = errors.New("no member other than this one answered")
		}
		level := slog.LevelDebug
		if attempt == 1 {
			level = slog.LevelWarn
		}
		p.log.Log(context.Background(), level, "gossip: join failed; retrying", "seeds", seeds, "attempt", attempt, "retry_in", backoff, "err", err)
		wait := backoff/2 + mrand.N(backoff/2+1) // jitter: 50-100% of backoff
		t := time.NewTimer(wait)
		select {
		case <-p.done:
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, joinBackoffMax)
	}
}

// resync repeats the push/pull with the seeds once, joinResync after
// joining. Members that start together (a rollout) join the seeds at
// about the same time, and each learns from them only the members that
// were there first; the others reach it by memberlist's gossip, which can
// miss a few, leaving them (and their tied entries) unseen until the
// periodic push/pull, 15-30 s later. A second sync with the seeds, which
// by then know everyone who joined, closes that gap.
func (p *Pool) resync(seeds []string) {
	t := time.NewTimer(joinResync)
	defer t.Stop()
	select {
	case <-p.done:
		return
	case <-t.C:
	}
	if _, err := p.ml.Join(p.otherSeeds(seeds)); err != nil {
		p.log.Debug("gossip: resync with seeds failed", "err", err)
	}
}

// otherSeeds returns seeds without this member's own address: a config
// that lists every member's address (the same file everywhere) would
// otherwise make a member push/pull with itself, which merges a stale
// copy of its own state back (bringing back entries a Limit forgot). A
// seed is this member when its port is this member's and its address
// (resolved, for a host name) is this member's advertised one or
// loopback.
func (p *Pool) otherSeeds(seeds []string) []string {
	self := p.ml.LocalNode()
	out := make([]string, 0, len(seeds))
	for _, seed := range seeds {
		host, port, err := splitHostPort(seed)
		if err != nil || port != int(self.Port) {
			out = append(out, seed)
			continue
		}
		ips := []string{host}
		if net.ParseIP(host) == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			ips, err = net.DefaultResolver.LookupHost(ctx, host)
			cancel()
			if err != nil {
				out = append(out, seed) // memberlist reports it
				continue
			}
		}
		me := true
		for _, s := range ips {
			ip := net.ParseIP(s)
			me = me && ip != nil && (ip.Equal(self.Addr) || ip.IsLoopback())
		}
		if !me {
			out = append(out, seed)
		}
	}
	return out
}

// reconnectLoop heals partitions: every reconnectInterval (jittered) it
// joins one member that failure detection declared dead (not one that
// left), picked at random among those dead for less than
// reconnectTimeout; a member that finds itself alone joins its seeds
// again. A member that is really gone costs one failed connection
// attempt per round.
func (p *Pool) reconnectLoop(seeds []string) {
	defer p.wg.Done()
	for {
		t := time.NewTimer(reconnectInterval/2 + mrand.N(reconnectInterval/2+1))
		select {
		case <-p.done:
			t.Stop()
			return
		case <-t.C:
		}
		var dead []Member
		now := time.Now()
		for _, m := range p.Members() {
			if m.State == MemberDead && m.Name != p.name && m.Addr != "" && now.Sub(m.Since) < reconnectTimeout {
				dead = append(dead, m)
			}
		}
		var target []string
		switch {
		case len(dead) > 0:
			target = []string{dead[mrand.N(len(dead))].Addr}
		case p.ml.NumMembers() <= 1 && len(seeds) > 0:
			target = p.otherSeeds(seeds)
		default:
			continue
		}
		if n, err := p.ml.Join(target); err == nil && n > 0 {
			p.log.Info("gossip: reconnected", "to", target, "members", p.ml.NumMembers())
		} else {
			p.log.Debug("gossip: reconnect failed", "to", target, "err", err)
		}
	}
}

// sweepLoop garbage-collects the store every sweepInterval.
func (p *Pool) sweepLoop() {
	defer p.wg.Done()
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
			p.store.sweep(p.store.now())
		}
	}
}

// instancePrefix namespaces service instances in the Store.
const instancePrefix = "svc/"

func instanceKey(id string) string { return instancePrefix + id }

// Publish publishes (or replaces) a local instance, tied to this member's
// membership: every member drops it when this one leaves or dies. Call it
// again to update it (weight change, health flip); republishing an
// unchanged instance sends nothing. Unhealthy instances are replicated
// but left out of snapshots. Instance IDs must be unique in the pool.
func (p *Pool) Publish(inst discovery.Instance, healthy bool) error {
	if err := p.writable(); err != nil {
		return fmt.Errorf("gossip: publish %q: %w", inst.ID, err)
	}
	value, err := encodeInstance(inst, healthy)
	if err != nil {
		return fmt.Errorf("gossip: publish %q: %w", inst.ID, err)
	}
	if _, err := p.store.set(instanceKey(inst.ID), value, SetOptions{Tied: true}, true); err != nil {
		return fmt.Errorf("gossip: publish %q: %w", inst.ID, err)
	}
	return nil
}

// Withdraw removes an instance this member published. Withdrawing an
// unknown or already withdrawn instance does nothing; withdrawing another
// member's instance is an error.
func (p *Pool) Withdraw(id string) error {
	if err := p.writable(); err != nil {
		return fmt.Errorf("gossip: withdraw %q: %w", id, err)
	}
	key := instanceKey(id)
	owner, ok := p.store.ownerOf(key)
	if !ok {
		return nil
	}
	if owner != p.name {
		return fmt.Errorf("gossip: withdraw %q: published by %s, not by this node", id, owner)
	}
	if err := p.store.Delete(key); err != nil {
		return fmt.Errorf("gossip: withdraw %q: %w", id, err)
	}
	return nil
}

func (p *Pool) writable() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		return errors.New("pool is shut down")
	case p.left:
		return errors.New("pool has left")
	}
	return nil
}

// Store returns the replicated store, for namespaces other than "svc/"
// (which Publish owns).
func (p *Pool) Store() *Store { return p.store }

// Members returns every member this one knows of, itself included, sorted
// by name. Members that died or left are listed for DefaultRetention.
func (p *Pool) Members() []Member { return p.store.membersSnapshot() }

// Synced reports whether this member has exchanged its state with
// another (a join's push/pull merges both ways): it joined through a
// seed, or another member joined it, or it has no seeds to wait for. A
// new member that is not synced holds none of the pool's state yet.
func (p *Pool) Synced() bool {
	return !p.seeded || p.joined.Load() || p.ml.NumMembers() > 1
}

// NumMembers returns the number of live members, this one included.
func (p *Pool) NumMembers() int { return p.ml.NumMembers() }

// Addr returns the "host:port" other members reach this one at.
func (p *Pool) Addr() string { return p.ml.LocalNode().Address() }

// Name returns this member's node name.
func (p *Pool) Name() string { return p.name }

// leavePoll is how often Leave checks whether any other member is still
// alive to hear the announcement.
const leavePoll = 10 * time.Millisecond

// maxLeaveWait bounds memberlist's own wait for the announcement when the
// context given to Leave has no deadline.
const maxLeaveWait = time.Minute

// Leave leaves the pool gracefully: it announces the departure and waits
// until the announcement has gone out, until no other member is alive to
// hear it (every peer left or died meanwhile, as when a whole mesh stops
// at once), or until ctx is done, whichever comes first. Other members
// drop this member's instances as soon as they hear. The pool keeps
// running until Shutdown, but publishes nothing more.
//
// It returns an error (wrapping ctx's when ctx ended) only when the wait
// ended while live members might not have heard: they then drop this
// member after failure detection instead. memberlist's own wait for the
// announcement cannot be cut short; when Leave returns before it, that
// wait ends by itself at ctx's deadline (or after maxLeaveWait without
// one), holding nothing that Shutdown needs.
func (p *Pool) Leave(ctx context.Context) error {
	p.life.Lock()
	defer p.life.Unlock()
	p.mu.Lock()
	closed := p.closed
	p.left = true
	p.mu.Unlock()
	if closed {
		return errors.New("gossip: leave: pool is shut down")
	}
	wait := maxLeaveWait
	if deadline, ok := ctx.Deadline(); ok {
		wait = max(time.Until(deadline), time.Millisecond) // memberlist reads 0 as no limit
	}
	p.store.leave()
	done := make(chan error, 1)
	p.leaving.Add(1)
	go func() { // it may outlive Leave: see the doc comment
		defer p.leaving.Done()
		done <- p.ml.Leave(wait)
	}()
	tick := time.NewTicker(leavePoll)
	defer tick.Stop()
	expired := ctx.Done()
	for {
		select {
		case err := <-done:
			_, others := p.leaveState()
			switch {
			case err == nil:
				p.log.Info("gossip: left the pool")
				return nil
			case !others:
				p.log.Info("gossip: left the pool; no live member was left to hear it")
				return nil
			case ctx.Err() != nil:
				return fmt.Errorf("gossip: leave: announcement not confirmed: %w", ctx.Err())
			}
			return fmt.Errorf("gossip: leave: %w", err)
		case <-expired:
			expired = nil
		case <-tick.C:
		}
		// memberlist marks this member as left before it waits; returning
		// earlier would let a Shutdown overtake its Leave, which panics.
		marked, others := p.leaveState()
		switch {
		case !marked:
		case !others:
			p.log.Info("gossip: left the pool; no live member was left to hear it")
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("gossip: leave: announcement not confirmed: %w", ctx.Err())
		}
	}
}

// leaveState reports whether memberlist has marked this member as left,
// and whether another member is alive (or suspect) and so could still
// hear it leave.
func (p *Pool) leaveState() (left, others bool) {
	left = true
	for _, n := range p.ml.Members() {
		if n.Name == p.name {
			left = false
		} else {
			others = true
		}
	}
	return left, others
}

// Shutdown stops the member without announcing it (call Leave first for a
// graceful exit; otherwise others drop this member's instances after
// failure detection). It closes every Watch channel and Store
// subscription and returns once the pool's own goroutines have exited and
// memberlist's listeners are closed (memberlist's remaining goroutines
// see its shutdown signal and exit within moments; a wait for a leave
// announcement that Leave returned before ends at Leave's deadline); a
// join attempt in flight can delay it by up to memberlist's TCP timeout.
// Calling it again does nothing.
func (p *Pool) Shutdown() error {
	p.life.Lock()
	defer p.life.Unlock()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	p.mu.Unlock()

	err := p.ml.Shutdown()
	p.store.close()
	p.wg.Wait()
	if err != nil {
		return fmt.Errorf("gossip: shutdown: %w", err)
	}
	return nil
}

var (
	_ discovery.Source = (*Pool)(nil)
	_ io.Writer        = logWriter{}
)
