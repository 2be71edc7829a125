package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// ErrNotReady fails handshakes while the Source has no bundle yet; wait
// for Source.Ready and try again.
var ErrNotReady = errors.New("identity: no certificate loaded yet (source not ready)")

// ErrIdentityMismatch is wrapped by the error of a handshake refused
// because the peer's verified SPIFFE ID is not acceptable: another trust
// domain, or (on the client side) another service or namespace than the one
// dialled.
var ErrIdentityMismatch = errors.New("peer identity mismatch")

// serverProtos are the ALPN protocols ServerConfig offers.
var serverProtos = []string{"h2", "http/1.1"}

// ServerConfig returns the inbound mTLS configuration of a workload whose
// bundles src provides. Each handshake uses the bundle current when the
// ClientHello arrives, through GetConfigForClient, so a rotated leaf or
// rotated roots take effect for new handshakes without a restart:
//
//   - TLS 1.3 at least; ALPN "h2" and "http/1.1".
//   - The server presents the bundle's leaf (GetCertificate reads
//     src.Current().Leaf too, for callers that drop GetConfigForClient).
//   - A client certificate is required and verified against the bundle's
//     roots at the current time, for client authentication: an unknown CA,
//     an expired or not yet valid certificate are refused by crypto/tls.
//   - The client certificate must carry exactly one SPIFFE ID, of the
//     server's own trust domain (ErrIdentityMismatch otherwise). Which
//     services may call is the authorizer's business, not this config's;
//     PeerID gives it the caller's identity.
//   - Until src is ready, handshakes fail with ErrNotReady.
//
// Resumed sessions are re-checked: crypto/tls refuses to resume one whose
// chain no longer ends in the current roots or whose leaf expired, and the
// identity check runs again. The config and its callbacks are safe for
// concurrent use by any number of listeners; Clone it to change fields.
func ServerConfig(src Source) *tls.Config {
	s := &serverConfigs{src: src}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: serverProtos,
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			b := src.Current()
			if b == nil {
				return nil, ErrNotReady
			}
			return b.Leaf, nil
		},
		GetConfigForClient: s.forClient,
		// Used only without GetConfigForClient: a full verification
		// against the current roots, since crypto/tls verified nothing.
		VerifyConnection: func(cs tls.ConnectionState) error {
			b := src.Current()
			if b == nil {
				return ErrNotReady
			}
			if len(cs.PeerCertificates) == 0 {
				return errors.New("identity: client sent no certificate")
			}
			if _, err := verifyChain(cs.PeerCertificates[0], cs.PeerCertificates[1:], b.Roots, x509.ExtKeyUsageClientAuth, time.Now()); err != nil {
				return fmt.Errorf("identity: client certificate: %w", err)
			}
			return checkClient(b, cs)
		},
	}
}

// serverConfigs caches the per-handshake config of the current bundle.
type serverConfigs struct {
	src   Source
	cache atomic.Pointer[serverConfig]
}

// serverConfig is the config served for the handshakes that find b current.
type serverConfig struct {
	b   *Bundle
	cfg *tls.Config
}

// forClient is the GetConfigForClient callback of ServerConfig.
func (s *serverConfigs) forClient(*tls.ClientHelloInfo) (*tls.Config, error) {
	b := s.src.Current()
	if b == nil {
		return nil, ErrNotReady
	}
	if c := s.cache.Load(); c != nil && c.b == b {
		return c.cfg, nil
	}
	// Two handshakes may build the config of a new bundle at once; both
	// configs are right, and the last one stored stays.
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		NextProtos:   serverProtos,
		Certificates: []tls.Certificate{*b.Leaf},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    b.Roots,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return checkClient(b, cs)
		},
	}
	s.cache.Store(&serverConfig{b: b, cfg: cfg})
	return cfg, nil
}

// checkClient checks the identity of a client whose chain was verified.
func checkClient(b *Bundle, cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("identity: client sent no certificate")
	}
	id, err := IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return fmt.Errorf("identity: client certificate: %w", err)
	}
	if id.TrustDomain != b.ID.TrustDomain {
		return fmt.Errorf("identity: client %s: %w: trust domain %q, want %q (ours, as %s)",
			id, ErrIdentityMismatch, id.TrustDomain, b.ID.TrustDomain, b.ID)
	}
	return nil
}

// ClientConfig returns the outbound mTLS configuration toward the upstream
// service want, for a workload whose bundles src provides:
//
//   - TLS 1.3 at least. NextProtos is left empty: http.Transport adds "h2"
//     and "http/1.1" itself when HTTP/2 is enabled, and offering "h2" to a
//     server on behalf of a transport that cannot speak it breaks the
//     connection.
//   - The client presents src.Current().Leaf when the server asks.
//   - Host names mean nothing in the mesh, so InsecureSkipVerify turns off
//     crypto/tls's own check and VerifyConnection does a full x509
//     verification of the server's chain, at the current time, against the
//     roots current at that moment (resumed sessions included).
//   - The server's SPIFFE ID must be of our trust domain, its Service must
//     be want and, unless wantNamespace is "", its Namespace must be
//     wantNamespace (any Datacenter). A valid certificate of another
//     service is refused with an error wrapping ErrIdentityMismatch that
//     names both identities.
//   - Until src is ready, handshakes fail with ErrNotReady.
//
// Each call returns a new config, safe for concurrent use once its fields
// are no longer changed (http.Transport changes NextProtos on first use).
func ClientConfig(src Source, want string, wantNamespace string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			b := src.Current()
			if b == nil {
				return nil, ErrNotReady
			}
			return b.Leaf, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			b := src.Current()
			if b == nil {
				return ErrNotReady
			}
			if len(cs.PeerCertificates) == 0 {
				return errors.New("identity: server sent no certificate")
			}
			if _, err := verifyChain(cs.PeerCertificates[0], cs.PeerCertificates[1:], b.Roots, x509.ExtKeyUsageServerAuth, time.Now()); err != nil {
				return fmt.Errorf("identity: server certificate for %q: %w", want, err)
			}
			id, err := IDFromCert(cs.PeerCertificates[0])
			if err != nil {
				return fmt.Errorf("identity: server certificate for %q: %w", want, err)
			}
			if id.TrustDomain != b.ID.TrustDomain || id.Service != want || wantNamespace != "" && id.Namespace != wantNamespace {
				return fmt.Errorf("identity: server is %s: %w: want %s", id, ErrIdentityMismatch, wanted(b.ID.TrustDomain, want, wantNamespace))
			}
			return nil
		},
	}
}

// wanted describes the identity ClientConfig accepts.
func wanted(trustDomain, service, namespace string) string {
	if namespace == "" {
		return fmt.Sprintf("spiffe://%s/ns/<any>/svc/%s", trustDomain, service)
	}
	return ID{TrustDomain: trustDomain, Namespace: namespace, Service: service}.String()
}
