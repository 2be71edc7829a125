package admin

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

type fake struct {
	ready   bool
	reason  string
	id      *Identity
	drained []string
	added   map[string]NewAPIKey
	cached  bool
	purges  []CachePurge
	profile bool
}

func (f *fake) Profiling() bool { return f.profile }

func (f *fake) Routes() *Routes         { return nil }
func (f *fake) Sticky() *Sticky         { return nil }
func (f *fake) RateLimits() []RateLimit { return nil }
func (f *fake) Drain(id string, on bool) error {
	if id == "bad" {
		return errors.New("drain: bad endpoint ID")
	}
	if on {
		f.drained = append(f.drained, id)
	} else {
		f.drained = slices.DeleteFunc(f.drained, func(d string) bool { return d == id })
	}
	return nil
}
func (f *fake) Drained() []string { return f.drained }
func (f *fake) APIKeys() []APIKeySet {
	set := APIKeySet{Name: "partners", Keys: []APIKeyRef{{ID: "acme", Source: "file"}}}
	for id := range f.added {
		set.Keys = append(set.Keys, APIKeyRef{ID: id, Source: "admin"})
	}
	return []APIKeySet{set}
}
func (f *fake) RevokeAPIKey(set, id string, on bool) error {
	if set != "partners" {
		return fmt.Errorf("revoke: %w: no API key set is named %q", ErrNotFound, set)
	}
	return nil
}

// AddAPIKey and RemoveAPIKey act on one set, partners, whose file has
// the key acme.
func (f *fake) AddAPIKey(set string, k NewAPIKey) error {
	switch {
	case set != "partners":
		return fmt.Errorf("add: %w: no API key set is named %q", ErrNotFound, set)
	case k.ID == "acme":
		return fmt.Errorf("add: %w: acme is a key of the file", ErrConflict)
	case strings.ContainsAny(k.ID, "/\x00\r\n"):
		return fmt.Errorf("add: bad key ID %q", k.ID)
	}
	if f.added == nil {
		f.added = map[string]NewAPIKey{}
	}
	f.added[k.ID] = k
	return nil
}
func (f *fake) RemoveAPIKey(set, id string) error {
	switch {
	case set != "partners":
		return fmt.Errorf("remove: %w: no API key set is named %q", ErrNotFound, set)
	case id == "acme":
		return fmt.Errorf("remove: %w: acme is a key of the file: edit the file or revoke the key", ErrConflict)
	}
	if _, ok := f.added[id]; !ok {
		return fmt.Errorf("remove: %w: no key %q was added", ErrNotFound, id)
	}
	delete(f.added, id)
	return nil
}

// Cache and PurgeCache act on a cache of two responses, tagged "img",
// once cached is set.
func (f *fake) Cache() *Cache {
	if !f.cached {
		return nil
	}
	return &Cache{Entries: 2 - len(f.purges), Bytes: 100, MaxBytes: 1000, Hits: 3, Misses: 1}
}
func (f *fake) PurgeCache(p CachePurge) (int, error) {
	switch {
	case !f.cached:
		return 0, fmt.Errorf("purge: %w: no route has a cache section", ErrNotFound)
	case (p.Key == "") == (p.Tag == ""):
		return 0, errors.New("purge: give exactly one of key and tag")
	}
	f.purges = append(f.purges, p)
	if p.Tag == "img" {
		return 2, nil
	}
	return 1, nil
}
func (f *fake) Ready() (bool, string) { return f.ready, f.reason }
func (f *fake) Config() any {
	return map[string]any{"outbound": map[string]string{"listen": "127.0.0.1:15001"}}
}
func (f *fake) Upstreams() []Upstream {
	until := time.Unix(100, 0).UTC()
	return []Upstream{{Service: "cart", Balancer: "round_robin", Sources: []string{"static"}, Endpoints: []Endpoint{
		{ID: "a", Address: "10.0.0.1:80", Weight: 1, Breaker: "open", EjectedUntil: &until, Healthy: true},
	}}}
}
func (f *fake) Discovery() []Source { return nil }
func (f *fake) Members() []Member   { return nil }
func (f *fake) Identity() *Identity { return f.id }
func (f *fake) Events() []Event {
	return []Event{{Seq: 2, Time: time.Unix(200, 0).UTC(), Kind: "breaker_opened", Subject: "cart/10.0.0.1:80", Detail: "circuit breaker opened"}}
}
func (f *fake) History() History {
	return History{IntervalSeconds: 5, WindowSeconds: 300, Series: []HistorySeries{
		{Listener: "inbound", Service: "web", Time: []int64{}, RequestsPerSecond: []float64{}, ErrorsPerSecond: []float64{}, P50MS: []float64{}, P99MS: []float64{}},
		{Listener: "outbound", Service: "cart", Time: []int64{5000}, RequestsPerSecond: []float64{2}, ErrorsPerSecond: []float64{0.2}, P50MS: []float64{1.5}, P99MS: []float64{9},
			Retries: &RetryHistory{Total: 3, PerInterval: []uint64{1}, BudgetExhaustedPerInterval: []uint64{0}}},
	}}
}
func (f *fake) Metrics() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "metrics\n") })
}

