// Package identity gives a sidecar its SPIFFE workload identity and the mTLS
// configurations built on it.
//
// A [Source] publishes immutable [Bundle] snapshots (the leaf certificate the
// workload presents, its private key, the roots it trusts). [FileSource]
// reloads them from PEM files when they change on disk; [StaticSource] is set
// by hand, by tests or by a feeder such as Consul's CA. [ServerConfig] and
// [ClientConfig] return one *tls.Config each whose callbacks always read the
// latest bundle, so rotating the leaf or the roots takes effect for new
// handshakes without a restart (the model is Consul's connect package).
//
// [InitCA] and [IssueLeaf] are a development CA for `sidemesh ca`; [TestCA]
// is an in-memory CA for tests.
package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// ErrInvalidID is wrapped by every error ParseID returns.
var ErrInvalidID = errors.New("invalid SPIFFE ID")

// maxIDLen is the longest SPIFFE ID accepted, from the SPIFFE ID specification.
const maxIDLen = 2048

// ID is a workload identity, one of
//
//	spiffe://<trust-domain>/ns/<namespace>/svc/<service>
//	spiffe://<trust-domain>/ns/<namespace>/dc/<datacenter>/svc/<service>
//
// The second is Consul's form; Datacenter is empty for the first. IDs are
// comparable values: two IDs are the same identity exactly when they are ==.
type ID struct {
	TrustDomain string
	Namespace   string
	Datacenter  string
	Service     string
}

// ParseID parses a SPIFFE ID strictly. It accepts exactly the two forms
// documented on [ID] with the scheme "spiffe" in lower case, a lower-case
// trust domain of letters, digits, '.', '-' and '_', and path segments of
// letters, digits, '.', '-' and '_'. It refuses a query, a fragment, a port,
// userinfo, empty segments (including a trailing slash), "." and ".."
// segments, percent-encoding and anything longer than 2048 bytes. Every error
// wraps [ErrInvalidID] and names the reason.
func ParseID(uri string) (ID, error) {
	fail := func(format string, args ...any) (ID, error) {
		return ID{}, fmt.Errorf("identity: %w %q: %s", ErrInvalidID, uri, fmt.Sprintf(format, args...))
	}
	if len(uri) > maxIDLen {
		return fail("longer than %d bytes", maxIDLen)
	}
	rest, ok := strings.CutPrefix(uri, "spiffe://")
	if !ok {
		scheme, _, found := strings.Cut(uri, ":")
		if found && scheme != "spiffe" && strings.EqualFold(scheme, "spiffe") {
			return fail(`scheme must be "spiffe://" in lower case`)
		}
		return fail(`scheme must be "spiffe://"`)
	}
	if strings.ContainsRune(rest, '?') {
		return fail("must not have a query")
	}
	if strings.ContainsRune(rest, '#') {
		return fail("must not have a fragment")
	}
	td, path, hasPath := strings.Cut(rest, "/")
	if err := checkTrustDomain(td); err != nil {
		return fail("%s", err)
	}
	if !hasPath {
		return fail("missing path /ns/<namespace>/svc/<service>")
	}
	segs := strings.Split(path, "/")
	for _, seg := range segs {
		if err := checkSegment(seg); err != nil {
			return fail("%s", err)
		}
	}
	switch {
	case len(segs) == 4 && segs[0] == "ns" && segs[2] == "svc":
		return ID{TrustDomain: td, Namespace: segs[1], Service: segs[3]}, nil
	case len(segs) == 6 && segs[0] == "ns" && segs[2] == "dc" && segs[4] == "svc":
		return ID{TrustDomain: td, Namespace: segs[1], Datacenter: segs[3], Service: segs[5]}, nil
	}
	return fail("path must be /ns/<namespace>/svc/<service> or /ns/<namespace>/dc/<datacenter>/svc/<service>")
}

