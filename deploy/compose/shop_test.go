//go:build compose

package compose

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// TestComposeShop builds the images, brings the shop up under a project
// of its own, checks it through the edges under faults, and tears it
// down, leaving no container, network or volume, and no dangling image,
// behind. It prints how long each step took.
func TestComposeShop(t *testing.T) {
	repo := repoRoot(t)
	for _, tool := range []string{"docker", "docker-compose", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed: %v", tool, err)
		}
	}
	var times timings
	t.Cleanup(func() { fmt.Print(times.String()) })

	s := &stack{t: t, repo: repo, project: fmt.Sprintf("smtest%d", os.Getpid())}
	cold := !s.imagesExist()
	start := time.Now()
	s.run(30*time.Minute, "make", "--no-print-directory", "compose-images")
	times.since(map[bool]string{true: "images, cold (none cached)", false: "images (previous ones cached)"}[cold], start)
	start = time.Now()
	s.run(10*time.Minute, "make", "--no-print-directory", "compose-images")
	times.since("images, warm (nothing changed)", start)

	stage := t.TempDir()
	start = time.Now()
	s.run(time.Minute, "make", "--no-print-directory", "compose-secrets", "COMPOSE_STAGE="+stage)
	s.secrets = filepath.Join(stage, "secrets")
	times.since("secrets", start)

	start = time.Now()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last log lines:\n%s", s.logs())
		}
		start := time.Now()
		s.down()
		times.since("tear down", start)
	})
	s.compose(5*time.Minute, "up", "-d")
	times.since("docker-compose up -d", start)

	sh := newShop(t, s)
	sh.waitReady(3 * time.Minute)
	times.since("stack up: from up until both edges reach every instance", start)

	start = time.Now()
	sh.checkMutualTLS()
	times.since("check: identities over mutual TLS", start)

	start = time.Now()
	sh.checkSticky()
	times.since("check: sticky sessions across both edges", start)

	start = time.Now()
	sh.checkCatalogKilled()
	times.since("check: a catalog app killed and started again", start)

	start = time.Now()
	sh.checkConsulServerStopped()
	times.since("check: the Consul leader stopped", start)

	start = time.Now()
	sh.checkTrace(&times)
	times.since("check: a trace in Jaeger, edge -> web -> catalog", start)

	start = time.Now()
	sh.checkIntentionDeny(&times)
	times.since("check: an intention denying web -> cart", start)
}

// repoRoot is SIDEMESH_REPO, or the repository this test file is in.
func repoRoot(t *testing.T) string {
	if r := os.Getenv("SIDEMESH_REPO"); r != "" {
		return r
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(filepath.Dir(wd))
}

// images are the images docker-compose.yml runs.
var images = []string{"sidemesh/sidemesh:dev", "sidemesh/shop:dev", "sidemesh/consul:1.20.6", "sidemesh/jaeger:1.75.0"}

// imagesExist reports whether any of the images is already built.
func (s *stack) imagesExist() bool {
	for _, img := range images {
		if _, err := s.try(time.Minute, "docker", "image", "inspect", img); err == nil {
			return true
		}
	}
	return false
}

// shop is the running stack seen from the host: the edges' and the
// servers' published addresses and a client that trusts the edges' CA.
type shop struct {
	t      *testing.T
	s      *stack
	edges  []string          // "https://127.0.0.1:port"
	consul map[string]string // server -> its HTTP API's published address
	jaeger string            // the query API's published address
	client *http.Client
	// stopped is the Consul server checkConsulServerStopped stopped.
	stopped string
}

// consulAPI returns the HTTP API address of a server that is running.
func (sh *shop) consulAPI() string {
	for _, srv := range consulServers {
		if srv != sh.stopped {
			return sh.consul[srv]
		}
	}
	panic("unreachable: only one server is ever stopped")
}

func newShop(t *testing.T, s *stack) *shop {
	ca, err := os.ReadFile(filepath.Join(s.secrets, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		t.Fatal("ca.pem holds no certificate")
	}
	// The edges' certificate names "edge"; the client connects to the
	// published ports on loopback and checks that name.
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: roots, ServerName: "edge"},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 16,
	}
	t.Cleanup(tr.CloseIdleConnections)
	sh := &shop{
		t: t, s: s,
		edges:  []string{"https://" + s.addr("edge-1", 8443), "https://" + s.addr("edge-2", 8443)},
		consul: map[string]string{},
		jaeger: s.addr("jaeger", 16686),
		client: &http.Client{Transport: tr, Timeout: 10 * time.Second},
	}
	for _, srv := range consulServers {
		sh.consul[srv] = s.addr(srv, 8500)
	}
	return sh
}

