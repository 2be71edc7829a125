package sticky_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/sidecar"
	"github.com/sidemesh/sidemesh/sidecar/config"
)

// backend is a test app instance: it answers with its name, and in learn
// mode begins a session of its own (a JSESSIONID cookie) for a request
// that has none.
type backend struct {
	name     string
	addr     string
	requests atomic.Int64
	srv      *http.Server
}

func startBackends(t *testing.T, n int) []*backend {
	t.Helper()
	var out []*backend
	for i := range n {
		b := &backend{name: fmt.Sprintf("app-%d", i)}
		ln := meshtest.Listen(t)
		b.addr = ln.Addr().String()
		b.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.requests.Add(1)
			if _, err := r.Cookie("JSESSIONID"); err != nil {
				http.SetCookie(w, &http.Cookie{Name: "JSESSIONID", Value: fmt.Sprintf("%s-%d", b.name, b.requests.Load()), Path: "/"})
			}
			io.WriteString(w, b.name)
		})}
		go b.srv.Serve(ln)
		t.Cleanup(func() { b.srv.Close() })
		out = append(out, b)
	}
	return out
}

// stop closes b, so that connecting to it fails.
func (b *backend) stop() { b.srv.Close() }

// edgeNode is one in-process edge of a test pool.
type edgeNode struct {
	name, addr, admin, gossip string
	sc                        *sidecar.Sidecar
	stopped                   bool
}

// pool are edges in one gossip pool, in front of the same backends.
type pool struct {
	t       *testing.T
	dir     string
	keyFile string
	seed    string
	sticky  string // the route's sticky section, YAML
	apps    []*backend
	edges   []*edgeNode
	extra   string // more YAML for the upstream (resilience settings)
	more    string // more top-level YAML (telemetry)
}

// newPool writes the keys the edges share.
func newPool(t *testing.T, stickyYAML string, apps []*backend) *pool {
	t.Helper()
	dir := t.TempDir()
	p := &pool{t: t, dir: dir, sticky: stickyYAML, apps: apps, keyFile: filepath.Join(dir, "sticky.key"),
		extra: "circuit_breaker: { consecutive_failures: 1, open_timeout: 1m }"}
	for _, f := range []string{p.keyFile, filepath.Join(dir, "gossip.key")} {
		k, err := gossip.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, []byte(k), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// add starts an edge that joins the pool (the first one seeds it), with
// clock as its wall clock (nil: time.Now).
func (p *pool) add(clock func() time.Time) *edgeNode {
	t := p.t
	t.Helper()
	name := fmt.Sprintf("edge-%d", len(p.edges))
	ln, adminLn := meshtest.Listen(t), meshtest.Listen(t)
	bind := fmt.Sprintf("127.0.0.1:%d", meshtest.FreeUDPAndTCPPort(t))
	join := "[]" // the first edge seeds the pool
	if p.seed == "" {
		p.seed = bind
	} else {
		join = "[" + p.seed + "]"
	}
	var eps []string
	for _, a := range p.apps {
		eps = append(eps, fmt.Sprintf("{ address: %s }", a.addr))
	}
	yaml := fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  sticky: { key_file: %s }
  routes:
    - name: shop
      matches: [{ path: { prefix: /shop } }]
      sticky: %s
      backends: [{ service: app }]
upstreams:
  - { service: app, endpoints: [%s], %s }
discovery: { gossip: { bind: %s, join: %s, key_file: %s, profile: local, node_name: %s } }
admin: { listen: %s }
drain_timeout: 1s
%s
`, ln.Addr(), p.keyFile, p.sticky, strings.Join(eps, ", "), p.extra, bind, join, filepath.Join(p.dir, "gossip.key"), name, adminLn.Addr(), p.more)
	cfg, err := config.Parse(filepath.Join(p.dir, name+".yaml"), []byte(yaml))
	if err != nil {
		t.Fatalf("config:\n%v\n%s", err, yaml)
	}
	opts := []sidecar.Option{sidecar.WithListeners(ln, adminLn)}
	if clock != nil {
		opts = append(opts, sidecar.WithClock(clock))
	}
	sc := sidecar.New(cfg, slog.New(slog.DiscardHandler), opts...)
	if err := sc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e := &edgeNode{name: name, addr: ln.Addr().String(), admin: adminLn.Addr().String(), gossip: bind, sc: sc}
	t.Cleanup(func() { e.stop() })
	p.edges = append(p.edges, e)
	// In the pool, and every edge knows every other shares the table
	// (sessions' owners are chosen among those).
	meshtest.WaitFor(t, 10*time.Second, name+" in the pool", func() bool {
		live := 0
		for _, e := range p.edges {
			if !e.stopped {
				live++
			}
		}
		for _, e := range p.edges {
			if !e.stopped && (e.sc.GossipMembers() != live || len(e.sc.StickyEdges()) != live) {
				return false
			}
		}
		return true
	})
	return e
}

// stop shuts e down (leaving the pool).
func (e *edgeNode) stop() {
	if e.stopped {
		return
	}
	e.stopped = true
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e.sc.Shutdown(ctx)
}

// client sends requests to edges, as a browser would with the cookies it
// is given (the edges' Secure cookies are sent over plain HTTP here).
type client struct {
	t      *testing.T
	http   *http.Client
	cookie map[string]string
}

func newClient(t *testing.T) *client {
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	return &client{t: t, http: &http.Client{Transport: tr, Timeout: 10 * time.Second}, cookie: map[string]string{}}
}

// get sends GET /shop/cart to e with the client's cookies and header,
// keeps the cookies it sets, and returns the status, the body (the
// backend's name) and the response.
func (c *client) get(e *edgeNode, header map[string]string) (int, string, *http.Response) {
	c.t.Helper()
	req, _ := http.NewRequest("GET", "http://"+e.addr+"/shop/cart", nil)
	for k, v := range c.cookie {
		req.AddCookie(&http.Cookie{Name: k, Value: v})
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatalf("GET through %s: %v", e.name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, ck := range resp.Cookies() {
		c.cookie[ck.Name] = ck.Value
	}
	return resp.StatusCode, string(body), resp
}

// mustGet is get that wants a 200 and returns the backend's name.
func (c *client) mustGet(e *edgeNode, header map[string]string) string {
	c.t.Helper()
	code, body, _ := c.get(e, header)
	if code != 200 {
		c.t.Fatalf("GET through %s: %d %q", e.name, code, body)
	}
	return body
}

// hostPort splits an address for tests that need the port.
func hostPort(addr string) (string, string) {
	h, p, _ := net.SplitHostPort(addr)
	return h, p
}
