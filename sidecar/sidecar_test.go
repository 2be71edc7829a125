package sidecar

import (
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
	goleak.VerifyTestMain(m)
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
	s := New(cfg, quietLogger())
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

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
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

// waitUntil polls cond until it holds, failing the test with what (and
// describe's account of the last state, when given) after timeout.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			last := ""
			if describe != nil {
				last = ": " + describe()
			}
			t.Fatalf("no %s within %v%s", what, timeout, last)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
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
	out := freeAddr(t)
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
	out := freeAddr(t)
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
	out, dedicated := freeAddr(t), freeAddr(t)
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
	inbound, clientOut, tcpListen, adminAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	start(t, parse(t, fmt.Sprintf(`
service: { name: echo, port: %d, protocol: tcp }
inbound: { listen: %s }
outbound: { listen: %s }
`, echoPort, inbound, freeAddr(t))))
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
		var got float64
		waitUntil(t, 5*time.Second, fmt.Sprintf("%s%v = %v", name, labels, want), func() bool {
			got, _ = metricValue(scrape(t, adminAddr), name, labels)
			return got == want
		}, func() string { return fmt.Sprint("last value ", got) })
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
	out := freeAddr(t)
	s := New(parse(t, fmt.Sprintf(`
outbound: { listen: %s }
upstreams: [{ service: svc, endpoints: [{ address: %s }] }]
`, out, ln.Addr())), quietLogger())
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
