package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// sessions returns how many sessions of route shop the edge's /sticky
// reports it holds.
func (e *edgeProc) sessions() (int, error) {
	resp, err := http.Get("http://" + e.admin + "/sticky")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var st struct {
		Routes []struct {
			Route    string `json:"route"`
			Sessions int    `json:"sessions"`
		} `json:"routes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return 0, err
	}
	if len(st.Routes) != 1 || st.Routes[0].Route != "shop" {
		return 0, fmt.Errorf("/sticky routes %+v", st.Routes)
	}
	return st.Routes[0].Sessions, nil
}

// TestStickySessionsSurviveAKilledEdge: 1,000 sessions begun through
// three edge processes A, B and C; A is killed (SIGKILL: no leave, no
// goodbye) as soon as the last one began, before gossip could spread
// them; one request per session through B and C, and again a minute
// later: every session keeps its backend.
func TestStickySessionsSurviveAKilledEdge(t *testing.T) {
	dir := t.TempDir()
	gossipKey, stickyKey := keygen(t, dir, "gossip.key"), keygen(t, dir, "sticky.key")
	var eps []string
	for i := range 4 {
		name := fmt.Sprintf("app-%d", i)
		b := startBackend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })
		eps = append(eps, fmt.Sprintf("{ address: 127.0.0.1:%d }", b.port))
	}
	var edges []*edgeProc
	for _, name := range []string{"a", "b", "c"} {
		seed := ""
		if len(edges) > 0 {
			seed = edges[0].gossip
		}
		edges = append(edges, startEdgeProc(t, name, seed, gossipKey, fmt.Sprintf(`
edge:
  sticky: { key_file: %s }
  routes:
    - name: shop
      matches: [{ path: { prefix: /shop } }]
      sticky: { mode: header, header: X-User }
      backends: [{ service: app }]
upstreams:
  - { service: app, endpoints: [%s] }
`, stickyKey, strings.Join(eps, ", "))))
	}

	const n = 1000
	c := newClient()
	ask := func(e *edgeProc, user int) (string, error) {
		req, _ := http.NewRequest("GET", "http://"+e.listen+"/shop/cart", nil)
		req.Header.Set("X-User", fmt.Sprintf("user-%d", user))
		resp, err := c.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return "", fmt.Errorf("through %s: %d %s", e.name, resp.StatusCode, b)
		}
		return string(b), nil
	}
	// each sends one request per session through pick(user), eight at a
	// time, and returns where each went.
	each := func(pick func(user int) *edgeProc) []string {
		out := make([]string, n)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var firstErr error
		users := make(chan int)
		for range 8 {
			wg.Go(func() {
				for u := range users {
					got, err := ask(pick(u), u)
					mu.Lock()
					if err != nil && firstErr == nil {
						firstErr = err
					}
					out[u] = got
					mu.Unlock()
				}
			})
		}
		for u := range n {
			users <- u
		}
		close(users)
		wg.Wait()
		if firstErr != nil {
			t.Fatal(firstErr)
		}
		return out
	}

	where := each(func(u int) *edgeProc { return edges[u%3] })
	spread := map[string]int{}
	for _, w := range where {
		spread[w]++
	}
	if len(spread) != 4 {
		t.Fatalf("%d sessions spread over %v: want all four backends", n, spread)
	}
	t.Logf("%d sessions begun through three edges: %v", n, spread)
	if err := edges[0].proc.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	edges[0].proc.wait(t, 10*time.Second)
	check := func(when string) {
		t.Helper()
		got := each(func(u int) *edgeProc { return edges[1+u%2] })
		kept := 0
		for u := range n {
			if got[u] == where[u] {
				kept++
			}
		}
		if kept != n {
			t.Fatalf("%s: %d of %d sessions kept their backend", when, kept, n)
		}
		t.Logf("%s: %d of %d sessions kept their backend through B and C", when, kept, n)
	}
	check("right after A was killed")
	// Killed before gossip could spread the sessions: B and C held them
	// because an edge hands every session it begins to its owners.
	took := meshtest.WaitFor(t, 50*time.Second, "B and C to hold every session", func() bool {
		for _, e := range edges[1:] {
			if got, err := e.sessions(); err != nil || got != n {
				return false
			}
		}
		return true
	})
	t.Logf("B and C each held all %d sessions %v after A was killed", n, took.Round(time.Millisecond))
	time.Sleep(time.Minute - took) // the delay under test, not a wait for a condition
	check("a minute later")
	if !edges[1].proc.logged(`msg="gossip: member gone"`, "member=a") {
		t.Error("B never declared A gone: the minute did not cover failure detection")
	}
}
