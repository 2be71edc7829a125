package sidecar

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/policy/authn"
)

// A JWT provider's key set is public, so the edges of a gossip pool
// fetch it once for all: the provider's owner (rendezvous hashing of
// its name over the edges, those that publish a route digest) fetches
// it and publishes it under "jwks/<provider>/<i>", in chunks that fit
// the store's values; every edge adopts a published set as soon as it
// arrives. An edge that needs a fetch (at start, at expiry, for an
// unknown key ID) and is not the owner asks the owner by writing
// "jwks-want/<provider>" and pushing it to the owner, and waits for a
// set the owner fetched since; if none comes within jwksWait, it fetches
// for itself. A rotation so costs the issuer one fetch for all edges;
// the periodic refreshes, at most one per edge per max-age, as without
// sharing.
const (
	jwksPrefix     = "jwks/"
	jwksWantPrefix = "jwks-want/"
	// jwksChunk is the JWKS bytes in one store entry; jwksMaxChunks
	// bounds a shared set (a larger one is fetched by every edge).
	jwksChunk     = 800
	jwksMaxChunks = 64
)

// jwksWait is how long an edge waits for the owner's set before it
// fetches for itself.
const jwksWait = 3 * time.Second

// sharedJWKS fetches one provider's key set for the edges of a pool.
type sharedJWKS struct {
	name  string
	pool  *gossip.Pool
	store *gossip.Store
	http  authn.Fetcher
	p     *authn.Provider // set by start, before any fetch
	now   func() time.Time
	// asker is the edge whose ask the owner is answering: publish hands
	// it the set last, so that when it answers its client every other
	// edge has the set too.
	asker atomic.Pointer[string]
	// lastStart is when the last fetch as the owner began (Unix ms): a
	// set counts as fetched when its request went out, so that one asked
	// for after that is never taken for an answer to the ask.
	lastStart atomic.Int64
}

// newSharedJWKS returns the shared fetch of provider name, whose own
// fetch is http.
func newSharedJWKS(name string, pool *gossip.Pool, http authn.Fetcher, now func() time.Time) *sharedJWKS {
	return &sharedJWKS{name: name, pool: pool, store: pool.Store(), http: http, now: now}
}

// start adopts published sets and answers asks for p, until ctx ends or
// the pool shuts down.
func (j *sharedJWKS) start(ctx context.Context, p *authn.Provider) {
	j.p = p
	sets, cancelSets := j.store.Subscribe(jwksPrefix + j.name + "/")
	wants, cancelWants := j.store.Subscribe(jwksWantPrefix + j.name)
	go func() {
		defer cancelSets()
		defer cancelWants()
		var answered uint64
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-sets:
				if !ok {
					return
				}
				if body, fetched, maxAge, ok := j.published(); ok {
					p.Offer(body, fetched, maxAge) // a bad set was refused by its publisher's parse too
				}
			case _, ok := <-wants:
				if !ok {
					return
				}
				e, found := j.store.Get(jwksWantPrefix + j.name)
				if !found || e.Version <= answered || j.owner() != j.pool.Name() {
					continue
				}
				answered = e.Version
				asker := e.Owner
				j.asker.Store(&asker)
				asked, _ := strconv.ParseInt(string(e.Value), 10, 64)
				go func() {
					// Joining a fetch that began before the ask does not
					// answer it: fetch again then.
					p.Refresh(ctx)
					if j.lastStart.Load() < asked {
						p.Refresh(ctx)
					}
				}()
			}
		}
	}()
}

// owner returns the edge that fetches for all: the rendezvous winner of
// the provider's name over the edges of the pool, this one included.
func (j *sharedJWKS) owner() string {
	return gossip.Rank(j.name, j.edges())[0]
}

// edges returns the edges of the pool (those that publish a route
// digest), this one included.
func (j *sharedJWKS) edges() []string {
	edges := []string{j.pool.Name()}
	for _, e := range j.store.List(routeDigestPrefix) {
		if n := strings.TrimPrefix(e.Key, routeDigestPrefix); n != j.pool.Name() {
			edges = append(edges, n)
		}
	}
	return edges
}

