package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"text/template"
	"time"
)

const (
	// trustDomain is the SPIFFE trust domain of the demo's CA.
	trustDomain = "mesh.local"
	// drainTimeout is every sidecar's drain_timeout: how long Ctrl-C may
	// take, at most, once the children are signalled.
	drainTimeout = 2 * time.Second
	// marker is the file that says a folder is the demo's own, so that a
	// new run may empty it.
	marker = ".sidemesh-demo"
)

// instance is one workload of the demo mesh, all on loopback: an app and
// its sidecar, or (visitor) a sidecar alone, which the demo itself uses as
// its app.
type instance struct {
	name     string        // "catalog-1": names its files, service ID and gossip member
	service  string        // mesh service: "catalog", "frontend", "visitor"
	client   bool          // no app and no inbound listener: a client-only sidecar
	edge     bool          // an edge gateway: its client-facing listener on the app port
	latency  time.Duration // catalog: added to every /items request
	app      int           // port the app listens on
	inbound  int           // port of the sidecar's inbound (mutual TLS) listener
	outbound int           // port of the sidecar's outbound listener, where its app sends
	admin    int           // port of the sidecar's admin API and dashboard
	gossip   int           // port (TCP and UDP) of the sidecar's gossip member
	seed     int           // gossip port to join; 0 for the seed itself
	balancer string        // balancer of its catalog upstream (frontend)

	appProc, sideProc *proc
}

// appAddr, inboundAddr... return the loopback address of each port.
func (in *instance) appAddr() string      { return addr(in.app) }
func (in *instance) inboundAddr() string  { return addr(in.inbound) }
func (in *instance) outboundAddr() string { return addr(in.outbound) }
func (in *instance) adminAddr() string    { return addr(in.admin) }

// configPath is the file in dir that holds the sidecar's config.
func (in *instance) configPath(dir string) string {
	return filepath.Join(dir, in.name+"-sidecar.yaml")
}

// addr returns the loopback address of port.
func addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// layout is the demo's mesh: every instance by name, on free ports.
type layout struct {
	dir       string // the demo's folder: configs, certificates, logs
	certs     string // dir/certs: the CA and one leaf per service
	keyFile   string // the gossip pool's key
	stickyKey string // the key of the edges' sticky sessions
	instances map[string]*instance
	order     []string // the instances in the order they are listed
	ports     holds    // the ports of the processes not running yet
}

// newLayout places catalog-1 (the gossip seed), catalog-2, catalog-3
// (slow), the frontend, visitor (the demo's own, client-only sidecar) and
// two edges on free loopback ports, held until l.ports frees them: call
// l.ports.freeAll when done.
func newLayout(dir string) (*layout, error) {
	const perInstance = 5
	names := []string{"catalog-1", "catalog-2", "catalog-3", "frontend", "visitor", "edge-1", "edge-2"}
	l := &layout{
		dir: dir, certs: filepath.Join(dir, "certs"), keyFile: filepath.Join(dir, "gossip.key"),
		stickyKey: filepath.Join(dir, "sticky.key"), instances: map[string]*instance{}, order: names,
	}
	ports, err := l.ports.take(perInstance * len(names))
	if err != nil {
		l.ports.freeAll()
		return nil, err
	}
	for i, name := range names {
		p := ports[i*perInstance:]
		in := &instance{name: name, app: p[0], inbound: p[1], outbound: p[2], admin: p[3], gossip: p[4]}
		in.service, _, _ = strings.Cut(name, "-")
		l.instances[name] = in
	}
	seed := l.instances["catalog-1"].gossip
	for _, in := range l.instances {
		if in.name != "catalog-1" {
			in.seed = seed
		}
	}
	l.instances["catalog-3"].latency = 150 * time.Millisecond
	l.instances["frontend"].balancer = "round_robin"
	v := l.instances["visitor"]
	l.ports.free(v.app, v.inbound) // a client-only sidecar has neither
	v.client, v.app, v.inbound = true, 0, 0
	for _, name := range []string{"edge-1", "edge-2"} {
		e := l.instances[name]
		l.ports.free(e.inbound, e.outbound) // an edge listens for clients on its app port
		e.edge, e.inbound, e.outbound = true, 0, 0
	}
	return l, nil
}

// get returns the instance called name.
func (l *layout) get(name string) *instance { return l.instances[name] }

// holds keeps the demo's ports bound (see bindPort) from the moment they
// are chosen until the process that listens on them starts, and while an
// app the demo killed is down: no other process, nor a connection's local
// port, can take one meanwhile. It is safe for concurrent use.
type holds struct {
	mu      sync.Mutex
	release map[int]func()
}

// take returns n distinct free loopback ports, held.
func (h *holds) take(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		if tries > 20*n {
			return nil, errors.New("pick free ports: no loopback port free for both TCP and UDP")
		}
		port, release, err := bindPort(0)
		if err != nil {
			continue // the UDP side was taken; try another
		}
		h.mu.Lock()
		if h.release == nil {
			h.release = map[int]func(){}
		}
		h.release[port] = release
		h.mu.Unlock()
		ports = append(ports, port)
	}
	return ports, nil
}

// hold binds port again. It fails if someone else has it.
func (h *holds) hold(port int) error {
	_, release, err := bindPort(port)
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.release == nil {
		h.release = map[int]func(){}
	}
	h.release[port] = release
	return nil
}

// free releases ports, so that a process can listen on them.
func (h *holds) free(ports ...int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range ports {
		if release, ok := h.release[p]; ok {
			release()
			delete(h.release, p)
		}
	}
}

