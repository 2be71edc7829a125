package edge_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// testCA issues server certificates for the TLS tests.
type testCA struct {
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	roots *x509.CertPool
	dir   string
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "edge test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	return &testCA{cert: cert, key: key, roots: roots, dir: t.TempDir()}
}

// issue writes a certificate for names to <dir>/<file>.pem and
// <file>-key.pem and returns their paths.
func (ca *testCA) issue(t testing.TB, file string, names ...string) (string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile := filepath.Join(ca.dir, file+".pem"), filepath.Join(ca.dir, file+"-key.pem")
	// The key first, then the certificate, each atomically: a reload
	// between the two sees a mismatch and keeps the old pair.
	writeAtomic(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	writeAtomic(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	return certFile, keyFile
}

func writeAtomic(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// handshake connects to addr with sni and returns the names of the
// certificate served, or the error.
func handshake(addr, sni string, roots *x509.CertPool, max uint16) ([]string, error) {
	conn, err := tls.Dial("tcp", addr, &tls.Config{ServerName: sni, RootCAs: roots, MaxVersion: max,
		InsecureSkipVerify: sni == "", MinVersion: tls.VersionTLS10})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].DNSNames, nil
}

// TestSNI: certificates chosen by SNI (exact, wildcard), clients without
// SNI refused when there is no default, TLS 1.1 refused, 421 when the
// Host belongs to another certificate than the SNI, and HTTP/2
// connection reuse across two names of one certificate allowed.
func TestSNI(t *testing.T) {
	ca := newTestCA(t)
	shopCert, shopKey := ca.issue(t, "shop", "shop.example.com", "www.example.com")
	wildCert, wildKey := ca.issue(t, "wild", "*.api.example.com")
	backend := startRecordingBackend(t, "app")
	ln := meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners:
    - listen: %s
      tls: { certificates: [{ cert_file: %s, key_file: %s }, { cert_file: %s, key_file: %s }] }
  routes: [{ name: all, backends: [{ service: app }] }]
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
`, addr, shopCert, shopKey, wildCert, wildKey, backend.addr), ln)

	for _, c := range []struct {
		sni, want string
	}{{"shop.example.com", "shop.example.com"}, {"www.example.com", "shop.example.com"}, {"v1.api.example.com", "*.api.example.com"}} {
		names, err := handshake(addr, c.sni, ca.roots, 0)
		if err != nil || names[0] != c.want {
			t.Errorf("SNI %s: certificate %v, %v; want %s", c.sni, names, err, c.want)
		}
	}
	for _, sni := range []string{"", "a.b.api.example.com", "example.com"} {
		if names, err := handshake(addr, sni, ca.roots, 0); err == nil {
			t.Errorf("SNI %q: handshake succeeded with %v; want a refusal (no certificate, no default)", sni, names)
		}
	}
	if _, err := handshake(addr, "shop.example.com", ca.roots, tls.VersionTLS11); err == nil {
		t.Error("a TLS 1.1 handshake succeeded")
	}

	c := tlsClient(t, addr, &tls.Config{RootCAs: ca.roots}, true)
	get := func(url, host string) (int, string, string) {
		req, _ := http.NewRequest("GET", url, nil)
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET %s (Host %s): %v", url, host, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Proto
	}
	if code, body, proto := get("https://shop.example.com/", "shop.example.com"); code != 200 || proto != "HTTP/2.0" {
		t.Fatalf("shop over h2: %d %q %s", code, body, proto)
	}
	// The same connection (SNI shop.example.com) for www.example.com,
	// which the same certificate covers: allowed.
	if code, body, _ := get("https://shop.example.com/", "www.example.com"); code != 200 {
		t.Errorf("reuse for another name of the same certificate: %d %q", code, body)
	}
	// For a host of the other certificate: 421 (domain fronting).
	code, body, _ := get("https://shop.example.com/", "v1.api.example.com")
	if code != http.StatusMisdirectedRequest || !strings.Contains(body, `"kind":"misdirected"`) {
		t.Errorf("Host of another certificate on shop's connection: %d %q, want 421", code, body)
	}
	for _, r := range backend.take() {
		if r.Host == "v1.api.example.com" {
			t.Errorf("the misdirected request reached the backend")
		}
	}
}

// TestDefaultCertificateAndReload: a default certificate serves clients
// without SNI; a certificate replaced on disk is served to new handshakes
// within seconds, while a request in flight on an old connection
// completes.
func TestDefaultCertificateAndReload(t *testing.T) {
	ca := newTestCA(t)
	certFile, keyFile := ca.issue(t, "shop", "shop.example.com")
	release := make(chan struct{})
	slow := startSlowBackend(t, release)
	ln := meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners:
    - listen: %s
      tls: { certificates: [{ cert_file: %s, key_file: %s, default: true }], reload_interval: 100ms }
  routes: [{ name: all, backends: [{ service: app }] }]
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
`, addr, certFile, keyFile, slow.addr), ln)
	if names, err := handshake(addr, "", ca.roots, 0); err != nil || names[0] != "shop.example.com" {
		t.Fatalf("no SNI with a default certificate: %v %v", names, err)
	}
	first, _ := handshake(addr, "shop.example.com", ca.roots, 0)

	// A slow request on an established connection.
	c := tlsClient(t, addr, &tls.Config{RootCAs: ca.roots}, true)
	done := make(chan error, 1)
	go func() {
		resp, err := c.Get("https://shop.example.com/slow")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		done <- err
	}()
	meshtest.WaitFor(t, 5*time.Second, "the slow request at the backend", slow.started)

	ca.issue(t, "shop", "shop.example.com", "new.example.com") // replaces the files
	replaced := time.Now()
	meshtest.Eventually(t, 5*time.Second, "the new certificate on new handshakes", func() error {
		names, err := handshake(addr, "shop.example.com", ca.roots, 0)
		if err != nil || len(names) != 2 {
			return fmt.Errorf("served %v (%v), before %v", names, err, first)
		}
		return nil
	})
	if d := time.Since(replaced); d > 2*time.Second {
		t.Errorf("the new certificate took %v", d)
	}
	close(release)
	if err := <-done; err != nil {
		t.Errorf("the request in flight across the reload: %v", err)
	}
}
