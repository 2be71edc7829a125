package sidecar

import (
	"github.com/sidemesh/sidemesh/internal/meshtest"

	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery/consul/consultest"
	"github.com/sidemesh/sidemesh/sidecar/admin"
)

// adminGet decodes the JSON the admin API answers at path.
func adminGet(t *testing.T, addr, path string, v any) int {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return resp.StatusCode
}

// TestAdminAPI checks that the admin API reflects the sidecar: ready,
// the effective config, an endpoint whose breaker opened and that was
// ejected, the identity and its expiry.
func TestAdminAPI(t *testing.T) {
	ca := newMeshCA(t, "mesh.local")
	good, bad := newControlledBackend(t, "good"), newControlledBackend(t, "bad")
	bad.mode.Store(int32(mode500))
	adminAddr, out := listenAddr(t), listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
admin: { listen: %s }
outbound: { listen: %s }
%s
%s`, adminAddr, out, ca.leaf("web"), breakerUpstream(good, bad))))

	var ready map[string]string
	if code := adminGet(t, adminAddr, "/ready", &ready); code != 200 || ready["status"] != "ready" {
		t.Fatalf("/ready = %d %v", code, ready)
	}
	var cfg map[string]any
	adminGet(t, adminAddr, "/config", &cfg)
	if ob, _ := cfg["outbound"].(map[string]any); ob["listen"] != out {
		t.Errorf("/config outbound = %v", cfg["outbound"])
	}

	c := newClient(t)
	for range 20 {
		get(c, out, "svc")
	}
	var ups []admin.Upstream
	adminGet(t, adminAddr, "/endpoints", &ups)
	if len(ups) != 1 || len(ups[0].Endpoints) != 2 {
		t.Fatalf("/endpoints = %+v", ups)
	}
	for _, ep := range ups[0].Endpoints {
		switch ep.Address {
		case bad.addr:
			if ep.Breaker != "open" || ep.EjectedUntil == nil || !ep.EjectedUntil.After(time.Now()) {
				t.Errorf("failing endpoint: %+v, want breaker open and ejected", ep)
			}
		case good.addr:
			if ep.Breaker != "closed" || ep.EjectedUntil != nil || ep.LatencyMS <= 0 {
				t.Errorf("good endpoint: %+v", ep)
			}
		}
	}

	var id admin.Identity
	if code := adminGet(t, adminAddr, "/identity", &id); code != 200 ||
		id.SPIFFEID != "spiffe://mesh.local/ns/default/svc/web" || id.ExpiresInSeconds < 3000 || id.ExpiresInSeconds > 3600 {
		t.Errorf("/identity = %d %+v", code, id)
	}
}

// TestAdminShowsConsulDown: while Consul is unreachable, /discovery says
// so for the upstreams watched through it.
func TestAdminShowsConsulDown(t *testing.T) {
	agent := consultest.Start(t)
	adminAddr := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
admin: { listen: %s }
outbound: { listen: %s }
discovery: { consul: { address: %s } }
upstreams: [{ service: catalog }]
`, adminAddr, listenAddr(t), agent.URL())))
	var src []admin.Source
	adminGet(t, adminAddr, "/discovery", &src)
	if len(src) != 1 || !src[0].Healthy {
		t.Fatalf("/discovery with consul up = %+v", src)
	}
	agent.Stop()
	meshtest.Eventually(t, 30*time.Second, "consul down on /discovery", func() error {
		adminGet(t, adminAddr, "/discovery", &src)
		if len(src) == 1 && !src[0].Healthy && src[0].Error != "" {
			return nil
		}
		return fmt.Errorf("%+v", src)
	})
	t.Logf("consul down, as the admin API says: %s", src[0].Error)
	m := scrape(t, adminAddr)
	if n, _ := metricValue(m, "sidemesh_discovery_errors_total", map[string]string{"sidemesh_upstream": "catalog", "sidemesh_discovery_backend": "consul"}); n < 1 {
		t.Errorf("discovery errors for catalog = %v while consul is down, want at least 1", n)
	}
	if age, ok := metricValue(m, "sidemesh_discovery_snapshot_age_seconds", map[string]string{"sidemesh_upstream": "catalog"}); !ok || age <= 0 {
		t.Errorf("snapshot age = %v (present %v)", age, ok)
	}
}