// freeAll releases every port still held.
func (h *holds) freeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for p, release := range h.release {
		release()
		delete(h.release, p)
	}
}

// prepareDir makes dir the demo's folder: created if missing, emptied if
// a previous run left it (it holds the marker file), refused if it holds
// anything else.
func prepareDir(dir string) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("demo folder: %w", err)
	case len(entries) > 0:
		if _, err := os.Stat(filepath.Join(dir, marker)); err != nil {
			return fmt.Errorf("demo folder %s exists and was not made by the demo; remove it or pass -dir", dir)
		}
		for _, e := range entries {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("empty the demo folder of the last run: %w", err)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("demo folder: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, marker), []byte("made by the sidemesh demo; the next run empties this folder\n"), 0o644)
}

// sidecarTemplate is a sidecar's config. Every sidecar joins the gossip
// pool (no endpoint lists anywhere) and speaks mutual TLS with a leaf
// from the demo's CA.
var sidecarTemplate = template.Must(template.New("sidecar").Parse(`# {{.Name}}'s sidecar, written by the sidemesh demo.
{{- if .Edge}}
# An edge gateway: clients outside the mesh call it over plain HTTP; it
# calls the catalogs over mutual TLS. Both edges share one session table
# over the gossip pool: a session begun on one holds on the other.
edge:
  listeners: [{ listen: 127.0.0.1:{{.App}} }]
  sticky: { key_file: {{.StickyKey}} }   # signs the session cookies (sidemesh keygen)
  routes:
    - name: items
      matches: [{ path: { prefix: /items } }]
      backends: [{ service: catalog }]
      sticky: { mode: cookie }         # each client's requests stay on one catalog instance
{{- else if .Client}}
# The demo's own sidecar: a client-only workload (no service, no inbound).
# The demo sends plain HTTP to its outbound listener, naming the service
# in the Host header; the sidecar does the rest, mutual TLS included.
{{- else}}
service: { name: {{.Service}}, id: {{.Name}}, address: 127.0.0.1, port: {{.App}} }
inbound: { listen: 127.0.0.1:{{.Inbound}} }  # mesh-facing: mutual TLS only
{{- end}}
{{- if not .Edge}}
outbound: { listen: 127.0.0.1:{{.Outbound}} }  # the app sends plain HTTP here
{{- end}}
admin: { listen: 127.0.0.1:{{.Admin}} }  # dashboard at /; /endpoints /members /identity /metrics
drain_timeout: {{.Drain}}
discovery:
  gossip:                            # an encrypted pool with no server: members find each other
    bind: 127.0.0.1:{{.Gossip}}
    join: [{{if .Seed}}127.0.0.1:{{.Seed}}{{end}}]{{if not .Seed}}  # this is the seed: the others join through it{{end}}
    key_file: {{.KeyFile}}
    profile: local                   # failure detection tuned for one host
{{- if or .Client .Edge}}
    node_name: {{.Name}}
{{- end}}
tls:                                 # from sidemesh ca init / ca issue
  mode: mutual
  source: files
  cert_file: {{.Certs}}/{{.Service}}.pem
  key_file: {{.Certs}}/{{.Service}}-key.pem
  ca_file: {{.Certs}}/ca.pem
  trust_domain: {{.TrustDomain}}
{{- if eq .Service "catalog"}}
policy:                              # with mutual TLS, whatever no rule allows is denied
  default: deny
  rules:
    - { from: [frontend, visitor, edge], to: catalog, methods: [GET], action: allow }
    - { from: [frontend, visitor, edge], to: catalog, paths: [/admin/], action: deny }   # a deny beats an allow
{{- else if eq .Service "frontend"}}
policy:                              # with mutual TLS, whatever no rule allows is denied
  default: deny
  rules:
    - { from: [visitor], to: frontend, methods: [GET], action: allow }
{{- end}}
{{- if eq .Service "frontend"}}
upstreams:
  - service: catalog                 # endpoints come from the gossip pool
    balancer: {{.Balancer}}
    timeout: 5s
    circuit_breaker: { consecutive_failures: 3, open_timeout: 3s }
    outlier: { consecutive_5xx: 3, base_ejection: 4s }
    retries: { on: [connect_failure, reset, timeout, gateway_error] }   # 502 too: an app killed mid-request
{{- else if .Client}}
upstreams:                           # endpoints come from the gossip pool
  - { service: frontend, timeout: 5s }
  - { service: catalog, timeout: 5s }
{{- else if .Edge}}
upstreams:                           # endpoints come from the gossip pool
  - { service: catalog, timeout: 5s }
{{- end}}
`))

// config returns the sidecar config of in.
func (l *layout) config(in *instance) (string, error) {
	var b strings.Builder
	err := sidecarTemplate.Execute(&b, map[string]any{
		"Name": in.name, "Service": in.service, "Client": in.client, "Edge": in.edge, "App": in.app, "StickyKey": l.stickyKey,
		"Inbound": in.inbound, "Outbound": in.outbound, "Admin": in.admin, "Gossip": in.gossip,
		"Seed": in.seed, "KeyFile": l.keyFile, "Certs": l.certs, "TrustDomain": trustDomain,
		"Balancer": in.balancer, "Drain": drainTimeout.String(),
	})
	return b.String(), err
}

// writeConfig writes in's sidecar config to its file.
func (l *layout) writeConfig(in *instance) error {
	cfg, err := l.config(in)
	if err != nil {
		return err
	}
	if err := os.WriteFile(in.configPath(l.dir), []byte(cfg), 0o644); err != nil {
		return fmt.Errorf("write %s's sidecar config: %w", in.name, err)
	}
	return nil
}
