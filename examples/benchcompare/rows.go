//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Shapes of rows: a row is compared with the nginx row of its shape.
const (
	shapeDirect  = "no proxy"
	shapeOneHop  = "one hop"
	shapeTwoHops = "two hops, mutual TLS"
	shapeTLS     = "TLS termination"
)

// rowSpec is a way of reaching the backend: a row of every table.
type rowSpec struct {
	Name  string
	Shape string
	// Ref is the nginx row of the same shape, which the ×nginx ratios
	// divide by; "" for the nginx rows and direct.
	Ref string
	// What says in a sentence what runs, for the report.
	What string
	// Needs are the commands the row runs that may have to be installed.
	Needs []string
	// Sidemesh marks the rows that run sidemesh (the memory targets).
	Sidemesh bool
	// start starts the row's processes for a round.
	start func(b *bench, r *rowRun) error
}

// rowRun is a row started for one round: its processes, whose CPU and
// memory are measured, and the targets the load goes to.
type rowRun struct {
	spec   rowSpec
	round  int
	dir    string // the round's folder of configs and logs
	procs  []*proc
	h1, h2 target
}

// rows are every row, in the order of the tables: the one-hop rows, then
// TLS termination, then two hops.
var rows = []rowSpec{
	{Name: "direct", Shape: shapeDirect, What: "the load generator to the backend, no proxy: the baseline of added latency",
		start: startDirect},
	{Name: "nginx", Shape: shapeOneHop, What: "nginx, 2 workers, keep-alive to the backend",
		Needs: []string{"nginx"}, start: startNginx},
	{Name: "haproxy", Shape: shapeOneHop, Ref: "nginx", What: "HAProxy, 2 threads, keep-alive to the backend",
		Needs: []string{"haproxy"}, start: startHAProxy},
	{Name: "go-reverseproxy", Shape: shapeOneHop, Ref: "nginx", What: "Go's httputil.ReverseProxy with a buffer pool and 256 idle connections per host",
		start: startGoProxy},
	{Name: "go-server", Shape: shapeOneHop, Ref: "nginx",
		What:  "Go's net/http server answering the 1 KiB itself, proxying nothing: the server half alone of any proxy built on net/http, as sidemesh and go-reverseproxy are",
		start: startGoServer},
	{Name: "sidemesh", Shape: shapeOneHop, Ref: "nginx", Sidemesh: true,
		What: "a sidemesh sidecar's outbound listener, static endpoint, defaults (metrics on)", start: startSidemesh},
	{Name: "nginx-tls", Shape: shapeTLS, What: "nginx terminating TLS (HTTP/1.1 and h2 by ALPN), 2 workers",
		Needs: []string{"nginx"}, start: startNginxTLS},
	{Name: "sidemesh-edge-tls", Shape: shapeTLS, Ref: "nginx-tls", Sidemesh: true,
		What: "the sidemesh edge terminating TLS, one route", start: startEdge(false)},
	{Name: "sidemesh-edge-jwt", Shape: shapeTLS, Ref: "nginx-tls", Sidemesh: true,
		What:  "the sidemesh edge terminating TLS, the route requiring an ES256 JWT (local JWKS) and rate-limited per client (never refusing)",
		start: startEdge(true)},
	{Name: "nginx-pair-mtls", Shape: shapeTwoHops, What: "two nginx (2 workers each): plain in, mutual TLS 1.3 between them with the sidecars' certificates, plain to the backend",
		Needs: []string{"nginx"}, start: startNginxPair},
	{Name: "sidemesh-pair-mtls", Shape: shapeTwoHops, Ref: "nginx-pair-mtls", Sidemesh: true,
		What: "client → sidecar (outbound) → mutual TLS → sidecar (inbound, default-deny policy allowing the client) → backend", start: startSidemeshPair},
}

// rowByName returns the row called name.
func rowByName(name string) (rowSpec, bool) {
	for _, r := range rows {
		if r.Name == name {
			return r, true
		}
	}
	return rowSpec{}, false
}

// appHost is the Host header of every request: the service name the
// sidecars route by. nginx and HAProxy ignore it.
const appHost = "app"

// plainTargets returns the HTTP/1.1 and h2c targets of a proxy listening
// on h1 and h2.
func plainTargets(h1, h2 int) (target, target) {
	return target{URL: "http://" + addr(h1) + "/", Host: appHost, Proto: protoH1},
		target{URL: "http://" + addr(h2) + "/", Host: appHost, Proto: protoH2}
}

