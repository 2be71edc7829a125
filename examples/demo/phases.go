package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// readyTimeout bounds the wait for a sidecar to be ready or a change to
// show.
const readyTimeout = 30 * time.Second

// phase is one step of the narration.
type phase struct {
	title string
	run   func(*demo, context.Context) error
}

// phases are the steps, in order.
var phases = []phase{
	{"The sidecars find each other: an encrypted gossip pool, no server", (*demo).phaseGossip},
	{"Mutual TLS between every pair of sidecars, SPIFFE identities", (*demo).phaseTLS},
	{"An instance dies and comes back: retries, circuit breaker, outlier ejection", (*demo).phaseKill},
	{"A slow instance: round robin, then least_response_time", (*demo).phaseSlow},
	{"Authorization: default deny, and a rule that denies a path", (*demo).phaseDenied},
	{"A member leaves the pool", (*demo).phaseLeave},
	{"Two edges, one session table: a sticky session survives losing an edge", (*demo).phaseEdges},
}

// phaseGossip starts catalog-1 (the seed), then catalog-2, the frontend
// and visitor, and shows them join the pool as the seed sees it, and the
// frontend learn its catalog endpoints from it.
func (d *demo) phaseGossip(ctx context.Context) error {
	seed := d.l.get("catalog-1")
	d.out.say("Each sidecar's config names the pool's key and one seed, catalog-1's gossip port: no server, no endpoint lists.")
	d.out.say("Everything listens on 127.0.0.1:")
	if err := d.start(seed); err != nil {
		return err
	}
	if err := d.waitReady(ctx, seed); err != nil {
		return err
	}
	t0 := time.Now()
	for _, name := range []string{"catalog-2", "frontend", "visitor"} {
		if err := d.start(d.l.get(name)); err != nil {
			return err
		}
	}
	d.out.say("As catalog-1's sidecar sees the pool (its /members):")
	seen := map[string]bool{seed.name: true}
	err := d.waitFor(ctx, readyTimeout, "every member to join the pool", func() (bool, error) {
		ms, err := members(ctx, d.client, seed)
		if err != nil {
			return false, err
		}
		for _, m := range ms {
			if m.State == "alive" && !seen[m.Name] {
				seen[m.Name] = true
				d.out.at(t0, "%s joined, from %s", m.Name, m.Addr)
			}
		}
		return len(seen) == 4, nil
	})
	if err != nil {
		return err
	}
	fe, visitor := d.l.get("frontend"), d.l.get("visitor")
	for _, in := range []*instance{d.l.get("catalog-2"), fe, visitor} {
		if err := d.waitReady(ctx, in); err != nil {
			return err
		}
	}
	var u upstreamView
	err = d.waitFor(ctx, readyTimeout, "the frontend's sidecar to see both catalogs", func() (bool, error) {
		var err error
		u, err = upstream(ctx, d.client, fe, "catalog")
		return len(u.Endpoints) == 2, err
	})
	if err != nil {
		return err
	}
	d.out.at(t0, "the frontend's sidecar routes catalog to %s (source: %s)", u.endpointIDs(), strings.Join(u.Sources, "+"))
	err = d.waitFor(ctx, readyTimeout, "visitor's sidecar to see the frontend", func() (bool, error) {
		u, err := upstream(ctx, d.client, visitor, "frontend")
		return len(u.Endpoints) == 1, err
	})
	if err != nil {
		return err
	}
	d.out.say("Dashboard of the frontend's sidecar: http://%s/", fe.adminAddr())
	d.out.notice("Nobody told the frontend where the catalogs are: each sidecar published its instance to the pool.")
	return nil
}

// waitReady waits until in's sidecar reports ready (listeners up, a first
// snapshot for every upstream, its certificate loaded).
func (d *demo) waitReady(ctx context.Context, in *instance) error {
	return d.waitFor(ctx, readyTimeout, in.name+"'s sidecar to be ready", func() (bool, error) {
		a := get(ctx, d.client, in.adminAddr(), "", "/ready")
		if a.err != nil {
			return false, a.err
		}
		return a.status == http.StatusOK, fmt.Errorf("/ready: %s", a.describe())
	})
}

