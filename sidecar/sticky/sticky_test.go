package sticky_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/sidecar/sticky"
)

// known waits until every running edge holds n sessions of the route.
func (p *pool) known(n int) {
	p.t.Helper()
	meshtest.WaitFor(p.t, 5*time.Second, fmt.Sprintf("%d sessions on every edge", n), func() bool {
		for _, e := range p.edges {
			if e.stopped {
				continue
			}
			st := e.sc.Sticky()
			if len(st) != 1 || st[0].Table.Entries != n {
				return false
			}
		}
		return true
	})
}

// TestCookieSessionAcrossEdges: a session begun through edge A keeps
// every request on one backend through A, B and C; the cookie names the
// session, never a backend, and carries the safe attributes.
func TestCookieSessionAcrossEdges(t *testing.T) {
	apps := startBackends(t, 4)
	p := newPool(t, "{ mode: cookie }", apps)
	a, b, c := p.add(nil), p.add(nil), p.add(nil)
	cl := newClient(t)
	code, first, resp := cl.get(a, nil)
	if code != 200 {
		t.Fatalf("first request: %d %q", code, first)
	}
	var ck string
	for _, line := range resp.Header.Values("Set-Cookie") {
		if strings.HasPrefix(line, "sm_shop=") {
			ck = line
		}
	}
	if ck == "" {
		t.Fatalf("Set-Cookie = %q, want the session cookie", resp.Header.Values("Set-Cookie"))
	}
	for _, want := range []string{"sm_shop=", "Path=/shop", "HttpOnly", "Secure", "SameSite=Strict", "Max-Age=43200"} {
		if !strings.Contains(ck, want) {
			t.Errorf("cookie %q lacks %s", ck, want)
		}
	}
	for _, a := range apps {
		_, port := hostPort(a.addr)
		if strings.Contains(ck, port) || strings.Contains(ck, a.name) {
			t.Errorf("cookie %q names backend %s (%s)", ck, a.name, a.addr)
		}
	}
	p.known(1)
	for i := range 50 {
		e := []*edgeNode{a, b, c}[i%3]
		if got := cl.mustGet(e, nil); got != first {
			t.Fatalf("request %d through %s reached %s, the session is on %s", i, e.name, got, first)
		}
	}
	for _, e := range p.edges {
		st := e.sc.Sticky()[0]
		if e == a && st.Created != 1 || e != a && st.Created != 0 {
			t.Errorf("%s created %d sessions", e.name, st.Created)
		}
	}

	// Another client gets a session of its own; 40 clients spread over
	// the backends.
	reached := map[string]bool{}
	for range 40 {
		reached[newClient(t).mustGet(b, nil)] = true
	}
	if len(reached) < 3 {
		t.Errorf("40 new sessions reached only %v", reached)
	}
}

// TestTamperedCookies: a cookie with a flipped byte, the victim's
// session ID with no or a forged signature, and garbage are no cookie:
// the request is balanced as new and gets a new session, never the
// session the cookie tried to name. (Another route's cookie:
// TestCookieBelongsToItsRoute; an expired one: TestExpiredCookieReplayed.)
func TestTamperedCookies(t *testing.T) {
	apps := startBackends(t, 4)
	p := newPool(t, "{ mode: cookie }", apps)
	a := p.add(nil)
	victim := newClient(t)
	victim.mustGet(a, nil)
	value := victim.cookie["sm_shop"]
	flip := []byte(value)
	flip[3] ^= 1
	id, _, _ := strings.Cut(value, ".")
	for name, forged := range map[string]string{
		"flipped byte":         string(flip),
		"victim's id, no sig":  id,
		"victim's id, bad sig": id + ".AAAAAAAAAAAAAAAAAAAAAA",
		"garbage":              "x",
	} {
		attacker := newClient(t)
		attacker.cookie["sm_shop"] = forged
		code, _, resp := attacker.get(a, nil)
		if code != 200 {
			t.Fatalf("%s: %d", name, code)
		}
		if got := attacker.cookie["sm_shop"]; got == forged || got == value || !strings.Contains(strings.Join(resp.Header.Values("Set-Cookie"), ";"), "sm_shop=") {
			t.Errorf("%s: the edge kept the forged cookie or gave the victim's (%q)", name, got)
		}
	}
	if st := a.sc.Sticky()[0]; st.Misses != 4 || st.Created != 5 || st.Hits != 0 {
		t.Errorf("stats %+v: want 4 misses, 5 sessions, no hit", st)
	}
}