// checkTrustDomain reports why td is not a valid trust domain name.
func checkTrustDomain(td string) error {
	switch {
	case td == "":
		return errors.New("empty trust domain")
	case strings.ContainsRune(td, '@'):
		return errors.New("must not have userinfo")
	case strings.ContainsRune(td, ':'):
		return errors.New("trust domain must not have a port")
	case strings.ToLower(td) != td:
		return fmt.Errorf("trust domain %q must be lower case", td)
	}
	for _, r := range td {
		if !('a' <= r && r <= 'z' || '0' <= r && r <= '9' || r == '.' || r == '-' || r == '_') {
			return fmt.Errorf("invalid character %q in trust domain", r)
		}
	}
	return nil
}

// checkSegment reports why seg is not a valid path segment.
func checkSegment(seg string) error {
	switch seg {
	case "":
		return errors.New("empty path segment")
	case ".", "..":
		return fmt.Errorf("dot segment %q in path", seg)
	}
	for _, r := range seg {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '.' || r == '-' || r == '_') {
			return fmt.Errorf("invalid character %q in path segment %q", r, seg)
		}
	}
	return nil
}

// String returns the URI form of id, or "" for the zero ID. For an ID
// returned by ParseID it is the string that was parsed.
func (id ID) String() string {
	if id.IsZero() {
		return ""
	}
	return "spiffe://" + id.TrustDomain + id.path()
}

// path returns the path of the URI form of id.
func (id ID) path() string {
	if id.Datacenter != "" {
		return "/ns/" + id.Namespace + "/dc/" + id.Datacenter + "/svc/" + id.Service
	}
	return "/ns/" + id.Namespace + "/svc/" + id.Service
}

// URL returns the URI form of id as a new *url.URL (for a certificate's URI
// SAN, say), or nil for the zero ID.
func (id ID) URL() *url.URL {
	if id.IsZero() {
		return nil
	}
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: id.path()}
}

// IsZero reports whether id is the zero ID (no identity).
func (id ID) IsZero() bool { return id == ID{} }

// validate reports whether id would survive a round trip through ParseID.
func (id ID) validate() error {
	_, err := ParseID(id.String())
	return err
}

// IDFromCert returns the identity of an X.509-SVID. As the SPIFFE X.509-SVID
// specification requires, c must have exactly one URI SAN, and it must be a
// valid ID; a certificate with two URI SANs is refused even if only one of
// them is a SPIFFE ID. IDFromCert does not verify the certificate.
func IDFromCert(c *x509.Certificate) (ID, error) {
	if c == nil {
		return ID{}, errors.New("identity: no certificate")
	}
	if n := len(c.URIs); n != 1 {
		return ID{}, fmt.Errorf("identity: certificate %q (serial %x) must have exactly one URI SAN (a SPIFFE ID), has %d",
			c.Subject.CommonName, c.SerialNumber, n)
	}
	return ParseID(c.URIs[0].String())
}

// PeerID returns the identity of the peer of a completed TLS handshake.
//
// It reads the leaf of the first verified chain when crypto/tls verified the
// chain itself (the server side of [ServerConfig]); otherwise the first peer
// certificate, which is the verified leaf only when the config verified the
// chain in a callback, as [ClientConfig] does (InsecureSkipVerify plus
// VerifyConnection). Do not use PeerID on connections made with a config that
// skips verification without doing it itself.
func PeerID(cs tls.ConnectionState) (ID, error) {
	if !cs.HandshakeComplete {
		return ID{}, errors.New("identity: peer identity: handshake not complete")
	}
	switch {
	case len(cs.VerifiedChains) > 0 && len(cs.VerifiedChains[0]) > 0:
		return IDFromCert(cs.VerifiedChains[0][0])
	case len(cs.PeerCertificates) > 0:
		return IDFromCert(cs.PeerCertificates[0])
	}
	return ID{}, errors.New("identity: peer identity: peer sent no certificate")
}
