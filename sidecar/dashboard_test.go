package sidecar

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// chromiumPath returns the browser the dashboard test drives: the path in
// $SIDEMESH_CHROMIUM, else chromium on the PATH. It fails the test when
// there is none: the test runs in CI and must not pass by skipping.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("SIDEMESH_CHROMIUM"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("SIDEMESH_CHROMIUM=%s: %v; run `make chromium`, or point it at a Chromium or Chrome binary", p, err)
		}
		return p
	}
	p, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("no browser to test the admin dashboard in: %v; run `make chromium` (Debian's chromium), or set SIDEMESH_CHROMIUM to a Chromium or Chrome binary", err)
	}
	return p
}

// problemsJS runs in the page before its own script: it collects uncaught
// errors, unhandled rejections and Content-Security-Policy violations in
// window.__problems, for the test to fail on.
const problemsJS = `
window.__problems = [];
window.addEventListener('error', (e) => window.__problems.push('error: ' + (e.error && e.error.stack || e.message)));
window.addEventListener('unhandledrejection', (e) => window.__problems.push('unhandled rejection: ' + (e.reason && e.reason.stack || e.reason)));
document.addEventListener('securitypolicyviolation', (e) => window.__problems.push('CSP violation: ' + e.violatedDirective + ' blocked ' + e.blockedURI));
`

// holdFetchJS runs in the page before its own script: it holds every
// fetch the page makes until the test calls window.__releaseFetch(), so
// the test can see what the page shows before its first poll returns,
// and counts the fetches held in window.__fetchHeld.
const holdFetchJS = `
(() => {
  const realFetch = window.fetch.bind(window);
  let release;
  const gate = new Promise((resolve) => { release = resolve; });
  window.__fetchHeld = 0;
  window.__releaseFetch = () => release();
  window.fetch = (...args) => { window.__fetchHeld++; return gate.then(() => realFetch(...args)); };
})();
`

// snapshotJS reads what the dashboard shows through its data-* hooks.
const snapshotJS = `(() => {
  const rows = [...document.querySelectorAll('[data-upstream] tr[data-endpoint]')].map((tr) => {
    const text = {}, value = {};
    for (const td of tr.querySelectorAll('[data-field]')) {
      text[td.dataset.field] = td.textContent.trim();
      value[td.dataset.field] = td.dataset.value === undefined ? '' : td.dataset.value;
    }
    return { upstream: tr.closest('[data-upstream]').dataset.upstream, endpoint: tr.dataset.endpoint, text, value };
  });
  const loading = document.getElementById('loading');
  const sparks = [...document.querySelectorAll('[data-spark]')].map((s) => {
    const owner = s.closest('[data-upstream]');
    const path = s.querySelector('path.l0');
    return {
      owner: owner ? owner.dataset.upstream : 'inbound',
      name: s.dataset.spark,
      points: Number(s.dataset.points || 0),
      max: Number(s.dataset.max || 0),
      total: Number(s.dataset.total || 0),
      commands: ((path && path.getAttribute('d')) || '').match(/[ML]/g)?.length || 0,
      visible: s.offsetParent !== null,
      value: s.querySelector('.value').textContent,
    };
  });
  const events = [...document.querySelectorAll('#events-body tr[data-event]')].map((tr) => ({
    kind: tr.dataset.kind,
    subject: tr.querySelector('[data-field="subject"]').textContent,
    text: tr.innerText,
  }));
  return {
    loading: { visible: loading.offsetParent !== null, state: loading.dataset.state || '', text: loading.innerText },
    fetchHeld: window.__fetchHeld || 0,
    sparks,
    events,
    connection: document.body.dataset.connection || '',
    ready: document.getElementById('ready').dataset.ready || '',
    refreshed: document.getElementById('refreshed').dataset.time || '',
    banner: document.getElementById('banner').textContent,
    marker: window.__sidemeshMarker === true,
    problems: window.__problems || [],
    rows,
    text: document.body.innerText,
  };
})()`