// TestFallbackMovesEverywhere: when a session's backend dies, the
// session moves to one new backend, the same through every edge, and
// stays there.
func TestFallbackMovesEverywhere(t *testing.T) {
	apps := startBackends(t, 4)
	p := newPool(t, "{ mode: cookie }", apps)
	a, b, c := p.add(nil), p.add(nil), p.add(nil)
	cl := newClient(t)
	first := cl.mustGet(a, nil)
	p.known(1)
	for _, app := range apps {
		if app.name == first {
			app.stop()
		}
	}
	var moved string
	for i := range 30 {
		e := []*edgeNode{b, c, a}[i%3]
		got := cl.mustGet(e, nil)
		if got == first {
			t.Fatalf("request %d through %s reached the stopped %s", i, e.name, first)
		}
		if moved == "" {
			moved = got
		}
		if got != moved {
			t.Fatalf("request %d through %s reached %s; the session moved to %s", i, e.name, got, moved)
		}
	}
}

// TestStrictRefuses: a strict session whose backend is down is answered
// 503 with Retry-After, and is not moved.
func TestStrictRefuses(t *testing.T) {
	apps := startBackends(t, 3)
	p := newPool(t, "{ mode: header, header: X-User, on_unavailable: strict }", apps)
	a := p.add(nil)
	cl := newClient(t)
	user := map[string]string{"X-User": "ada"}
	first := cl.mustGet(a, user)
	for _, app := range apps {
		if app.name == first {
			app.stop()
		}
	}
	for i := range 5 {
		code, body, resp := cl.get(a, user)
		if code != 503 || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("request %d: %d %q (Retry-After %q), want 503 with Retry-After", i, code, body, resp.Header.Get("Retry-After"))
		}
	}
	if got := cl.mustGet(a, map[string]string{"X-User": "grace"}); got == first {
		t.Errorf("a new session went to the stopped %s", first)
	}
}

// TestSessionBound: a route's sessions are bounded; the least recently
// used are forgotten and counted, the recent ones kept.
func TestSessionBound(t *testing.T) {
	apps := startBackends(t, 3)
	p := newPool(t, "{ mode: header, header: X-User, max_sessions: 50 }", apps)
	a := p.add(nil)
	cl := newClient(t)
	where := map[string]string{}
	for i := range 200 {
		u := fmt.Sprintf("user-%d", i)
		where[u] = cl.mustGet(a, map[string]string{"X-User": u})
	}
	st := a.sc.Sticky()[0]
	if st.Table.Entries != 50 || st.Table.Evictions != 150 {
		t.Fatalf("table %+v (%+v): want 50 sessions and 150 evicted", st.Table, st)
	}
	hits := st.Hits
	for i := 150; i < 200; i++ {
		u := fmt.Sprintf("user-%d", i)
		if got := cl.mustGet(a, map[string]string{"X-User": u}); got != where[u] {
			t.Fatalf("%s moved from %s to %s", u, where[u], got)
		}
	}
	if st := a.sc.Sticky()[0]; st.Hits-hits != 50 {
		t.Errorf("the 50 most recent sessions: %d hits", st.Hits-hits)
	}
}

// TestLearnAcrossEdges: the application begins a session of its own (a
// JSESSIONID cookie) in a response through A; the next request with that
// cookie reaches the same backend through B at once, before gossip could
// have spread it (B asks the session's owner edge), and through C after
// 100 ms and 2 s.
func TestLearnAcrossEdges(t *testing.T) {
	apps := startBackends(t, 4)
	p := newPool(t, "{ mode: learn, learn: { cookie: JSESSIONID } }", apps)
	a, b, c := p.add(nil), p.add(nil), p.add(nil)
	for i := range 30 {
		cl := newClient(t)
		first := cl.mustGet(a, nil)
		if cl.cookie["JSESSIONID"] == "" {
			t.Fatal("the backend set no JSESSIONID")
		}
		if got := cl.mustGet(b, nil); got != first {
			t.Fatalf("session %d: through A %s, through B at once %s", i, first, got)
		}
		if got := cl.mustGet(c, nil); got != first {
			t.Fatalf("session %d: through A %s, through C at once %s", i, first, got)
		}
	}
	var lookups, found uint64
	for _, e := range []*edgeNode{b, c} {
		st := e.sc.Sticky()[0]
		lookups, found = lookups+st.OwnerLookups, found+st.OwnerFound
		if st.OwnerErrors != 0 {
			t.Errorf("%s: %d owner exchanges failed", e.name, st.OwnerErrors)
		}
	}
	if found == 0 || found != lookups {
		t.Errorf("B and C asked owners %d times and found %d sessions: want every lookup to find it", lookups, found)
	}
	t.Logf("60 requests right after the session began: %d went to the owner edge, all found", lookups)

	for _, wait := range []time.Duration{100 * time.Millisecond, 2 * time.Second} {
		cl := newClient(t)
		first := cl.mustGet(a, nil)
		time.Sleep(wait) // the delay under test, not a wait for a condition
		if got := cl.mustGet(c, nil); got != first {
			t.Fatalf("%v later through C: %s, the session is on %s", wait, got, first)
		}
	}
}

