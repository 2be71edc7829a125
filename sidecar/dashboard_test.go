package sidecar

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
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
  return {
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
	Connection string `json:"connection"` // body's data-connection: connecting, ok, unreachable, error
	Ready      string `json:"ready"`      // "true", "false", or "" before an answer
	Refreshed  string `json:"refreshed"`  // the last successful refresh, RFC 3339
	Banner     string `json:"banner"`
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

// TestDashboardInBrowser loads the admin dashboard in a headless Chromium
// against a running sidecar and watches it, without reloading the page,
// follow an endpoint that starts failing: its breaker opens and it is
// ejected, while the other stays closed. It then takes the admin API away
// and brings it back: the page says it is unreachable, and recovers.
func TestDashboardInBrowser(t *testing.T) {
	chromium := chromiumPath(t)

	good, bad := newControlledBackend(t, "good"), newControlledBackend(t, "bad")
	good.latency.Store(int64(2 * time.Millisecond))
	bad.latency.Store(int64(5 * time.Millisecond))
	adminAddr, out := listenAddr(t), listenAddr(t)
	config := func(admin string) string {
		return fmt.Sprintf("%s\noutbound: { listen: %s }\n%s", admin, out, breakerUpstream(good, bad))
	}
	withAdmin := config(fmt.Sprintf("admin: { listen: %s }", adminAddr))
	s := start(t, parse(t, withAdmin))
	client := newClient(t)
	if failed := sendN(client, out, "svc", 20); len(failed) > 0 {
		t.Fatalf("requests %v of 20 failed while both backends were healthy", failed)
	}

	// One bound for everything the browser does; the browser lives as
	// long as ctx.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	actx, acancel := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox, // the tests run as root
		chromedp.WindowSize(1280, 720),
	)...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()

	url := "http://" + adminAddr + "/"
	if err := chromedp.Do(bctx,
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: problemsJS})
			return err
		}),
		chromedp.Navigate(url),
	); err != nil {
		t.Fatalf("opening %s in %s: %v", url, chromium, err)
	}

	// 1. Both endpoints healthy, each with a latency.
	d := waitForDashboard(t, bctx, "both endpoints closed, with a latency", func(d dashboardDOM) bool {
		g, b := d.row("svc", good.addr), d.row("svc", bad.addr)
		return d.Connection == "ok" && d.Ready == "true" && g != nil && b != nil &&
			g.Value["breaker"] == "closed" && b.Value["breaker"] == "closed" &&
			g.number("latency") > 0 && b.number("latency") > 0
	})
	for _, addr := range []string{good.addr, bad.addr} {
		if !strings.Contains(d.Text, addr) {
			t.Errorf("the page does not show endpoint %s; it shows:\n%s", addr, d.Text)
		}
		r := d.row("svc", addr)
		if r.Text["inflight"] != "0" || r.Text["weight"] != "1" || r.Text["health"] != "healthy" ||
			r.Value["ejected"] != "" || r.number("requests") < 1 || r.Text["failures"] != "0" {
			t.Errorf("healthy endpoint shown as %v", r)
		}
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