// phaseTLS shows each sidecar's identity, what the apps learn of their
// callers, and plain HTTP being turned away.
func (d *demo) phaseTLS(ctx context.Context) error {
	d.out.say("Every sidecar has a leaf from the demo's CA; each one's /identity:")
	byID := map[string][]string{}
	for _, name := range []string{"catalog-1", "catalog-2", "frontend", "visitor"} {
		var id identityView
		if err := adminGet(ctx, d.client, d.l.get(name), "/identity", &id); err != nil {
			return err
		}
		byID[id.SPIFFEID] = append(byID[id.SPIFFEID], name)
	}
	for _, id := range slices.Sorted(maps.Keys(byID)) {
		d.out.say("    %-22s %s", strings.Join(byID[id], ", "), id)
	}

	visitor := d.l.get("visitor")
	a := get(ctx, d.client, visitor.outboundAddr(), "frontend", "/")
	p, ok := a.page()
	if !ok {
		return fmt.Errorf("GET http://frontend/ through visitor's sidecar: %s", a.describe())
	}
	d.out.say("The demo sends GET http://frontend/ as plain HTTP to its own sidecar (visitor): %d in %s", a.status, ms(a.took))
	d.out.say("    %-20s X-Sidemesh-Peer-Identity: %s", "the frontend app got", p.Peer)
	d.out.say("    %-20s X-Sidemesh-Peer-Identity: %s", p.Catalog.Instance+"'s app got", p.Catalog.Peer)

	c1 := d.l.get("catalog-1")
	plain := get(ctx, d.client, c1.inboundAddr(), "catalog", "/items")
	d.out.say("Plain HTTP straight to catalog-1's sidecar, with no certificate: %s", plain.describe())
	d.out.notice("The apps speak plain HTTP to their own sidecar only; between sidecars every hop is TLS 1.3 both ways,")
	d.out.notice("and the callee's sidecar tells its app who called (a copy sent by anyone else is removed).")
	return nil
}

// phaseKill kills catalog-1's app under traffic, watches its breaker and
// ejection in the frontend sidecar's /endpoints, restores it, and shows
// that the client saw no error.
func (d *demo) phaseKill(ctx context.Context) error {
	fe, c1 := d.l.get("frontend"), d.l.get("catalog-1")
	d.out.say("A request every 50ms to the frontend; its sidecar balances catalog round robin over catalog-1 and catalog-2.")
	d.out.say("Its catalog upstream: breaker after 3 failures in a row, ejection for 4s after 3 5xx in a row, retries on 502/503/504.")
	retries0, err := metric(ctx, d.client, fe, "sidemesh_upstream_retries_total", `sidemesh_upstream="catalog"`)
	if err != nil {
		return err
	}
	t0 := time.Now()
	ld := d.startLoad(ctx, 50*time.Millisecond)
	defer ld.halt()
	if err := d.sleep(ctx, 500*time.Millisecond); err != nil {
		return err
	}
	if err := c1.appProc.signal(syscall.SIGKILL); err != nil {
		return err
	}
	if err := c1.appProc.wait(5 * time.Second); err != nil {
		return err
	}
	killed := time.Now()
	// Hold its port while it is down (connections to it are still
	// refused), so that nothing else takes it before the restart.
	_ = d.l.ports.hold(c1.app)
	d.out.at(t0, "killed catalog-1's app (SIGKILL); its sidecar stays up and answers 503 for it")

	var restarted time.Time
	breaker, ejected := "closed", false
	var sawOpen, sawEjected bool
	err = d.waitFor(ctx, 20*time.Second, "catalog-1 to serve again", func() (bool, error) {
		u, err := upstream(ctx, d.client, fe, "catalog")
		if err != nil {
			return false, err
		}
		e, ok := u.endpoint(c1.name)
		if !ok {
			return false, fmt.Errorf("the frontend's sidecar lists no %s", c1.name)
		}
		if e.Breaker != breaker {
			breaker = e.Breaker
			sawOpen = sawOpen || breaker == "open"
			d.out.at(t0, "catalog-1's circuit breaker: %s", breaker)
		}
		if now := e.EjectedUntil != nil; now != ejected {
			ejected = now
			if ejected {
				sawEjected = true
				d.out.at(t0, "catalog-1 ejected until %s (%.1fs from now)", e.EjectedUntil.Local().Format("15:04:05.0"), time.Until(*e.EjectedUntil).Seconds())
			} else {
				d.out.at(t0, "catalog-1's ejection is over: back in rotation")
			}
		}
		// Restart it once both showed (and it has been down a moment), or
		// after 3s whatever happened.
		if restarted.IsZero() && (sawOpen && sawEjected && time.Since(killed) > 1500*time.Millisecond || time.Since(killed) > 3*time.Second) {
			if err := d.startApp(c1); err != nil {
				return false, err
			}
			restarted = time.Now()
			d.out.at(t0, "restarted catalog-1's app")
		}
		back := !restarted.IsZero() && breaker == "closed" && !ejected && ld.servedSince(c1.name, restarted)
		if back {
			d.out.at(t0, "catalog-1 serves again")
		}
		return back, nil
	})
	if err != nil {
		return err
	}
	st := ld.halt()
	retries1, err := metric(ctx, d.client, fe, "sidemesh_upstream_retries_total", `sidemesh_upstream="catalog"`)
	if err != nil {
		return err
	}
	d.out.say("The client sent %d requests and saw %d errors%s; the frontend's sidecar retried %.0f of them on catalog-2.",
		st.n, st.errs, st.lastErrNote(), retries1-retries0)
	d.out.notice("The client never saw the failure: each failed try was retried on another instance, and the breaker")
	d.out.notice("and the ejection kept catalog-1 out of rotation until it was back.")
	return nil
}

