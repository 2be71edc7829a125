package identity

import (
	"crypto/tls"
	"encoding/pem"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// writeFile writes data to path in place, as a careless writer would.
func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// certPEM returns leaf's chain in PEM.
func certPEM(leaf *tls.Certificate) []byte {
	var out []byte
	for _, der := range leaf.Certificate {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return out
}

// keyPEM returns leaf's private key in PEM.
func keyPEM(t testing.TB, leaf *tls.Certificate) []byte {
	t.Helper()
	b, err := encodeKey(leaf.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// serial returns the serial of the current leaf of s.
func serial(s Source) *big.Int { return s.Current().Leaf.Leaf.SerialNumber }

// fileSetup writes a CA file and a "web" leaf in a new directory.
func fileSetup(t *testing.T, ca *TestCA) (certFile, keyFile, caFile string) {
	t.Helper()
	dir := t.TempDir()
	caFile = filepath.Join(dir, "ca.pem")
	if err := ca.WriteCA(caFile); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := ca.WriteLeaf(dir, "web", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, caFile
}

// TestFileSourceHalfWritten walks a FileSource through the states a
// rotation leaves on disk, polling by hand.
func TestFileSourceHalfWritten(t *testing.T) {
	ca, newCA := newCA(t, "example.org"), newCA(t, "example.org")
	certFile, keyFile, caFile := fileSetup(t, ca)
	logger, logs := testLogger()
	s, err := NewFileSource(certFile, keyFile, caFile, FileOptions{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Ready():
	default:
		t.Fatal("not ready after NewFileSource")
	}
	if s.Current().ID.String() != "spiffe://example.org/ns/default/svc/web" {
		t.Fatalf("ID = %v", s.Current().ID)
	}
	if logs.count("level=INFO", "loaded certificates") != 1 {
		t.Errorf("first load not logged:\n%s", logs)
	}
	polls := func() {
		for range 3 {
			s.poll()
		}
	}
	installed := serial(s)
	keep := func(step string) {
		t.Helper()
		if got := serial(s); got.Cmp(installed) != 0 {
			t.Fatalf("%s: serial %x installed, want the old %x kept", step, got, installed)
		}
	}
	install := func(step string, leaf *tls.Certificate) {
		t.Helper()
		if got := serial(s); got.Cmp(leaf.Leaf.SerialNumber) != 0 {
			t.Fatalf("%s: serial %x, want the new %x\n%s", step, got, leaf.Leaf.SerialNumber, logs)
		}
		installed = leaf.Leaf.SerialNumber
	}

	// A new certificate whose key is not written yet.
	leaf := valid(t, ca, "web")
	writeFile(t, certFile, certPEM(leaf))
	polls()
	keep("certificate written, key not yet")
	if n := logs.count("level=WARN", "private key does not match public key"); n != 1 {
		t.Errorf("key mismatch logged %d times at warn, want once:\n%s", n, logs)
	}
	writeFile(t, keyFile, keyPEM(t, leaf))
	polls()
	install("key written", leaf)
	if n := logs.count("level=INFO", "reloaded certificates", "serial="+leaf.Leaf.SerialNumber.Text(16)); n != 1 {
		t.Errorf("reload logged %d times, want once:\n%s", n, logs)
	}

	// The key first this time, half a certificate after it.
	leaf = valid(t, ca, "web")
	writeFile(t, keyFile, keyPEM(t, leaf))
	full := certPEM(leaf)
	writeFile(t, certFile, full[:len(full)/2])
	polls()
	keep("half a certificate")
	writeFile(t, certFile, full)
	polls()
	install("whole certificate", leaf)

	// Expired and not yet valid leaves are refused, logged once at error.
	now := time.Now()
	for _, tc := range []struct {
		name   string
		leaf   *tls.Certificate
		reason string
	}{
		{"expired", issue(t, ca, "web", now.Add(-2*time.Hour), now.Add(-time.Hour)), "expired at"},
		{"not yet valid", issue(t, ca, "web", now.Add(time.Hour), now.Add(2*time.Hour)), "not yet valid until"},
	} {
		writeFile(t, keyFile, keyPEM(t, tc.leaf))
		writeFile(t, certFile, certPEM(tc.leaf))
		polls()
		keep(tc.name + " leaf on disk")
		if n := logs.count("level=ERROR", "refusing the certificate on disk", tc.reason); n != 1 {
			t.Errorf("%s leaf logged %d times at error, want once:\n%s", tc.name, n, logs)
		}
	}

	// Leaves from a new CA before the CA file lists it, then a partly
	// written CA file, then the whole of it.
	leaf = valid(t, newCA, "web")
	writeFile(t, keyFile, keyPEM(t, leaf))
	writeFile(t, certFile, certPEM(leaf))
	polls()
	keep("leaf from a CA not trusted yet")
	if n := logs.count("level=WARN", "not usable", "unknown authority"); n != 1 {
		t.Errorf("unknown CA logged %d times, want once:\n%s", n, logs)
	}
	both := append(ca.CertPEM(), newCA.CertPEM()...)
	writeFile(t, caFile, both[:len(both)-100])
	polls()
	keep("partly written CA file")
	if n := logs.count("level=WARN", "CA file: data that is not PEM"); n != 1 {
		t.Errorf("partial CA file logged %d times, want once:\n%s", n, logs)
	}
	writeFile(t, caFile, both)
	polls()
	install("CA file with both CAs", leaf)
	if !s.Current().Roots.Equal(pool(ca, newCA)) {
		t.Error("roots are not both CAs")
	}

	// A file that disappears for a while (a rename dance).
	if err := os.Rename(keyFile, keyFile+".old"); err != nil {
		t.Fatal(err)
	}
	polls()
	keep("key file missing")
	if n := logs.count("level=WARN", "cannot read", "no such file"); n != 1 {
		t.Errorf("missing file logged %d times, want once:\n%s", n, logs)
	}
	if err := os.Rename(keyFile+".old", keyFile); err != nil {
		t.Fatal(err)
	}
	polls()
	keep("key file back")

	// Only the new CA: the current leaf still chains, nothing else changes.
	writeFile(t, caFile, newCA.CertPEM())
	polls()
	if !s.Current().Roots.Equal(newCA.Pool()) {
		t.Error("old CA not dropped")
	}
	if serial(s).Cmp(leaf.Leaf.SerialNumber) != 0 {
		t.Error("leaf changed")
	}
	if n := logs.count("level=ERROR"); n != 2 {
		t.Errorf("%d lines at error, want 2 (expired and not yet valid):\n%s", n, logs)
	}
}

// TestFileSourceStat: files whose mtime is old enough are not read again
// until stat shows a change.
func TestFileSourceStat(t *testing.T) {
	ca := newCA(t, "example.org")
	certFile, keyFile, caFile := fileSetup(t, ca)
	old := time.Now().Add(-time.Hour)
	for _, f := range []string{certFile, keyFile, caFile} {
		if err := os.Chtimes(f, old, old); err != nil {
			t.Fatal(err)
		}
	}
	s, err := NewFileSource(certFile, keyFile, caFile, FileOptions{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if !s.unchanged() {
		t.Fatal("files with an old mtime not recognised as unchanged")
	}
	leaf := valid(t, ca, "web")
	writeFile(t, keyFile, keyPEM(t, leaf))
	writeFile(t, certFile, certPEM(leaf))
	if s.unchanged() {
		t.Fatal("rewritten files recognised as unchanged")
	}
	s.poll()
	if serial(s).Cmp(leaf.Leaf.SerialNumber) != 0 {
		t.Fatal("rewritten leaf not installed")
	}
	if s.unchanged() {
		t.Error("files written just now must be hashed again on the next poll")
	}
}

// TestFileSourceClock: validity follows FileOptions.Now, and the expiry of
// the installed leaf is logged once.
func TestFileSourceClock(t *testing.T) {
	ca := newCA(t, "example.org")
	certFile, keyFile, caFile := fileSetup(t, ca)
	var offset atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }

	// A leaf not valid yet by the real clock is loaded by a clock ahead.
	real := time.Now()
	future := issue(t, ca, "web", real.Add(time.Hour), real.Add(3*time.Hour))
	writeFile(t, keyFile, keyPEM(t, future))
	writeFile(t, certFile, certPEM(future))
	if _, err := NewFileSource(certFile, keyFile, caFile, FileOptions{}); err == nil || !strings.Contains(err.Error(), "not yet valid") {
		t.Fatalf("NewFileSource of a future leaf: %v", err)
	}
	offset.Store(int64(2 * time.Hour))
	logger, logs := testLogger()
	s, err := NewFileSource(certFile, keyFile, caFile, FileOptions{Now: now, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	offset.Store(int64(4 * time.Hour))
	for range 3 {
		s.poll()
	}
	if n := logs.count("level=ERROR", "has expired and no valid replacement"); n != 1 {
		t.Errorf("expiry logged %d times, want once:\n%s", n, logs)
	}
	if s.Current() == nil {
		t.Error("expired bundle withdrawn")
	}
}

func TestNewFileSourceErrors(t *testing.T) {
	ca, other := newCA(t, "example.org"), newCA(t, "example.org")
	certFile, keyFile, caFile := fileSetup(t, ca)
	dir := filepath.Dir(certFile)
	otherCA := filepath.Join(dir, "other.pem")
	if err := other.WriteCA(otherCA); err != nil {
		t.Fatal(err)
	}
	dbCert, dbKey, err := ca.WriteLeaf(dir, "db", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.pem")
	writeFile(t, garbage, []byte("not PEM"))
	for _, tc := range []struct {
		name                string
		cert, key, ca, want string
	}{
		{"missing certificate", filepath.Join(dir, "nope.pem"), keyFile, caFile, "no such file"},
		{"key of another leaf", certFile, dbKey, caFile, "private key does not match"},
		{"unknown CA", dbCert, dbKey, otherCA, "unknown authority"},
		{"CA file not PEM", certFile, keyFile, garbage, "not PEM"},
		{"no CA file", certFile, keyFile, "", "all required"},
	} {
		if _, err := NewFileSource(tc.cert, tc.key, tc.ca, FileOptions{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: NewFileSource error %v, want one mentioning %q", tc.name, err, tc.want)
		}
	}
}

func TestStaticSource(t *testing.T) {
	s := NewStaticSource()
	if s.Current() != nil {
		t.Fatal("Current before Set is not nil")
	}
	select {
	case <-s.Ready():
		t.Fatal("ready before Set")
	default:
	}
	b, err := newCA(t, "example.org").Bundle("web", "")
	if err != nil {
		t.Fatal(err)
	}
	s.Set(b)
	s.Set(b) // a second Set does not close Ready again
	select {
	case <-s.Ready():
	default:
		t.Fatal("not ready after Set")
	}
	if s.Current() != b {
		t.Error("Current is not the bundle Set")
	}
	defer func() {
		if recover() == nil {
			t.Error("Set(nil) did not panic")
		}
	}()
	s.Set(nil)
}
