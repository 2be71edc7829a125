package identity

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newCA returns a new in-memory CA for trustDomain.
func newCA(t testing.TB, trustDomain string) *TestCA {
	t.Helper()
	ca, err := NewTestCA(trustDomain)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// issue returns a leaf for service in namespace "default".
func issue(t testing.TB, ca *TestCA, service string, notBefore, notAfter time.Time) *tls.Certificate {
	t.Helper()
	c, err := ca.Issue(service, "", notBefore, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// valid returns a leaf for service valid from a minute ago for an hour.
func valid(t testing.TB, ca *TestCA, service string) *tls.Certificate {
	t.Helper()
	return issue(t, ca, service, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
}

// withURIs returns a valid leaf with exactly the URI SANs given.
func withURIs(t testing.TB, ca *TestCA, uris ...string) *tls.Certificate {
	t.Helper()
	var us []*url.URL
	for _, u := range uris {
		p, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		us = append(us, p)
	}
	c, err := ca.a.sign(&x509.Certificate{
		URIs:                  us,
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// pool returns a pool of the certificates of cas.
func pool(cas ...*TestCA) *x509.CertPool {
	p := x509.NewCertPool()
	for _, ca := range cas {
		p.AddCert(ca.Certificate())
	}
	return p
}

// rawBundle makes a bundle without NewBundle's checks, so that it can hold
// an expired leaf, or one without a proper SPIFFE ID.
func rawBundle(leaf *tls.Certificate, roots ...*TestCA) *Bundle {
	id, _ := IDFromCert(leaf.Leaf)
	return &Bundle{Leaf: leaf, ID: id, Roots: pool(roots...), NotAfter: leaf.Leaf.NotAfter}
}

// static returns a source serving b.
func static(b *Bundle) *StaticSource {
	s := NewStaticSource()
	s.Set(b)
	return s
}

// syncBuffer is the log a test reads back, with a line count.
type syncBuffer struct{ meshtest.LogBuffer }

// count returns how many log lines contain all of subs.
func (s *syncBuffer) count(subs ...string) int {
	n := 0
next:
	for _, line := range strings.Split(s.String(), "\n") {
		for _, sub := range subs {
			if !strings.Contains(line, sub) {
				continue next
			}
		}
		n++
	}
	return n
}

// testLogger returns a logger writing text to a buffer it also returns.
func testLogger() (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}
