package proxy_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/sidecar/listener"
)

func TestH2CEndToEnd(t *testing.T) {
	rec := &recorder{answer: func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Proto", r.Proto)
		io.WriteString(w, "over h2c")
	}}
	backend := startBackend(t, h2c, rec)
	addr, _ := startOutbound(t, "catalog", upstreamOpts{HTTP2: true}, hostPort(backend))
	c := newClient(t, addr, h2c)

	req, _ := http.NewRequestWithContext(testCtx(t, testTimeout), http.MethodPost,
		"http://catalog.mesh/h2?q=1", strings.NewReader("payload"))
	resp, body := do(t, c, req)
	if resp.ProtoMajor != 2 {
		t.Errorf("client <-> proxy spoke %s, want HTTP/2", resp.Proto)
	}
	got := rec.last(t)
	if got.ProtoMajor != 2 {
		t.Errorf("proxy -> backend spoke HTTP/%d, want 2", got.ProtoMajor)
	}
	if got.Host != "catalog.mesh" || got.RequestURI != "/h2?q=1" || got.Body != "payload" {
		t.Errorf("backend got host %q uri %q body %q", got.Host, got.RequestURI, got.Body)
	}
	if resp.StatusCode != 200 || body != "over h2c" || resp.Header.Get("X-Proto") != "HTTP/2.0" {
		t.Errorf("client got %d %q %v", resp.StatusCode, body, resp.Header)
	}
}

func TestH2ToTLSUpstream(t *testing.T) {
	rec := &recorder{}
	backend := startTLSBackend(t, rec)
	roots := x509.NewCertPool()
	roots.AddCert(backend.Certificate())
	addr, _ := startOutbound(t, "catalog",
		upstreamOpts{HTTP2: true, TLS: &tls.Config{RootCAs: roots}}, hostPort(backend))

	resp, body := get(t, newClient(t, addr, h1), "http://catalog/secure", nil)
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("got %d %q (%s)", resp.StatusCode, body, resp.Header.Get("X-Sidemesh-Error"))
	}
	got := rec.last(t)
	if got.ProtoMajor != 2 || !got.TLS {
		t.Errorf("backend saw HTTP/%d, TLS %v; want HTTP/2 over TLS", got.ProtoMajor, got.TLS)
	}
	if got.Host != "catalog" {
		t.Errorf("backend Host = %q", got.Host)
	}
}

func TestHTTP1ToTLSUpstream(t *testing.T) {
	rec := &recorder{}
	backend := startTLSBackend(t, rec)
	roots := x509.NewCertPool()
	roots.AddCert(backend.Certificate())
	addr, _ := startOutbound(t, "catalog", upstreamOpts{TLS: &tls.Config{RootCAs: roots}}, hostPort(backend))

	resp, body := get(t, newClient(t, addr, h1), "http://catalog/secure", nil)
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("got %d %q (%s)", resp.StatusCode, body, resp.Header.Get("X-Sidemesh-Error"))
	}
	if got := rec.last(t); got.ProtoMajor != 1 || !got.TLS {
		t.Errorf("backend saw HTTP/%d, TLS %v; want HTTP/1.1 over TLS", got.ProtoMajor, got.TLS)
	}
}

func TestTLSUpstreamRejectsUntrustedCert(t *testing.T) {
	backend := startTLSBackend(t, &recorder{})
	_, otherRoots := newCert(t, "127.0.0.1")
	addr, _ := startOutbound(t, "catalog", upstreamOpts{HTTP2: true, TLS: &tls.Config{RootCAs: otherRoots}}, hostPort(backend))
	resp, _ := get(t, newClient(t, addr, h1), "http://catalog/", nil)
	if resp.StatusCode < 500 || resp.Header.Get("X-Sidemesh-Error") == "" {
		t.Errorf("untrusted upstream cert: got %d %q", resp.StatusCode, resp.Header.Get("X-Sidemesh-Error"))
	}
}

func TestTLSServerNegotiatesH2(t *testing.T) {
	rec := &recorder{}
	backend := startBackend(t, h2c, rec)
	u, _ := newUpstream(t, "catalog", upstreamOpts{HTTP2: true}, hostPort(backend))
	cert, roots := newCert(t, "catalog", "catalog.mesh", "127.0.0.1")
	addr := startProxy(t, routeTo("catalog", chain(u, nil)),
		listener.HTTPOptions{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})

	resp, body := get(t, newTLSClient(t, addr, roots), "https://catalog.mesh/tls", nil)
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	if resp.ProtoMajor != 2 || resp.TLS == nil || resp.TLS.NegotiatedProtocol != "h2" {
		t.Errorf("client <-> proxy: %s, ALPN %q; want h2", resp.Proto, resp.TLS.NegotiatedProtocol)
	}
	got := rec.last(t)
	if got.ProtoMajor != 2 {
		t.Errorf("proxy -> backend: HTTP/%d, want 2", got.ProtoMajor)
	}
	if v := got.Header.Get("X-Forwarded-Proto"); v != "https" {
		t.Errorf("X-Forwarded-Proto = %q, want https", v)
	}
}
