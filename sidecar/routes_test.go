package sidecar

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestServiceFromHost(t *testing.T) {
	for host, want := range map[string]string{
		"catalog":           "catalog",
		"catalog.mesh":      "catalog",
		"catalog:8080":      "catalog",
		"Catalog.Mesh:80":   "catalog",
		"catalog.mesh.":     "catalog",
		"catalog.example":   "catalog.example",
		"[::1]:80":          "::1",
		"meshy":             "meshy",
		"catalog.mesh.mesh": "catalog.mesh",
		"":                  "",
	} {
		if got := serviceFromHost(host); got != want {
			t.Errorf("serviceFromHost(%q) = %q, want %q", host, got, want)
		}
	}
}

// TestUnknownServiceIs502NoRoute: a Host that names no upstream gets a
// 502 at once, with a text body naming the service and the known
// upstreams, and never reaches an endpoint.
func TestUnknownServiceIs502NoRoute(t *testing.T) {
	var hits atomic.Int64
	backend := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	defer backend.Close()
	out := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams:
  - { service: catalog, endpoints: [{ address: %s }] }
  - { service: cart, endpoints: [{ address: %s }] }
`, out, backend.Listener.Addr(), backend.Listener.Addr())))
	req, _ := http.NewRequest("GET", "http://"+out+"/items", nil)
	req.Host = "inventory.mesh:8080"
	begin := time.Now()
	resp, err := newClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d > time.Second {
		t.Errorf("502 took %v", d)
	}
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Sidemesh-Error") != "no_route" ||
		!strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("got %d %q %q", resp.StatusCode, resp.Header.Get("X-Sidemesh-Error"), resp.Header.Get("Content-Type"))
	}
	if s := string(body); !strings.Contains(s, `"inventory"`) || !strings.Contains(s, "known upstreams: cart, catalog") {
		t.Errorf("body %q does not name the service and the known upstreams", s)
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("backend got %d requests", n)
	}
}

// TestOutboundAsHTTPProxy: an app that knows nothing of sidemesh but
// honours HTTP_PROXY (Go, curl, Python requests...) sends absolute-form
// requests ("GET http://catalog/items") to the outbound listener, which
// routes them by the host like any other.
func TestOutboundAsHTTPProxy(t *testing.T) {
	backend := namedBackend(t, "catalog says hi")
	out := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams: [{ service: catalog, endpoints: [{ address: %s }] }]
`, out, backend)))
	proxy, _ := url.Parse("http://" + out)
	tr := &http.Transport{Proxy: http.ProxyURL(proxy)}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://catalog/items")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "catalog says hi" {
		t.Fatalf("through HTTP_PROXY: %d %q", resp.StatusCode, body)
	}

	// An https:// URL makes the client ask for a tunnel, which the
	// outbound listener refuses: nothing would check what goes through.
	_, err = (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://catalog/items")
	if err == nil || !strings.Contains(err.Error(), "Method Not Allowed") {
		t.Fatalf("https:// through the outbound listener: %v, want the CONNECT refused with 405", err)
	}
}