// fetch is the provider's Fetcher: as the owner, a fetch (or the one
// just made) published for every edge; otherwise the owner's, asked for
// and waited for, or this edge's own when the owner does not answer.
func (j *sharedJWKS) fetch(ctx context.Context) ([]byte, time.Duration, error) {
	owner := j.owner()
	if owner == j.pool.Name() {
		return j.fetchAndPublish(ctx)
	}
	asked := j.now()
	want := jwksWantPrefix + j.name
	if err := j.store.Set(want, strconv.AppendInt(nil, asked.UnixMilli(), 10), gossip.SetOptions{TTL: time.Minute}); err == nil {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		j.pool.PushKey(pctx, owner, want) // gossip carries it too, if this fails
		cancel()
	}
	signal, cancel := j.store.Subscribe(jwksPrefix + j.name + "/")
	defer cancel()
	timer := time.NewTimer(jwksWait)
	defer timer.Stop()
	for {
		// A set the owner fetched since the ask (its clock and ours agree
		// to the millisecond on one host; NTP keeps hosts close).
		if body, fetched, maxAge, ok := j.published(); ok && fetched.UnixMilli() >= asked.UnixMilli() {
			return body, maxAge, nil
		}
		select {
		case <-signal:
		case <-timer.C:
			return j.http(ctx) // the owner did not answer: fetch for ourselves
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
}

// fetchAndPublish fetches and publishes the set for the other edges.
// Concurrent asks share one fetch (the provider's fetch in flight).
func (j *sharedJWKS) fetchAndPublish(ctx context.Context) ([]byte, time.Duration, error) {
	start := j.now()
	j.lastStart.Store(start.UnixMilli())
	body, maxAge, err := j.http(ctx)
	if err != nil {
		return nil, 0, err
	}
	j.publish(ctx, body, start, maxAge)
	return body, maxAge, nil
}

// publish writes body in chunks: "<fetched ms>:<max-age s>:<sha>:<i>:<n>:"
// then the chunk, and hands the chunks to every other edge directly
// (gossip would take up to a few hundred ms), so that a client that
// moves to another edge right after a rotation finds the new key there.
// A set too large to share is not published.
func (j *sharedJWKS) publish(ctx context.Context, body []byte, fetched time.Time, maxAge time.Duration) {
	n := (len(body) + jwksChunk - 1) / jwksChunk
	if n == 0 || n > jwksMaxChunks {
		return
	}
	sum := sha256.Sum256(body)
	tag := hex.EncodeToString(sum[:8])
	ttl := maxAge + 24*time.Hour
	for i := range n {
		chunk := body[i*jwksChunk : min((i+1)*jwksChunk, len(body))]
		head := fmt.Sprintf("%d:%d:%s:%d:%d:", fetched.UnixMilli(), int(maxAge/time.Second), tag, i, n)
		j.store.Set(fmt.Sprintf("%s%s/%d", jwksPrefix, j.name, i), append([]byte(head), chunk...), gossip.SetOptions{TTL: ttl})
	}
	for _, e := range j.store.List(jwksPrefix + j.name + "/") {
		if i, err := strconv.Atoi(strings.TrimPrefix(e.Key, jwksPrefix+j.name+"/")); err == nil && i >= n {
			j.store.Delete(e.Key)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	push := func(edge string) {
		for i := range n {
			if j.pool.PushKey(ctx, edge, fmt.Sprintf("%s%s/%d", jwksPrefix, j.name, i)) != nil {
				return // gossip carries it
			}
		}
	}
	asker := ""
	if a := j.asker.Swap(nil); a != nil {
		asker = *a
	}
	var wg sync.WaitGroup
	for _, edge := range j.edges() {
		if edge != j.pool.Name() && edge != asker {
			wg.Go(func() { push(edge) })
		}
	}
	wg.Wait()
	if asker != "" && asker != j.pool.Name() {
		push(asker) // last: when it answers, the others have the set
	}
}

// published returns the newest complete set in the store.
func (j *sharedJWKS) published() (body []byte, fetched time.Time, maxAge time.Duration, ok bool) {
	type set struct {
		fetched, maxAge int64
		n               int
		chunks          map[int][]byte
	}
	sets := map[string]*set{}
	for _, e := range j.store.List(jwksPrefix + j.name + "/") {
		parts := bytes.SplitN(e.Value, []byte(":"), 6)
		if len(parts) != 6 {
			continue
		}
		f, err1 := strconv.ParseInt(string(parts[0]), 10, 64)
		age, err2 := strconv.ParseInt(string(parts[1]), 10, 64)
		i, err3 := strconv.Atoi(string(parts[3]))
		n, err4 := strconv.Atoi(string(parts[4]))
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil || n < 1 || n > jwksMaxChunks || i < 0 || i >= n {
			continue
		}
		k := string(parts[0]) + ":" + string(parts[2])
		s := sets[k]
		if s == nil {
			s = &set{fetched: f, maxAge: age, n: n, chunks: map[int][]byte{}}
			sets[k] = s
		}
		s.chunks[i] = parts[5]
	}
	var best *set
	var bestTag string
	for k, s := range sets {
		if len(s.chunks) == s.n && (best == nil || s.fetched > best.fetched) {
			best, bestTag = s, k[strings.IndexByte(k, ':')+1:]
		}
	}
	if best == nil {
		return nil, time.Time{}, 0, false
	}
	for i := range best.n {
		body = append(body, best.chunks[i]...)
	}
	sum := sha256.Sum256(body)
	if hex.EncodeToString(sum[:8]) != bestTag {
		return nil, time.Time{}, 0, false
	}
	return body, time.UnixMilli(best.fetched), time.Duration(best.maxAge) * time.Second, true
}
