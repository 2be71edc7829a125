package admin

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

type fake struct {
	ready  bool
	reason string
	id     *Identity
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
	if code, _, _ := get(t, h, "/identity"); code != 404 {
		t.Errorf("/identity without mTLS = %d, want 404", code)
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