// header returns the X-User header of user i.
func header(i int) map[string]string { return map[string]string{"X-User": fmt.Sprintf("user-%d", i)} }

// spread sends one request per user 0..n-1 through pick(user), eight at
// a time, and returns the backend each reached.
func spread(t *testing.T, n int, pick func(int) *edgeNode) []string {
	t.Helper()
	out := make([]string, n)
	users := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		cl := newClient(t)
		wg.Go(func() {
			for u := range users {
				code, body, _ := cl.get(pick(u), header(u))
				if code != 200 {
					body = fmt.Sprintf("status %d: %s", code, body)
				}
				out[u] = body
			}
		})
	}
	for u := range n {
		users <- u
	}
	close(users)
	wg.Wait()
	return out
}

// TestNewEdgeLearnsTheTable: an edge that joins after 10,000 sessions
// exist learns them from its join's push/pull (well within one
// anti-entropy period) and routes every one to its backend; it reports
// the memory its copy of the table takes.
func TestNewEdgeLearnsTheTable(t *testing.T) {
	apps := startBackends(t, 4)
	p := newPool(t, "{ mode: header, header: X-User }", apps)
	a := p.add(nil)
	const n = 10000
	where := spread(t, n, func(int) *edgeNode { return a })
	start := time.Now()
	d := p.add(nil)
	meshtest.WaitFor(t, 15*time.Second, "D to hold every session", func() bool {
		st := d.sc.Sticky()
		return len(st) == 1 && st[0].Table.Entries == n
	})
	took := time.Since(start)
	got := spread(t, n, func(int) *edgeNode { return d })
	for u := range n {
		if got[u] != where[u] {
			t.Fatalf("user-%d through D reached %s, the session is on %s", u, got[u], where[u])
		}
	}
	st := d.sc.Sticky()[0]
	if st.Hits != n || st.Created != 0 {
		t.Errorf("D: %d hits, %d created; want %d hits and none created", st.Hits, st.Created, n)
	}
	t.Logf("D held all %d sessions %v after it started; its copy takes about %d KiB, %d bytes a session",
		n, took.Round(time.Millisecond), st.Table.Bytes>>10, st.Table.Bytes/st.Table.Entries)
}