// tlsTargets returns the targets of a TLS listener: HTTP/1.1 and h2 by
// ALPN on the same port.
func (b *bench) tlsTargets(port int, header http.Header) (target, target) {
	h1 := target{URL: "https://" + addr(port) + "/", Host: "edge", Header: header, TLS: b.clientTLS, Proto: protoH1}
	h2 := h1
	h2.Proto = protoH2
	return h1, h2
}

func startDirect(b *bench, r *rowRun) error {
	r.h1, r.h2 = plainTargets(b.backendPort, b.backendPort)
	return nil
}

// startNginxConf writes an nginx config in its own folder under r.dir and
// starts nginx with it.
func startNginxConf(b *bench, r *rowRun, name string, d configData) error {
	d.Dir = filepath.Join(r.dir, name)
	if err := os.MkdirAll(d.Dir, 0o755); err != nil {
		return fmt.Errorf("row %s: %w", r.spec.Name, err)
	}
	d.Row, d.Certs = r.spec.Name, b.certs
	conf := filepath.Join(d.Dir, "nginx.conf")
	if err := writeConfig(nginxTemplate, d, conf); err != nil {
		return err
	}
	p, err := startProc(r.spec.Name+" "+name, filepath.Join(r.dir, name+".log"), nil,
		b.tools["nginx"], "-p", d.Dir, "-c", conf, "-e", filepath.Join(d.Dir, "error.log"))
	if err != nil {
		return err
	}
	r.procs = append(r.procs, p)
	return nil
}

func startNginx(b *bench, r *rowRun) error {
	p, err := freePorts(2)
	if err != nil {
		return err
	}
	r.h1, r.h2 = plainTargets(p[0], p[1])
	return startNginxConf(b, r, "nginx", configData{Mode: "plain", Upstream: b.backend(), H1: p[0], H2: p[1]})
}

func startNginxTLS(b *bench, r *rowRun) error {
	p, err := freePorts(1)
	if err != nil {
		return err
	}
	r.h1, r.h2 = b.tlsTargets(p[0], nil)
	return startNginxConf(b, r, "nginx", configData{Mode: "tls", Upstream: b.backend(), H1: p[0]})
}

func startNginxPair(b *bench, r *rowRun) error {
	p, err := freePorts(3)
	if err != nil {
		return err
	}
	back, h1, h2 := p[0], p[1], p[2]
	if err := startNginxConf(b, r, "nginx-back", configData{Mode: "pair-back", Upstream: b.backend(), H1: back}); err != nil {
		return err
	}
	r.h1, r.h2 = plainTargets(h1, h2)
	return startNginxConf(b, r, "nginx-front", configData{Mode: "pair-front", Upstream: addr(back), H1: h1, H2: h2})
}

func startHAProxy(b *bench, r *rowRun) error {
	p, err := freePorts(2)
	if err != nil {
		return err
	}
	d := configData{Row: r.spec.Name, Dir: r.dir, Upstream: b.backend(), H1: p[0], H2: p[1]}
	cfg := filepath.Join(r.dir, "haproxy.cfg")
	if err := writeConfig(haproxyTemplate, d, cfg); err != nil {
		return err
	}
	proc, err := startProc(r.spec.Name, filepath.Join(r.dir, "haproxy.log"), nil, b.tools["haproxy"], "-db", "-f", cfg)
	if err != nil {
		return err
	}
	r.procs = append(r.procs, proc)
	r.h1, r.h2 = plainTargets(p[0], p[1])
	return nil
}

func startGoProxy(b *bench, r *rowRun) error {
	p, err := freePorts(1)
	if err != nil {
		return err
	}
	proc, err := startProc(r.spec.Name, filepath.Join(r.dir, "goproxy.log"), []string{roleEnv + "=" + roleGoProxy},
		b.self, "-listen", addr(p[0]), "-upstream", b.backend())
	if err != nil {
		return err
	}
	r.procs = append(r.procs, proc)
	r.h1, r.h2 = plainTargets(p[0], p[0])
	return nil
}

