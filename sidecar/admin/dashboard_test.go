package admin

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

// serve sends one request through the admin handler and returns the
// recorded response.
func serve(t *testing.T, method, path string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	Handler(&fake{ready: true}).ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec
}

// TestDashboard: / serves the page as uncached HTML under a strict
// Content-Security-Policy.
func TestDashboard(t *testing.T) {
	rec := serve(t, "GET", "/")
	if rec.Code != http.StatusOK {
		t.Fatalf("GET / = %d, want 200; body: %.200s", rec.Code, rec.Body.String())
	}
	h := rec.Header()
	for name, want := range map[string]string{
		"Content-Type":           "text/html; charset=utf-8",
		"Cache-Control":          "no-store",
		"X-Content-Type-Options": "nosniff",
	} {
		if got := h.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	csp := h.Get("Content-Security-Policy")
	for _, directive := range []string{"default-src 'none'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, directive) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, directive)
		}
	}
	body := rec.Body.String()
	if !strings.HasPrefix(body, "<!doctype html>") || !strings.Contains(body, "</html>") {
		t.Errorf("GET / is not a whole HTML document: %.200s", body)
	}
	// Before its script has fetched anything, the page says it is
	// loading rather than showing nothing.
	if !strings.Contains(body, `<section id="loading"`) || !strings.Contains(body, "Loading the sidecar") {
		t.Errorf("the page has no loading state in its markup")
	}
	for _, want := range []string{"'endpoints'", "'ready'", "'members'", "'history'", "'events'", "dataset.upstream", "dataset.endpoint", "dataset.field",
		"dataset.spark", "dataset.points", "dataset.kind", "'not checked'", "setTimeout(refresh"} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %s", want)
		}
	}

	head := serve(t, "HEAD", "/")
	if head.Code != http.StatusOK || head.Body.Len() != 0 || head.Header().Get("Content-Security-Policy") != csp {
		t.Errorf("HEAD / = %d with %d body bytes and CSP %q", head.Code, head.Body.Len(), head.Header().Get("Content-Security-Policy"))
	}
}

// TestDashboardSelfContained: the page loads nothing from elsewhere and
// never turns data into markup.
func TestDashboardSelfContained(t *testing.T) {
	body := serve(t, "GET", "/").Body.String()
	external := regexp.MustCompile(`(?i)(\b(src|href|action)\s*=\s*["']?\s*(https?:|//)|url\(\s*["']?\s*(https?:|//)|@import|fetch\(\s*["']\s*(https?:|//))`)
	if m := external.FindAllString(body, -1); m != nil {
		t.Errorf("the page references external URLs: %q", m)
	}
	for _, sink := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
		if strings.Contains(body, sink) {
			t.Errorf("the page uses %s; data must reach the DOM as text", sink)
		}
	}
}

// TestDashboardOnlyAtRoot: the page is at / alone; other unknown paths
// are still 404, and / takes only GET.
func TestDashboardOnlyAtRoot(t *testing.T) {
	for _, path := range []string{"/nope", "/index.html", "/live/"} {
		if rec := serve(t, "GET", path); rec.Code != http.StatusNotFound {
			t.Errorf("GET %s = %d, want 404", path, rec.Code)
		}
	}
	if rec := serve(t, "POST", "/"); rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST / = %d, want 405", rec.Code)
	}
}