// TestSkewedClocksExpireNothingEarly: with A's clock 2 s behind and B's
// 2 s ahead, a session begun through A and read through B (which sees it
// 4 s older than it is) does not end before its idle or absolute
// timeout.
func TestSkewedClocksExpireNothingEarly(t *testing.T) {
	apps := startBackends(t, 3)
	p := newPool(t, "{ mode: header, header: X-User, idle_timeout: 3s, absolute_timeout: 6s }", apps)
	// Every edge's wall clock is the test's: elapsed time is advanced, not
	// waited for, and A's runs 2 s behind, B's 2 s ahead.
	var elapsed atomic.Int64
	clock := func(skew time.Duration) func() time.Time {
		return func() time.Time { return time.Now().Add(time.Duration(elapsed.Load()) + skew) }
	}
	advance := func(d time.Duration) { elapsed.Add(int64(d)) }
	var a, b, c *edgeNode
	// liveOnB waits until B's copy of the table holds both sessions as
	// live (by their deadlines, read with B's clock): time is advanced
	// at once, faster than gossip carries the refreshes C writes.
	liveOnB := func(at string) {
		t.Helper()
		meshtest.WaitFor(t, 5*time.Second, "B to hold both sessions live "+at, func() bool {
			var st struct {
				Routes []struct {
					PerEndpoint map[string]int `json:"per_endpoint"`
				} `json:"routes"`
			}
			if json.Unmarshal([]byte(fetch(t, b.admin, "/sticky")), &st) != nil || len(st.Routes) != 1 {
				return false
			}
			n := 0
			for _, c := range st.Routes[0].PerEndpoint {
				n += c
			}
			return n == 2
		})
	}
	a, b, c = p.add(clock(-2*time.Second)), p.add(clock(2*time.Second)), p.add(clock(0))
	cl := newClient(t)
	idle, abs := header(1), header(2)
	firstIdle, firstAbs := cl.mustGet(a, idle), cl.mustGet(a, abs)
	p.known(2)
	// Idle: unused for 2.5 s of its 3 s, read through B, to which it
	// looks 6.5 s idle.
	advance(2500 * time.Millisecond)
	liveOnB("at 2.5 s")
	if got := cl.mustGet(b, idle); got != firstIdle {
		t.Fatalf("2.5 s idle through B: %s, the session is on %s", got, firstIdle)
	}
	// Absolute: kept in use through C every second, then read through B
	// at 5 s of its 6 s, when it looks 9 s old there.
	for at := 2500 * time.Millisecond; at < 5*time.Second; at += time.Second {
		if got := cl.mustGet(c, abs); got != firstAbs {
			t.Fatalf("%v after it began, through C: %s, the session is on %s", at, got, firstAbs)
		}
		advance(time.Second)
	}
	liveOnB("at 5.5 s")
	if got := cl.mustGet(b, abs); got != firstAbs {
		t.Fatalf("5.5 s old through B: %s, the session is on %s", got, firstAbs)
	}
	for _, e := range []*edgeNode{b, c} {
		if st := e.sc.Sticky()[0]; st.Created != 0 || st.Misses != 0 {
			t.Errorf("%s: %+v; want no miss and no new session", e.name, st)
		}
	}
}

