package sticky_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/telemetry/otlptest"
)

// TestStickyInTelemetry: what the sticky filter did to each request is
// in its server span (sidemesh.sticky), its access log line (sticky),
// and the route's metrics; /sticky counts sessions per endpoint and
// names the edges sharing the table.
func TestStickyInTelemetry(t *testing.T) {
	rcv := otlptest.Start(t)
	logPath := filepath.Join(t.TempDir(), "access.log")
	apps := startBackends(t, 2)
	p := newPool(t, "{ mode: header, header: X-User }", apps)
	p.more = fmt.Sprintf("telemetry: { access_log: %s, tracing: { otlp_endpoint: %s, sample_ratio: 1 } }", logPath, rcv.GRPCAddr())
	a, b := p.add(nil), p.add(nil)
	cl := newClient(t)
	cl.mustGet(a, header(1)) // new
	cl.mustGet(a, header(1)) // hit
	cl.mustGet(a, header(1)) // hit

	servers := func(spans []otlptest.Span) (out []string) {
		for _, s := range spans {
			if s.Kind == tracepb.Span_SPAN_KIND_SERVER {
				out = append(out, fmt.Sprint(s.Attributes["sidemesh.sticky"]))
			}
		}
		return out
	}
	got := servers(rcv.WaitSpans(t, 15*time.Second, func(s []otlptest.Span) bool { return len(servers(s)) >= 3 }))
	if strings.Join(got, ",") != "new,hit,hit" {
		t.Errorf("server spans' sidemesh.sticky = %v, want new, hit, hit", got)
	}

	var outcomes []string
	meshtest.Eventually(t, 5*time.Second, "three access log lines", func() error {
		outcomes = nil
		data, _ := os.ReadFile(logPath)
		for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil {
				outcomes = append(outcomes, fmt.Sprint(m["sticky"]))
			}
		}
		if len(outcomes) < 3 {
			return fmt.Errorf("%d lines", len(outcomes))
		}
		return nil
	})
	if strings.Join(outcomes, ",") != "new,hit,hit" {
		t.Errorf("access log sticky fields = %v, want new, hit, hit", outcomes)
	}

	metrics := fetch(t, a.admin, "/metrics")
	for _, re := range []string{
		`sidemesh_sticky_requests_total\{[^}]*sidemesh_route="shop"[^}]*sidemesh_sticky_outcome="hit"[^}]*\} 2\n`,
		`sidemesh_sticky_requests_total\{[^}]*sidemesh_sticky_outcome="new"[^}]*\} 1\n`,
		`sidemesh_sticky_sessions\{[^}]*sidemesh_route="shop"[^}]*\} 1\n`,
		`sidemesh_sticky_owner_lookups_total\{[^}]*sidemesh_sticky_owner_result="found"[^}]*\} 0\n`,
	} {
		if !regexp.MustCompile(re).MatchString(metrics) {
			t.Errorf("/metrics lacks %s:\n%s", re, grepLines(metrics, "sidemesh_sticky"))
		}
	}

	p.known(1)
	var st struct {
		Routes []struct {
			Route       string         `json:"route"`
			Sessions    int            `json:"sessions"`
			Hits        int            `json:"hits"`
			PerEndpoint map[string]int `json:"per_endpoint"`
		} `json:"routes"`
		Edges []string `json:"edges"`
	}
	if err := json.Unmarshal([]byte(fetch(t, b.admin, "/sticky")), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Routes) != 1 || st.Routes[0].Sessions != 1 || len(st.Routes[0].PerEndpoint) != 1 || strings.Join(st.Edges, ",") != "edge-0,edge-1" {
		t.Errorf("B's /sticky = %+v, want route shop with one session on one endpoint, edges edge-0 and edge-1", st)
	}
}

func fetch(t *testing.T, addr, path string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
	}
	return string(body)
}

func grepLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
