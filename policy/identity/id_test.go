package identity

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseID(t *testing.T) {
	good := []struct {
		in   string
		want ID
	}{
		{"spiffe://example.org/ns/default/svc/web", ID{TrustDomain: "example.org", Namespace: "default", Service: "web"}},
		{"spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web",
			ID{TrustDomain: "11111111-2222-3333-4444-555555555555.consul", Namespace: "default", Datacenter: "dc1", Service: "web"}},
		{"spiffe://td_1/ns/Prod.EU-1/svc/my_svc.v2", ID{TrustDomain: "td_1", Namespace: "Prod.EU-1", Service: "my_svc.v2"}},
	}
	for _, tc := range good {
		got, err := ParseID(tc.in)
		if err != nil {
			t.Errorf("ParseID(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseID(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
		if s := got.String(); s != tc.in {
			t.Errorf("ParseID(%q).String() = %q", tc.in, s)
		}
		if u := got.URL().String(); u != tc.in {
			t.Errorf("ParseID(%q).URL() = %q", tc.in, u)
		}
	}

	bad := []struct {
		name, in, reason string
	}{
		{"http scheme", "http://example.org/ns/default/svc/web", `scheme must be "spiffe://"`},
		{"upper-case scheme", "SPIFFE://example.org/ns/default/svc/web", "lower case"},
		{"no scheme", "example.org/ns/default/svc/web", "scheme"},
		{"upper-case trust domain", "spiffe://Example.org/ns/default/svc/web", "must be lower case"},
		{"empty trust domain", "spiffe:///ns/default/svc/web", "empty trust domain"},
		{"no path", "spiffe://example.org", "missing path"},
		{"missing svc", "spiffe://example.org/ns/default", "path must be"},
		{"svc without name", "spiffe://example.org/ns/default/svc", "path must be"},
		{"extra segments", "spiffe://example.org/ns/default/svc/web/extra", "path must be"},
		{"wrong keyword", "spiffe://example.org/namespace/default/svc/web", "path must be"},
		{"dc in the wrong place", "spiffe://example.org/dc/dc1/ns/default/svc/web", "path must be"},
		{"query", "spiffe://example.org/ns/default/svc/web?x=1", "query"},
		{"fragment", "spiffe://example.org/ns/default/svc/web#frag", "fragment"},
		{"port", "spiffe://example.org:8443/ns/default/svc/web", "port"},
		{"userinfo", "spiffe://user@example.org/ns/default/svc/web", "userinfo"},
		{"empty segment", "spiffe://example.org/ns//svc/web", "empty path segment"},
		{"trailing slash", "spiffe://example.org/ns/default/svc/web/", "empty path segment"},
		{"dot-dot segment", "spiffe://example.org/ns/../svc/web", "dot segment"},
		{"dot segment", "spiffe://example.org/ns/./svc/web", "dot segment"},
		{"percent-encoding", "spiffe://example.org/ns/de%66ault/svc/web", "invalid character"},
		{"space", "spiffe://example.org/ns/default/svc/w eb", "invalid character"},
		{"bad trust domain character", "spiffe://exa*mple.org/ns/default/svc/web", "invalid character"},
		{"too long", "spiffe://example.org/ns/default/svc/" + strings.Repeat("a", maxIDLen), "longer than"},
		{"empty", "", "scheme"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			id, err := ParseID(tc.in)
			if err == nil {
				t.Fatalf("ParseID(%q) = %+v, want an error", tc.in, id)
			}
			if !errors.Is(err, ErrInvalidID) {
				t.Errorf("error %v does not wrap ErrInvalidID", err)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("error %q does not mention %q", err, tc.reason)
			}
		})
	}
}

func TestZeroID(t *testing.T) {
	var id ID
	if !id.IsZero() || id.String() != "" || id.URL() != nil {
		t.Errorf("zero ID: IsZero %v, String %q, URL %v", id.IsZero(), id.String(), id.URL())
	}
	if (ID{Service: "web"}).IsZero() {
		t.Error("non-zero ID reported zero")
	}
}

func FuzzParseID(f *testing.F) {
	for _, s := range []string{
		"spiffe://example.org/ns/default/svc/web",
		"spiffe://td.consul/ns/default/dc/dc1/svc/web",
		"spiffe://example.org/ns/../svc/web",
		"spiffe://Example.org:80/ns/a/svc/b?q#f",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Fatalf("ParseID(%q).String() = %q", s, id.String())
		}
		if id.URL().String() != s {
			t.Fatalf("ParseID(%q).URL() = %q", s, id.URL())
		}
	})
}