// dashboardDOM is what the dashboard shows, as snapshotJS reads it.
type dashboardDOM struct {
	// Loading is the placeholder shown until the first poll returns.
	Loading struct {
		Visible     bool
		State, Text string
	} `json:"loading"`
	FetchHeld  int              `json:"fetchHeld"` // fetches holdFetchJS held
	Sparks     []dashboardSpark `json:"sparks"`
	Events     []dashboardEvent `json:"events"`
	Connection string           `json:"connection"` // body's data-connection: connecting, ok, unreachable, error
	Ready      string           `json:"ready"`      // "true", "false", or "" before an answer
	Refreshed  string           `json:"refreshed"`  // the last successful refresh, RFC 3339
	Banner     string           `json:"banner"`
	// Marker is true while the page is the one the test marked: it was
	// not reloaded.
	Marker   bool           `json:"marker"`
	Problems []string       `json:"problems"`
	Rows     []dashboardRow `json:"rows"`
	Text     string         `json:"text"` // the page's visible text
}

// dashboardRow is one endpoint row: its cells' text and data-value by
// data-field.
type dashboardRow struct {
	Upstream string            `json:"upstream"`
	Endpoint string            `json:"endpoint"`
	Text     map[string]string `json:"text"`
	Value    map[string]string `json:"value"`
}

// dashboardSpark is one sparkline: whose it is (an upstream, or
// "inbound"), which (rate, errors, latency, retries), how many points it
// drew (data-points, and the M/L commands of its first path), the
// largest value (data-max), the retries in total (data-total) and the
// value it shows.
type dashboardSpark struct {
	Owner    string  `json:"owner"`
	Name     string  `json:"name"`
	Points   int     `json:"points"`
	Max      float64 `json:"max"`
	Total    float64 `json:"total"`
	Commands int     `json:"commands"`
	Visible  bool    `json:"visible"`
	Value    string  `json:"value"`
}

// dashboardEvent is one row of the events list.
type dashboardEvent struct {
	Kind    string `json:"kind"`
	Subject string `json:"subject"`
	Text    string `json:"text"`
}

// spark returns the sparkline name of owner, or nil.
func (d dashboardDOM) spark(owner, name string) *dashboardSpark {
	for i, s := range d.Sparks {
		if s.Owner == owner && s.Name == name {
			return &d.Sparks[i]
		}
	}
	return nil
}

// event returns the first event of kind about subject, or nil.
func (d dashboardDOM) event(kind, subject string) *dashboardEvent {
	for i, e := range d.Events {
		if e.Kind == kind && e.Subject == subject {
			return &d.Events[i]
		}
	}
	return nil
}

// row returns the row of endpoint addr in upstream, or nil.
func (d dashboardDOM) row(upstream, addr string) *dashboardRow {
	for i, r := range d.Rows {
		if r.Upstream == upstream && r.Endpoint == addr {
			return &d.Rows[i]
		}
	}
	return nil
}

// number returns the data-value of a cell as a number; NaN-free: -1 when
// the cell has no number.
func (r *dashboardRow) number(field string) float64 {
	v, err := strconv.ParseFloat(r.Value[field], 64)
	if err != nil {
		return -1
	}
	return v
}