// phaseSlow starts catalog-3, whose app is 150ms slow, and compares the
// share each instance gets under round robin and, after a reload, under
// least_response_time.
func (d *demo) phaseSlow(ctx context.Context) error {
	fe, c3 := d.l.get("frontend"), d.l.get("catalog-3")
	d.out.say("catalog-3 starts; its app answers every request %v late (catalog -latency %v):", c3.latency, c3.latency)
	t0 := time.Now()
	if err := d.start(c3); err != nil {
		return err
	}
	err := d.waitFor(ctx, readyTimeout, "the frontend's sidecar to see catalog-3", func() (bool, error) {
		u, err := upstream(ctx, d.client, fe, "catalog")
		_, ok := u.endpoint(c3.name)
		return ok, err
	})
	if err != nil {
		return err
	}
	d.out.at(t0, "catalog-3 joined the pool; the frontend's sidecar balances over 3 catalogs")

	const window = 3 * time.Second
	d.out.say("Requests back to back, %v under each balancer:", window)
	rr, err := d.measure(ctx, window)
	if err != nil {
		return err
	}
	d.out.say("    round robin          %s", rr)
	u, err := upstream(ctx, d.client, fe, "catalog")
	if err != nil {
		return err
	}
	var est []string
	for _, e := range slices.SortedFunc(slices.Values(u.Endpoints), func(a, b endpointView) int { return strings.Compare(a.ID, b.ID) }) {
		est = append(est, fmt.Sprintf("%s %.1fms", e.ID, e.LatencyMS))
	}
	d.out.say("    the frontend sidecar's latency estimates (peak EWMA): %s", strings.Join(est, ", "))

	fe.balancer = "least_response_time"
	if err := d.l.writeConfig(fe); err != nil {
		return err
	}
	if err := fe.sideProc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("reload the frontend's sidecar: %w", err)
	}
	err = d.waitFor(ctx, readyTimeout, "the frontend's sidecar to reload", func() (bool, error) {
		u, err := upstream(ctx, d.client, fe, "catalog")
		return u.Balancer == fe.balancer, err
	})
	if err != nil {
		return err
	}
	d.out.say("    balancer: least_response_time written to %s; SIGHUP: reloaded, no restart", d.rel(fe.configPath(d.l.dir)))
	lrt, err := d.measure(ctx, window)
	if err != nil {
		return err
	}
	d.out.say("    least_response_time  %s", lrt)
	d.out.notice("least_response_time picks the better of two random instances by latency x load. The slow one's")
	d.out.notice("estimate decays while it gets nothing, so it is probed again every few seconds: one that recovers")
	d.out.notice("wins its share back.")
	return nil
}

// phaseDenied shows the catalog's policy and a request it denies.
func (d *demo) phaseDenied(ctx context.Context) error {
	c1, visitor := d.l.get("catalog-1"), d.l.get("visitor")
	cfg, err := os.ReadFile(c1.configPath(d.l.dir))
	if err != nil {
		return fmt.Errorf("read catalog-1's config: %w", err)
	}
	d.out.say("The catalog sidecars' policy (%s):", d.rel(c1.configPath(d.l.dir)))
	for _, l := range section(string(cfg), "policy:") {
		d.out.say("    %s", l)
	}
	d.out.say("The demo calls the catalog through its own sidecar, as visitor:")
	ok := get(ctx, d.client, visitor.outboundAddr(), "catalog", "/items")
	var items struct {
		Instance string `json:"instance"`
	}
	if ok.err == nil && json.Unmarshal(ok.body, &items) == nil && items.Instance != "" {
		d.out.say("    GET http://catalog/items        %s (from %s)", ok.describe(), items.Instance)
	} else {
		d.out.say("    GET http://catalog/items        %s", ok.describe())
	}
	denied := get(ctx, d.client, visitor.outboundAddr(), "catalog", "/admin/stats")
	d.out.say("    GET http://catalog/admin/stats  %s", denied.describe())
	d.out.notice("The catalog's sidecar refused it before its app saw it; a 403 from the mesh says so in X-Sidemesh-Error.")
	return nil
}

