package sidecar

import (
	"io"

	"github.com/sidemesh/sidemesh/internal/meshtest"

	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strings"
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

// findEvent returns the first event of kind about subject in evs, or nil.
func findEvent(evs []admin.Event, kind, subject string) *admin.Event {
	for i, e := range evs {
		if e.Kind == kind && e.Subject == subject {
			return &evs[i]
		}
	}
	return nil
}

// seriesOf returns the /history series of service on listener, or nil.
func seriesOf(h admin.History, listener, service string) *admin.HistorySeries {
	for i, s := range h.Series {
		if s.Listener == listener && s.Service == service {
			return &h.Series[i]
		}
	}
	return nil
}

// requestsIn counts the requests of a series: the sum over its intervals.
func requestsIn(s *admin.HistorySeries, interval float64) float64 {
	n := 0.0
	for _, r := range s.RequestsPerSecond {
		n += r * interval
	}
	return n
}

// TestAdminEventsAndHistory: /events lists the breaker opening and the
// ejection of a failing endpoint and the config reloads the sidecar
// records; /history has a series for the inbound listener and one per
// upstream from the start, which fill with the requests, errors,
// latency and retries of each 5 s interval.
func TestAdminEventsAndHistory(t *testing.T) {
	good, bad := newControlledBackend(t, "good"), newControlledBackend(t, "bad")
	app := namedBackend(t, "app")
	appHost, appPort, _ := net.SplitHostPort(app)
	adminAddr, out, in := listenAddr(t), listenAddr(t), listenAddr(t)
	s := start(t, parse(t, fmt.Sprintf(`
service: { name: web, address: %s, port: %s }
inbound: { listen: %s }
admin: { listen: %s }
outbound: { listen: %s }
%s`, appHost, appPort, in, adminAddr, out, breakerUpstream(good, bad))))

	var evs []admin.Event
	if code := adminGet(t, adminAddr, "/events", &evs); code != 200 || evs == nil || len(evs) != 0 {
		t.Fatalf("/events at start = %d %v, want an empty list", code, evs)
	}
	var h admin.History
	adminGet(t, adminAddr, "/history", &h)
	if h.IntervalSeconds != 5 || h.WindowSeconds != 300 || len(h.Series) != 2 {
		t.Fatalf("/history at start = %+v, want inbound web and outbound svc", h)
	}
	if sv := seriesOf(h, "outbound", "svc"); sv == nil || sv.Retries == nil || sv.Retries.Total != 0 || sv.Time == nil {
		t.Errorf("outbound svc at start = %+v, want an empty series with retries at 0", sv)
	}
	if sv := seriesOf(h, "inbound", "web"); sv == nil || sv.Retries != nil {
		t.Errorf("inbound web at start = %+v, want an empty series without retries", sv)
	}

	bad.mode.Store(int32(mode500))
	c := newClient(t)
	const outN, inN = 20, 5
	sendN(c, out, "svc", outN)
	for range inN {
		if code, body, err := get(c, in, "web"); err != nil || code != 200 || body != "app" {
			t.Fatalf("inbound request: %d %q %v", code, body, err)
		}
	}

	meshtest.Eventually(t, 10*time.Second, "the breaker opening and the ejection in /events", func() error {
		adminGet(t, adminAddr, "/events", &evs)
		if findEvent(evs, "breaker_opened", "svc/"+bad.addr) == nil || findEvent(evs, "ejected", "svc/"+bad.addr) == nil {
			return fmt.Errorf("%+v", evs)
		}
		return nil
	})
	if e := findEvent(evs, "ejected", "svc/"+bad.addr); !strings.Contains(e.Detail, "until ") || time.Since(e.Time) > time.Minute {
		t.Errorf("ejection event = %+v, want when it ends and a recent time", e)
	}
	for i := 1; i < len(evs); i++ {
		if evs[i].Seq >= evs[i-1].Seq || evs[i].Time.After(evs[i-1].Time) {
			t.Errorf("/events not newest first: %+v", evs)
		}
	}
	if findEvent(evs, "breaker_opened", "svc/"+good.addr) != nil {
		t.Errorf("the good endpoint's breaker opened: %+v", evs)
	}

	// The hook Reload and the command line record reloads through.
	s.RecordReload(nil)
	s.RecordReload(errors.New("test.yaml:3:1: unknown key"))
	adminGet(t, adminAddr, "/events", &evs)
	if len(evs) < 2 || evs[0].Kind != "config_rejected" || !strings.Contains(evs[0].Detail, "unknown key") ||
		evs[1].Kind != "config_reloaded" || evs[1].Subject != "config" {
		t.Errorf("/events after two reloads = %+v", evs)
	}

	// Every request lands in one interval of its series, once sampled.
	meshtest.Eventually(t, 15*time.Second, "every request in /history", func() error {
		adminGet(t, adminAddr, "/history", &h)
		o, i := seriesOf(h, "outbound", "svc"), seriesOf(h, "inbound", "web")
		if o == nil || i == nil {
			return fmt.Errorf("series missing: %+v", h)
		}
		if math.Round(requestsIn(o, h.IntervalSeconds)) != outN || math.Round(requestsIn(i, h.IntervalSeconds)) != inN {
			return fmt.Errorf("outbound %+v, inbound %+v", o, i)
		}
		return nil
	})
	o := seriesOf(h, "outbound", "svc")
	n := len(o.Time)
	if n == 0 || len(o.RequestsPerSecond) != n || len(o.ErrorsPerSecond) != n || len(o.P50MS) != n || len(o.P99MS) != n ||
		len(o.Retries.PerInterval) != n || len(o.Retries.BudgetExhaustedPerInterval) != n {
		t.Fatalf("outbound series slices are not parallel: %+v", o)
	}
	var retries uint64
	for k := range n {
		retries += o.Retries.PerInterval[k]
		if o.RequestsPerSecond[k] > 0 && (o.P50MS[k] <= 0 || o.P99MS[k] < o.P50MS[k]) {
			t.Errorf("interval %d: %v req/s with p50 %v ms, p99 %v ms", k, o.RequestsPerSecond[k], o.P50MS[k], o.P99MS[k])
		}
		// 5 s apart, give or take the ticker's delay (a tick missed
		// on a loaded machine makes one longer interval).
		if d := o.Time[k] - o.Time[max(k-1, 0)]; k > 0 && (d < 4500 || d > 10500) {
			t.Errorf("intervals %d and %d end %d ms apart, want 5000", k-1, k, d)
		}
	}
	metric, _ := metricValue(scrape(t, adminAddr), "sidemesh_upstream_retries_total", map[string]string{"sidemesh_upstream": "svc"})
	if retries < 1 || retries != o.Retries.Total || float64(retries) != metric {
		t.Errorf("retries: %d over the intervals, %d in total, %v in /metrics; want the same, at least 1", retries, o.Retries.Total, metric)
	}
}

// TestAdminGossipEvents: a sidecar's /events says when a gossip member
// joins and when it leaves.
func TestAdminGossipEvents(t *testing.T) {
	adminAddr := listenAddr(t)
	gossipA := fmt.Sprintf("127.0.0.1:%d", meshtest.FreeUDPAndTCPPort(t))
	start(t, parse(t, fmt.Sprintf(`
admin: { listen: %s }
outbound: { listen: %s }
discovery: { gossip: { bind: %s, insecure: true, profile: local, node_name: node-a } }
`, adminAddr, listenAddr(t), gossipA)))
	b := start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
discovery: { gossip: { bind: 127.0.0.1:%d, join: [%s], insecure: true, profile: local, node_name: node-b } }
`, listenAddr(t), meshtest.FreeUDPAndTCPPort(t), gossipA)))

	var evs []admin.Event
	meshtest.Eventually(t, 15*time.Second, "node-b joining in node-a's /events", func() error {
		adminGet(t, adminAddr, "/events", &evs)
		if findEvent(evs, "member_joined", "node-b") == nil {
			return fmt.Errorf("%+v", evs)
		}
		return nil
	})
	if v, ok := metricValue(scrape(t, adminAddr), "sidemesh_gossip_members", nil); !ok || v != 2 {
		t.Errorf("sidemesh_gossip_members = %v (present %v), want 2", v, ok)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	b.Shutdown(ctx) // leaves the pool gracefully
	meshtest.Eventually(t, 15*time.Second, "node-b leaving in node-a's /events", func() error {
		adminGet(t, adminAddr, "/events", &evs)
		if findEvent(evs, "member_left", "node-b") == nil {
			return fmt.Errorf("%+v", evs)
		}
		return nil
	})
}

// TestAdminProfilingFollowsReload: admin.profiling serves the runtime's
// profiles on the admin listener, and a reload that turns it off makes
// them a 404 without a restart.
func TestAdminProfilingFollowsReload(t *testing.T) {
	adminAddr, out := listenAddr(t), listenAddr(t)
	cfgText := func(on bool) string {
		return fmt.Sprintf("admin: { listen: %s, profiling: %v }\noutbound: { listen: %s }\n", adminAddr, on, out)
	}
	s := start(t, parse(t, cfgText(true)))
	status := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + adminAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		if _, err := io.Copy(&b, resp.Body); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b.String()
	}
	if code, body := status("/debug/pprof/heap?debug=1"); code != 200 || !strings.Contains(body, "heap profile") {
		t.Fatalf("GET /debug/pprof/heap?debug=1 with admin.profiling = %d %.200q", code, body)
	}
	if err := s.Reload(t.Context(), parse(t, cfgText(false))); err != nil {
		t.Fatal(err)
	}
	if code, _ := status("/debug/pprof/heap?debug=1"); code != http.StatusNotFound {
		t.Fatalf("GET /debug/pprof/heap after a reload turned profiling off = %d, want 404", code)
	}
}
