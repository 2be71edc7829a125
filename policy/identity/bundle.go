package identity

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// errValidity is wrapped by the errors of a leaf that is expired or not yet
// valid: FileSource refuses such a leaf (logged at error) rather than waiting
// for the rest of a rotation to land (logged at warn).
var errValidity = errors.New("outside its validity period")

// Bundle is an immutable snapshot of what a workload presents and trusts.
// Nothing may modify a Bundle, or the values it points to, once a Source
// has published it: handshakes in flight read it without locks.
type Bundle struct {
	// Leaf is the certificate chain (leaf first, then intermediates) and
	// private key the workload presents; Leaf.Leaf is the parsed leaf.
	Leaf *tls.Certificate
	// ID is the workload's identity, from the leaf's URI SAN.
	ID ID
	// Roots are the CA certificates peers' chains must end in.
	Roots *x509.CertPool
	// NotAfter is the end of the leaf's validity.
	NotAfter time.Time
}

// NewBundle checks leaf and roots and returns a Bundle made of them: the
// leaf must be parsable, match its private key, carry exactly one SPIFFE ID,
// be valid now and chain to roots (through the intermediates that follow it
// in leaf.Certificate). NewBundle does not modify leaf; the Bundle holds a
// copy of it, with Leaf.Leaf set. A Bundle literal skips these checks, which
// is how a test serves an expired certificate.
func NewBundle(leaf *tls.Certificate, roots *x509.CertPool) (*Bundle, error) {
	return newBundle(leaf, roots, time.Now())
}

// newBundle is NewBundle at the time now.
func newBundle(leaf *tls.Certificate, roots *x509.CertPool, now time.Time) (*Bundle, error) {
	if leaf == nil || len(leaf.Certificate) == 0 {
		return nil, errors.New("identity: bundle: no leaf certificate")
	}
	if roots == nil {
		return nil, errors.New("identity: bundle: no roots")
	}
	c := *leaf
	if c.Leaf == nil {
		parsed, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			return nil, fmt.Errorf("identity: bundle: parse leaf: %w", err)
		}
		c.Leaf = parsed
	}
	signer, ok := c.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("identity: bundle: leaf has no usable private key")
	}
	pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(c.Leaf.PublicKey) {
		return nil, errors.New("identity: bundle: private key does not match the leaf certificate")
	}
	id, err := IDFromCert(c.Leaf)
	if err != nil {
		return nil, fmt.Errorf("identity: bundle: %w", err)
	}
	if err := checkValidity(c.Leaf, id, now); err != nil {
		return nil, fmt.Errorf("identity: bundle: %w", err)
	}
	if _, err := verifyChain(c.Leaf, parseIntermediates(c.Certificate[1:]), roots, x509.ExtKeyUsageAny, now); err != nil {
		return nil, fmt.Errorf("identity: bundle: leaf %s does not chain to the roots: %w", id, err)
	}
	return &Bundle{Leaf: &c, ID: id, Roots: roots, NotAfter: c.Leaf.NotAfter}, nil
}

// checkValidity returns an error wrapping errValidity unless c is valid at now.
func checkValidity(c *x509.Certificate, id ID, now time.Time) error {
	if now.After(c.NotAfter) {
		return fmt.Errorf("leaf %s (serial %x) is %w: expired at %s", id, c.SerialNumber, errValidity, c.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(c.NotBefore) {
		return fmt.Errorf("leaf %s (serial %x) is %w: not yet valid until %s", id, c.SerialNumber, errValidity, c.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// parseIntermediates parses the DER certificates that follow a leaf,
// skipping any that do not parse (verification then fails on its own).
func parseIntermediates(der [][]byte) []*x509.Certificate {
	out := make([]*x509.Certificate, 0, len(der))
	for _, d := range der {
		if c, err := x509.ParseCertificate(d); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// verifyChain verifies leaf, through intermediates, against roots at now
// for usage, with no host name check, and returns the first chain.
func verifyChain(leaf *x509.Certificate, intermediates []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage, now time.Time) ([]*x509.Certificate, error) {
	opts := x509.VerifyOptions{
		Roots:       roots,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{usage},
	}
	if len(intermediates) > 0 {
		opts.Intermediates = x509.NewCertPool()
		for _, c := range intermediates {
			opts.Intermediates.AddCert(c)
		}
	}
	chains, err := leaf.Verify(opts)
	if err != nil {
		return nil, err
	}
	return chains[0], nil
}
