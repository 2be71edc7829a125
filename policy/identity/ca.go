package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// Files and defaults of the development CA.
const (
	CACertFile = "ca.pem"     // the CA certificate InitCA writes in its directory
	CAKeyFile  = "ca-key.pem" // its private key (mode 0600)

	DefaultCATTL   = 10 * 365 * 24 * time.Hour // validity of a CA when InitCA's ttl is 0
	DefaultLeafTTL = 90 * 24 * time.Hour       // validity of a leaf when IssueLeaf's ttl is 0
	// DefaultNamespace is the namespace of a leaf when IssueLeaf's is "".
	DefaultNamespace = "default"
)

// backdate is how far before "now" certificates start, for clock skew.
const backdate = time.Minute

// InitCA creates a development CA for trustDomain in dir (created 0700 if
// missing): dir/ca.pem, and dir/ca-key.pem written 0600. The CA is a
// self-signed ECDSA P-256 certificate with the URI SAN spiffe://<trustDomain>,
// valid from a minute ago for ttl (0 or less means DefaultCATTL, 10 years).
// InitCA refuses to overwrite an existing CA: if either file exists it
// returns an error wrapping fs.ErrExist and changes nothing.
func InitCA(dir, trustDomain string, ttl time.Duration) error {
	if err := checkTrustDomain(trustDomain); err != nil {
		return fmt.Errorf("identity: init CA: %w", err)
	}
	if ttl <= 0 {
		ttl = DefaultCATTL
	}
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("identity: init CA: %s already exists, refusing to overwrite it: %w", p, fs.ErrExist)
		}
	}
	now := time.Now()
	a, err := newAuthority(trustDomain, now.Add(-backdate), now.Add(ttl))
	if err != nil {
		return fmt.Errorf("identity: init CA: %w", err)
	}
	keyPEM, err := encodeKey(a.key)
	if err != nil {
		return fmt.Errorf("identity: init CA: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("identity: init CA: %w", err)
	}
	if err := writeNew(keyPath, keyPEM, 0o600); err != nil {
		return fmt.Errorf("identity: init CA: %w", err)
	}
	if err := writeNew(certPath, a.certPEM, 0o644); err != nil {
		os.Remove(keyPath)
		return fmt.Errorf("identity: init CA: %w", err)
	}
	return nil
}

// IssueLeaf issues a leaf certificate from the CA InitCA created in dir and
// writes it to dir/<service>.pem (the leaf alone, no chain) and its key to
// dir/<service>-key.pem (mode 0600), replacing any previous ones: that is
// how a leaf is rotated by hand. Each file is replaced atomically (written
// aside, then renamed), the key first; a FileSource watching them installs
// the pair once both are in place.
//
// The leaf has a new ECDSA P-256 key, a random 128-bit serial, the URI SAN
// spiffe://<trust domain of the CA>/ns/<namespace>/svc/<service>, the DNS
// SAN <service>, extended key usages server and client auth, and is valid
// from a minute ago for ttl (0 or less means DefaultLeafTTL, 90 days), but
// not beyond the CA. namespace "" means DefaultNamespace. service and
// namespace must be valid ID segments (letters, digits, '.', '-', '_').
func IssueLeaf(dir, service, namespace string, ttl time.Duration) (certFile, keyFile string, err error) {
	if namespace == "" {
		namespace = DefaultNamespace
	}
	if ttl <= 0 {
		ttl = DefaultLeafTTL
	}
	a, err := loadAuthority(dir)
	if err != nil {
		return "", "", fmt.Errorf("identity: issue %s: %w", service, err)
	}
	now := time.Now()
	leaf, err := a.issue(service, namespace, now.Add(-backdate), now.Add(ttl))
	if err != nil {
		return "", "", fmt.Errorf("identity: issue %s: %w", service, err)
	}
	return writeLeaf(dir, service, leaf)
}

