package admin

import (
	_ "embed"
	"net/http"
	"strconv"
)

// dashboardHTML is the dashboard: one self-contained page, its script and
// styles inline, that polls the admin API's JSON endpoints.
//
//go:embed dashboard.html
var dashboardHTML []byte

// dashboardCSP is the dashboard's Content-Security-Policy: nothing loads
// from anywhere but the page itself (its inline script and styles, and a
// data: favicon), and fetches go only to the admin API that served it.
// The page cannot be framed, change its base URL or submit forms.
const dashboardCSP = "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; " +
	"connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// dashboard serves the dashboard page. It is never cached, so a sidecar
// upgrade shows its own page at once.
func dashboard() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Content-Length", strconv.Itoa(len(dashboardHTML)))
		h.Set("Cache-Control", "no-store")
		h.Set("Content-Security-Policy", dashboardCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		w.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			_, _ = w.Write(dashboardHTML) // the client may be gone; nothing to do about it
		}
	})
}