// section returns the lines of the YAML section that starts with the line
// start, up to the next top-level key.
func section(yaml, start string) []string {
	var out []string
	for line := range strings.Lines(yaml) {
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, start):
			out = append(out, line)
		case len(out) > 0 && (strings.HasPrefix(line, " ") || line == ""):
			out = append(out, line)
		case len(out) > 0:
			return out
		}
	}
	return out
}

// phaseLeave stops catalog-3 with SIGTERM and shows the frontend's
// sidecar drop it at once.
func (d *demo) phaseLeave(ctx context.Context) error {
	fe, c3 := d.l.get("frontend"), d.l.get("catalog-3")
	t0 := time.Now()
	if err := c3.sideProc.signal(syscall.SIGTERM); err != nil {
		return err
	}
	d.out.at(t0, "SIGTERM to catalog-3's sidecar: it leaves the pool, then drains")
	err := d.waitFor(ctx, readyTimeout, "the frontend's sidecar to see catalog-3 leave", func() (bool, error) {
		ms, err := members(ctx, d.client, fe)
		for _, m := range ms {
			if m.Name == c3.name && m.State != "alive" {
				d.out.at(t0, "the frontend's sidecar sees catalog-3 as %q", m.State)
				return true, nil
			}
		}
		return false, err
	})
	if err != nil {
		return err
	}
	var u upstreamView
	err = d.waitFor(ctx, readyTimeout, "the frontend's sidecar to drop catalog-3", func() (bool, error) {
		var err error
		u, err = upstream(ctx, d.client, fe, "catalog")
		_, listed := u.endpoint(c3.name)
		return err == nil && !listed, err
	})
	if err != nil {
		return err
	}
	d.out.at(t0, "the frontend's sidecar routes catalog to %s", u.endpointIDs())
	if err := c3.sideProc.wait(drainTimeout + 5*time.Second); err != nil {
		return err
	}
	status := "exit status 0"
	if c3.sideProc.err != nil {
		status = c3.sideProc.err.Error()
	}
	d.out.at(t0, "catalog-3's sidecar exited (%s)", status)
	if err := c3.appProc.signal(syscall.SIGTERM); err != nil {
		return err
	}
	d.out.notice("A member that leaves is dropped everywhere at once; one that dies, after failure detection (seconds).")
	return nil
}

// phaseEdges starts two edges in front of the catalogs, begins a sticky
// session on edge-1, follows it on both edges, kills edge-1 (SIGKILL: no
// goodbye to the pool) and shows the session holding on edge-2.
func (d *demo) phaseEdges(ctx context.Context) error {
	e1, e2 := d.l.get("edge-1"), d.l.get("edge-2")
	d.out.say("Two edge gateways: clients call them over plain HTTP, they call the catalogs over mutual TLS.")
	d.out.say("GET /items is sticky (a signed cookie); the session table lives in the gossip pool, shared by both edges.")
	for _, e := range []*instance{e1, e2} {
		if err := d.start(e); err != nil {
			return err
		}
	}
	for _, e := range []*instance{e1, e2} {
		if err := d.waitReady(ctx, e); err != nil {
			return err
		}
		err := d.waitFor(ctx, readyTimeout, e.name+" to see the catalogs and the other edge", func() (bool, error) {
			u, err := upstream(ctx, d.client, e, "catalog")
			if err != nil || len(u.Endpoints) != 2 {
				return false, err
			}
			st, err := d.sticky(ctx, e)
			return err == nil && len(st.Edges) == 2, err
		})
		if err != nil {
			return err
		}
	}
	first := d.edgeGet(ctx, e1, "")
	cookie := first.header.Get("Set-Cookie")
	owner, ok := first.catalogInstance()
	if !ok || cookie == "" {
		return fmt.Errorf("the first GET /items through edge-1: %s, want 200 with a session cookie", first.describe())
	}
	cookie, _, _ = strings.Cut(cookie, ";")
	d.out.say("GET /items via edge-1  %d  from %s, Set-Cookie: %s", first.status, owner, abbreviate(cookie))
	if err := d.waitSession(ctx, e1, e2); err != nil {
		return err
	}
	follow := func(e *instance, n int) error {
		for range n {
			a := d.edgeGet(ctx, e, cookie)
			got, ok := a.catalogInstance()
			if !ok {
				return fmt.Errorf("GET /items via %s with the session: %s", e.name, a.describe())
			}
			d.out.say("GET /items via %s  %d  from %s", e.name, a.status, got)
			if got != owner {
				return fmt.Errorf("the session began on %s went to %s via %s", owner, got, e.name)
			}
		}
		return nil
	}
	if err := follow(e2, 2); err != nil {
		return err
	}
	t0 := time.Now()
	if err := e1.sideProc.signal(syscall.SIGKILL); err != nil {
		return err
	}
	if err := e1.sideProc.wait(5 * time.Second); err != nil {
		return err
	}
	d.out.at(t0, "killed edge-1 (SIGKILL): it tells nobody")
	if err := follow(e2, 3); err != nil {
		return err
	}
	d.out.notice("The session lived in the pool, not in edge-1: losing an edge lost no session.")
	return nil
}

