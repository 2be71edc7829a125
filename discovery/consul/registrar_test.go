package consul

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/discovery/consul/consultest"
	"github.com/sidemesh/sidemesh/internal/meshtest"
)

func testInstance(port int) discovery.Instance {
	return discovery.Instance{
		ID:      "web-1",
		Service: "web",
		Address: "127.0.0.1",
		Port:    port,
		Weight:  3,
		Tags:    []string{"v1", "blue"},
		Meta:    map[string]string{"version": "1.2.3"},
		Zone:    "zone-a",
	}
}

func TestRegisterDeregister(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := agent.Client()
	app := newApp(t)
	log, logs := newLogger(t)
	r := NewRegistrar(client, RegistrarOptions{
		AppAddress: app.host, AppPort: app.port, HealthPath: "/healthz",
		HealthInterval: time.Second, TTL: 1500 * time.Millisecond, Logger: log,
	})
	self := testInstance(21000)
	ctx := ctxFor(t)

	if err := r.Register(ctx, self); err != nil {
		t.Fatal(err)
	}
	// Twice: registering is idempotent.
	if err := r.Register(ctx, self); err != nil {
		t.Fatal(err)
	}

	svcs, err := client.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 2 {
		t.Fatalf("agent has %d services, want 2: %v", len(svcs), svcs)
	}
	svc, proxy := svcs["web-1"], svcs["web-1-sidecar-proxy"]
	if svc == nil || proxy == nil {
		t.Fatalf("agent services = %v, want web-1 and web-1-sidecar-proxy", svcs)
	}
	if svc.Kind != "" || svc.Service != "web" || svc.Address != app.host || svc.Port != app.port ||
		svc.Weights != (api.AgentWeights{Passing: 3, Warning: 1}) ||
		svc.Meta["zone"] != "zone-a" || svc.Meta["version"] != "1.2.3" || strings.Join(svc.Tags, ",") != "v1,blue" {
		t.Errorf("service registration = %+v", svc)
	}
	if proxy.Kind != api.ServiceKindConnectProxy || proxy.Service != "web-sidecar-proxy" ||
		proxy.Address != "127.0.0.1" || proxy.Port != 21000 ||
		proxy.Weights != (api.AgentWeights{Passing: 3, Warning: 1}) ||
		proxy.Meta["zone"] != "zone-a" || strings.Join(proxy.Tags, ",") != "v1,blue" {
		t.Errorf("sidecar registration = %+v", proxy)
	}
	if p := proxy.Proxy; p == nil || p.DestinationServiceName != "web" || p.DestinationServiceID != "web-1" ||
		p.LocalServiceAddress != app.host || p.LocalServicePort != app.port {
		t.Errorf("sidecar proxy config = %+v", proxy.Proxy)
	}

	checks, err := client.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	wantChecks := map[string]string{ // check ID → type
		"service:web-1":                     "http",
		"service:web-1-sidecar-proxy:ttl":   "ttl",
		"service:web-1-sidecar-proxy:alias": "alias",
	}
	for id, typ := range wantChecks {
		c := checks[id]
		if c == nil || c.Type != typ {
			t.Errorf("check %s = %+v, want type %s", id, c, typ)
		}
	}
	if len(checks) != len(wantChecks) {
		t.Errorf("agent has %d checks, want %d", len(checks), len(wantChecks))
	}

	// The catalog shows a mesh service: the app and its sidecar, healthy.
	meshtest.Eventually(t, 10*time.Second, "the mesh service in the catalog", func() error {
		cs, _, err := client.Catalog().Service("web", "", nil)
		if err != nil || len(cs) != 1 || cs[0].ServiceID != "web-1" {
			return fmt.Errorf("catalog web = %v, %v", cs, err)
		}
		ps, _, err := client.Catalog().Service("web-sidecar-proxy", "", nil)
		if err != nil || len(ps) != 1 {
			return fmt.Errorf("catalog web-sidecar-proxy = %v, %v", ps, err)
		}
		if p := ps[0]; p.ServiceProxy == nil || p.ServiceProxy.DestinationServiceName != "web" || p.ServicePort != 21000 {
			return fmt.Errorf("catalog sidecar = %+v", p)
		}
		// /v1/catalog/connect/web lists the connect-proxies of web.
		cps, _, err := client.Catalog().Connect("web", "", nil)
		if err != nil || len(cps) != 1 || cps[0].ServiceID != "web-1-sidecar-proxy" {
			return fmt.Errorf("catalog connect web = %v, %v", cps, err)
		}
		entries, _, err := client.Health().Connect("web", "", true, nil)
		if err != nil || len(entries) != 1 {
			return fmt.Errorf("passing sidecars of web = %d, %v", len(entries), err)
		}
		return nil
	})

	// The agent loses a registration (as when Consul reaps a critical
	// instance): the refresher puts it back. Each loss waits for the
	// refresher's round to end (it registers the app and its sidecar in
	// two calls): a loss during the round would be undone by its second
	// call and never seen.
	for round, id := range []string{"web-1", "web-1-sidecar-proxy"} {
		if err := client.Agent().ServiceDeregister(id); err != nil {
			t.Fatal(err)
		}
		meshtest.Eventually(t, 10*time.Second, "the refresher to register "+id+" again", func() error {
			s, _, err := client.Agent().Service(id, nil)
			if err != nil {
				return err
			}
			if s.ID != id {
				return fmt.Errorf("got %s", s.ID)
			}
			if n := logs.count("registered with consul again"); n < round+1 {
				return fmt.Errorf("the refresher's round %d has not ended", round+1)
			}
			return nil
		})
	}

	if err := r.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	svcs, err = client.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 0 {
		t.Errorf("after Deregister the agent has %v", svcs)
	}
	meshtest.Eventually(t, 10*time.Second, "the services to leave the catalog", func() error {
		for _, name := range []string{"web", "web-sidecar-proxy"} {
			cs, _, err := client.Catalog().Service(name, "", nil)
			if err != nil || len(cs) != 0 {
				return fmt.Errorf("catalog %s = %v, %v", name, cs, err)
			}
		}
		return nil
	})
	// The refresher is gone: nothing comes back. The wait guards against a
	// refresher still running: it would register again every TTL/3
	// (500ms), so two Quiet periods see at least one of its rounds.
	time.Sleep(2 * meshtest.Quiet)
	if svcs, _ := client.Agent().Services(); len(svcs) != 0 {
		t.Errorf("registrations came back after Deregister: %v", svcs)
	}
	if err := r.Deregister(ctx); err != nil {
		t.Errorf("second Deregister: %v", err)
	}
	if n := logs.count("registering again"); n != 2 {
		t.Errorf("logged %d re-registrations, want 2", n)
	}
}

