package sidecar

import (
	"github.com/sidemesh/sidemesh/internal/meshtest"

	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery/consul/consultest"
)

// meshService starts a backend app answering with name and a sidecar in
// front of it registered in Consul, and returns the sidecar.
func meshService(t *testing.T, agent *consultest.Agent, service, name string) *Sidecar {
	t.Helper()
	app := newControlledBackend(t, name)
	_, port, _ := net.SplitHostPort(app.addr)
	in := listenAddr(t)
	return start(t, parse(t, fmt.Sprintf(`
service: { name: %s, id: %s, port: %s, health: { http: /, interval: 1s } }
inbound: { listen: %s }
outbound: { listen: %s }
discovery:
  consul: { address: %s }
`, service, name, port, in, listenAddr(t), agent.URL())))
}

// TestConsulEndToEnd runs a request through two sidecars that found each
// other through Consul, keeps serving from the last snapshot while the
// agent is down, and resumes watching when it is back.
func TestConsulEndToEnd(t *testing.T) {
	agent := consultest.Start(t)
	meshService(t, agent, "catalog", "catalog-1")

	out := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
discovery:
  consul: { address: %s }
upstreams:
  - service: catalog
    retries: { attempts: 2, on: [connect_failure, reset, 502, 503] }
`, out, agent.URL())))
	client := newClient(t)

	// The web sidecar finds catalog-1 once its registration is in the
	// catalog and its checks pass.
	waitForBody(t, client, out, "catalog", 30*time.Second, "catalog-1")

	// A client keeps sending while Consul is stopped and restarted.
	var sent, failed atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := newClient(t)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond): // a steady rate, not a wait
			}
			sent.Add(1)
			if code, _, err := get(c, out, "catalog"); err != nil || code != 200 {
				failed.Add(1)
			}
		}
	}()

	// Consul goes away: the last snapshot keeps serving.
	agent.Stop()
	for i := range 20 {
		if code, body, err := get(client, out, "catalog"); err != nil || code != 200 || body != "catalog-1" {
			t.Fatalf("request %d with consul down: %d %q %v", i, code, body, err)
		}
	}

	// Consul comes back empty (a -dev agent keeps nothing): the catalog
	// sidecar registers again by itself, the watch resumes, and a new
	// instance started now is found too.
	agent.Restart()
	meshService(t, agent, "catalog", "catalog-2")
	waitForBody(t, client, out, "catalog", 60*time.Second, "catalog-2")
	waitForBody(t, client, out, "catalog", 30*time.Second, "catalog-1")
	close(stop)
	<-done
	t.Logf("consul stopped and restarted: %d requests sent, %d failed", sent.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed while consul was stopped and restarted", failed.Load(), sent.Load())
	}
}

// waitForBody sends requests until one is answered 200 with want.
func waitForBody(t *testing.T, client *http.Client, out, host string, d time.Duration, want string) {
	t.Helper()
	meshtest.Eventually(t, d, fmt.Sprintf("answer from %s via %s", want, host), func() error {
		code, body, err := get(client, out, host)
		if err == nil && code == 200 && body == want {
			return nil
		}
		return fmt.Errorf("last: %d %q %v", code, body, err)
	})
}

// TestConsulDownAtStart starts sidecars while the agent is down: they
// start anyway (503 for the upstream, which has no endpoints yet), and fill
// in once Consul is up.
func TestConsulDownAtStart(t *testing.T) {
	agent := consultest.Start(t)
	agent.Stop()

	startedAt := time.Now()
	meshService(t, agent, "catalog", "catalog-1")
	out := listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
discovery:
  consul: { address: %s }
upstreams:
  - service: catalog
`, out, agent.URL())))
	if d := time.Since(startedAt); d > 15*time.Second {
		t.Fatalf("starting two sidecars with consul down took %v", d)
	}
	client := newClient(t)
	if code, _, err := get(client, out, "catalog"); err != nil || code != http.StatusServiceUnavailable {
		t.Fatalf("with consul down: %d %v, want 503 (no endpoints yet)", code, err)
	}

	agent.Restart()
	waitForBody(t, client, out, "catalog", 60*time.Second, "catalog-1")
}
