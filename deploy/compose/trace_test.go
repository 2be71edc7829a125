//go:build compose

package compose

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// jaegerTrace is the part of Jaeger's GET /api/traces/{id} answer the
// check reads.
type jaegerTrace struct {
	Data []struct {
		Spans []struct {
			SpanID     string `json:"spanID"`
			ProcessID  string `json:"processID"`
			References []struct {
				RefType string `json:"refType"`
				SpanID  string `json:"spanID"`
			} `json:"references"`
			Tags []struct {
				Key   string `json:"key"`
				Value any    `json:"value"`
			} `json:"tags"`
		} `json:"spans"`
		Processes map[string]struct {
			ServiceName string `json:"serviceName"`
		} `json:"processes"`
	} `json:"data"`
}

// chain returns, for the deepest span of service leaf, the services and
// span kinds from the trace's root down to it ("edge/server",
// "edge/client", ...), following each span's CHILD_OF reference. It
// fails when a reference names a span the trace does not hold, other than
// the root's (the caller's own span, outside the mesh).
func (jt *jaegerTrace) chain(leaf string) ([]string, error) {
	if len(jt.Data) != 1 {
		return nil, fmt.Errorf("%d traces, want 1", len(jt.Data))
	}
	d := jt.Data[0]
	type node struct {
		name, parent string
	}
	nodes := map[string]node{}
	for _, sp := range d.Spans {
		kind := "?"
		for _, tag := range sp.Tags {
			if tag.Key == "span.kind" {
				kind = fmt.Sprint(tag.Value)
			}
		}
		n := node{name: d.Processes[sp.ProcessID].ServiceName + "/" + kind}
		for _, ref := range sp.References {
			if ref.RefType == "CHILD_OF" {
				n.parent = ref.SpanID
			}
		}
		nodes[sp.SpanID] = n
	}
	var best []string
	for id, n := range nodes {
		if !strings.HasPrefix(n.name, leaf+"/") {
			continue
		}
		var path []string
		for cur, ok := id, true; ok; {
			path = append([]string{nodes[cur].name}, path...)
			if len(path) > len(nodes) {
				return nil, fmt.Errorf("a reference cycle at span %s", cur)
			}
			cur, ok = nodes[cur].parent, nodes[cur].parent != ""
			if ok {
				if _, held := nodes[cur]; !held {
					if !strings.HasPrefix(path[0], "edge/") {
						return path, fmt.Errorf("span %s's parent %s is not in the trace", path[0], cur)
					}
					ok = false
				}
			}
		}
		if len(path) > len(best) {
			best = path
		}
	}
	if best == nil {
		return nil, fmt.Errorf("no span of %s", leaf)
	}
	return best, nil
}

// checkTrace sends one request with a trace context of its own through an
// edge and polls Jaeger's query API until the trace holds spans of the
// edge, web and catalog linked parent to child, recording how long that
// took after the response.
func (sh *shop) checkTrace(times *timings) {
	sh.t.Helper()
	var id [16]byte
	var parent [8]byte
	rand.Read(id[:])
	rand.Read(parent[:])
	traceID := hex.EncodeToString(id[:])
	hdr := http.Header{"Traceparent": {"00-" + traceID + "-" + hex.EncodeToString(parent[:]) + "-01"}}
	if _, err := sh.getPage(sh.edges[0], hdr); err != nil {
		sh.t.Fatal(err)
	}
	var chain []string
	took := meshtest.Eventually(sh.t, time.Minute, "the trace in Jaeger with the edge's, web's and catalog's spans linked", func() error {
		status, body, err := sh.do(http.DefaultClient, http.MethodGet, "http://"+sh.jaeger+"/api/traces/"+traceID, nil)
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("GET /api/traces/%s: %d %s", traceID, status, bytes.TrimSpace(body))
		}
		var jt jaegerTrace
		if err := json.Unmarshal(body, &jt); err != nil {
			return err
		}
		if chain, err = jt.chain("catalog"); err != nil {
			return err
		}
		order := []string{"edge/", "web/", "catalog/"}
		for _, hop := range chain {
			if len(order) > 0 && strings.HasPrefix(hop, order[0]) {
				order = order[1:]
			}
		}
		if len(order) > 0 || !strings.HasPrefix(chain[0], "edge/server") {
			return fmt.Errorf("chain from the root %v: want an edge server span at the root, then web's, then catalog's spans", chain)
		}
		return nil
	})
	times.record("  trace queryable in Jaeger after the response", took)
	sh.t.Logf("trace %s in Jaeger after %s: %s", traceID, took.Round(time.Millisecond), strings.Join(chain, " > "))
}

// checkIntentionDeny writes a Consul intention denying web -> cart and
// waits until web's calls to cart are refused (web answers 502 naming the
// 403), while the edge may still call cart.
func (sh *shop) checkIntentionDeny(times *timings) {
	sh.t.Helper()
	status, body, err := sh.do(sh.client, http.MethodGet, sh.edges[0]+"/cart", nil)
	if err != nil || status != http.StatusOK || !strings.Contains(string(body), `"cart":{"instance":"cart-`) {
		sh.t.Fatalf("web -> cart before the intention: %d %s %v", status, body, err)
	}
	entry := `{"Kind": "service-intentions", "Name": "cart", "Sources": [{"Name": "edge", "Action": "allow"}, {"Name": "web", "Action": "deny"}]}`
	req, _ := http.NewRequest(http.MethodPut, "http://"+sh.consulAPI()+"/v1/config", strings.NewReader(entry))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		sh.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		sh.t.Fatalf("PUT /v1/config: %s", resp.Status)
	}
	took := meshtest.Eventually(sh.t, 30*time.Second, "web -> cart denied", func() error {
		status, body, err := sh.do(sh.client, http.MethodGet, sh.edges[1]+"/cart", nil)
		if err != nil {
			return err
		}
		if status != http.StatusBadGateway || !strings.Contains(string(body), "403") {
			return fmt.Errorf("GET /cart: %d %s", status, bytes.TrimSpace(body))
		}
		return nil
	})
	times.record("  intention enforced after it was written", took)
	if status, body, err := sh.do(sh.client, http.MethodGet, sh.edges[0]+"/api/cart", nil); err != nil || status != http.StatusOK {
		sh.t.Errorf("edge -> cart, still allowed: %d %s %v", status, body, err)
	}
	if _, err := sh.getPage(sh.edges[1], nil); err != nil {
		sh.t.Errorf("edge -> web -> catalog, untouched by the intention: %v", err)
	}
	sh.t.Logf("intention web -> cart deny enforced %s after it was written", took.Round(time.Millisecond))
}