// String lists the row's cells, for failure messages.
func (r *dashboardRow) String() string {
	if r == nil {
		return "<no row>"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s/%s:", r.Upstream, r.Endpoint)
	for _, f := range []string{"address", "weight", "inflight", "latency", "share", "requests", "failures", "breaker", "ejected", "health"} {
		fmt.Fprintf(&b, " %s=%q", f, r.Text[f])
		if v := r.Value[f]; v != "" && v != r.Text[f] {
			fmt.Fprintf(&b, "(%s)", v)
		}
	}
	return b.String()
}

// waitForDashboard reads the dashboard's DOM until ok accepts it, and
// returns that snapshot. It fails the test, with what the page showed,
// when the page reports a script error or CSP violation, or when ok has
// not accepted it within 15 seconds.
func waitForDashboard(t *testing.T, ctx context.Context, what string, ok func(dashboardDOM) bool) dashboardDOM {
	t.Helper()
	const patience = 15 * time.Second
	deadline := time.Now().Add(patience)
	var last dashboardDOM
	for {
		d, err := chromedp.Run(ctx, chromedp.Evaluate[dashboardDOM](snapshotJS))
		if err != nil {
			t.Fatalf("waiting for the dashboard to show %s: reading the DOM: %v; it last showed:\n%s", what, err, last.Text)
		}
		if len(d.Problems) > 0 {
			t.Fatalf("the dashboard's script failed while waiting for %s:\n%s\nthe page shows:\n%s", what, strings.Join(d.Problems, "\n"), d.Text)
		}
		if ok(d) {
			return d
		}
		last = d
		if time.Now().After(deadline) {
			var rows []string
			for i := range d.Rows {
				rows = append(rows, d.Rows[i].String())
			}
			t.Fatalf("the dashboard did not show %s within %v; connection %q, ready %q, rows:\n%s\nthe page shows:\n%s",
				what, patience, d.Connection, d.Ready, strings.Join(rows, "\n"), d.Text)
		}
		select { // the page refreshes every second; look again soon
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}

// openDashboard opens url in a headless chromium that runs script in
// every new document before the page's own, and returns the browser's
// context. The browser lives for at most a minute, and ends with the test.
func openDashboard(t *testing.T, chromium, url, script string) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	actx, acancel := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox, // the tests run as root
		chromedp.WindowSize(1280, 720),
	)...)
	t.Cleanup(acancel)
	bctx, bcancel := chromedp.NewContext(actx)
	t.Cleanup(bcancel)
	if err := chromedp.Do(bctx,
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: script})
			return err
		}),
		chromedp.Navigate(url),
	); err != nil {
		t.Fatalf("opening %s in %s: %v", url, chromium, err)
	}
	return bctx
}