// startGoServer starts a second backend, whose CPU is measured: what
// net/http's server costs per request with nothing behind it.
func startGoServer(b *bench, r *rowRun) error {
	p, err := freePorts(1)
	if err != nil {
		return err
	}
	proc, err := startProc(r.spec.Name, filepath.Join(r.dir, "goserver.log"), []string{roleEnv + "=" + roleBackend},
		b.self, "-listen", addr(p[0]))
	if err != nil {
		return err
	}
	r.procs = append(r.procs, proc)
	r.h1, r.h2 = plainTargets(p[0], p[0])
	return nil
}

// startSidemeshConf writes a sidemesh config called name under r.dir and
// runs sidemesh with it.
func startSidemeshConf(b *bench, r *rowRun, name string, d configData) error {
	d.Row, d.Certs, d.TrustDomain = r.spec.Name, b.certs, trustDomain
	d.Path = filepath.Join(r.dir, name+".yaml")
	if err := writeConfig(sidemeshTemplate, d, d.Path); err != nil {
		return err
	}
	p, err := startProc(r.spec.Name+" "+name, filepath.Join(r.dir, name+".log"), nil, b.sidemesh, "run", "-c", d.Path)
	if err != nil {
		return err
	}
	r.procs = append(r.procs, p)
	return nil
}

func startSidemesh(b *bench, r *rowRun) error {
	p, err := freePorts(2)
	if err != nil {
		return err
	}
	r.h1, r.h2 = plainTargets(p[0], p[0])
	return startSidemeshConf(b, r, "sidemesh", configData{Mode: "outbound", Listen: p[0], Admin: p[1], Upstream: b.backend()})
}

func startSidemeshPair(b *bench, r *rowRun) error {
	p, err := freePorts(5)
	if err != nil {
		return err
	}
	inbound, spare, backAdmin, front, frontAdmin := p[0], p[1], p[2], p[3], p[4]
	if err := startSidemeshConf(b, r, "sidecar-back", configData{Mode: "pair-back", Listen: inbound, Spare: spare, Admin: backAdmin, UpstreamPort: b.backendPort}); err != nil {
		return err
	}
	r.h1, r.h2 = plainTargets(front, front)
	return startSidemeshConf(b, r, "sidecar-front", configData{Mode: "pair-front", Listen: front, Admin: frontAdmin, Upstream: addr(inbound)})
}

// startEdge returns the start of an edge row, with a JWT and a rate
// limit when jwt is set.
func startEdge(jwt bool) func(b *bench, r *rowRun) error {
	return func(b *bench, r *rowRun) error {
		p, err := freePorts(2)
		if err != nil {
			return err
		}
		d := configData{Mode: "edge", Listen: p[0], Admin: p[1], Upstream: b.backend()}
		var header http.Header
		if jwt {
			d.Mode, d.Issuer, d.JWKS = "edge-jwt", jwtIssuer, b.jwks
			header = http.Header{"Authorization": {"Bearer " + b.token}}
		}
		r.h1, r.h2 = b.tlsTargets(p[0], header)
		return startSidemeshConf(b, r, "edge", d)
	}
}

// waitReady waits until both of r's targets answer 200 through the whole
// path, or one of r's processes exits, or timeout passes.
func (r *rowRun) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, t := range []target{r.h1, r.h2} {
		s, err := newSender(ctx, t, 1, 1)
		if err != nil {
			return err
		}
		for {
			err = s.send(0)
			if err == nil {
				break
			}
			for _, p := range r.procs {
				if exit := p.exited(); exit != nil {
					s.close()
					return fmt.Errorf("row %s did not start: %w", r.spec.Name, exit)
				}
			}
			if ctx.Err() != nil || time.Now().After(deadline) {
				s.close()
				return fmt.Errorf("row %s: no 200 from %s (%s) within %v: %v; logs in %s", r.spec.Name, t.URL, t.Proto, timeout, err, r.dir)
			}
			time.Sleep(20 * time.Millisecond)
		}
		s.close()
	}
	return nil
}

// stop stops r's processes, the last started first (the front of a pair
// before its back), and reports one that had exited by itself.
func (r *rowRun) stop() error {
	var first error
	for i := len(r.procs) - 1; i >= 0; i-- {
		if err := r.procs[i].stop(); err != nil && first == nil {
			first = fmt.Errorf("row %s, round %d: %w", r.spec.Name, r.round, err)
		}
	}
	return first
}

// addr returns the loopback address of port.
func addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// freePorts returns n distinct loopback ports nobody listens on now.
// Another program could take one before the row binds it; the row then
// fails to start, its proxy's log saying so.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer ln.Close() // held until all n are found, so that they differ
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