// waitSession waits until the session edge-1 just began is in edge-2's
// copy of the table, and says how it got there: edge-1 hands a new
// session to its owner edges before its response goes out, so edge-2
// usually holds it at once; if that exchange failed (a loaded host can
// miss its 100 ms bound), gossip brings it within about a second.
func (d *demo) waitSession(ctx context.Context, e1, e2 *instance) error {
	t0 := time.Now()
	err := d.waitFor(ctx, readyTimeout, "edge-2 to hold the session", func() (bool, error) {
		st, err := d.sticky(ctx, e2)
		return err == nil && len(st.Routes) == 1 && st.Routes[0].Sessions == 1, err
	})
	if err != nil {
		return err
	}
	how := "handed over by edge-1 before its response"
	if st, err := d.sticky(ctx, e1); err == nil && len(st.Routes) == 1 && st.Routes[0].OwnerErrors > 0 {
		how = "by gossip: edge-1's hand-over failed"
	}
	d.out.say("edge-2 holds the session %s later (%s)", time.Since(t0).Round(time.Millisecond), how)
	return nil
}

// stickyView is the part of an edge's GET /sticky the demo reads.
type stickyView struct {
	Edges  []string `json:"edges"`
	Routes []struct {
		Sessions    int    `json:"sessions"`
		OwnerErrors uint64 `json:"owner_errors"`
	} `json:"routes"`
}

// sticky returns what the edge e's admin API says of its sticky sessions.
func (d *demo) sticky(ctx context.Context, e *instance) (stickyView, error) {
	var st stickyView
	a := get(ctx, d.client, e.adminAddr(), "", "/sticky")
	if a.err != nil {
		return st, a.err
	}
	return st, json.Unmarshal(a.body, &st)
}

