package sidecar

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/policy/ratelimit"
	"github.com/sidemesh/sidemesh/sidecar/config"
)

// rateLimitCountsCall names the gossip Call through which an edge sends
// the counts of its cluster-scope rate limits to another edge.
const rateLimitCountsCall = "ratelimit/counts"

// sharedLimits runs the rate limits this edge shares with the other
// edges of the gossip pool (those that publish a route digest). For the
// cluster-scope limits, once a sync interval it sends each edge,
// directly, the counts that changed, and everything it counts in the
// current and last window to an edge it has not reached before or failed
// to reach last time. Each interval it also looks at the edges: how many
// there are and whether this one is partitioned from most of them, which
// it tells the cluster limits (ratelimit.View) and the exact ones
// (edgeNames, state), and it answers the exact limits' Calls. Safe for
// concurrent use; the sync loop runs until the sidecar's life ends.
type sharedLimits struct {
	pool  *gossip.Pool
	log   *slog.Logger
	sync  atomic.Pointer[config.RateLimitSync]
	byID  atomic.Pointer[map[string]*clusterLimit]
	exact atomic.Pointer[map[string]*exactLimit]
	state atomic.Pointer[sharedState]

	// late counts sends that took longer than the sync delay.
	late atomic.Uint64

	// Owned by the sync loop.
	reached map[string]bool     // edges sent everything since they appeared
	known   map[string]struct{} // edges seen, until they leave gracefully
}

// clusterLimit is a running cluster limit and its config.
type clusterLimit struct {
	cfg config.RateLimit
	c   *ratelimit.Cluster
}

// sharedState is what the last sync saw.
type sharedState struct {
	// Names are the edges this one reaches, itself included, and Edges
	// their number; Known adds those that died without leaving.
	Names        []string
	Edges, Known int
	// Partitioned is set while Edges is not a majority of Known.
	Partitioned bool
}

// limitID names a route's limit between edges.
func limitID(route, name string) string { return route + "\x00" + name }

func newSharedLimits(pool *gossip.Pool, log *slog.Logger) *sharedLimits {
	cl := &sharedLimits{pool: pool, log: log, reached: map[string]bool{}, known: map[string]struct{}{}}
	cl.byID.Store(&map[string]*clusterLimit{})
	cl.exact.Store(&map[string]*exactLimit{})
	cl.sync.Store(&config.RateLimitSync{Interval: 100 * time.Millisecond}) // until an edge config says
	cl.state.Store(&sharedState{Names: []string{pool.Name()}, Edges: 1, Known: 1})
	pool.Handle(rateLimitCountsCall, cl.receive)
	for _, call := range []string{exactLeaseCall, exactBackupCall, exactStateCall} {
		pool.Handle(call, cl.handleExact(call))
	}
	return cl
}

// use makes limits and exact (by limitID) the shared limits, synced as s
// says.
func (cl *sharedLimits) use(limits map[string]*clusterLimit, exact map[string]*exactLimit, s config.RateLimitSync) {
	cl.sync.Store(&s)
	cl.byID.Store(&limits)
	cl.exact.Store(&exact)
	cl.setViews(cl.state.Load())
}

// edgeNames returns the edges this one reaches, itself included, as of
// the last sync. The slice is shared: do not modify it.
func (cl *sharedLimits) edgeNames() []string { return cl.state.Load().Names }

// run syncs every interval until ctx ends.
func (cl *sharedLimits) run(ctx context.Context) {
	interval := cl.sync.Load().Interval
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cl.syncOnce(ctx)
		if next := cl.sync.Load().Interval; next != interval {
			interval = next
			t.Reset(interval)
		}
	}
}

