package sidecar

import (
	"github.com/sidemesh/sidemesh/internal/meshtest"

	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sidemesh/sidemesh/sidecar/config"
)

func TestMain(m *testing.M) {
	if os.Getenv(otlpSinkEnv) != "" {
		// Re-executed by a benchmark as its OTLP collector process.
		runOTLPSink()
		return
	}
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode")) // it may outlive Shutdown by a probe
}

// parse validates a YAML config the way `sidemesh run` would.
func parse(t *testing.T, yaml string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("config:\n%v", err)
	}
	return cfg
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func start(t *testing.T, cfg *config.Config) *Sidecar {
	t.Helper()
	s := New(cfg, quietLogger(), handedFor(cfg))
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s
}

// handed holds the listeners listenAddr bound, by address, until start
// hands them to the sidecar whose config names them.
var handed sync.Map

// listenAddr binds a loopback listener for a sidecar to take over and
// returns its address: start hands it to the sidecar whose config listens
// there, so no port is released and taken again (which races with
// parallel tests). An address only a later reload binds, or another
// process, comes from meshtest.FreeAddr instead.
func listenAddr(t testing.TB) string {
	t.Helper()
	ln := meshtest.Listen(t)
	addr := ln.Addr().String()
	handed.Store(addr, ln)
	t.Cleanup(func() { handed.Delete(addr) })
	return addr
}

// handedFor returns the option handing a sidecar for cfg the listeners
// listenAddr bound for its addresses.
func handedFor(cfg *config.Config) Option {
	var lns []net.Listener
	for addr := range listenerSpecs(cfg) {
		if ln, ok := handed.LoadAndDelete(addr); ok {
			lns = append(lns, ln.(net.Listener))
		}
	}
	return WithListeners(lns...)
}

// namedBackend answers every request with its name.
func namedBackend(t testing.TB, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, name)
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func get(c *http.Client, addr, host string) (int, string, error) {
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	req.Host = host
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func newClient(t *testing.T) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// TestReloadUnderLoad reloads ten times while clients send a bounded
// number of requests, on kept-alive and on fresh connections: the server
// behind the outbound socket is replaced on each reload, and no request
// may fail.
func TestReloadUnderLoad(t *testing.T) {
	a, b := namedBackend(t, "a"), namedBackend(t, "b")
	out := listenAddr(t)
	cfgFor := func(i int) *config.Config {
		backend := []string{a, b}[i%2]
		return parse(t, fmt.Sprintf(`
outbound: { listen: %s, idle_timeout: %ds }
upstreams: [{ service: svc, endpoints: [{ address: %s }] }]
`, out, 30+i, backend))
	}
	s := start(t, cfgFor(0))

	const workers, perWorker = 4, 150
	errs := make(chan error, workers*perWorker)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			keepAlive := newClient(t)
			for i := range perWorker {
				c := keepAlive
				if (w+i)%3 == 0 {
					c = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
				}
				code, body, err := get(c, out, "svc")
				if err == nil && (code != 200 || (body != "a" && body != "b")) {
					err = fmt.Errorf("status %d body %q", code, body)
				}
				if err != nil {
					errs <- fmt.Errorf("fresh=%v: %#v", c != keepAlive, err)
				}
			}
		}()
	}
	for i := 1; i <= 10; i++ {
		if err := s.Reload(context.Background(), cfgFor(i)); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// The last config (i=10) routes to a.
	if code, body, err := get(newClient(t), out, "svc"); err != nil || code != 200 || body != "a" {
		t.Fatalf("after reloads: %d %q %v, want 200 \"a\"", code, body, err)
	}
}

// TestReloadThatCannotBindChangesNothing asks for a listener on a busy
// address: the reload fails and the old routes keep serving.
func TestReloadThatCannotBindChangesNothing(t *testing.T) {
	a := namedBackend(t, "a")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	out := listenAddr(t)
	s := start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams: [{ service: svc, endpoints: [{ address: %s }] }]
`, out, a)))
	bad := parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams:
  - { service: svc, endpoints: [{ address: %s }] }
  - { service: other, listen: %s, endpoints: [{ address: %s }] }
`, out, a, busy.Addr(), a))
	if err := s.Reload(context.Background(), bad); err == nil || !strings.Contains(err.Error(), busy.Addr().String()) {
		t.Fatalf("reload onto a busy address: err = %v, want one naming %s", err, busy.Addr())
	}
	c := newClient(t)
	if code, body, _ := get(c, out, "svc"); code != 200 || body != "a" {
		t.Fatalf("old route: %d %q", code, body)
	}
	if code, _, _ := get(c, out, "other"); code != http.StatusBadGateway {
		t.Fatalf("route of the failed reload answered %d, want 502", code)
	}
}

