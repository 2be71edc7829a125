package gossip

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// TestThirtyMembers starts 30 members joining through one seed and logs
// how long it takes for: the full view to converge, a new member's
// instance to reach all 30, its graceful leave to reach all 30, and a
// killed member to be dropped by the rest.
func TestThirtyMembers(t *testing.T) {
	if testing.Short() {
		t.Skip("30 members: skipped in -short mode")
	}
	const n = 30
	idOf := func(i int) string { return fmt.Sprintf("m%02d-1", i) }
	want := func(count int, except ...int) []string {
		var out []string
		for i := range count {
			if !slices.Contains(except, i) {
				out = append(out, idOf(i))
			}
		}
		return out
	}
	viewOK := func(pools []*Pool, ids []string) func() bool {
		return func() bool {
			for _, p := range pools {
				if len(p.endpoints("cart")) != len(ids) {
					return false
				}
			}
			return allSee(pools, ids...)()
		}
	}

	start := time.Now()
	seed := startPool(t, testConfig("m00"))
	pools := []*Pool{seed}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := 1; i < n; i++ {
		wg.Go(func() {
			p, err := Start(testConfig(fmt.Sprintf("m%02d", i), seed.Addr()))
			if err != nil {
				t.Errorf("start m%02d: %v", i, err)
				return
			}
			t.Cleanup(func() { _ = p.Shutdown() })
			mu.Lock()
			pools = append(pools, p)
			mu.Unlock()
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for _, p := range pools {
		var i int
		fmt.Sscanf(p.Name(), "m%d", &i)
		publish(t, p, testInstance(idOf(i), 9000+i), true)
	}
	took := meshtest.WaitFor(t, 30*time.Second, "30 members to see 30 instances", viewOK(pools, want(n)))
	t.Logf("full view (%d members x %d instances) converged %v after the publishes, %v after the first start",
		n, n, took, time.Since(start))
	// Each pool's live-member count when the wait last looked, shown if
	// it times out.
	counts := map[string]int{}
	func() {
		defer func() {
			if t.Failed() {
				t.Logf("live members seen by each pool: %v", counts)
			}
		}()
		took = meshtest.WaitFor(t, 20*time.Second, "30 members to know each other", func() bool {
			ok := true
			for _, p := range pools {
				counts[p.Name()] = p.NumMembers()
				ok = ok && counts[p.Name()] == n
			}
			return ok
		})
	}()
	t.Logf("membership (memberlist) converged %v later", took)

	// A member joins: time until all 30 see its instance.
	start = time.Now()
	late := startPool(t, testConfig(fmt.Sprintf("m%02d", n), seed.Addr()))
	publish(t, late, testInstance(idOf(n), 9000+n), true)
	took = meshtest.WaitFor(t, 20*time.Second, "all 30 to see the joiner", viewOK(pools, want(n+1)))
	t.Logf("join seen by all %d members in %v", n, took)

	// It leaves gracefully: time until all 30 drop it.
	start = time.Now()
	if err := late.Leave(leaveCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	left := time.Now()
	meshtest.WaitFor(t, 20*time.Second, "all 30 to drop the leaver", viewOK(pools, want(n)))
	t.Logf("graceful leave seen by all %d members %v after calling Leave (which returned after %v)",
		n, time.Since(start), left.Sub(start))

	// A member is killed: time until the other 29 drop it.
	victim := pools[n-1]
	var vi int
	fmt.Sscanf(victim.Name(), "m%d", &vi)
	start = time.Now()
	if err := victim.Shutdown(); err != nil {
		t.Fatal(err)
	}
	rest := pools[:n-1]
	took = meshtest.WaitFor(t, 45*time.Second, "the other 29 to drop the killed member", viewOK(rest, want(n, vi)))
	t.Logf("killed member dropped by all %d others in %v", n-1, took)
}
