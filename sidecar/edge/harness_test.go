package edge_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/sidecar"
	"github.com/sidemesh/sidemesh/sidecar/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// seenRequest is what a test backend received.
type seenRequest struct {
	Target string // the raw request target
	Route  string // X-Route
	Host   string
}

// recordingBackend answers "<name> <X-Route>" and records each request.
type recordingBackend struct {
	name string
	addr string
	mu   sync.Mutex
	seen []seenRequest
}

func startRecordingBackend(t *testing.T, name string) *recordingBackend {
	t.Helper()
	b := &recordingBackend{name: name}
	ln := meshtest.Listen(t)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.seen = append(b.seen, seenRequest{Target: r.RequestURI, Route: r.Header.Get("X-Route"), Host: r.Host})
		b.mu.Unlock()
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%s %s", name, r.Header.Get("X-Route"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	b.addr = ln.Addr().String()
	return b
}

func (b *recordingBackend) take() []seenRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := b.seen
	b.seen = nil
	return out
}

// startEdge starts a sidemesh process in edge mode from yaml, whose
// "%s" placeholders are filled with the addresses of lns, in order.
func startEdge(t testing.TB, yaml string, lns ...net.Listener) *sidecar.Sidecar {
	t.Helper()
	cfg := parseEdge(t, yaml)
	s := sidecar.New(cfg, slog.New(slog.DiscardHandler), sidecar.WithListeners(lns...))
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

func parseEdge(t testing.TB, yaml string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("edge.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("config:\n%v\n%s", err, yaml)
	}
	return cfg
}

// send makes a request to addr with host as its Host and returns the
// status and body.
func send(t testing.TB, c *http.Client, method, addr, host, target string, hdr map[string]string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+target, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s%s: %v", method, host, target, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func newClient(t testing.TB) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// tlsClient returns a client that dials addr for every URL, with roots
// and no further checks than the certificate chain and name.
func tlsClient(t *testing.T, addr string, roots *tls.Config, h2 bool) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:   roots,
		ForceAttemptHTTP2: h2,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

var _ = strings.TrimSpace

// slowBackend holds /slow until release is closed.
type slowBackend struct {
	addr    string
	arrived chan struct{}
}

func (s *slowBackend) started() bool {
	select {
	case <-s.arrived:
		return true
	default:
		return false
	}
}

func startSlowBackend(t *testing.T, release chan struct{}) *slowBackend {
	t.Helper()
	s := &slowBackend{arrived: make(chan struct{})}
	var once sync.Once
	ln := meshtest.Listen(t)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			once.Do(func() { close(s.arrived) })
			<-release
		}
		io.WriteString(w, "ok")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	s.addr = ln.Addr().String()
	return s
}

// scrape returns the /metrics page of the admin listener at addr.
func scrape(t *testing.T, addr string) []byte {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b
}