// TestReloadAddsAndRemovesUpstreams checks that routes follow the config.
func TestReloadAddsAndRemovesUpstreams(t *testing.T) {
	a, b := namedBackend(t, "a"), namedBackend(t, "b")
	out, dedicated := listenAddr(t), meshtest.FreeAddr(t) // dedicated: bound by the reload
	s := start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams: [{ service: one, endpoints: [{ address: %s }] }]
`, out, a)))
	c := newClient(t)
	if code, _, _ := get(c, out, "two.mesh"); code != http.StatusBadGateway {
		t.Fatalf("unknown upstream: %d, want 502", code)
	}
	if err := s.Reload(context.Background(), parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams:
  - { service: two, listen: %s, endpoints: [{ address: %s }] }
`, out, dedicated, b))); err != nil {
		t.Fatal(err)
	}
	if code, body, _ := get(c, out, "two.mesh:80"); code != 200 || body != "b" {
		t.Fatalf("added upstream via Host: %d %q", code, body)
	}
	if code, body, _ := get(c, dedicated, "anything"); code != 200 || body != "b" {
		t.Fatalf("added upstream via its own listener: %d %q", code, body)
	}
	if code, _, _ := get(c, out, "one"); code != http.StatusBadGateway {
		t.Fatalf("removed upstream: %d, want 502", code)
	}
}

// TestTCPUpstreamAndInbound runs raw TCP through two sidecars: an
// upstream listener with protocol tcp on one, a tcp service inbound on
// the other.
func TestTCPUpstreamAndInbound(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	echoPort := echo.Addr().(*net.TCPAddr).Port
	inbound, clientOut, tcpListen, adminAddr := listenAddr(t), listenAddr(t), listenAddr(t), listenAddr(t)
	start(t, parse(t, fmt.Sprintf(`
service: { name: echo, port: %d, protocol: tcp }
inbound: { listen: %s }
outbound: { listen: %s }
`, echoPort, inbound, listenAddr(t))))
	start(t, parse(t, fmt.Sprintf(`
outbound: { listen: %s }
admin: { listen: %s }
upstreams: [{ service: echo, protocol: tcp, listen: %s, endpoints: [{ address: %s }] }]
`, clientOut, adminAddr, tcpListen, inbound)))

	c, err := net.DialTimeout("tcp", tcpListen, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	for i := range 5 {
		line := fmt.Sprintf("line %d\n", i)
		if _, err := io.WriteString(c, line); err != nil {
			t.Fatal(err)
		}
		got, err := r.ReadString('\n')
		if err != nil || got != line {
			t.Fatalf("echo %d: %q, %v", i, got, err)
		}
	}

	// The connection is counted open, then, once closed, as one
	// connection with its bytes each way.
	up := map[string]string{"sidemesh_upstream": "echo"}
	if n, _ := metricValue(scrape(t, adminAddr), "sidemesh_tcp_active_connections", up); n != 1 {
		t.Errorf("active TCP connections = %v, want 1", n)
	}
	c.Close()
	const bytes = float64(5 * len("line 0\n"))
	waitMetrics := func(name string, labels map[string]string, want float64) {
		t.Helper()
		meshtest.Eventually(t, 5*time.Second, fmt.Sprintf("%s%v = %v", name, labels, want), func() error {
			if got, _ := metricValue(scrape(t, adminAddr), name, labels); got != want {
				return fmt.Errorf("last value %v", got)
			}
			return nil
		})
	}
	waitMetrics("sidemesh_tcp_connections_total", map[string]string{"sidemesh_upstream": "echo", "sidemesh_endpoint": inbound}, 1)
	waitMetrics("sidemesh_tcp_active_connections", up, 0)
	waitMetrics("sidemesh_tcp_io_bytes_total", map[string]string{"sidemesh_upstream": "echo", "network_io_direction": "transmit"}, bytes)
	waitMetrics("sidemesh_tcp_io_bytes_total", map[string]string{"sidemesh_upstream": "echo", "network_io_direction": "receive"}, bytes)
}

// TestShutdownWaitsForInFlight checks that Shutdown lets a request that
// is waiting on the backend finish, and refuses new connections at once.
func TestShutdownWaitsForInFlight(t *testing.T) {
	release, started := make(chan struct{}), make(chan struct{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	backend := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		io.WriteString(w, "late")
	}), ReadHeaderTimeout: 5 * time.Second}
	go backend.Serve(ln)
	defer backend.Close()
	out := listenAddr(t)
	cfg := parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams: [{ service: svc, endpoints: [{ address: %s }] }]
`, out, ln.Addr()))
	s := New(cfg, quietLogger(), handedFor(cfg))
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	type result struct {
		code int
		body string
		err  error
	}
	res := make(chan result, 1)
	c := newClient(t)
	go func() {
		code, body, err := get(c, out, "svc")
		res <- result{code, body, err}
	}()
	<-started
	done := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		close(done)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", out, 100*time.Millisecond)
		if err != nil {
			break
		}
		conn.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still accepting after Shutdown began")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-done:
		t.Fatal("Shutdown returned while a request was in flight")
	default:
	}
	close(release)
	if r := <-res; r.err != nil || r.code != 200 || r.body != "late" {
		t.Fatalf("in-flight request: %d %q %v", r.code, r.body, r.err)
	}
	<-done
}

// TestShutdownBeforeStart: shutting down a sidecar that never started is
// harmless.
func TestShutdownBeforeStart(t *testing.T) {
	s := New(parse(t, "outbound: { listen: 127.0.0.1:1 }\n"), quietLogger())
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s.Shutdown(ctx)
}
