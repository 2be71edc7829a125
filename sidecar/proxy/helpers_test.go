package proxy_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/listener"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
	"github.com/sidemesh/sidemesh/sidecar/proxy"
)

func TestMain(m *testing.M) {
	// Every test closes its servers, clients and transports; nothing is
	// ignored.
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every network exchange in this package's tests.
const testTimeout = 30 * time.Second

// testCtx returns a context cancelled after d or when the test ends.
func testCtx(t testing.TB, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// listen opens a TCP listener on a free loopback port.
var listen = meshtest.Listen

// deadAddr returns a loopback address nothing listens on: connections to
// it are refused.
var deadAddr = meshtest.FreeAddr

// ---- backends ----

// backendProto is how a test backend (or a test client) speaks HTTP.
type backendProto int

const (
	h1  backendProto = iota // HTTP/1.1 only
	h2c                     // HTTP/1.1 and HTTP/2 with prior knowledge
)

// startBackend starts an httptest server for h on loopback.
func startBackend(t testing.TB, proto backendProto, h http.Handler) *httptest.Server {
	t.Helper()
	s := httptest.NewUnstartedServer(h)
	if proto == h2c {
		var p http.Protocols
		p.SetHTTP1(true)
		p.SetUnencryptedHTTP2(true)
		s.Config.Protocols = &p
	}
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// startTLSBackend starts an httptest TLS server offering h2 and http/1.1.
func startTLSBackend(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	s := httptest.NewUnstartedServer(h)
	s.Config.ErrorLog = log.New(io.Discard, "", 0) // failed handshakes are expected in some tests
	s.EnableHTTP2 = true
	s.StartTLS()
	t.Cleanup(s.Close)
	return s
}

// hostPort returns the "host:port" an httptest server listens on.
func hostPort(s *httptest.Server) string { return s.Listener.Addr().String() }

// ---- proxy ----

// upstreamOpts are the knobs tests turn on the standard upstream.
type upstreamOpts struct {
	HTTP2   bool
	TLS     *tls.Config
	Timeout time.Duration
	Trusted []netip.Prefix
	Logger  *slog.Logger
	// Wrap, when set, wraps the balancer as the upstream's picker.
	Wrap func(balancer.Picker) balancer.Picker
	// TryFilters wrap the upstream's transport.
	TryFilters []proxy.TryFilter
	// Retry is the upstream's retry policy; none by default.
	Retry proxy.RetryPolicy
}

// trustLoopback is TrustedProxies containing every client of these tests.
var trustLoopback = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}

// newBalancer returns a round-robin balancer over addrs ("host:port").
func newBalancer(t testing.TB, service string, addrs ...string) *balancer.Balancer {
	t.Helper()
	b := balancer.New(service, balancer.RoundRobin{}, balancer.Options{})
	var eps []discovery.Endpoint
	for _, a := range addrs {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			t.Fatal(err)
		}
		eps = append(eps, discovery.Endpoint{
			ID: a, Service: service, Address: ap.Addr().String(), Port: int(ap.Port()), Weight: 1,
		})
	}
	b.Update(discovery.Snapshot{Service: service, Endpoints: eps})
	return b
}

// newUpstream builds an upstream the way the sidecar does: round robin over
// backends, the main transport per o, and an HTTP/1.1 transport for
// upgrades. When the test ends it checks that no request is left in flight
// and closes the transports' idle connections.
func newUpstream(t testing.TB, service string, o upstreamOpts, backends ...string) (*proxy.Upstream, *balancer.Balancer) {
	t.Helper()
	b := newBalancer(t, service, backends...)
	var picker balancer.Picker = b
	if o.Wrap != nil {
		picker = o.Wrap(b)
	}
	rt := proxy.NewTransport(proxy.TransportOptions{HTTP2: o.HTTP2, TLS: o.TLS})
	up := proxy.NewTransport(proxy.TransportOptions{TLS: o.TLS})
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	u := proxy.NewUpstream(proxy.UpstreamOptions{
		Name:             service,
		Picker:           picker,
		Transport:        rt,
		UpgradeTransport: up,
		Timeout:          o.Timeout,
		TryFilters:       o.TryFilters,
		Retry:            o.Retry,
		Logger:           logger,
	})
	t.Cleanup(func() {
		rt.CloseIdleConnections()
		up.CloseIdleConnections()
	})
	t.Cleanup(func() { waitIdle(t, b) })
	return u, b
}

// waitIdle fails the test unless every endpoint of b gets back to zero
// requests in flight within a few seconds.
func waitIdle(t testing.TB, b *balancer.Balancer) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		busy := ""
		for _, ep := range b.Endpoints() {
			if n := ep.InFlight(); n != 0 {
				busy += " " + ep.Addr + "=" + strconv.FormatInt(n, 10)
			}
		}
		if busy == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("balancer %s: requests still in flight:%s", b.Service(), busy)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// chain is the outbound chain the sidecar builds in front of u: Hygiene,
// the request ID, X-Forwarded-* (kept from trusted peers), the proxy.
func chain(u *proxy.Upstream, trusted []netip.Prefix) pipeline.Handler {
	return pipeline.Chain(u, &proxy.Hygiene{}, proxy.RequestID, &proxy.Forwarded{Trusted: trusted})
}

// routes is a pipeline.Router over service names, the way the outbound
// listener routes: by the service named in the Host header ("catalog",
// "catalog.mesh:80"). Other names get no route (502).
type routes map[string]*pipeline.Route

// routeTo returns routes sending service to h.
func routeTo(service string, h pipeline.Handler) routes {
	return routes{service: {Name: service, Service: service, Handler: h}}
}

func (r routes) Route(req *http.Request) *pipeline.Route {
	host := req.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return r[strings.TrimSuffix(strings.ToLower(host), ".mesh")] // nil: no route
}

// startProxy serves router's routes on a loopback listener the way the
// sidecar does (a pipeline.Listener in a listener.Server) and returns its
// address. The server is shut down when the test ends.
func startProxy(t testing.TB, router pipeline.Router, o listener.HTTPOptions) string {
	t.Helper()
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	sock := listener.Adopt(listen(t), o.Logger)
	srv := listener.NewHTTP(pipeline.NewListener(pipeline.ListenerOptions{Name: "outbound", Router: router}), o)
	srv.Serve(sock)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		sock.Close()
	})
	return sock.Addr().String()
}

