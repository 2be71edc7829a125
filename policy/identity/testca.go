package identity

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"
)

// TestCA is an in-memory CA for tests and development: it issues leaves
// like IssueLeaf does, without files. Its own key never leaves memory. It
// is immutable once created, and all its methods are safe for concurrent
// use. Never use it for production traffic.
type TestCA struct {
	a *authority
}

// NewTestCA creates a CA for trustDomain (which must be a valid, lower-case
// trust domain), valid from an hour ago for ten years.
func NewTestCA(trustDomain string) (*TestCA, error) {
	if err := checkTrustDomain(trustDomain); err != nil {
		return nil, fmt.Errorf("identity: test CA: %w", err)
	}
	now := time.Now()
	a, err := newAuthority(trustDomain, now.Add(-time.Hour), now.Add(DefaultCATTL))
	if err != nil {
		return nil, fmt.Errorf("identity: test CA: %w", err)
	}
	return &TestCA{a: a}, nil
}

// TrustDomain returns the trust domain of the leaves ca issues.
func (ca *TestCA) TrustDomain() string { return ca.a.trustDomain }

// Issue returns a new leaf (a chain of one, with Leaf set) for
// spiffe://<trust domain>/ns/<namespace>/svc/<service>, valid from
// notBefore to notAfter, with a new key; the rest is as IssueLeaf.
// namespace "" means DefaultNamespace. Any validity period is accepted, so
// tests can make expired and not yet valid certificates.
func (ca *TestCA) Issue(service, namespace string, notBefore, notAfter time.Time) (*tls.Certificate, error) {
	if namespace == "" {
		namespace = DefaultNamespace
	}
	c, err := ca.a.issue(service, namespace, notBefore, notAfter)
	if err != nil {
		return nil, fmt.Errorf("identity: test CA: issue %s: %w", service, err)
	}
	return c, nil
}

// Bundle returns a bundle for service in namespace: a new leaf valid from a
// minute ago for an hour, and ca's certificate as the only root.
func (ca *TestCA) Bundle(service, namespace string) (*Bundle, error) {
	now := time.Now()
	leaf, err := ca.Issue(service, namespace, now.Add(-backdate), now.Add(time.Hour))
	if err != nil {
		return nil, err
	}
	return NewBundle(leaf, ca.Pool())
}

// Pool returns a new pool holding ca's certificate.
func (ca *TestCA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.a.cert)
	return p
}

// Certificate returns ca's certificate; do not modify it.
func (ca *TestCA) Certificate() *x509.Certificate { return ca.a.cert }

// CertPEM returns ca's certificate in PEM; concatenate those of several
// CAs for a CA file that trusts them all.
func (ca *TestCA) CertPEM() []byte { return bytes.Clone(ca.a.certPEM) }

// WriteCA writes ca's certificate in PEM to path, atomically, mode 0644.
func (ca *TestCA) WriteCA(path string) error {
	if err := writeAtomic(path, ca.a.certPEM, 0o644); err != nil {
		return fmt.Errorf("identity: test CA: %w", err)
	}
	return nil
}

// WriteLeaf issues a leaf for service in DefaultNamespace, valid from a
// minute ago for ttl (0 or less means DefaultLeafTTL), and writes it as
// IssueLeaf does: dir/<service>.pem and dir/<service>-key.pem, key first,
// each replaced atomically.
func (ca *TestCA) WriteLeaf(dir, service string, ttl time.Duration) (certFile, keyFile string, err error) {
	if ttl <= 0 {
		ttl = DefaultLeafTTL
	}
	now := time.Now()
	leaf, err := ca.Issue(service, DefaultNamespace, now.Add(-backdate), now.Add(ttl))
	if err != nil {
		return "", "", err
	}
	return writeLeaf(dir, service, leaf)
}