// TestDashboardInBrowser loads the admin dashboard in a headless Chromium
// against a running sidecar. Before its first poll returns, the page says
// it is loading. Then it shows the endpoints, whose health is "not
// checked" (the upstream has no health checks), and sparklines of the
// traffic sent before. Without reloading the page, it follows an
// endpoint that starts failing: its breaker opens and it is ejected,
// while the other stays closed; the events list says so, and the retries
// show. It then takes the admin API away and brings it back: the page
// says it is unreachable, and recovers.
func TestDashboardInBrowser(t *testing.T) {
	chromium := chromiumPath(t)

	good, bad := newControlledBackend(t, "good"), newControlledBackend(t, "bad")
	good.latency.Store(int64(2 * time.Millisecond))
	bad.latency.Store(int64(5 * time.Millisecond))
	app := namedBackend(t, "app")
	appHost, appPort, _ := net.SplitHostPort(app)
	adminAddr, out, in := listenAddr(t), listenAddr(t), listenAddr(t)
	config := func(admin string) string {
		return fmt.Sprintf("%s\nservice: { name: web, address: %s, port: %s }\ninbound: { listen: %s }\noutbound: { listen: %s }\n%s",
			admin, appHost, appPort, in, out, breakerUpstream(good, bad))
	}
	withAdmin := config(fmt.Sprintf("admin: { listen: %s }", adminAddr))
	s := start(t, parse(t, withAdmin))
	client := newClient(t)
	if failed := sendN(client, out, "svc", 20); len(failed) > 0 {
		t.Fatalf("requests %v of 20 failed while both backends were healthy", failed)
	}
	if failed := sendN(client, in, "web", 5); len(failed) > 0 {
		t.Fatalf("requests %v of 5 through the inbound listener failed", failed)
	}

	url := "http://" + adminAddr + "/"
	bctx := openDashboard(t, chromium, url, problemsJS+holdFetchJS)

	// 0. Before the first poll returns (the test holds it), the page says
	// it is loading: not a blank page.
	d := waitForDashboard(t, bctx, "the loading state while the first poll is held", func(d dashboardDOM) bool {
		return d.FetchHeld > 0
	})
	if !d.Loading.Visible || d.Loading.State != "loading" || !strings.Contains(d.Text, "Loading the sidecar") ||
		d.Connection != "connecting" || len(d.Rows) != 0 {
		t.Errorf("before its first poll returned, the page shows (loading %+v, connection %q):\n%s", d.Loading, d.Connection, d.Text)
	}
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[chromedp.Void](`window.__releaseFetch()`)); err != nil {
		t.Fatal(err)
	}

	// 1. Both endpoints healthy, each with a latency.
	d = waitForDashboard(t, bctx, "both endpoints closed, with a latency", func(d dashboardDOM) bool {
		g, b := d.row("svc", good.addr), d.row("svc", bad.addr)
		return d.Connection == "ok" && d.Ready == "true" && g != nil && b != nil &&
			g.Value["breaker"] == "closed" && b.Value["breaker"] == "closed" &&
			g.number("latency") > 0 && b.number("latency") > 0
	})
	if strings.Contains(d.Text, "edge routes") {
		t.Errorf("a sidecar without an edge shows a routes section:\n%s", d.Text)
	}
	for _, addr := range []string{good.addr, bad.addr} {
		if !strings.Contains(d.Text, addr) {
			t.Errorf("the page does not show endpoint %s; it shows:\n%s", addr, d.Text)
		}
		r := d.row("svc", addr)
		// svc has no active health checks: nothing says it is healthy.
		if r.Text["inflight"] != "0" || r.Text["weight"] != "1" || r.Text["health"] != "not checked" || r.Value["health"] != "not checked" ||
			r.Value["ejected"] != "" || r.number("requests") < 1 || r.Text["failures"] != "0" {
			t.Errorf("healthy endpoint shown as %v", r)
		}
	}
	if d.Loading.Visible || strings.Contains(d.Text, "Loading the sidecar") {
		t.Errorf("the loading state stays after the first poll:\n%s", d.Text)
	}
	// The 20 requests sent before land in a 5 s interval of the history:
	// the upstream's sparklines draw it.
	d = waitForDashboard(t, bctx, "svc's and the inbound sparklines with the traffic", func(d dashboardDOM) bool {
		r, i := d.spark("svc", "rate"), d.spark("inbound", "rate")
		return r != nil && r.Points > 0 && r.Max > 0 && i != nil && i.Points > 0 && i.Max > 0
	})
	for _, name := range []string{"rate", "errors", "latency", "retries"} {
		sp := d.spark("svc", name)
		if sp == nil || !sp.Visible {
			t.Errorf("svc has no visible %s sparkline: %+v", name, d.Sparks)
		}
	}
	rate, lat := d.spark("svc", "rate"), d.spark("svc", "latency")
	if rate.Commands != rate.Points || lat.Points < 1 || lat.Commands < 1 || lat.Max <= 0 || rate.Value == "\u2014" {
		t.Errorf("sparklines: rate %+v, latency %+v; want the points drawn and a latency", rate, lat)
	}
	if i := d.spark("inbound", "rate"); !i.Visible || !strings.Contains(d.Text, "requests from the mesh") || d.spark("inbound", "retries") != nil {
		t.Errorf("the inbound section (rate %+v, retries %+v) reads:\n%s", i, d.spark("inbound", "retries"), d.Text)
	}
	if !strings.Contains(d.Text, "ready") || d.Refreshed == "" {
		t.Errorf("the page shows neither readiness nor the last refresh: ready %q, refreshed %q", d.Ready, d.Refreshed)
	}
	// A reload would lose this mark.
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[chromedp.Void](`window.__sidemeshMarker = true`)); err != nil {
		t.Fatal(err)
	}

	// 2. The bad backend fails: its breaker opens and it is ejected; the
	// good one stays closed and takes the traffic.
	bad.mode.Store(int32(mode500))
	failed := sendN(client, out, "svc", 20)
	t.Logf("%d of 20 requests failed while one backend answered 500", len(failed))
	d = waitForDashboard(t, bctx, "the failing endpoint open and ejected", func(d dashboardDOM) bool {
		b := d.row("svc", bad.addr)
		return b != nil && b.Value["breaker"] == "open" && b.number("ejected") > 0
	})
	g, b := d.row("svc", good.addr), d.row("svc", bad.addr)
	if !d.Marker {
		t.Errorf("the page was reloaded; it must refresh itself")
	}
	if g.Value["breaker"] != "closed" || g.Value["ejected"] != "" {
		t.Errorf("the good endpoint is shown as %v, want breaker closed and not ejected", g)
	}
	if b.number("failures") < 3 || !strings.HasPrefix(b.Text["ejected"], "for ") {
		t.Errorf("the failing endpoint is shown as %v, want 3 or more failures and an ejection countdown", b)
	}
	if g.number("share") <= b.number("share") {
		t.Errorf("traffic share: good %v, failing %v; want the good endpoint to have taken most of the recent requests", g, b)
	}
	if !strings.Contains(d.Text, "1/2 available") {
		t.Errorf("the upstream does not show 1/2 available; the page shows:\n%s", d.Text)
	}
	// The events list says what happened to the failing endpoint, and
	// nothing of the other.
	d = waitForDashboard(t, bctx, "the breaker opening in the events list", func(d dashboardDOM) bool {
		return d.event("breaker_opened", "svc/"+bad.addr) != nil && d.event("ejected", "svc/"+bad.addr) != nil
	})
	if e := d.event("breaker_opened", "svc/"+bad.addr); !strings.Contains(e.Text, "breaker opened") || !strings.Contains(d.Text, "svc/"+bad.addr) {
		t.Errorf("the breaker event reads %q; the page shows:\n%s", e.Text, d.Text)
	}
	if d.event("breaker_opened", "svc/"+good.addr) != nil {
		t.Errorf("the events list has the good endpoint's breaker opening: %+v", d.Events)
	}
	// The retries the failures caused show once sampled.
	waitForDashboard(t, bctx, "svc's retries", func(d dashboardDOM) bool {
		r := d.spark("svc", "retries")
		return r != nil && r.Total >= 1 && r.Max >= 1 && strings.Contains(r.Value, "in 5 min")
	})

	// 3. The admin API goes away, and comes back.
	if err := s.Reload(context.Background(), parse(t, config(""))); err != nil {
		t.Fatalf("reload without the admin listener: %v", err)
	}
	d = waitForDashboard(t, bctx, "the admin API unreachable", func(d dashboardDOM) bool {
		return d.Connection == "unreachable"
	})
	if !strings.Contains(d.Text, "Admin API unreachable") || d.row("svc", bad.addr) == nil || d.Ready != "" {
		t.Errorf("while the admin API is down, the page shows (ready %q):\n%s\nwant the unreachable banner over the last data, readiness unknown", d.Ready, d.Text)
	}
	if err := s.Reload(context.Background(), parse(t, withAdmin)); err != nil {
		t.Fatalf("reload with the admin listener back: %v", err)
	}
	d = waitForDashboard(t, bctx, "the admin API back, the failing endpoint still open", func(d dashboardDOM) bool {
		b := d.row("svc", bad.addr)
		return d.Connection == "ok" && b != nil && b.Value["breaker"] == "open"
	})
	if strings.Contains(d.Text, "unreachable") || !d.Marker {
		t.Errorf("after the admin API came back (page reloaded: %v), the page shows:\n%s", !d.Marker, d.Text)
	}

	// 4. A screenshot, for a human to look at.
	shot, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil || img.Bounds().Dx() < 100 || img.Bounds().Dy() < 100 {
		t.Fatalf("the screenshot is not a PNG of a page (%d bytes): %v", len(shot), err)
	}
	path := filepath.Join(t.TempDir(), "dashboard.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	if p := os.Getenv("SIDEMESH_DASHBOARD_PNG"); p != "" {
		if err := os.WriteFile(p, shot, 0o644); err != nil {
			t.Fatalf("SIDEMESH_DASHBOARD_PNG: %v", err)
		}
		t.Logf("screenshot (%dx%d) in %s", img.Bounds().Dx(), img.Bounds().Dy(), p)
	}
}