// startOutbound is the usual setup: an outbound listener routing service
// to an upstream over backends. It returns the listener's address and the
// upstream's balancer.
func startOutbound(t testing.TB, service string, o upstreamOpts, backends ...string) (string, *balancer.Balancer) {
	t.Helper()
	u, b := newUpstream(t, service, o, backends...)
	addr := startProxy(t, routeTo(service, chain(u, o.Trusted)), listener.HTTPOptions{})
	return addr, b
}

// ---- clients ----

// newClient returns a client that sends every request to the proxy at
// addr, whatever the URL's host, the way an app sends its outbound
// traffic to its sidecar: http://catalog/... reaches the proxy with Host
// "catalog".
func newClient(t testing.TB, addr string, proto backendProto) *http.Client {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	var p http.Protocols
	if proto == h2c {
		p.SetUnencryptedHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		},
		Protocols:          &p,
		DisableCompression: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// newTLSClient is newClient over TLS, negotiating h2 by ALPN.
func newTLSClient(t testing.TB, addr string, roots *x509.CertPool) *http.Client {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		},
		TLSClientConfig: &tls.Config{RootCAs: roots},
		Protocols:       &p,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// get sends a GET for url and returns the response with its body read.
func get(t testing.TB, c *http.Client, url string, hdr http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t, testTimeout), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	return do(t, c, req)
}

// do sends req and returns the response with its body read and closed.
func do(t testing.TB, c *http.Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	if _, err := body.ReadFrom(resp.Body); err != nil {
		t.Fatalf("%s %s: reading body: %v", req.Method, req.URL, err)
	}
	return resp, body.String()
}

// ---- recording ----

// recordingPicker is a Picker that records the Result of every pick.
type recordingPicker struct {
	balancer.Picker
	mu      sync.Mutex
	results []balancer.Result
}

func (p *recordingPicker) Pick(r balancer.Request) (balancer.Pick, error) {
	pk, err := p.Picker.Pick(r)
	if err != nil {
		return pk, err
	}
	done := pk.Done
	pk.Done = func(res balancer.Result) {
		p.mu.Lock()
		p.results = append(p.results, res)
		p.mu.Unlock()
		done(res)
	}
	return pk, nil
}

// waitResults waits until n results were recorded and returns them.
func (p *recordingPicker) waitResults(t testing.TB, n int) []balancer.Result {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		got := append([]balancer.Result(nil), p.results...)
		p.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d pick results, want %d", len(got), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// logBuffer is a test's slog output, read back.
type logBuffer struct{ meshtest.LogBuffer }

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// ---- TLS ----

// newCert returns a self-signed certificate for hosts (names or IPs) and a
// pool trusting it.
func newCert(t testing.TB, hosts ...string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: hosts[0]},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// ---- misc ----

// flushWriter flushes after every write so streamed bytes leave at once.
type flushWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func newFlushWriter(w http.ResponseWriter) *flushWriter {
	return &flushWriter{w: w, rc: http.NewResponseController(w)}
}

func (f *flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}

// joined formats header values for messages.
func joined(vs []string) string { return strings.Join(vs, " | ") }
