package sidecar

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery/consul/consultest"
	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/sidecar/admin"
)

// TestRefusedReloadKeepsPolicy: a reload that cannot bind one of its
// listeners is refused, and refused whole: the deny-everything policy it
// carried must not be applied either (it once was, since the policy was
// set before the listeners were bound).
func TestRefusedReloadKeepsPolicy(t *testing.T) {
	ca := newMeshCA(t, "mesh.local")
	port, _ := echoApp(t)
	busy := meshtest.Listen(t)
	cartIn, cartOut := listenAddr(t), listenAddr(t)
	cartCfg := func(policy, extra string) string {
		return fmt.Sprintf(`
service: { name: cart, port: %d }
inbound: { listen: %s }
outbound: { listen: %s }
%s
policy: %s
%s`, port, cartIn, cartOut, ca.leaf("cart"), policy, extra)
	}
	cart := start(t, parse(t, cartCfg(`{ rules: [{ from: [web], action: allow }] }`, "")))
	out := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
%s
upstreams: [{ service: cart, endpoints: [{ address: %s }], retries: { attempts: 0 } }]
`, out, ca.leaf("web"), cartIn)))
	c := newClient(t)
	if code, body, err := do(c, out, "cart", "GET", "/api/x", nil); code != 200 {
		t.Fatalf("before the reload: %d %q %v", code, body, err)
	}

	bad := parse(t, cartCfg(`{ rules: [] }`, fmt.Sprintf(`
upstreams: [{ service: db, listen: %s, endpoints: [{ address: 127.0.0.1:1 }] }]`, busy.Addr())))
	if err := cart.Reload(context.Background(), bad); err == nil || !strings.Contains(err.Error(), busy.Addr().String()) {
		t.Fatalf("reload onto a busy address: err = %v, want one naming %s", err, busy.Addr())
	}
	if code, body, err := do(c, out, "cart", "GET", "/api/x", nil); code != 200 {
		t.Fatalf("after the refused reload: %d %q %v; its policy was applied", code, body, err)
	}
	if got := cart.Config().Policy.Rules; len(got) != 1 {
		t.Errorf("Config() after the refused reload has %d rules, want the old 1", len(got))
	}
}

// TestDiscoveryHealthSurvivesReload: after a reload, /discovery still
// reports the Consul watch that is running (once it reported a new,
// never-started one, healthy forever, while Consul was down), and an
// upstream the reload removed is gone from it.
func TestDiscoveryHealthSurvivesReload(t *testing.T) {
	agent := consultest.Start(t)
	adminAddr, out := listenAddr(t), listenAddr(t)
	cfgFor := func(idle int, upstreams string) string {
		return fmt.Sprintf(`
admin: { listen: %s }
outbound: { listen: %s, idle_timeout: %ds }
discovery: { consul: { address: %s } }
upstreams: [%s]
`, adminAddr, out, idle, agent.URL(), upstreams)
	}
	s := start(t, parse(t, cfgFor(60, "{ service: catalog }, { service: cart }")))
	if err := s.Reload(context.Background(), parse(t, cfgFor(61, "{ service: catalog }"))); err != nil {
		t.Fatal(err)
	}
	var src []admin.Source
	adminGet(t, adminAddr, "/discovery", &src)
	if len(src) != 1 || src[0].Upstream != "catalog" || !src[0].Healthy {
		t.Fatalf("/discovery after the reload = %+v, want catalog alone, healthy", src)
	}
	agent.Stop()
	meshtest.Eventually(t, 30*time.Second, "consul down on /discovery after a reload", func() error {
		adminGet(t, adminAddr, "/discovery", &src)
		if len(src) == 1 && !src[0].Healthy && src[0].Error != "" {
			return nil
		}
		return fmt.Errorf("%+v", src)
	})
}

// TestAdminAnswersDuringReload: the admin API never waits for a reload. A
// reload that adds an upstream fed by an unreachable Consul waits up to
// initialFetchTimeout for its first snapshot; /ready and /config must
// answer at once all the while (they once took the lock the reload
// holds).
func TestAdminAnswersDuringReload(t *testing.T) {
	backend := namedBackend(t, "a")
	adminAddr, out := listenAddr(t), listenAddr(t)
	deadConsul := "http://" + meshtest.FreeAddr(t) // nothing listens
	cfgFor := func(upstreams string) string {
		return fmt.Sprintf(`
admin: { listen: %s }
outbound: { listen: %s }
discovery: { consul: { address: %s } }
upstreams: [{ service: a, endpoints: [{ address: %s }] }%s]
`, adminAddr, out, deadConsul, backend, upstreams)
	}
	s := start(t, parse(t, cfgFor("")))
	reloaded := make(chan error, 1)
	go func() {
		reloaded <- s.Reload(context.Background(), parse(t, cfgFor(", { service: b, source: consul }")))
	}()

	c := &http.Client{Timeout: time.Second}
	n := 0
	for begin := time.Now(); time.Since(begin) < initialFetchTimeout/3; n++ {
		for _, path := range []string{"/ready", "/config"} {
			resp, err := c.Get("http://" + adminAddr + path)
			if err != nil {
				t.Fatalf("%s during a reload: %v", path, err)
			}
			resp.Body.Close()
		}
	}
	select {
	case err := <-reloaded:
		t.Fatalf("the reload ended (%v) before the admin API was checked against it", err)
	default:
	}
	t.Logf("%d rounds of /ready and /config answered during the reload", n)
	if err := <-reloaded; err != nil {
		t.Fatal(err)
	}
}