func TestIDFromCert(t *testing.T) {
	ca := newCA(t, "example.org")
	tests := []struct {
		name   string
		uris   []string
		want   string // ID, or "" for an error
		reason string
	}{
		{"one SPIFFE ID", []string{"spiffe://example.org/ns/default/svc/web"}, "spiffe://example.org/ns/default/svc/web", ""},
		{"no URI", nil, "", "has 0"},
		{"two URIs", []string{"spiffe://example.org/ns/default/svc/web", "spiffe://example.org/ns/default/svc/db"}, "", "has 2"},
		{"SPIFFE ID and another URI", []string{"spiffe://example.org/ns/default/svc/web", "https://example.org/"}, "", "has 2"},
		{"not a SPIFFE ID", []string{"https://example.org/ns/default/svc/web"}, "", "scheme"},
		{"bad SPIFFE ID", []string{"spiffe://example.org/web"}, "", "path must be"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := withURIs(t, ca, tc.uris...)
			id, err := IDFromCert(c.Leaf)
			if tc.want != "" {
				if err != nil || id.String() != tc.want {
					t.Fatalf("IDFromCert = %v, %v; want %s", id, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("IDFromCert = %v, %v; want an error mentioning %q", id, err, tc.reason)
			}
		})
	}
	if _, err := IDFromCert(nil); err == nil {
		t.Error("IDFromCert(nil) succeeded")
	}
}

func TestNewBundle(t *testing.T) {
	ca, other := newCA(t, "example.org"), newCA(t, "example.org")
	now := time.Now()
	good := valid(t, ca, "web")
	b, err := NewBundle(good, ca.Pool())
	if err != nil {
		t.Fatal(err)
	}
	if b.ID.String() != "spiffe://example.org/ns/default/svc/web" || !b.NotAfter.Equal(good.Leaf.NotAfter) || b.Leaf.Leaf == nil {
		t.Errorf("bundle = %+v", b)
	}
	unparsed := *good
	unparsed.Leaf = nil
	if b, err := NewBundle(&unparsed, ca.Pool()); err != nil || b.Leaf.Leaf == nil || unparsed.Leaf != nil {
		t.Errorf("NewBundle of an unparsed leaf = %v, %v (caller's leaf modified: %v)", b, err, unparsed.Leaf != nil)
	}
	mismatched := *good
	mismatched.PrivateKey = valid(t, ca, "web").PrivateKey
	for name, tc := range map[string]struct {
		leaf   *tls.Certificate
		roots  *x509.CertPool
		reason string
	}{
		"expired":        {issue(t, ca, "web", now.Add(-2*time.Hour), now.Add(-time.Hour)), ca.Pool(), "expired"},
		"not yet valid":  {issue(t, ca, "web", now.Add(time.Hour), now.Add(2*time.Hour)), ca.Pool(), "not yet valid"},
		"unknown CA":     {good, other.Pool(), "unknown authority"},
		"key mismatch":   {&mismatched, ca.Pool(), "does not match"},
		"two URIs":       {withURIs(t, ca, "spiffe://example.org/ns/a/svc/b", "spiffe://example.org/ns/a/svc/c"), ca.Pool(), "exactly one URI SAN"},
		"no roots":       {good, nil, "no roots"},
		"no certificate": {&tls.Certificate{}, ca.Pool(), "no leaf"},
	} {
		if _, err := NewBundle(tc.leaf, tc.roots); err == nil || !strings.Contains(err.Error(), tc.reason) {
			t.Errorf("%s: NewBundle error = %v, want one mentioning %q", name, err, tc.reason)
		}
	}
}