// page is what web answers GET / with.
type page struct {
	Peer    string `json:"peer"`
	Catalog struct {
		Instance string `json:"instance"`
		Peer     string `json:"peer"`
	} `json:"catalog"`
}

// cart is what cart answers (through the edge's /api/cart route, or
// wrapped by web's GET /cart).
type cart struct {
	Instance string   `json:"instance"`
	CartID   string   `json:"cart_id"`
	Items    []string `json:"items"`
	Peer     string   `json:"peer"`
}

// get sends method url with hdr and returns the status and body.
func (sh *shop) do(c *http.Client, method, url string, hdr http.Header) (int, []byte, error) {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return 0, nil, err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, body, err
}

// getPage GETs / through edge and decodes web's page.
func (sh *shop) getPage(edge string, hdr http.Header) (page, error) {
	var p page
	status, body, err := sh.do(sh.client, http.MethodGet, edge+"/", hdr)
	if err != nil {
		return p, err
	}
	if status != http.StatusOK {
		return p, fmt.Errorf("GET %s/: %d %s", edge, status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return p, fmt.Errorf("GET %s/: %v in %q", edge, err, body)
	}
	return p, nil
}

// waitReady waits until both edges answer GET / and both catalog
// instances have answered, and both cart instances through the edge's
// cart route.
func (sh *shop) waitReady(timeout time.Duration) {
	sh.t.Helper()
	seen := map[string]bool{}
	meshtest.Eventually(sh.t, timeout, "the shop answering through both edges from both catalogs", func() error {
		for _, e := range sh.edges {
			p, err := sh.getPage(e, nil)
			if err != nil {
				return err
			}
			seen[p.Catalog.Instance] = true
		}
		if !seen["catalog-1"] || !seen["catalog-2"] {
			return fmt.Errorf("answered by %v, want catalog-1 and catalog-2", seen)
		}
		// A request without a session goes where the balancer says.
		status, body, err := sh.do(sh.client, http.MethodGet, sh.edges[0]+"/api/cart", nil)
		var c cart
		if err == nil && status == http.StatusOK {
			err = json.Unmarshal(body, &c)
		} else if err == nil {
			err = fmt.Errorf("GET /api/cart: %d %s", status, body)
		}
		seen[c.Instance] = true
		if err == nil && (!seen["cart-1"] || !seen["cart-2"]) {
			err = fmt.Errorf("answered by %v, want cart-1 and cart-2 too", seen)
		}
		return err
	})
}

// checkMutualTLS checks the identities each hop vouched for: web's app
// sees the edge's Consul-issued SPIFFE ID, the catalog's app sees web's.
func (sh *shop) checkMutualTLS() {
	sh.t.Helper()
	p, err := sh.getPage(sh.edges[1], nil)
	if err != nil {
		sh.t.Fatal(err)
	}
	for _, c := range []struct{ hop, got, svc string }{
		{"edge -> web", p.Peer, "edge"},
		{"web -> catalog", p.Catalog.Peer, "web"},
	} {
		if !strings.HasPrefix(c.got, "spiffe://") || !strings.HasSuffix(c.got, ".consul/ns/default/dc/dc1/svc/"+c.svc) {
			sh.t.Errorf("%s: the callee's sidecar vouched for %q, want the SPIFFE ID Consul's CA issued to %s", c.hop, c.got, c.svc)
		}
	}
	sh.t.Logf("mutual TLS: web saw %s, catalog saw %s", p.Peer, p.Catalog.Peer)
}

// checkSticky adds an item through edge-1, then reads the cart through
// both edges in turn: every answer must come from the instance that holds
// the item. Without the session, new carts land on both instances, which
// shows the check can fail.
func (sh *shop) checkSticky() {
	sh.t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Transport: sh.client.Transport, Timeout: sh.client.Timeout, Jar: jar}
	status, body, err := sh.do(c, http.MethodPost, sh.edges[0]+"/api/cart/items?item=grinder", nil)
	if err != nil || status != http.StatusOK {
		sh.t.Fatalf("add an item through edge-1: %d %s %v", status, body, err)
	}
	var first cart
	if err := json.Unmarshal(body, &first); err != nil {
		sh.t.Fatal(err)
	}
	for i := range 20 {
		edge := sh.edges[i%2]
		status, body, err := sh.do(c, http.MethodGet, edge+"/api/cart", nil)
		var got cart
		if err == nil && status == http.StatusOK {
			err = json.Unmarshal(body, &got)
		}
		if err != nil || status != http.StatusOK {
			sh.t.Fatalf("read %d through %s: %d %s %v", i, edge, status, body, err)
		}
		if got.Instance != first.Instance || got.CartID != first.CartID || len(got.Items) != 1 || got.Items[0] != "grinder" {
			sh.t.Fatalf("read %d through %s: %+v, want %s's cart %s holding [grinder]", i, edge, got, first.Instance, first.CartID)
		}
	}
	instances := map[string]int{}
	for i := range 20 {
		status, body, err := sh.do(sh.client, http.MethodPost, sh.edges[i%2]+"/api/cart/items?item=x", nil)
		var got cart
		if err == nil && status == http.StatusOK {
			err = json.Unmarshal(body, &got)
		}
		if err != nil || status != http.StatusOK {
			sh.t.Fatalf("new cart %d: %d %s %v", i, status, body, err)
		}
		instances[got.Instance]++
	}
	if len(instances) != 2 {
		sh.t.Errorf("20 new sessions all landed on %v: the sticky check above proves nothing with one instance", instances)
	}
	sh.t.Logf("sticky: 20 reads through alternating edges all on %s; new sessions spread %v", first.Instance, instances)
}

