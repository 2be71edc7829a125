package sidecar

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/policy/ratelimit"
	"github.com/sidemesh/sidemesh/sidecar/edge"
)

// limitedEdges are edges in one gossip pool, each routing / to one
// backend under one rate limit.
type limitedEdges struct{ *edgePool }

// startLimitedEdges starts n edges, named edge-0 and on, under the rate
// limit limitYAML, and waits until each sees the others share it.
func startLimitedEdges(t *testing.T, n int, limitYAML string) *limitedEdges {
	t.Helper()
	app := namedBackend(t, "app")
	le := &limitedEdges{newEdgePool(t, n, func(addr string) string {
		return fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - name: api
      matches: [{ path: { prefix: / } }]
      backends: [{ service: app }]
      rate_limits: [%s]
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
`, addr, limitYAML, app)
	})}
	le.waitEdges(n)
	return le
}

// waitEdges waits until every running edge sees n edges share its limit.
func (le *limitedEdges) waitEdges(n int, except ...int) {
	le.t.Helper()
	meshtest.WaitFor(le.t, 30*time.Second, fmt.Sprintf("%d edges sharing their limits", n), func() bool {
		for i, e := range le.edges {
			if slices.Contains(except, i) {
				continue
			}
			if st := e.RateLimits(); len(st) != 1 || st[0].Edges != n {
				return false
			}
		}
		return true
	})
}

// get sends GET / to edge i and returns the status.
func (le *limitedEdges) get(c *http.Client, i int) int {
	resp, err := c.Get("http://" + le.addrs[i] + "/x")
	if err != nil {
		le.t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// windowStartAfter returns the start of the first window of length w
// (windows are numbered from the Unix epoch, as ratelimit.Cluster does)
// that begins after now.
func windowStartAfter(now time.Time, w time.Duration) time.Time {
	return time.Unix(0, (now.UnixNano()/int64(w)+1)*int64(w))
}

// TestClusterLimitAcrossEdges: 300 requests spread over three edges
// within one window admit the quota and at most the computed overshoot
// bound beyond it; the RateLimit headers and Retry-After are there.
func TestClusterLimitAcrossEdges(t *testing.T) {
	const quota, window = 20, 2 * time.Second // 10/s, burst 20
	le := startLimitedEdges(t, 3, `{ name: per-client, rate: 10/s, burst: 20, scope: cluster }`)
	edges, addrs := le.edges, le.addrs
	bound := edges[0].RateLimits()[0].Bound
	if want := 2 * 2; bound != want { // (N-1) × ⌈10/s × (100 ms + 50 ms)⌉
		t.Fatalf("bound %d, want %d", bound, want)
	}
	if got := (adminState{s: edges[1]}).RateLimits(); len(got) != 1 || got[0].Scope != "cluster" || got[0].Edges != 3 || got[0].OvershootBound != 4 {
		t.Fatalf("GET /rate_limits: %+v, want the cluster limit shared by 3 edges with a bound of 4", got)
	}

	begin := windowStartAfter(time.Now(), window)
	end := begin.Add(window)
	time.Sleep(time.Until(begin)) // align with the shared window (an alignment, not a wait for a condition)
	c := &http.Client{Timeout: 5 * time.Second}
	var admitted, inWindow, refused atomic.Int64
	var headersMissing atomic.Int64
	var wg sync.WaitGroup
	tick := time.NewTicker(5 * time.Millisecond) // 300 requests over 1.5 s: 200/s against 10/s
	for i := range 300 {
		<-tick.C
		wg.Go(func() {
			resp, err := c.Get("http://" + addrs[i%3] + "/x")
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			got := time.Now()
			if resp.Header.Get("RateLimit-Policy") != `"per-client";q=20;w=2` || !strings.HasPrefix(resp.Header.Get("RateLimit"), `"per-client";r=`) {
				headersMissing.Add(1)
			}
			switch resp.StatusCode {
			case 200:
				admitted.Add(1)
				if got.Before(end) {
					inWindow.Add(1)
				}
			case 429:
				refused.Add(1)
				if resp.Header.Get("Retry-After") == "" {
					headersMissing.Add(1)
				}
			default:
				t.Errorf("status %d", resp.StatusCode)
			}
		})
	}
	tick.Stop()
	wg.Wait()
	sent := time.Now()
	t.Logf("300 requests over 3 edges: %d admitted (%d answered within the window), %d refused; quota %d, bound %d; done %v after the window began",
		admitted.Load(), inWindow.Load(), refused.Load(), quota, bound, sent.Sub(begin).Round(time.Millisecond))
	if headersMissing.Load() > 0 {
		t.Errorf("%d answers without RateLimit-Policy, RateLimit or (on 429) Retry-After", headersMissing.Load())
	}
	if n := inWindow.Load(); n > quota+int64(bound) {
		t.Fatalf("%d admitted within one window, more than the quota %d + bound %d", n, quota, bound)
	}
	if sent.Before(end) && admitted.Load() < quota {
		t.Fatalf("only %d admitted of a quota of %d, with demand far above it", admitted.Load(), quota)
	}
	var late uint64
	for _, e := range edges {
		late += e.sharedLimits.late.Load()
	}
	t.Logf("late sends of counts: %d", late)
}

// TestClusterLimitOneConnection: all of a client's traffic on one
// HTTP/2 connection to one edge still gets the whole limit, no less (not
// a third for the three edges): each edge paces a key to the limit's
// rate (pace 2 at once, then 10/s), and the quota is the cluster's.
// Sent at 30/s for 3 s, the edge admits at most pace + rate × the time
// the requests took, and at least most of rate × the time they were sent
// over (a load that delays requests only bunches them).
func TestClusterLimitOneConnection(t *testing.T) {
	const rate, pace = 10, 2
	addrs := startLimitedEdges(t, 3, `{ name: per-client, rate: 10/s, burst: 20, scope: cluster }`).addrs
	h2c := &http.Client{Timeout: 5 * time.Second, Transport: &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}}
	var admitted atomic.Int64
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / 30)
	begin := time.Now()
	for range 90 {
		<-tick.C
		wg.Go(func() {
			resp, err := h2c.Get("http://" + addrs[0] + "/x")
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.ProtoMajor != 2 {
				t.Errorf("protocol %s, want HTTP/2", resp.Proto)
			}
			if resp.StatusCode == 200 {
				admitted.Add(1)
			}
		})
	}
	sending := time.Since(begin)
	tick.Stop()
	wg.Wait()
	took := time.Since(begin)
	n := float64(admitted.Load())
	t.Logf("90 requests on one HTTP/2 connection, sent over %v, answered within %v: %v admitted (rate × send time %.0f)",
		sending.Round(time.Millisecond), took.Round(time.Millisecond), n, rate*sending.Seconds())
	if most := pace + rate*took.Seconds() + 1; n > most {
		t.Fatalf("%v admitted, more than pace + rate × %v = %.1f", n, took, most)
	}
	if least := 0.6 * rate * sending.Seconds(); n < least {
		t.Fatalf("%v admitted on one connection to one edge, fewer than %.1f: not the whole limit", n, least)
	}
}

// TestClusterLimitPartition: an edge whose two peers die without
// leaving is partitioned; on_partition: local_share then enforces a
// third of the quota by its own counts, and the state shows in
// RateLimits (the sidemesh.ratelimit.partitioned metric).
func TestClusterLimitPartition(t *testing.T) {
	le := startLimitedEdges(t, 3, `{ name: per-client, rate: 1/m, burst: 30, scope: cluster, on_partition: local_share }`)
	edges, addrs := le.edges, le.addrs
	for _, e := range edges[1:] {
		e.backends.pool.Shutdown() // dies without leaving
	}
	began := time.Now()
	// memberlist's failure detection slows down on a member that hears
	// from no one (Lifeguard): declaring both dead takes tens of seconds.
	meshtest.WaitFor(t, 90*time.Second, "edge-0 sees itself partitioned", func() bool {
		st := edges[0].RateLimits()[0]
		return st.Partitioned && st.Edges == 1
	})
	t.Logf("partition noticed after %v", time.Since(began).Round(time.Millisecond))
	c := &http.Client{Timeout: 5 * time.Second}
	admitted := 0
	for range 40 {
		resp, err := c.Get("http://" + addrs[0] + "/x")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == 200 {
			admitted++
		}
	}
	if admitted != 10 {
		t.Fatalf("partitioned with local_share: %d of 40 admitted, want a third of 30", admitted)
	}
	var st edge.LimitStats = edges[0].RateLimits()[0]
	if !st.Partitioned || st.Scope != "cluster" {
		t.Fatalf("stats %+v, want a partitioned cluster limit", st)
	}
}

// exactOwner returns the name of the edge that owns the test client's
// key (client_ip: 127.0.0.1) of limit per-client on route api among
// names.
func exactOwner(names []string) string {
	return gossip.Rank(limitID("api", "per-client")+"/"+hashKey(ratelimit.KeyHash("ip:127.0.0.1")), names)[0]
}

// admitUntilRefused sends requests to the edges in turn until the last
// 30 in a row were refused, and returns how many were admitted; at most
// limit requests.
func (le *limitedEdges) admitUntilRefused(c *http.Client, through []int, limit int) int {
	admitted, refusedInARow := 0, 0
	for i := 0; i < limit && refusedInARow < 30; i++ {
		switch code := le.get(c, through[i%len(through)]); code {
		case 200:
			admitted++
			refusedInARow = 0
		case 429:
			refusedInARow++
		default:
			le.t.Fatalf("status %d", code)
		}
	}
	return admitted
}

const exactLimitYAML = `{ name: per-client, rate: 1/h, burst: 20, scope: exact }`

// TestExactLimitThroughNonOwners: requests only through the edges that
// do not own the key lease their tokens from the owner and admit exactly
// the limit.
func TestExactLimitThroughNonOwners(t *testing.T) {
	le := startLimitedEdges(t, 3, exactLimitYAML)
	owner := exactOwner([]string{"edge-0", "edge-1", "edge-2"})
	var others []int
	for i := range 3 {
		if fmt.Sprintf("edge-%d", i) != owner {
			others = append(others, i)
		}
	}
	c := &http.Client{Timeout: 5 * time.Second}
	if n := le.admitUntilRefused(c, others, 200); n != 20 {
		t.Fatalf("%d admitted through the non-owners %v (owner %s), want exactly 20", n, others, owner)
	}
}

// TestExactLimitOwnerDies: the owner dies without leaving mid-window;
// its backup takes over from the saved bucket, granting no fresh limit.
func TestExactLimitOwnerDies(t *testing.T) {
	le := startLimitedEdges(t, 3, exactLimitYAML)
	owner := exactOwner([]string{"edge-0", "edge-1", "edge-2"})
	var others []int
	var dead int
	for i := range 3 {
		if fmt.Sprintf("edge-%d", i) == owner {
			dead = i
		} else {
			others = append(others, i)
		}
	}
	c := &http.Client{Timeout: 5 * time.Second}
	admitted := 0
	for i := 0; admitted < 12; i++ { // through everyone, the owner too
		if i > 100 {
			t.Fatalf("only %d admitted of 100 before the owner died", admitted)
		}
		if le.get(c, i%3) == 200 {
			admitted++
		}
	}
	le.edges[dead].backends.pool.Shutdown() // dies without leaving
	le.waitEdges(2, dead)
	admitted += le.admitUntilRefused(c, others, 200)
	if admitted != 20 {
		t.Fatalf("%d admitted in all, 12 before the owner %s died, want exactly 20", admitted, owner)
	}
}

// TestExactLimitEdgeJoins: a fourth edge that joins mid-window and
// becomes the key's owner gathers its state from the old owner: no
// fresh limit.
func TestExactLimitEdgeJoins(t *testing.T) {
	le := startLimitedEdges(t, 3, exactLimitYAML)
	names := []string{"edge-0", "edge-1", "edge-2"}
	newName := ""
	for i := 0; newName == ""; i++ {
		if n := fmt.Sprintf("edge-new-%d", i); exactOwner(append(names, n)) == n {
			newName = n
		}
	}
	c := &http.Client{Timeout: 5 * time.Second}
	admitted := 0
	for i := 0; admitted < 12; i++ {
		if i > 100 {
			t.Fatalf("only %d admitted of 100 before the new edge", admitted)
		}
		if le.get(c, i%3) == 200 {
			admitted++
		}
	}
	le.add(newName)
	le.waitEdges(4)
	admitted += le.admitUntilRefused(c, []int{3, 0, 1, 2}, 200)
	if admitted != 20 {
		t.Fatalf("%d admitted in all, 12 before %s joined as the owner, want exactly 20", admitted, newName)
	}
}