func get(t *testing.T, h http.Handler, path string) (int, map[string]any, []any) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s: content type %q", path, ct)
	}
	var obj map[string]any
	var list []any
	if err := json.Unmarshal(rec.Body.Bytes(), &obj); err != nil {
		if err := json.Unmarshal(rec.Body.Bytes(), &list); err != nil {
			t.Fatalf("%s: not JSON: %q", path, rec.Body.String())
		}
	}
	return rec.Code, obj, list
}

func TestHandler(t *testing.T) {
	f := &fake{reason: "upstream cart has no snapshot yet"}
	h := Handler(f)
	if code, _, _ := get(t, h, "/live"); code != 200 {
		t.Errorf("/live = %d", code)
	}
	if code, body, _ := get(t, h, "/ready"); code != 503 || body["reason"] != f.reason {
		t.Errorf("/ready while not ready = %d %v", code, body)
	}
	f.ready = true
	if code, _, _ := get(t, h, "/ready"); code != 200 {
		t.Errorf("/ready = %d", code)
	}
	code, _, ups := get(t, h, "/endpoints")
	if code != 200 || len(ups) != 1 {
		t.Fatalf("/endpoints = %d %v", code, ups)
	}
	ep := ups[0].(map[string]any)["endpoints"].([]any)[0].(map[string]any)
	if ep["breaker"] != "open" || ep["ejected_until"] != "1970-01-01T00:01:40Z" {
		t.Errorf("endpoint = %v", ep)
	}
	if code, _, list := get(t, h, "/members"); code != 200 || list == nil || len(list) != 0 {
		t.Errorf("/members without gossip = %d %v, want []", code, list)
	}
	if code, _, _ := get(t, h, "/routes"); code != 404 {
		t.Errorf("/routes without an edge = %d, want 404", code)
	}
	if code, _, _ := get(t, h, "/sticky"); code != 404 {
		t.Errorf("/sticky without sticky routes = %d, want 404", code)
	}
	if code, _, _ := get(t, h, "/identity"); code != 404 {
		t.Errorf("/identity without mTLS = %d, want 404", code)
	}
	if code, _, list := get(t, h, "/events"); code != 200 || len(list) != 1 ||
		list[0].(map[string]any)["kind"] != "breaker_opened" || list[0].(map[string]any)["seq"] != 2.0 {
		t.Errorf("/events = %d %v", code, list)
	}
	code, hist, _ := get(t, h, "/history")
	series, _ := hist["series"].([]any)
	if code != 200 || hist["interval_seconds"] != 5.0 || len(series) != 2 {
		t.Fatalf("/history = %d %v", code, hist)
	}
	in, out := series[0].(map[string]any), series[1].(map[string]any)
	if in["listener"] != "inbound" || in["retries"] != nil || in["time"] == nil {
		t.Errorf("inbound series = %v, want no retries and an empty (not null) time", in)
	}
	if r, _ := out["retries"].(map[string]any); out["service"] != "cart" || r["total"] != 3.0 || out["p99_ms"].([]any)[0] != 9.0 {
		t.Errorf("outbound series = %v", out)
	}
	f.id = &Identity{SPIFFEID: "spiffe://mesh.local/ns/default/svc/cart", ExpiresInSeconds: 42}
	if code, body, _ := get(t, h, "/identity"); code != 200 || body["expires_in_seconds"] != 42.0 {
		t.Errorf("/identity = %d %v", code, body)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/ready", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /ready = %d, want 405", rec.Code)
	}
}

// TestProfiling: /debug/pprof/ is a 404 until the provider says
// profiling is on, then serves the index and the named profiles; it
// follows the provider at every request, as a reload would change it.
func TestProfiling(t *testing.T) {
	f := &fake{}
	h := Handler(f)
	fetch := func(path string) (int, string) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec.Code, rec.Body.String()
	}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/cmdline"} {
		if code, body := fetch(path); code != http.StatusNotFound || !strings.Contains(body, "admin.profiling") {
			t.Errorf("GET %s with profiling off = %d %q, want 404 naming admin.profiling", path, code, body)
		}
	}
	f.profile = true
	if code, body := fetch("/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") || !strings.Contains(body, "heap") {
		t.Errorf("GET /debug/pprof/ = %d, want the index of profiles:\n%s", code, body)
	}
	if code, body := fetch("/debug/pprof/goroutine?debug=1"); code != 200 || !strings.Contains(body, "goroutine profile: total") {
		t.Errorf("GET /debug/pprof/goroutine?debug=1 = %d %.200q", code, body)
	}
	if code, _ := fetch("/debug/pprof/no-such-profile"); code != http.StatusNotFound {
		t.Errorf("an unknown profile = %d, want 404", code)
	}
	f.profile = false
	if code, _ := fetch("/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("GET /debug/pprof/ after profiling was turned off = %d, want 404", code)
	}
}