func TestRegisterTCPCheckAndNewID(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := agent.Client()
	app := newApp(t)
	r := NewRegistrar(client, RegistrarOptions{AppPort: app.port}) // TCP check, default address
	ctx := ctxFor(t)
	self := testInstance(21000)
	if err := r.Register(ctx, self); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Deregister(context.Background()) })
	checks, err := client.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	if c := checks["service:web-1"]; c == nil || c.Type != "tcp" {
		t.Errorf("app check = %+v, want a TCP check", c)
	}
	svc, _, err := client.Agent().Service("web-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if svc.Address != "" || svc.Proxy != nil {
		t.Errorf("service = %+v, want no address of its own", svc)
	}
	proxy, _, err := client.Agent().Service("web-1-sidecar-proxy", nil)
	if err != nil {
		t.Fatal(err)
	}
	if proxy.Proxy.LocalServiceAddress != "127.0.0.1" {
		t.Errorf("LocalServiceAddress = %q, want 127.0.0.1", proxy.Proxy.LocalServiceAddress)
	}

	// A new ID replaces the old registration.
	self.ID = "web-2"
	if err := r.Register(ctx, self); err != nil {
		t.Fatal(err)
	}
	svcs, err := client.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 2 || svcs["web-2"] == nil || svcs["web-2-sidecar-proxy"] == nil {
		t.Errorf("after a new ID the agent has %v, want web-2 and its sidecar only", svcs)
	}
}

func TestRegisterValidates(t *testing.T) {
	t.Parallel()
	client, err := NewClient(Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	r := NewRegistrar(client, RegistrarOptions{})
	err = r.Register(context.Background(), discovery.Instance{})
	if err == nil {
		t.Fatal("Register of an empty instance succeeded")
	}
	for _, want := range []string{"empty instance ID", "empty service name", "invalid sidecar port 0", "invalid app port 0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if err := r.Deregister(context.Background()); err != nil {
		t.Errorf("Deregister without Register: %v", err)
	}
}

// TestRegisterUnknownTTL covers agents that answer a TTL update for an
// unknown check with a 500 rather than a 404.
func TestRegisterUnknownTTL(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	registers := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v1/agent/service/register":
			mu.Lock()
			registers++
			mu.Unlock()
		case strings.HasPrefix(r.URL.Path, "/v1/agent/check/update/"):
			http.Error(w, `CheckID "x" does not have associated TTL`, http.StatusInternalServerError)
		case strings.HasPrefix(r.URL.Path, "/v1/agent/service/deregister/"):
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	client, err := NewClient(Config{Address: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	r := NewRegistrar(client, RegistrarOptions{AppPort: 8080, TTL: 300 * time.Millisecond})
	if err := r.Register(context.Background(), testInstance(21000)); err != nil {
		t.Fatal(err)
	}
	meshtest.Eventually(t, 5*time.Second, "the refresher's registrations", func() error {
		mu.Lock()
		defer mu.Unlock()
		if registers < 4 { // 2 by Register, 2 by the refresher
			return fmt.Errorf("%d registrations", registers)
		}
		return nil
	})
	if err := r.Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
}