// syncOnce looks at the edges, updates the limits' views and sends the
// counts.
func (cl *sharedLimits) syncOnce(ctx context.Context) {
	limits, exact := *cl.byID.Load(), *cl.exact.Load()
	if len(limits) == 0 && len(exact) == 0 {
		return
	}
	cfg := *cl.sync.Load()
	peers, st := cl.edges()
	cl.state.Store(st)
	cl.setViews(st)
	for _, x := range exact {
		x.sweep()
	}
	if len(limits) == 0 {
		return
	}

	var changed, all []byte
	for id, l := range limits {
		changed = appendLimitCounts(changed, id, l.c.Changed())
	}
	reached := make([]bool, len(peers))
	var wg sync.WaitGroup
	for i, peer := range peers {
		payload := changed
		if !cl.reached[peer] {
			if all == nil {
				for id, l := range limits {
					all = appendLimitCounts(all, id, l.c.Active())
				}
			}
			payload = append(all[:len(all):len(all)], changed...) // a key's changed count overrides its active one
		} else if len(changed) == 0 {
			reached[i] = true // nothing new for an edge that has the rest
			continue
		}
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, cfg.Interval+cfg.Delay)
			defer cancel()
			start := time.Now()
			_, err := cl.pool.Call(cctx, peer, rateLimitCountsCall, payload)
			if time.Since(start) > cfg.Delay {
				cl.late.Add(1)
			}
			reached[i] = err == nil
			if err != nil && !errors.Is(err, context.Canceled) {
				cl.log.Debug("rate limits: send counts", "edge", peer, "err", err)
			}
		})
	}
	wg.Wait()
	for i, peer := range peers {
		cl.reached[peer] = reached[i]
	}
}

// edges returns the other edges this one reaches, and the state of the
// pool's edges: an edge counts as known from its first route digest
// until it leaves gracefully; one that died (or is cut off) stays known.
func (cl *sharedLimits) edges() ([]string, *sharedState) {
	self := cl.pool.Name()
	for _, e := range cl.pool.Store().List(routeDigestPrefix) {
		if n := e.Key[len(routeDigestPrefix):]; n != self {
			cl.known[n] = struct{}{}
		}
	}
	states := map[string]gossip.MemberState{}
	for _, m := range cl.pool.Members() {
		states[m.Name] = m.State
	}
	var peers []string
	dead := 0
	for n := range cl.known {
		switch st, ok := states[n]; {
		case !ok || st == gossip.MemberLeft:
			delete(cl.known, n)
			delete(cl.reached, n)
		case st == gossip.MemberDead:
			dead++
			cl.reached[n] = false
		default:
			peers = append(peers, n)
		}
	}
	st := &sharedState{Names: append([]string{self}, peers...), Edges: 1 + len(peers), Known: 1 + len(peers) + dead}
	st.Partitioned = 2*st.Edges <= st.Known
	return peers, st
}

// setViews tells each limit how many edges share it and how to behave
// in st.
func (cl *sharedLimits) setViews(st *sharedState) {
	cfg := *cl.sync.Load()
	for _, l := range *cl.byID.Load() {
		v := ratelimit.View{Edges: st.Edges, Pace: cfg.Pace(l.c.Limit().Rate)}
		if st.Partitioned {
			v.Partitioned = true
			switch l.cfg.OnPartition {
			case config.PartitionClosed:
				v.Closed = true
			case config.PartitionOpen:
			default: // local_share
				v.Share = 1 / float64(st.Known)
			}
		}
		l.c.SetView(v)
	}
}

// receive is the Call handler: it merges the counts edge from sent.
func (cl *sharedLimits) receive(from string, req []byte) []byte {
	limits := *cl.byID.Load()
	for len(req) > 0 {
		n, l := binary.Uvarint(req)
		if l <= 0 || n > uint64(len(req)-l) {
			cl.log.Debug("rate limits: malformed counts", "edge", from)
			return nil
		}
		id := string(req[l : l+int(n)])
		counts, rest, err := ratelimit.ReadCounts(req[l+int(n):])
		if err != nil {
			cl.log.Debug("rate limits: malformed counts", "edge", from, "err", err)
			return nil
		}
		if lim := limits[id]; lim != nil {
			lim.c.Merge(from, counts)
		}
		req = rest
	}
	return nil
}

// appendLimitCounts appends the counts of the limit id to b, if any.
func appendLimitCounts(b []byte, id string, counts []ratelimit.Count) []byte {
	if len(counts) == 0 {
		return b
	}
	b = binary.AppendUvarint(b, uint64(len(id)))
	b = append(b, id...)
	return ratelimit.AppendCounts(b, counts)
}