// TestDashboardRoutesInBrowser: an edge's dashboard lists its routes
// with their hostnames, matches and weighted backends, and the digest its
// peers compare; a redirect route says so.
func TestDashboardRoutesInBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	backend := namedBackend(t, "cart")
	adminAddr, edgeAddr := listenAddr(t), listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
admin: { listen: %s }
edge:
  listeners: [{ listen: %s }]
  routes:
    - name: cart-api
      hostnames: [shop.example.com]
      matches: [{ path: { prefix: /api/cart }, method: GET }]
      backends: [{ service: cart, weight: 90 }, { service: cart-canary, weight: 10 }]
    - { name: old-shop, matches: [{ path: { exact: /shop } }], redirect: { path: { full: / } } }
upstreams:
  - { service: cart, endpoints: [{ address: %s }] }
  - { service: cart-canary, endpoints: [{ address: %s }] }
`, adminAddr, edgeAddr, backend, backend)))

	bctx := openDashboard(t, chromium, "http://"+adminAddr+"/", problemsJS)
	d := waitForDashboard(t, bctx, "the edge's routes", func(d dashboardDOM) bool {
		return d.Connection == "ok" && strings.Contains(d.Text, "edge routes")
	})
	lines := map[string]string{}
	for _, line := range strings.Split(d.Text, "\n") {
		for _, name := range []string{"cart-api", "old-shop"} {
			if strings.HasPrefix(strings.TrimSpace(line), name) {
				lines[name] = line
			}
		}
	}
	for name, want := range map[string][]string{
		"cart-api": {"shop.example.com", "GET", "prefix /api/cart", "cart 90", "cart-canary 10"},
		"old-shop": {"any host", "exact /shop", "redirect"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[name], w) {
				t.Errorf("route %s's row %q lacks %q; the page shows:\n%s", name, lines[name], w, d.Text)
			}
		}
	}
	if !regexp.MustCompile(`2 routes, digest [0-9a-f]{8,}`).MatchString(d.Text) {
		t.Errorf("the routes section does not give the count and digest; the page shows:\n%s", d.Text)
	}
}

// TestDashboardStickyInBrowser: an edge with a sticky route shows its
// sessions, their endpoints, and the edges sharing the table.
func TestDashboardStickyInBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	backend := namedBackend(t, "cart")
	adminAddr, edgeAddr := listenAddr(t), listenAddr(t)
	dir := t.TempDir()
	keys := map[string]string{}
	for _, name := range []string{"gossip.key", "sticky.key"} {
		k, err := gossip.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		keys[name] = filepath.Join(dir, name)
		if err := os.WriteFile(keys[name], []byte(k), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	start(t, parse(t, fmt.Sprintf(`