// TestNoRawTokenLeaves: the tokens that name sessions (cookie values,
// the application's session cookie, header values) appear nowhere a
// member of the pool or an operator can read: not in any entry of the
// replicated store as a member that joins the pool receives it, not in
// the admin API's output.
func TestNoRawTokenLeaves(t *testing.T) {
	apps := startBackends(t, 2)
	var tokens []string
	for _, mode := range []string{"{ mode: cookie }", "{ mode: learn, learn: { cookie: JSESSIONID } }", "{ mode: header, header: X-User }"} {
		p := newPool(t, mode, apps)
		a, b := p.add(nil), p.add(nil)
		for i := range 5 {
			cl := newClient(t)
			cl.mustGet(a, header(100+i))
			cl.mustGet(b, header(100+i))
			for _, v := range cl.cookie {
				tokens = append(tokens, v)
			}
			tokens = append(tokens, fmt.Sprintf("user-%d", 100+i))
		}
		p.known(5)

		key, err := gossip.LoadKey(filepath.Join(p.dir, "gossip.key"))
		if err != nil {
			t.Fatal(err)
		}
		spy, err := gossip.Start(gossip.Config{NodeName: "spy", Bind: "127.0.0.1:0", Join: []string{p.seed}, Key: key, Profile: "local", Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		meshtest.WaitFor(t, 10*time.Second, "the spy to receive the table", func() bool { return len(spy.Store().List(sticky.Prefix)) == 5 })
		var seen strings.Builder
		for _, e := range spy.Store().List("") {
			fmt.Fprintf(&seen, "%s=%s owner=%s\n", e.Key, e.Value, e.Owner)
		}
		spy.Shutdown()
		for _, path := range []string{"/sticky", "/config", "/metrics", "/routes"} {
			resp, err := http.Get("http://" + a.admin + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			fmt.Fprintf(&seen, "%s: %s\n", path, body)
		}
		for _, tok := range tokens {
			id, _, _ := strings.Cut(tok, ".") // a cookie's session ID too, not just the whole value
			for _, s := range []string{tok, id} {
				if strings.Contains(seen.String(), s) {
					t.Errorf("%s: the token %q is readable in the pool or the admin API:\n%s", mode, s, seen.String())
				}
			}
		}
	}
}

// TestDrainKeepsSessions: an endpoint drained through one edge's admin
// API gets no new session through any edge, and keeps the sessions it
// has until they end; ending the drain through another edge gives it new
// ones again.
func TestDrainKeepsSessions(t *testing.T) {
	apps := startBackends(t, 3)
	p := newPool(t, "{ mode: header, header: X-User }", apps)
	a, b, c := p.add(nil), p.add(nil), p.add(nil)
	where := spread(t, 30, func(u int) *edgeNode { return p.edges[u%3] })
	target := apps[0]
	var pinned []int
	for u, w := range where {
		if w == target.name {
			pinned = append(pinned, u)
		}
	}
	if len(pinned) == 0 {
		t.Fatalf("no session on %s: %v", target.name, where)
	}
	p.known(30)

	admin := func(e *edgeNode, method, path string) string {
		req, _ := http.NewRequest(method, "http://"+e.admin+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, body)
		}
		return string(body)
	}
	admin(a, "PUT", "/drain/"+target.addr)
	meshtest.WaitFor(t, 5*time.Second, "every edge to drain "+target.addr, func() bool {
		for _, e := range []*edgeNode{a, b, c} {
			if !strings.Contains(admin(e, "GET", "/drain"), target.addr) {
				return false
			}
		}
		return true
	})
	cl := newClient(t)
	for _, u := range pinned {
		for _, e := range []*edgeNode{b, c} {
			if got := cl.mustGet(e, header(u)); got != target.name {
				t.Fatalf("user-%d's session moved off the drained %s to %s through %s", u, target.name, got, e.name)
			}
		}
	}
	for u := 1000; u < 1060; u++ {
		if got := cl.mustGet([]*edgeNode{a, b, c}[u%3], header(u)); got == target.name {
			t.Fatalf("new session user-%d went to the drained %s", u, target.name)
		}
	}
	if !strings.Contains(fetch(t, b.admin, "/endpoints"), `"draining": true`) {
		t.Error("/endpoints does not show the endpoint draining")
	}

	admin(c, "DELETE", "/drain/"+target.addr)
	meshtest.WaitFor(t, 5*time.Second, "every edge to end the drain", func() bool {
		for _, e := range []*edgeNode{a, b, c} {
			if strings.Contains(admin(e, "GET", "/drain"), target.addr) {
				return false
			}
		}
		return true
	})
	got := 0
	for u := 2000; u < 2060; u++ {
		if cl.mustGet([]*edgeNode{a, b, c}[u%3], header(u)) == target.name {
			got++
		}
	}
	if got == 0 {
		t.Errorf("after the drain ended, none of 60 new sessions went to %s", target.name)
	}
}

// TestExpiredCookieReplayed: a genuine cookie replayed after its session
// ended (idle past its timeout on every edge's clock) names nothing: the
// request is balanced as new, counted a miss, and given a new cookie.
func TestExpiredCookieReplayed(t *testing.T) {
	apps := startBackends(t, 4)
	p := newPool(t, "{ mode: cookie, idle_timeout: 1m }", apps)
	var offset atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	a, b := p.add(clock), p.add(clock)
	victim := newClient(t)
	victim.mustGet(a, nil)
	old := victim.cookie["sm_shop"]
	p.known(1)
	offset.Store(int64(2 * time.Minute)) // one minute idle, plus the 5 s skew allowance, is over
	for _, e := range []*edgeNode{a, b} {
		replay := newClient(t)
		replay.cookie["sm_shop"] = old
		before := e.sc.Sticky()[0]
		replay.mustGet(e, nil)
		after := e.sc.Sticky()[0]
		if got := replay.cookie["sm_shop"]; got == old || got == "" {
			t.Errorf("%s: the expired cookie was kept (%q)", e.name, got)
		}
		if after.Misses != before.Misses+1 || after.Created != before.Created+1 || after.Hits != before.Hits {
			t.Errorf("%s: %+v then %+v; want one miss and one new session", e.name, before, after)
		}
	}
}

// TestNotReadyUntilSynced: an edge whose seeds do not answer holds none
// of the pool's sessions, so it says it is not ready (HAProxy's peers
// consider a new node up to date after 5 s even when it learned
// nothing); once another edge joins it, it is.
func TestNotReadyUntilSynced(t *testing.T) {
	apps := startBackends(t, 2)
	p := newPool(t, "{ mode: header, header: X-User }", apps)
	p.seed = meshtest.FreeAddr(t) // nobody there
	a := p.add(nil)
	ready := func(e *edgeNode) (int, string) {
		resp, err := http.Get("http://" + e.admin + "/ready")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := ready(a); code != 503 || !strings.Contains(body, "not synced with another edge") {
		t.Fatalf("an edge that reached no seed: /ready %d %s", code, body)
	}
	p.seed = a.gossip
	b := p.add(nil)
	for _, e := range []*edgeNode{a, b} {
		if code, body := ready(e); code != 200 {
			t.Errorf("%s after the two met: /ready %d %s", e.name, code, body)
		}
	}
}
