package identity

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// readCert parses the only certificate of a PEM file.
func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatalf("%s is not exactly one PEM certificate", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// mode returns the permission bits of path.
func mode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestDevelopmentCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if err := InitCA(dir, "example.org", 0); err != nil {
		t.Fatal(err)
	}
	caFile, caKey := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	if m := mode(t, caKey); m != 0o600 {
		t.Errorf("CA key mode %v, want 0600", m)
	}
	ca := readCert(t, caFile)
	if !ca.IsCA || len(ca.URIs) != 1 || ca.URIs[0].String() != "spiffe://example.org" {
		t.Errorf("CA: IsCA %v, URIs %v", ca.IsCA, ca.URIs)
	}
	if d := time.Until(ca.NotAfter) - DefaultCATTL; d < -time.Minute || d > time.Minute {
		t.Errorf("CA NotAfter %v, want about 10 years from now", ca.NotAfter)
	}

	// InitCA refuses to overwrite, even half a CA.
	before, _ := os.ReadFile(caFile)
	if err := InitCA(dir, "example.org", 0); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second InitCA: %v, want fs.ErrExist", err)
	}
	if after, _ := os.ReadFile(caFile); !bytes.Equal(before, after) {
		t.Error("second InitCA changed the CA")
	}
	half := t.TempDir()
	writeFile(t, filepath.Join(half, CAKeyFile), []byte("key"))
	if err := InitCA(half, "example.org", 0); !errors.Is(err, fs.ErrExist) {
		t.Errorf("InitCA over a lone key: %v, want fs.ErrExist", err)
	}
	if err := InitCA(t.TempDir(), "Example.org", 0); err == nil || !strings.Contains(err.Error(), "lower case") {
		t.Errorf("InitCA with an upper-case trust domain: %v", err)
	}

	// Leaves.
	catCert, catKey, err := IssueLeaf(dir, "catalog", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if catCert != filepath.Join(dir, "catalog.pem") || catKey != filepath.Join(dir, "catalog-key.pem") {
		t.Errorf("files %s, %s", catCert, catKey)
	}
	if m := mode(t, catKey); m != 0o600 {
		t.Errorf("leaf key mode %v, want 0600", m)
	}
	leaf := readCert(t, catCert)
	now := time.Now()
	switch {
	case len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://example.org/ns/default/svc/catalog":
		t.Errorf("URIs %v", leaf.URIs)
	case len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "catalog":
		t.Errorf("DNS names %v", leaf.DNSNames)
	case len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth:
		t.Errorf("ext key usage %v", leaf.ExtKeyUsage)
	case leaf.IsCA:
		t.Error("leaf is a CA")
	case leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 || leaf.SerialNumber.BitLen() < 64:
		t.Errorf("serial %x", leaf.SerialNumber)
	case leaf.NotBefore.After(now.Add(-50*time.Second)) || leaf.NotBefore.Before(now.Add(-2*time.Minute)):
		t.Errorf("NotBefore %v, want a minute ago", leaf.NotBefore)
	case leaf.NotAfter.Sub(now.Add(DefaultLeafTTL)).Abs() > time.Minute:
		t.Errorf("NotAfter %v, want in 90 days", leaf.NotAfter)
	}
	webCert, webKey, err := IssueLeaf(dir, "web", "prod", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if u := readCert(t, webCert).URIs[0].String(); u != "spiffe://example.org/ns/prod/svc/web" {
		t.Errorf("web URI %s", u)
	}
	for _, tc := range []struct{ dir, service, ns string }{
		{dir, "../evil", ""},
		{dir, "", ""},
		{dir, "web", "a/b"},
		{t.TempDir(), "web", ""}, // no CA there
	} {
		if _, _, err := IssueLeaf(tc.dir, tc.service, tc.ns, 0); err == nil {
			t.Errorf("IssueLeaf(%q, %q, %q) succeeded", tc.dir, tc.service, tc.ns)
		}
	}

	// The files load and handshake.
	logger, _ := testLogger()
	catalog, err := NewFileSource(catCert, catKey, caFile, FileOptions{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	web, err := NewFileSource(webCert, webKey, caFile, FileOptions{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	o := handshake(t, ServerConfig(catalog), ClientConfig(web, "catalog", "default"))
	if o.serverErr != nil || o.clientErr != nil {
		t.Fatalf("server: %v; client: %v", o.serverErr, o.clientErr)
	}
	if id, _ := PeerID(o.serverState); id.String() != "spiffe://example.org/ns/prod/svc/web" {
		t.Errorf("server sees %v", id)
	}

	// IssueLeaf again rotates the leaf.
	old := serial(catalog)
	if _, _, err := IssueLeaf(dir, "catalog", "", 0); err != nil {
		t.Fatal(err)
	}
	catalog.poll()
	if serial(catalog).Cmp(old) == 0 {
		t.Error("reissued leaf not loaded")
	}
	o = handshake(t, ServerConfig(catalog), ClientConfig(web, "catalog", ""))
	if o.serverErr != nil || o.clientErr != nil {
		t.Fatalf("after reissue: server: %v; client: %v", o.serverErr, o.clientErr)
	}
	if got := o.clientState.PeerCertificates[0].SerialNumber; got.Cmp(serial(catalog)) != 0 {
		t.Errorf("client saw serial %x, want %x", got, serial(catalog))
	}
}

// TestLeafWithinCA: a leaf never outlives its CA.
func TestLeafWithinCA(t *testing.T) {
	dir := t.TempDir()
	if err := InitCA(dir, "example.org", time.Hour); err != nil {
		t.Fatal(err)
	}
	certFile, _, err := IssueLeaf(dir, "web", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if ca, leaf := readCert(t, filepath.Join(dir, CACertFile)), readCert(t, certFile); !leaf.NotAfter.Equal(ca.NotAfter) {
		t.Errorf("leaf NotAfter %v, CA's %v", leaf.NotAfter, ca.NotAfter)
	}
}

func TestNewTestCA(t *testing.T) {
	if _, err := NewTestCA("EXAMPLE"); err == nil {
		t.Error("NewTestCA accepted an upper-case trust domain")
	}
	ca := newCA(t, "example.org")
	if ca.TrustDomain() != "example.org" {
		t.Errorf("trust domain %q", ca.TrustDomain())
	}
	b, err := ca.Bundle("web", "prod")
	if err != nil {
		t.Fatal(err)
	}
	if b.ID.String() != "spiffe://example.org/ns/prod/svc/web" {
		t.Errorf("bundle ID %v", b.ID)
	}
	block, _ := pem.Decode(ca.CertPEM())
	if block == nil || !bytes.Equal(block.Bytes, ca.Certificate().Raw) {
		t.Error("CertPEM is not the CA certificate")
	}
	if _, err := ca.Issue("a/b", "", time.Now(), time.Now().Add(time.Hour)); err == nil {
		t.Error("Issue accepted a service with a slash")
	}
}