// load sends GET / through both edges at a steady pace until stopped,
// counting failures.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	seen       map[string]int64 // answers per catalog instance
	stop       chan struct{}
	done       sync.WaitGroup
}

// maxLoadRequests bounds any load run.
const maxLoadRequests = 20000

// startLoad starts 4 workers, each sending a request every 40ms (about
// 100 requests/s in all), alternating edges.
func (sh *shop) startLoad() *load {
	l := &load{stop: make(chan struct{}), seen: map[string]int64{}}
	var sent atomic.Int64
	for w := range 4 {
		l.done.Add(1)
		go func() {
			defer l.done.Done()
			tick := time.NewTicker(40 * time.Millisecond)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				case <-tick.C:
				}
				if sent.Add(1) > maxLoadRequests {
					return
				}
				p, err := sh.getPage(sh.edges[(w+i)%2], nil)
				l.mu.Lock()
				if err != nil {
					l.failed.Add(1)
					if len(l.errs) < 5 {
						l.errs = append(l.errs, time.Now().Format("15:04:05.000")+" "+err.Error())
					}
				} else {
					l.ok.Add(1)
					l.seen[p.Catalog.Instance]++
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// end stops the load and returns its counts.
func (l *load) end() (ok, failed int64, errs []string, seen map[string]int64) {
	close(l.stop)
	l.done.Wait()
	return l.ok.Load(), l.failed.Load(), l.errs, l.seen
}

// waitAnswered waits until the load has had n more answers than it had
// when called (about n/100 seconds at its pace), failing the test after
// a minute.
func (l *load) waitAnswered(sh *shop, n int64, what string) {
	sh.t.Helper()
	target := l.ok.Load() + n
	meshtest.Eventually(sh.t, time.Minute, what, func() error {
		if got := l.ok.Load(); got < target {
			return fmt.Errorf("%d of %d answered (%d failed)", got, target, l.failed.Load())
		}
		return nil
	})
}

// consulPassing returns nil when Consul's health API lists the instance
// with ID id of service among the passing ones as want says.
func (sh *shop) consulPassing(service, id string, want bool) error {
	status, body, err := sh.do(http.DefaultClient, http.MethodGet, "http://"+sh.consulAPI()+"/v1/health/service/"+service+"?passing=true", nil)
	if err != nil || status != http.StatusOK {
		return fmt.Errorf("health of %s: %d %s %v", service, status, body, err)
	}
	var entries []struct {
		Service struct{ ID string }
	}
	if err := json.Unmarshal(body, &entries); err != nil {
		return fmt.Errorf("health of %s: %v in %q", service, err, body)
	}
	passing := false
	for _, e := range entries {
		passing = passing || e.Service.ID == id
	}
	if passing != want {
		return fmt.Errorf("%s passing: %v", id, passing)
	}
	return nil
}

// seenNow returns how many answers instance has given so far.
func (l *load) seenNow(instance string) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen[instance]
}

// checkCatalogKilled kills catalog-1's app under load: retries to the
// other instance hide it (GET is idempotent), Consul's check takes it out
// of rotation, and once started again it serves again.
func (sh *shop) checkCatalogKilled() {
	sh.t.Helper()
	app := sh.s.container("catalog-1-app")
	l := sh.startLoad()
	meshtest.Eventually(sh.t, 30*time.Second, "load answered by catalog-1 before the kill", func() error {
		if l.seenNow("catalog-1") == 0 {
			return fmt.Errorf("no answer from catalog-1 yet")
		}
		return nil
	})
	sh.s.run(time.Minute, "docker", "kill", app)
	killed := time.Now()
	before := l.seenNow("catalog-1")
	// Down until Consul's check (every 2s) has taken it out of the passing
	// instances, and for a second of load after that: the requests that
	// reach the sidecars while they drop it.
	meshtest.Eventually(sh.t, time.Minute, "Consul to see catalog-1 failing", func() error {
		return sh.consulPassing("catalog", "catalog-1", false)
	})
	l.waitAnswered(sh, 100, "100 requests answered with catalog-1 out of rotation")
	sh.s.run(time.Minute, "docker", "start", app)
	started := time.Now()
	back := meshtest.Eventually(sh.t, time.Minute, "catalog-1 back in rotation", func() error {
		if l.seenNow("catalog-1") == before {
			return fmt.Errorf("no answer from catalog-1 since it was started again")
		}
		return nil
	})
	ok, failed, errs, seen := l.end()
	sh.t.Logf("catalog-1 killed for %s: %d requests answered (%v), %d failed; back in rotation %s after start",
		started.Sub(killed).Round(time.Millisecond), ok, seen, failed, back.Round(time.Millisecond))
	if failed != 0 {
		sh.t.Errorf("%d of %d idempotent requests failed while catalog-1 was down, first: %v", failed, ok+failed, errs)
	}
}

// consulServers are the server containers' service names.
var consulServers = []string{"consul-server-1", "consul-server-2", "consul-server-3"}

// checkConsulServerStopped stops the Raft leader under load: requests go
// on, and the two servers left elect a new leader.
func (sh *shop) checkConsulServerStopped() {
	sh.t.Helper()
	leaderIP := ""
	meshtest.Eventually(sh.t, time.Minute, "a Consul leader", func() error {
		status, body, err := sh.do(http.DefaultClient, http.MethodGet, "http://"+sh.consulAPI()+"/v1/status/leader", nil)
		if err == nil && status == http.StatusOK {
			leaderIP, _, _ = strings.Cut(strings.Trim(string(body), "\"\n"), ":")
		}
		if leaderIP == "" {
			return fmt.Errorf("no leader: %d %s %v", status, body, err)
		}
		return nil
	})
	leader := ""
	for _, srv := range consulServers {
		ip := strings.TrimSpace(sh.s.run(time.Minute, "docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", sh.s.container(srv)))
		if ip == leaderIP {
			leader = srv
		}
	}
	if leader == "" {
		sh.t.Fatalf("the leader %s is none of the servers", leaderIP)
	}
	l := sh.startLoad()
	l.waitAnswered(sh, 200, "200 requests answered before the stop")
	stopped := time.Now()
	sh.s.run(time.Minute, "docker", "stop", "-t", "10", sh.s.container(leader))
	stopTook := time.Since(stopped)
	sh.stopped = leader
	elected := meshtest.Eventually(sh.t, time.Minute, "a new leader", func() error {
		var lastErr error
		for _, srv := range consulServers {
			if srv == leader {
				continue
			}
			status, body, err := sh.do(http.DefaultClient, http.MethodGet, "http://"+sh.consul[srv]+"/v1/status/leader", nil)
			now, _, _ := strings.Cut(strings.Trim(string(body), "\"\n"), ":")
			if err == nil && status == http.StatusOK && now != "" && now != leaderIP {
				return nil
			}
			lastErr = fmt.Errorf("%s: leader %q: %d %v", srv, now, status, err)
		}
		return lastErr
	})
	// Keep the load on with two servers: the sidecars' blocking queries
	// move to them and go on.
	l.waitAnswered(sh, 500, "500 more requests answered with two servers")
	ok, failed, errs, seen := l.end()
	sh.t.Logf("Consul leader %s stopped (docker stop took %s): new leader after %s; %d requests answered (%v), %d failed",
		leader, stopTook.Round(time.Millisecond), elected.Round(time.Millisecond), ok, seen, failed)
	if failed != 0 {
		sh.t.Errorf("%d of %d requests failed with a Consul server stopped, first: %v", failed, ok+failed, errs)
	}
}
