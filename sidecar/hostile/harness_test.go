package hostile_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/policy/identity"
	"github.com/sidemesh/sidemesh/sidecar"
	"github.com/sidemesh/sidemesh/sidecar/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// seen is one request as the app received it.
type seen struct {
	Method, Target string
	Header         http.Header
	Body           string
	BodyErr        error
}

// app records every request it gets and answers "app <target>".
type app struct {
	addr string
	mu   sync.Mutex
	reqs []seen
	// inflight counts handlers that have not recorded their request yet:
	// one still reading a body the sidecar has cut records it only when
	// the sidecar closes the connection, maybe after its row has ended.
	inflight atomic.Int64
}

func startApp(t *testing.T) *app {
	t.Helper()
	a := &app{}
	ln := meshtest.Listen(t)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.inflight.Add(1)
		b, err := io.ReadAll(r.Body)
		a.mu.Lock()
		a.reqs = append(a.reqs, seen{Method: r.Method, Target: r.RequestURI, Header: r.Header.Clone(), Body: string(b), BodyErr: err})
		a.mu.Unlock()
		a.inflight.Add(-1)
		io.WriteString(w, "app "+r.RequestURI)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	a.addr = ln.Addr().String()
	return a
}

// requests returns what the app received so far, and forgets it.
func (a *app) take() []seen {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := a.reqs
	a.reqs = nil
	return out
}

// settle waits until every request the app has begun is recorded, then
// forgets them all: what an earlier row's connection left behind must not
// count against the next row.
func (a *app) settle(t *testing.T) {
	t.Helper()
	meshtest.WaitFor(t, 10*time.Second, "the app's handlers to finish", func() bool { return a.inflight.Load() == 0 })
	a.take()
}

// targets lists the request targets of reqs.
func targets(reqs []seen) []string {
	var out []string
	for _, r := range reqs {
		out = append(out, r.Method+" "+r.Target)
	}
	return out
}

// mesh is a sidecar pair under attack: out is the outbound listener of a
// client-only sidecar routing "app" to the app directly; in is the
// inbound listener (mutual TLS, policy) of the app's own sidecar.
type mesh struct {
	app       *app
	out, in   string
	clientTLS *tls.Config // a "web" certificate, for raw connections to in
	webID     string
}

// startMesh starts both sidecars. Their listeners have short header and
// body timeouts, so that slow-client rows end quickly.
func startMesh(t *testing.T) *mesh {
	t.Helper()
	m := &mesh{app: startApp(t)}
	ca, err := identity.NewTestCA("mesh.local")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := ca.WriteCA(caFile); err != nil {
		t.Fatal(err)
	}
	appCert, appKey, err := ca.WriteLeaf(dir, "app", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	webCert, webKey, err := ca.WriteLeaf(dir, "web", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(webCert, webKey)
	if err != nil {
		t.Fatal(err)
	}
	m.clientTLS = &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: ca.Pool(), ServerName: "app", NextProtos: []string{"http/1.1"},
		// The server's SPIFFE certificate names no DNS host; the suite
		// attacks the server, it does not authenticate it.
		InsecureSkipVerify: true}
	m.webID = "spiffe://mesh.local/ns/default/svc/web"

	timeouts := "read_header_timeout: 300ms, body_timeout: 300ms"
	outLn, inLn, inOut := meshtest.Listen(t), meshtest.Listen(t), meshtest.Listen(t)
	m.out, m.in = outLn.Addr().String(), inLn.Addr().String()
	_, appPort, _ := net.SplitHostPort(m.app.addr)
	startSidecar(t, fmt.Sprintf(`
outbound: { listen: %s, %s }
upstreams: [{ service: app, mtls: false, endpoints: [{ address: %s }] }]
`, m.out, timeouts, m.app.addr), outLn)
	startSidecar(t, fmt.Sprintf(`
service: { name: app, port: %s }
inbound: { listen: %s, %s }
outbound: { listen: %s }
tls: { cert_file: %s, key_file: %s, ca_file: %s, trust_domain: mesh.local }
policy:
  rules:
    - { from: [web], exact_paths: [/api/secret], action: deny }
    - { from: [web], paths: [/api/], action: allow }
`, appPort, m.in, timeouts, inOut.Addr(), appCert, appKey, caFile), inLn, inOut)
	return m
}

func startSidecar(t *testing.T, yaml string, lns ...net.Listener) {
	t.Helper()
	cfg, err := config.Parse("hostile.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("config:\n%v", err)
	}
	s := sidecar.New(cfg, slog.New(slog.DiscardHandler), sidecar.WithListeners(lns...))
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
}

// outcome is what a raw exchange got back.
type outcome struct {
	statuses []int
	bodies   []string
	headers  []http.Header
	// closed: the server closed the connection (EOF) before the read
	// deadline; otherwise it was still open when the client gave up.
	closed bool
}

// exchangeTimeout bounds one raw exchange: long enough for every answer
// and for the sidecars' 300ms header and body timeouts.
const exchangeTimeout = 3 * time.Second

// raw writes payload on a new connection to addr (TLS with tlsConf when
// set) and reads every response until the connection closes or
// exchangeTimeout passes.
func raw(t *testing.T, addr string, tlsConf *tls.Config, payload string) outcome {
	t.Helper()
	var conn net.Conn
	var err error
	if tlsConf != nil {
		conn, err = tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, tlsConf)
	} else {
		conn, err = net.DialTimeout("tcp", addr, 2*time.Second)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(exchangeTimeout))
	if _, err := io.WriteString(conn, payload); err != nil {
		t.Fatalf("write: %v", err)
	}
	var o outcome
	br := bufio.NewReader(conn)
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			var ne net.Error
			o.closed = !(errors.As(err, &ne) && ne.Timeout())
			return o
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		o.statuses = append(o.statuses, resp.StatusCode)
		o.bodies = append(o.bodies, string(b))
		o.headers = append(o.headers, resp.Header)
	}
}

// contains reports whether any request the app saw has a target with sub.
func contains(reqs []seen, sub string) bool {
	return slices.ContainsFunc(reqs, func(r seen) bool { return strings.Contains(r.Target, sub) })
}