// TestDrain: PUT and DELETE /drain/{id} drain an endpoint and end its
// drain; GET lists; a bad ID is a 400; a form (POST) or a GET cannot
// change anything.
func TestDrain(t *testing.T) {
	f := &fake{ready: true}
	h := Handler(f)
	do := func(method, path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
		var compact bytes.Buffer
		if json.Compact(&compact, rec.Body.Bytes()) != nil {
			return rec.Code, strings.TrimSpace(rec.Body.String())
		}
		return rec.Code, compact.String()
	}
	for _, step := range []struct {
		method, path string
		code         int
		body         string
	}{
		{"GET", "/drain", 200, `{"drained":[]}`},
		{"PUT", "/drain/cart-7", 200, `{"drained":["cart-7"]}`},
		{"PUT", "/drain/10.0.0.7:8080", 200, `{"drained":["cart-7","10.0.0.7:8080"]}`},
		{"DELETE", "/drain/cart-7", 200, `{"drained":["10.0.0.7:8080"]}`},
		{"PUT", "/drain/bad", 400, `{"error":"drain: bad endpoint ID"}`},
		{"POST", "/drain/cart-9", 405, ""},
		{"GET", "/drain/cart-9", 405, ""},
		{"GET", "/drain", 200, `{"drained":["10.0.0.7:8080"]}`},
	} {
		code, body := do(step.method, step.path)
		if code != step.code || step.body != "" && body != step.body {
			t.Errorf("%s %s = %d %s, want %d %s", step.method, step.path, code, body, step.code, step.body)
		}
	}
}

// TestAPIKeyRoutes: PUT /api_keys/{set}/{id} hashes a key in the clear
// at once (the Provider gets its SHA-256) or takes a SHA-256; each
// mistake in the body, the ID or the set has its status, and neither
// the key nor its hash is ever in an answer.
func TestAPIKeyRoutes(t *testing.T) {
	const secret = "hooli-secret-key-0001"
	digest := sha256.Sum256([]byte(secret))
	f := &fake{ready: true}
	h := Handler(f)
	do := func(method, path, body string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
		if strings.Contains(rec.Body.String(), secret) || strings.Contains(rec.Body.String(), hex.EncodeToString(digest[:])) {
			t.Errorf("%s %s: the answer holds the key or its hash: %s", method, path, rec.Body)
		}
		return rec.Code, rec.Body.String()
	}
	for _, step := range []struct {
		name, method, path, body string
		code                     int
		says                     string // in the answer
	}{
		{"key in the clear", "PUT", "/api_keys/partners/hooli", `{"key":"` + secret + `","expires":"2030-01-01T00:00:00Z","metadata":{"tier":"gold"}}`, 200, `"source": "admin"`},
		{"sha256", "PUT", "/api_keys/partners/globex", `{"sha256":"` + strings.Repeat("ab", 32) + `"}`, 200, `"id": "globex"`},
		{"unknown set", "PUT", "/api_keys/nope/hooli", `{"key":"` + secret + `"}`, 404, "no API key set"},
		{"a file key's ID", "PUT", "/api_keys/partners/acme", `{"key":"` + secret + `"}`, 409, "file"},
		{"short key", "PUT", "/api_keys/partners/x", `{"key":"short-key"}`, 400, "at least 16"},
		{"both", "PUT", "/api_keys/partners/x", `{"key":"` + secret + `","sha256":"` + strings.Repeat("ab", 32) + `"}`, 400, "exactly one"},
		{"neither", "PUT", "/api_keys/partners/x", `{"metadata":{}}`, 400, "exactly one"},
		{"bad sha256", "PUT", "/api_keys/partners/x", `{"sha256":"abcd"}`, 400, "64 hex"},
		{"non-hex sha256", "PUT", "/api_keys/partners/x", `{"sha256":"` + strings.Repeat("zz", 32) + `"}`, 400, "64 hex"},
		{"bad expires", "PUT", "/api_keys/partners/x", `{"key":"` + secret + `","expires":"tomorrow"}`, 400, "body"},
		{"unknown field", "PUT", "/api_keys/partners/x", `{"secret":"` + secret + `"}`, 400, "unknown field"},
		{"not JSON", "PUT", "/api_keys/partners/x", `key=` + secret, 400, "not JSON"},
		{"a control character in the key", "PUT", "/api_keys/partners/x", `{"key":"hooli-secret` + "\x01" + `-key"}`, 400, "not JSON (at byte"},
		{"too large", "PUT", "/api_keys/partners/x", `{"key":"` + strings.Repeat("k", 20<<10) + `"}`, 400, "body"},
		{"CR in the ID", "PUT", "/api_keys/partners/a%0Db", `{"key":"` + secret + `"}`, 400, "bad key ID"},
		{"slash in the ID", "PUT", "/api_keys/partners/a%2Fb", `{"key":"` + secret + `"}`, 400, "bad key ID"},
		{"remove a file key", "DELETE", "/api_keys/partners/acme", "", 409, "edit the file"},
		{"remove an unknown key", "DELETE", "/api_keys/partners/nope", "", 404, "nope"},
		{"remove from an unknown set", "DELETE", "/api_keys/nope/hooli", "", 404, "no API key set"},
		{"revoke in an unknown set", "PUT", "/api_keys/nope/hooli/revoked", "", 404, "no API key set"},
		{"POST", "POST", "/api_keys/partners/x", `{"key":"` + secret + `"}`, 405, ""},
		{"remove", "DELETE", "/api_keys/partners/globex", "", 200, `"removed": true`},
	} {
		code, body := do(step.method, step.path, step.body)
		if code != step.code || !strings.Contains(body, step.says) {
			t.Errorf("%s: %s %s = %d %s, want %d with %q", step.name, step.method, step.path, code, body, step.code, step.says)
		}
	}
	k := f.added["hooli"]
	if k.SHA256 != digest || !k.Expires.Equal(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)) || k.Metadata["tier"] != "gold" {
		t.Errorf("the Provider got %+v", k)
	}
	if len(f.added) != 1 {
		t.Errorf("keys added: %v, want hooli alone", f.added)
	}
	code, body := do("GET", "/api_keys", "")
	if code != 200 || !strings.Contains(body, `"source": "file"`) || !strings.Contains(body, `"source": "admin"`) {
		t.Errorf("GET /api_keys = %d %s", code, body)
	}
}

