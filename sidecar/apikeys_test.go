package sidecar

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/sidecar/admin"
)

// apiKeyEdgeConfig is an edge listening at listen whose one route needs
// a key of the set partners (file keys in keys), to app.
func apiKeyEdgeConfig(listen, keys, app string) string {
	return fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  api_keys: [{ name: partners, file: %s }]
  routes:
    - { name: api, matches: [{ path: { prefix: / } }], auth: { api_key: partners }, backends: [{ service: app }] }
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
`, listen, keys, app)
}

// adminDo sends one request to e's admin API, in process.
func adminDo(e *Sidecar, method, path, body string) (int, string) {
	rec := httptest.NewRecorder()
	admin.Handler(adminState{e}).ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
	return rec.Code, rec.Body.String()
}

// keyCaller returns a function that sends a request with key (in
// X-Api-Key) to the edge listening at addr and returns the status.
func keyCaller(t *testing.T) func(addr, key string) int {
	c := &http.Client{Timeout: 5 * time.Second}
	return func(addr, key string) int {
		req, _ := http.NewRequest("GET", "http://"+addr+"/x", nil)
		req.Header.Set("X-Api-Key", key)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
}

// TestAPIKeyAddedAcrossEdges: three edges in a pool share a key set. A
// key added through A's admin API is accepted by B and C within 2 s; it
// can be revoked like a key of the file; removed through C, it is
// refused by A and B within 2 s. The key in the clear is in no gossip
// entry and no answer of the admin API, nor is its hash in the answers.
// A key that arrives by gossip with the ID of a file key loses to it.
func TestAPIKeyAddedAcrossEdges(t *testing.T) {
	const secret = "hooli-0123456789abcdef-secret"
	digest := sha256.Sum256([]byte(secret))
	dir := t.TempDir()
	keys := filepath.Join(dir, "partners.keys")
	os.WriteFile(keys, []byte("- { id: acme, key: acme-0123456789abcdef }\n"), 0o600)
	app := namedBackend(t, "app")
	pool := newEdgePool(t, 3, func(addr string) string { return apiKeyEdgeConfig(addr, keys, app) })
	edges, addrs := pool.edges, pool.addrs
	call := keyCaller(t)
	for i := range 3 {
		if code := call(addrs[i], secret); code != 401 {
			t.Fatalf("edge-%d with the key before it was added: %d", i, code)
		}
	}

	expires := time.Now().Add(24 * time.Hour).UTC().Truncate(time.Second)
	if code, body := adminDo(edges[0], "PUT", "/api_keys/partners/hooli", `{"key":"`+secret+`","metadata":{"tier":"gold"},"expires":"`+expires.Format(time.RFC3339)+`"}`); code != 200 {
		t.Fatalf("add through A: %d %s", code, body)
	}
	if code := call(addrs[0], secret); code != 200 {
		t.Errorf("A with the key it added: %d", code)
	}
	took := meshtest.WaitFor(t, 2*time.Second, "B and C to accept the added key", func() bool {
		return call(addrs[1], secret) == 200 && call(addrs[2], secret) == 200
	})
	t.Logf("B and C accepted the key %v after A added it", took.Round(time.Millisecond))
	for i, e := range edges {
		for _, entry := range e.backends.pool.Store().List("") {
			if strings.Contains(string(entry.Value), secret) || strings.Contains(entry.Key, secret) {
				t.Errorf("edge-%d: gossip entry %s holds the key in the clear", i, entry.Key)
			}
		}
		entry, ok := e.backends.pool.Store().Get(addedPrefix + "partners/hooli")
		if !ok || entry.Tied || !strings.Contains(string(entry.Value), hex.EncodeToString(digest[:])) {
			t.Errorf("edge-%d: entry %+v %v, want an untied entry with the key's SHA-256", i, entry, ok)
		}
		if d := entry.Expires.Sub(expires); d < 59*time.Second || d > 61*time.Second {
			t.Errorf("edge-%d: the entry expires %v after the key; want a minute", i, d)
		}
		code, body := adminDo(e, "GET", "/api_keys", "")
		if code != 200 || strings.Contains(body, secret) || strings.Contains(body, hex.EncodeToString(digest[:])) {
			t.Errorf("edge-%d: GET /api_keys = %d and holds the key or its hash:\n%s", i, code, body)
		}
		var got struct{ Sets []admin.APIKeySet }
		json.Unmarshal([]byte(body), &got)
		if len(got.Sets) != 1 || len(got.Sets[0].Keys) != 2 ||
			got.Sets[0].Keys[0] != (admin.APIKeyRef{ID: "acme", Source: "file"}) ||
			got.Sets[0].Keys[1].ID != "hooli" || got.Sets[0].Keys[1].Source != "admin" || got.Sets[0].Keys[1].Expires == nil || !got.Sets[0].Keys[1].Expires.Equal(expires) {
			t.Errorf("edge-%d: GET /api_keys = %+v", i, got)
		}
	}

	// Revoked through B, like a key of the file.
	if code, body := adminDo(edges[1], "PUT", "/api_keys/partners/hooli/revoked", ""); code != 200 {
		t.Fatalf("revoke through B: %d %s", code, body)
	}
	meshtest.WaitFor(t, 2*time.Second, "A and C to refuse the revoked key", func() bool {
		return call(addrs[0], secret) == 401 && call(addrs[2], secret) == 401
	})
	adminDo(edges[1], "DELETE", "/api_keys/partners/hooli/revoked", "")
	meshtest.WaitFor(t, 2*time.Second, "A and C to accept the key again", func() bool {
		return call(addrs[0], secret) == 200 && call(addrs[2], secret) == 200
	})

	if code, body := adminDo(edges[2], "DELETE", "/api_keys/partners/hooli", ""); code != 200 {
		t.Fatalf("remove through C: %d %s", code, body)
	}
	if code := call(addrs[2], secret); code != 401 {
		t.Errorf("C with the key it removed: %d", code)
	}
	took = meshtest.WaitFor(t, 2*time.Second, "A and B to refuse the removed key", func() bool {
		return call(addrs[0], secret) == 401 && call(addrs[1], secret) == 401
	})
	t.Logf("A and B refused the key %v after C removed it", took.Round(time.Millisecond))

	// An entry with a file key's ID, as an edge whose file differs would
	// write: every edge keeps its file's key and shows the conflict.
	other := sha256.Sum256([]byte("acme-by-another-edge-0001"))
	value, _ := json.Marshal(addedKey{SHA256: hex.EncodeToString(other[:])})
	if err := edges[1].backends.pool.Store().Set(addedPrefix+"partners/acme", value, gossip.SetOptions{}); err != nil {
		t.Fatal(err)
	}
	meshtest.WaitFor(t, 2*time.Second, "every edge to report the conflict", func() bool {
		for _, e := range edges {
			if sets := e.APIKeySets(); len(sets[0].Conflicts) != 1 || sets[0].Conflicts[0] != "acme" {
				return false
			}
		}
		return true
	})
	for i := range 3 {
		if code := call(addrs[i], "acme-0123456789abcdef"); code != 200 {
			t.Errorf("edge-%d with the file's acme key: %d", i, code)
		}
		if code := call(addrs[i], "acme-by-another-edge-0001"); code != 401 {
			t.Errorf("edge-%d with the gossiped acme key: %d", i, code)
		}
	}
	if code, body := adminDo(edges[0], "DELETE", "/api_keys/partners/acme", ""); code != 200 {
		t.Errorf("remove the conflicting entry: %d %s", code, body)
	}
	if code, body := adminDo(edges[0], "DELETE", "/api_keys/partners/acme", ""); code != 409 {
		t.Errorf("remove the file's acme key: %d %s, want 409", code, body)
	}
}

// TestAPIKeyAddedWithoutPool: without a gossip pool an added key is the
// process's own, and survives a reload of the config; every refusal of
// the admin API has its status.
func TestAPIKeyAddedWithoutPool(t *testing.T) {
	const secret = "hooli-0123456789abcdef-secret"
	dir := t.TempDir()
	keys := filepath.Join(dir, "partners.keys")
	os.WriteFile(keys, []byte("- { id: acme, key: acme-0123456789abcdef }\n"), 0o600)
	app := namedBackend(t, "app")
	addr := listenAddr(t)
	cfgText := apiKeyEdgeConfig(addr, keys, app)
	e := start(t, parse(t, cfgText))
	call := keyCaller(t)
	if code, body := adminDo(e, "PUT", "/api_keys/partners/hooli", `{"key":"`+secret+`","expires":"2100-01-01T00:00:00Z"}`); code != 200 {
		t.Fatalf("add: %d %s", code, body)
	}
	if code := call(addr, secret); code != 200 {
		t.Errorf("the added key: %d", code)
	}
	if err := e.Reload(context.Background(), parse(t, cfgText)); err != nil {
		t.Fatal(err)
	}
	if code := call(addr, secret); code != 200 {
		t.Errorf("the added key after a reload: %d", code)
	}
	for _, step := range []struct {
		name, method, path, body string
		code                     int
		says                     string
	}{
		{"unknown set", "PUT", "/api_keys/nope/x", `{"key":"` + secret + `"}`, 404, "no API key set"},
		{"a file key's ID", "PUT", "/api_keys/partners/acme", `{"key":"another-0123456789abcdef"}`, 409, "edit the file"},
		{"a file key's secret", "PUT", "/api_keys/partners/x", `{"key":"acme-0123456789abcdef"}`, 409, `key \"acme\"`},
		{"another added key's secret", "PUT", "/api_keys/partners/x", `{"key":"` + secret + `"}`, 409, `key \"hooli\"`},
		{"expired", "PUT", "/api_keys/partners/x", `{"key":"another-0123456789abcdef","expires":"2001-01-01T00:00:00Z"}`, 400, "past"},
		{"LF in the ID", "PUT", "/api_keys/partners/a%0Ab", `{"key":"another-0123456789abcdef"}`, 400, "bad key ID"},
		{"NUL in the ID", "PUT", "/api_keys/partners/a%00b", `{"key":"another-0123456789abcdef"}`, 400, "bad key ID"},
		{"slash in the ID", "PUT", "/api_keys/partners/a%2Fb", `{"key":"another-0123456789abcdef"}`, 400, "bad key ID"},
		{"too much metadata", "PUT", "/api_keys/partners/x", `{"key":"another-0123456789abcdef","metadata":{"m":"` + strings.Repeat("m", 2000) + `"}}`, 400, "at most 1024"},
		{"remove a file key", "DELETE", "/api_keys/partners/acme", "", 409, "revoke"},
		{"remove an unknown key", "DELETE", "/api_keys/partners/nope", "", 404, "no key"},
		{"remove from an unknown set", "DELETE", "/api_keys/nope/hooli", "", 404, "no API key set"},
		{"replace", "PUT", "/api_keys/partners/hooli", `{"key":"another-0123456789abcdef"}`, 200, ""},
	} {
		code, body := adminDo(e, step.method, step.path, step.body)
		if code != step.code || !strings.Contains(body, step.says) {
			t.Errorf("%s: %s %s = %d %s, want %d with %q", step.name, step.method, step.path, code, body, step.code, step.says)
		}
	}
	if code := call(addr, secret); code != 401 {
		t.Errorf("the replaced key: %d", code)
	}
	if code := call(addr, "another-0123456789abcdef"); code != 200 {
		t.Errorf("the replacing key: %d", code)
	}
	if code, body := adminDo(e, "DELETE", "/api_keys/partners/hooli", ""); code != 200 {
		t.Fatalf("remove: %d %s", code, body)
	}
	if code := call(addr, "another-0123456789abcdef"); code != 401 {
		t.Errorf("the removed key: %d", code)
	}
}