admin: { listen: %s }
edge:
  listeners: [{ listen: %s }]
  sticky: { key_file: %s }
  routes:
    - name: cart-api
      matches: [{ path: { prefix: /api/cart } }]
      sticky: { mode: header, header: X-User, max_sessions: 500 }
      backends: [{ service: cart }]
upstreams:
  - { service: cart, endpoints: [{ address: %s }] }
discovery: { gossip: { bind: 127.0.0.1:%d, key_file: %s, profile: local, node_name: edge-1 } }
`, adminAddr, edgeAddr, keys["sticky.key"], backend, meshtest.FreeUDPAndTCPPort(t), keys["gossip.key"])))
	c := &http.Client{Timeout: 5 * time.Second}
	for _, user := range []string{"token-ada", "token-grace", "token-ada", "token-alan"} {
		req, _ := http.NewRequest("GET", "http://"+edgeAddr+"/api/cart/1", nil)
		req.Header.Set("X-User", user)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: status %d", user, resp.StatusCode)
		}
	}

	bctx := openDashboard(t, chromium, "http://"+adminAddr+"/", problemsJS)
	d := waitForDashboard(t, bctx, "the edge's sticky sessions", func(d dashboardDOM) bool {
		return d.Connection == "ok" && strings.Contains(d.Text, "sticky sessions")
	})
	var row string
	for _, line := range strings.Split(d.Text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "cart-api") && strings.Contains(line, "header") {
			row = line
		}
	}
	for _, want := range []string{"header, fallback", "3 / 500", backend + " 3"} {
		if !strings.Contains(row, want) {
			t.Errorf("the sticky row %q lacks %q; the page shows:\n%s", row, want, d.Text)
		}
	}
	if !strings.Contains(d.Text, "3 sessions held here") || !strings.Contains(d.Text, "shared by 1 edge (edge-1)") {
		t.Errorf("the sticky section's summary is missing; the page shows:\n%s", d.Text)
	}
	for _, user := range []string{"token-ada", "token-grace", "token-alan"} {
		if strings.Contains(d.Text, user) {
			t.Errorf("the dashboard shows the session token %q", user)
		}
	}
}