// edgeGet sends GET /items to the edge in, with the session cookie when
// not empty.
func (d *demo) edgeGet(ctx context.Context, in *instance, cookie string) answer {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+in.appAddr()+"/items", nil)
	if err != nil {
		return answer{err: err}
	}
	if cookie != "" {
		req.Header.Set("Cookie", cookie)
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return answer{err: err, took: time.Since(start)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return answer{status: resp.StatusCode, header: resp.Header, body: body, took: time.Since(start), err: err}
}

// abbreviate shortens a cookie for the narration.
func abbreviate(cookie string) string {
	if len(cookie) > 40 {
		return cookie[:40] + "…"
	}
	return cookie
}

// steady sends GET http://frontend/ through visitor's sidecar every
// o.interval, a line each and a tally every 10, until ctx is done or
// o.duration has passed.
func (d *demo) steady(ctx context.Context) error {
	fe, visitor := d.l.get("frontend"), d.l.get("visitor")
	d.out.phase("The mesh keeps serving; Ctrl-C stops it")
	d.out.say("dashboard of the frontend's sidecar  http://%s/", fe.adminAddr())
	d.out.say("try it yourself                      curl -s -H 'Host: frontend' http://%s/", visitor.outboundAddr())
	d.out.say("                                     curl -si -H 'Host: catalog' http://%s/admin/stats", visitor.outboundAddr())
	d.out.say("GET http://frontend/ every %v:", d.o.interval)
	var stop <-chan time.Time
	if d.o.duration > 0 {
		t := time.NewTimer(d.o.duration)
		defer t.Stop()
		stop = t.C
	}
	tick := time.NewTicker(d.o.interval)
	defer tick.Stop()
	tally := map[string]int{}
	for n := 1; ; n++ {
		// A request in flight is let finish (it is bounded): cancelling it
		// would only make the frontend app log an upstream failure.
		a := get(context.WithoutCancel(ctx), d.client, visitor.outboundAddr(), "frontend", "/")
		if ctx.Err() != nil {
			return ctx.Err()
		}
		who := "failed"
		if p, ok := a.page(); ok {
			who = p.Catalog.Instance
			d.out.say("#%-3d %d  frontend -> %s  %s", n, a.status, who, ms(a.took))
		} else {
			d.out.say("#%-3d %s  %s", n, a.describe(), ms(a.took))
		}
		tally[who]++
		if n%10 == 0 {
			d.out.say("     after %d requests: %s", n, formatTally(tally))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-stop:
			return nil
		case p := <-d.ps.failed:
			return p.exitError()
		case <-tick.C:
		}
	}
}

// ms formats a duration in milliseconds.
func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }

// formatTally lists how many requests each instance served, by name.
func formatTally(tally map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(tally)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, tally[k]))
	}
	return strings.Join(parts, "  ")
}

// load is traffic to the frontend through visitor's sidecar, one request
// at a time, in the background.
type load struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu    sync.Mutex
	stats loadStats
	last  map[string]time.Time // when each catalog instance last served
}

// loadStats sums up what a load saw.
type loadStats struct {
	n, errs int
	by      map[string]int // requests served by each catalog instance
	total   time.Duration
	lastErr string
}

// startLoad sends GET http://frontend/ every interval (or back to back
// when a request takes longer) until halt or ctx's end.
func (d *demo) startLoad(ctx context.Context, interval time.Duration) *load {
	ctx, cancel := context.WithCancel(ctx)
	l := &load{cancel: cancel, done: make(chan struct{}), stats: loadStats{by: map[string]int{}}, last: map[string]time.Time{}}
	outbound := d.l.get("visitor").outboundAddr()
	go func() {
		defer close(l.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			a := get(context.WithoutCancel(ctx), d.client, outbound, "frontend", "/") // see steady
			if ctx.Err() != nil {
				return
			}
			l.record(a)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return l
}

// record counts one answer.
func (l *load) record(a answer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.stats.n++
	l.stats.total += a.took
	p, ok := a.page()
	if !ok {
		l.stats.errs++
		l.stats.lastErr = a.describe()
		return
	}
	l.stats.by[p.Catalog.Instance]++
	l.last[p.Catalog.Instance] = time.Now()
}

// servedSince reports whether instance served a request after t.
func (l *load) servedSince(instance string, t time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last[instance].After(t)
}

// halt stops the load, waits for its request in flight, and returns what
// it saw. Calling it again returns the same.
func (l *load) halt() loadStats {
	l.cancel()
	<-l.done
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stats
}

// lastErrNote names the last error, if there was one.
func (s loadStats) lastErrNote() string {
	if s.errs == 0 {
		return ""
	}
	return fmt.Sprintf(" (the last: %s)", s.lastErr)
}

// String gives each instance's share and the mean response time.
func (s loadStats) String() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(s.by)) {
		parts = append(parts, fmt.Sprintf("%s %.0f%% (%d)", k, 100*float64(s.by[k])/float64(max(s.n, 1)), s.by[k]))
	}
	if s.errs > 0 {
		parts = append(parts, fmt.Sprintf("errors %d%s", s.errs, s.lastErrNote()))
	}
	return fmt.Sprintf("%s   %d requests, mean %s", strings.Join(parts, "  "), s.n, ms(s.total/time.Duration(max(s.n, 1))))
}

// measure runs load back to back for window and returns what it saw,
// listing every catalog instance, even one that got nothing.
func (d *demo) measure(ctx context.Context, window time.Duration) (loadStats, error) {
	ld := d.startLoad(ctx, time.Millisecond)
	err := d.sleep(ctx, window)
	st := ld.halt()
	for _, name := range []string{"catalog-1", "catalog-2", "catalog-3"} {
		st.by[name] += 0
	}
	return st, err
}