// authority is a CA certificate and its key: the development CA and TestCA.
type authority struct {
	trustDomain string
	cert        *x509.Certificate
	certPEM     []byte
	key         *ecdsa.PrivateKey
}

// newAuthority creates a self-signed CA for trustDomain.
func newAuthority(trustDomain string, notBefore, notAfter time.Time) (*authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "sidemesh CA " + trustDomain},
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &authority{
		trustDomain: trustDomain,
		cert:        cert,
		certPEM:     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key:         key,
	}, nil
}

// loadAuthority reads the CA InitCA wrote in dir.
func loadAuthority(dir string) (*authority, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("load CA: key is a %T, want ECDSA", pair.PrivateKey)
	}
	cert := pair.Leaf
	if cert == nil {
		if cert, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("load CA: %w", err)
		}
	}
	if !cert.IsCA {
		return nil, errors.New("load CA: the certificate is not a CA")
	}
	if len(cert.URIs) != 1 || cert.URIs[0].Scheme != "spiffe" || checkTrustDomain(cert.URIs[0].Host) != nil ||
		(cert.URIs[0].Path != "" && cert.URIs[0].Path != "/") {
		return nil, errors.New("load CA: the CA certificate has no URI SAN spiffe://<trust domain>")
	}
	return &authority{
		trustDomain: cert.URIs[0].Host,
		cert:        cert,
		certPEM:     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		key:         key,
	}, nil
}

// issue signs a leaf for service in namespace, with a new key. The leaf
// does not outlive the CA.
func (a *authority) issue(service, namespace string, notBefore, notAfter time.Time) (*tls.Certificate, error) {
	id := ID{TrustDomain: a.trustDomain, Namespace: namespace, Service: service}
	if err := id.validate(); err != nil {
		return nil, err
	}
	if notAfter.After(a.cert.NotAfter) {
		notAfter = a.cert.NotAfter
	}
	return a.sign(&x509.Certificate{
		Subject:               pkix.Name{CommonName: service},
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              []string{service},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	})
}

// sign signs tmpl, with a new ECDSA P-256 key and a random serial, and
// returns it as a chain of one with Leaf set.
func (a *authority) sign(tmpl *x509.Certificate) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if tmpl.SerialNumber, err = randomSerial(); err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, key.Public(), a.key)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// randomSerial returns a random positive 128-bit serial number.
func randomSerial() (*big.Int, error) {
	for {
		n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
		if err != nil {
			return nil, err
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// encodeKey returns key as a PKCS #8 "PRIVATE KEY" PEM block.
func encodeKey(key any) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// writeLeaf writes leaf's chain and key as dir/<service>.pem and
// dir/<service>-key.pem, key first, each atomically.
func writeLeaf(dir, service string, leaf *tls.Certificate) (certFile, keyFile string, err error) {
	if err := checkSegment(service); err != nil {
		return "", "", fmt.Errorf("identity: write leaf: service: %w", err)
	}
	keyPEM, err := encodeKey(leaf.PrivateKey)
	if err != nil {
		return "", "", fmt.Errorf("identity: write leaf %s: %w", service, err)
	}
	var certPEM []byte
	for _, der := range leaf.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	certFile, keyFile = filepath.Join(dir, service+".pem"), filepath.Join(dir, service+"-key.pem")
	if err := writeAtomic(keyFile, keyPEM, 0o600); err != nil {
		return "", "", fmt.Errorf("identity: write leaf %s: %w", service, err)
	}
	if err := writeAtomic(certFile, certPEM, 0o644); err != nil {
		return "", "", fmt.Errorf("identity: write leaf %s: %w", service, err)
	}
	return certFile, keyFile, nil
}

// writeNew creates path with data and mode perm; it fails if path exists.
func writeNew(path string, data []byte, perm fs.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// writeAtomic replaces path with data and mode perm: readers see the old
// content or the new one, never part of it.
func writeAtomic(path string, data []byte, perm fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
