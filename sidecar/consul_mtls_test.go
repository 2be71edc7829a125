package sidecar

import (
	"github.com/sidemesh/sidemesh/internal/meshtest"

	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery/consul/consultest"
)

// TestConsulMTLSAndIntentions runs web -> cart with certificates from
// Consul's Connect CA and authorization from Consul intentions: default
// deny, then an L4 allow, then L7 permissions, each applied without a
// restart.
func TestConsulMTLSAndIntentions(t *testing.T) {
	agent := consultest.Start(t)
	port, _ := echoApp(t)
	cartIn := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
service: { name: cart, port: %d }
inbound: { listen: %s }
outbound: { listen: %s }
discovery: { consul: { address: %s } }
tls: { source: consul }
`, port, cartIn, listenAddr(t), agent.URL())))
	webApp, _ := echoApp(t)
	out := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
service: { name: web, port: %d }
inbound: { listen: %s }
outbound: { listen: %s }
discovery: { consul: { address: %s } }
tls: { source: consul }
upstreams:
  - { service: cart, retries: { attempts: 0 } }
`, webApp, listenAddr(t), out, agent.URL())))
	c := newClient(t)

	// until polls until GET/POST path answers want (and, for 200, a
	// body from cart's app carrying web's Consul SPIFFE ID).
	until := func(what, method, path string, want int) {
		t.Helper()
		meshtest.Eventually(t, 60*time.Second, fmt.Sprintf("%s: %s %s answered %d", what, method, path, want), func() error {
			code, body, err := do(c, out, "cart", method, path, nil)
			if err == nil && code == want && (want != 200 || strings.Contains(body, "/svc/web")) {
				return nil
			}
			return fmt.Errorf("last %d %q %v", code, body, err)
		})
	}

	until("no intention: default deny", "GET", "/api/x", 403)

	entries := agent.Client().ConfigEntries()
	set := func(e *api.ServiceIntentionsConfigEntry) {
		t.Helper()
		if _, _, err := entries.Set(e, nil); err != nil {
			t.Fatal(err)
		}
	}
	set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "cart",
		Sources: []*api.SourceIntention{{Name: "web", Action: api.IntentionActionAllow}}})
	until("L4 allow web -> cart", "GET", "/api/x", 200)
	until("L4 allow covers every method", "POST", "/anything", 200)

	// L7 intentions need Consul to know cart speaks HTTP.
	if _, _, err := entries.Set(&api.ServiceConfigEntry{Kind: api.ServiceDefaults, Name: "cart", Protocol: "http"}, nil); err != nil {
		t.Fatal(err)
	}
	set(&api.ServiceIntentionsConfigEntry{Kind: api.ServiceIntentions, Name: "cart",
		Sources: []*api.SourceIntention{{Name: "web", Permissions: []*api.IntentionPermission{{
			Action: api.IntentionActionAllow,
			HTTP:   &api.IntentionHTTPPermission{PathPrefix: "/api/", Methods: []string{"GET"}},
		}}}}})
	until("L7: POST no longer allowed", "POST", "/api/x", 403)
	until("L7: GET /api/ allowed", "GET", "/api/x", 200)
	until("L7: other paths denied", "GET", "/admin", 403)
}
