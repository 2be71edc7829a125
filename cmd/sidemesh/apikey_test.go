package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// TestAPIKeyRevocationAcrossEdges: three edge processes accept the keys
// of one key file, in a header or (where enabled) a query parameter,
// and hide them from the backend and the access log; a key revoked
// through A's admin API is refused by B and C within 2 s.
func TestAPIKeyRevocationAcrossEdges(t *testing.T) {
	dir := t.TempDir()
	gossipKey := keygen(t, dir, "gossip.key")
	keys := writeFile(t, dir, "partners.keys", `
- { id: acme, key: acme-0123456789abcdef }
- { id: globex, key: globex-0123456789abcdef }
`)
	seen := make(chan string, 100)
	app := startBackend(t, func(w http.ResponseWriter, r *http.Request) {
		seen <- fmt.Sprintf("uri=%s key=%q consumer=%q", r.RequestURI, r.Header.Get("X-Api-Key"), r.Header.Get("X-Consumer"))
		io.WriteString(w, "ok")
	})
	var edges []*edgeProc
	for _, name := range []string{"a", "b", "c"} {
		seed := ""
		if len(edges) > 0 {
			seed = edges[0].gossip
		}
		edges = append(edges, startEdgeProc(t, name, seed, gossipKey, fmt.Sprintf(`
edge:
  api_keys: [{ name: partners, file: %s, query: api_key }]
  routes:
    - name: api
      matches: [{ path: { prefix: /api } }]
      auth: { api_key: partners, forward_claims: { id: X-Consumer } }
      backends: [{ service: app }]
upstreams: [{ service: app, endpoints: [{ address: 127.0.0.1:%d }] }]
telemetry: { access_log: %s }
`, keys, app.port, filepath.Join(dir, "{name}.access.log"))))
	}
	meshtest.WaitFor(t, 20*time.Second, "three edges in the pool", func() bool {
		resp, err := http.Get("http://" + edges[0].admin + "/members")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Count(string(b), `"state": "alive"`) == 3
	})
	c := newClient()
	call := func(e *edgeProc, target, key string) int {
		req, _ := http.NewRequest("GET", "http://"+e.listen+target, nil)
		if key != "" {
			req.Header.Set("X-Api-Key", key)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, e := range edges {
		if code := call(e, "/api/x", "acme-0123456789abcdef"); code != 200 {
			t.Fatalf("%s with acme's key: %d", e.name, code)
		}
		if got := <-seen; got != `uri=/api/x key="" consumer="acme"` {
			t.Errorf("%s: the backend saw %s", e.name, got)
		}
		if code := call(e, "/api/x", "acme-0123456789abcdeX"); code != 401 {
			t.Errorf("%s with a wrong key: %d", e.name, code)
		}
	}
	if code := call(edges[1], "/api/x?api_key=globex-0123456789abcdef&page=2", ""); code != 200 {
		t.Fatalf("key in the query: %d", code)
	}
	if got := <-seen; got != `uri=/api/x?page=2 key="" consumer="globex"` {
		t.Errorf("key in the query: the backend saw %s", got)
	}

	req, _ := http.NewRequest("PUT", "http://"+edges[0].admin+"/api_keys/partners/acme/revoked", nil)
	resp, err := c.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("revoke through A: %v %v", resp, err)
	}
	resp.Body.Close()
	took := meshtest.WaitFor(t, 2*time.Second, "B and C to refuse the revoked key", func() bool {
		return call(edges[1], "/api/x", "acme-0123456789abcdef") == 401 && call(edges[2], "/api/x", "acme-0123456789abcdef") == 401
	})
	t.Logf("B and C refused the revoked key %v after A revoked it", took.Round(time.Millisecond))
	for len(seen) > 0 {
		<-seen
	}
	if code := call(edges[2], "/api/x", "globex-0123456789abcdef"); code != 200 {
		t.Errorf("another key after the revocation: %d", code)
	}
	for _, e := range edges {
		data, _ := os.ReadFile(filepath.Join(dir, e.name+".access.log"))
		if strings.Contains(string(data), "0123456789abcdef") {
			t.Errorf("%s's access log holds a key:\n%s", e.name, data)
		}
		if !strings.Contains(string(data), `"principal":"apikey:partners:acme"`) {
			t.Errorf("%s's access log does not name the principal:\n%s", e.name, data)
		}
	}
}

// TestAPIKeysFailClosedWhenCutOff: an edge whose peers all died (as far
// as it can tell, it is cut off) refuses API keys once max_isolation has
// passed, since a revocation made elsewhere could not reach it; it
// accepts them again as soon as another edge joins it.
func TestAPIKeysFailClosedWhenCutOff(t *testing.T) {
	dir := t.TempDir()
	gossipKey := keygen(t, dir, "gossip.key")
	keys := writeFile(t, dir, "partners.keys", "- { id: acme, key: acme-0123456789abcdef }\n")
	app := startBackend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	cfg := fmt.Sprintf(`
edge:
  api_keys: [{ name: partners, file: %s, max_isolation: 2s }]
  routes:
    - { name: api, matches: [{ path: { prefix: /api } }], auth: { api_key: partners }, backends: [{ service: app }] }
upstreams: [{ service: app, endpoints: [{ address: 127.0.0.1:%d }] }]
`, keys, app.port)
	start := func(name, seed string) *edgeProc { return startEdgeProc(t, name, seed, gossipKey, cfg) }
	a := start("a", "")
	b, c := start("b", a.gossip), start("c", a.gossip)
	client := newClient()
	call := func(e *edgeProc) int {
		req, _ := http.NewRequest("GET", "http://"+e.listen+"/api/x", nil)
		req.Header.Set("X-Api-Key", "acme-0123456789abcdef")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	metric := func(e *edgeProc) string {
		resp, err := http.Get("http://" + e.admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for line := range strings.Lines(string(b)) {
			if strings.HasPrefix(line, "sidemesh_gossip_isolation_seconds ") {
				return strings.TrimSpace(strings.TrimPrefix(line, "sidemesh_gossip_isolation_seconds "))
			}
		}
		return ""
	}
	meshtest.WaitFor(t, 20*time.Second, "three edges, keys accepted", func() bool {
		return call(a) == 200 && call(b) == 200 && call(c) == 200 && metric(a) == "0"
	})

	b.proc.cmd.Process.Kill()
	c.proc.cmd.Process.Kill()
	killed := time.Now()
	took := meshtest.WaitFor(t, 40*time.Second, "A to refuse keys once cut off for 2 s", func() bool { return call(a) == 401 })
	if took < 2*time.Second {
		t.Errorf("A refused keys %v after its peers died: before max_isolation", took)
	}
	if m := metric(a); m == "" || m == "0" {
		t.Errorf("sidemesh_gossip_isolation_seconds = %q while cut off", m)
	}
	t.Logf("A refused keys %v after its peers were killed", time.Since(killed).Round(100*time.Millisecond))

	d := start("d", a.gossip)
	meshtest.WaitFor(t, 20*time.Second, "A to accept keys again once D joined", func() bool { return call(a) == 200 })
	if code := call(d); code != 200 {
		t.Errorf("D: %d", code)
	}
}