// TestCache: GET /cache shows the counters (404 without a cached
// route); DELETE /cache purges by key or tag, exactly one, and answers
// how many responses this edge removed; a GET or POST purges nothing.
func TestCache(t *testing.T) {
	f := &fake{ready: true}
	h := Handler(f)
	do := func(method, path string) (int, map[string]any) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
		var body map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil && rec.Code != http.StatusMethodNotAllowed {
			t.Fatalf("%s %s: not JSON: %q", method, path, rec.Body.String())
		}
		return rec.Code, body
	}
	if code, _ := do("GET", "/cache"); code != 404 {
		t.Errorf("GET /cache without a cache = %d, want 404", code)
	}
	if code, body := do("DELETE", "/cache?key=/a"); code != 404 || !strings.Contains(fmt.Sprint(body["error"]), "no route has a cache") {
		t.Errorf("DELETE /cache without a cache = %d %v, want 404", code, body)
	}
	f.cached = true
	if code, body := do("GET", "/cache"); code != 200 || body["entries"] != 2.0 || body["hits"] != 3.0 || body["max_bytes"] != 1000.0 {
		t.Errorf("GET /cache = %d %v", code, body)
	}
	if code, body := do("DELETE", "/cache?key="+url.QueryEscape("https://shop.example.com/a?v=1")); code != 200 || body["purged_here"] != 1.0 || body["key"] != "https://shop.example.com/a?v=1" {
		t.Errorf("DELETE /cache?key= = %d %v", code, body)
	}
	if code, body := do("DELETE", "/cache?tag=img"); code != 200 || body["purged_here"] != 2.0 || body["tag"] != "img" {
		t.Errorf("DELETE /cache?tag= = %d %v", code, body)
	}
	for _, path := range []string{"/cache", "/cache?key=/a&tag=img"} {
		if code, _ := do("DELETE", path); code != 400 {
			t.Errorf("DELETE %s = %d, want 400", path, code)
		}
	}
	if code, _ := do("POST", "/cache?tag=img"); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /cache = %d, want 405", code)
	}
	if want := []CachePurge{{Key: "https://shop.example.com/a?v=1"}, {Tag: "img"}}; !slices.Equal(f.purges, want) {
		t.Errorf("purges %v, want %v", f.purges, want)
	}
}
