package consul

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"maps"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery/consul/consultest"
	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/policy/identity"
)

// The tests in this file run against a real Consul agent.

// runCAWith starts a CASource for service and stops it when the test
// ends, checking that Run returns nil.
func runCAWith(t *testing.T, client *api.Client, service string, o CAOptions) *CASource {
	t.Helper()
	src := NewCASource(client, service, o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run(%s) = %v after cancel, want nil", service, err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run(%s) still running 5s after cancel", service)
		}
	})
	return src
}

// waitReady fails the test unless src is ready within d.
func waitReady(t *testing.T, src identity.Source, d time.Duration) *identity.Bundle {
	t.Helper()
	select {
	case <-src.Ready():
	case <-time.After(d):
		t.Fatalf("source not ready after %v", d)
	}
	b := src.Current()
	if b == nil {
		t.Fatal("Current() = nil after Ready")
	}
	return b
}

// mtlsServer serves h over mutual TLS with identity.ServerConfig(src) on
// a loopback port, until the test ends, and returns its address.
func mtlsServer(t *testing.T, src identity.Source, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         identity.ServerConfig(src),
		ReadHeaderTimeout: 5 * time.Second,
		// Refused handshakes are expected in these tests.
		ErrorLog: stdlog.New(io.Discard, "", 0),
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.ServeTLS(ln, "", "")
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-served
	})
	return ln.Addr().String()
}

// mtlsClient returns a client that calls service over mutual TLS with
// identity.ClientConfig(src, service, namespace). Without keepAlive every
// request makes a new connection, and so a new handshake.
func mtlsClient(t *testing.T, src identity.Source, service, namespace string, keepAlive bool) *http.Client {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig:     identity.ClientConfig(src, service, namespace),
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: 16,
		TLSHandshakeTimeout: 5 * time.Second,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// whoami answers with the SPIFFE ID of the caller.
var whoami = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	id, err := identity.PeerID(*r.TLS)
	if err != nil {
		http.Error(w, err.Error(), http.StatusForbidden)
		return
	}
	io.WriteString(w, id.String())
})

func get(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return string(body), nil
}

func TestCASource(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := agent.Client()
	log, logs := newLogger(t)
	web := runCAWith(t, client, "web", CAOptions{WaitTime: 10 * time.Second, Logger: log})
	cart := runCAWith(t, client, "cart", CAOptions{WaitTime: 10 * time.Second})

	start := time.Now()
	b := waitReady(t, web, 10*time.Second)
	t.Logf("ready after %v", time.Since(start))

	roots, _, err := client.Agent().ConnectCARoots(nil)
	if err != nil {
		t.Fatal(err)
	}
	// Consul's form: spiffe://<cluster-id>.consul/ns/default/dc/dc1/svc/web.
	want := identity.ID{TrustDomain: roots.TrustDomain, Namespace: "default", Datacenter: "dc1", Service: "web"}
	if b.ID != want {
		t.Errorf("bundle ID = %+v, want %+v", b.ID, want)
	}
	if !strings.HasSuffix(b.ID.TrustDomain, ".consul") {
		t.Errorf("trust domain %q, want Consul's <cluster id>.consul", b.ID.TrustDomain)
	}
	uri := b.Leaf.Leaf.URIs[0].String()
	if id, err := identity.ParseID(uri); err != nil || id != want {
		t.Errorf("ParseID(%s) = %+v, %v; want %+v", uri, id, err, want)
	}
	if id, err := identity.IDFromCert(b.Leaf.Leaf); err != nil || id != want {
		t.Errorf("IDFromCert = %+v, %v; want %+v", id, err, want)
	}
	if _, err := b.Leaf.Leaf.Verify(x509.VerifyOptions{Roots: b.Roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("leaf does not verify against the bundle's roots: %v", err)
	}
	if !b.NotAfter.Equal(b.Leaf.Leaf.NotAfter) || time.Until(b.NotAfter) < time.Hour {
		t.Errorf("NotAfter = %v, leaf's = %v", b.NotAfter, b.Leaf.Leaf.NotAfter)
	}
	if n := logs.count("consul CA certificate ready"); n != 1 {
		t.Errorf("logged %d times that the certificate is ready, want 1", n)
	}

	// web calls cart over mTLS; cart sees web's identity.
	waitReady(t, cart, 10*time.Second)
	addr := mtlsServer(t, cart, whoami)
	got, err := get(mtlsClient(t, web, "cart", "default", true), "https://"+addr+"/")
	if err != nil {
		t.Fatalf("web -> cart: %v", err)
	}
	if got != want.String() {
		t.Errorf("cart saw caller %s, want %s", got, want)
	}
	// A client that expects another service refuses cart's certificate.
	_, err = get(mtlsClient(t, web, "billing", "", true), "https://"+addr+"/")
	if !errors.Is(err, identity.ErrIdentityMismatch) {
		t.Errorf("web -> cart expecting billing: err = %v, want ErrIdentityMismatch", err)
	}

	// Run may run once only.
	if err := web.Run(context.Background()); err == nil {
		t.Error("second Run succeeded")
	}
	if err := NewCASource(client, "", CAOptions{}).Run(context.Background()); err == nil {
		t.Error("Run with an empty service succeeded")
	}
}

// TestCASourceKeepsBundleWhileAgentIsDown stops the agent: the source keeps
// its bundle; after a restart (a dev agent comes back as a new cluster, with
// a new CA and trust domain) it picks up the new one.
func TestCASourceKeepsBundleWhileAgentIsDown(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	log, logs := newLogger(t)
	src := runCAWith(t, agent.Client(), "web", CAOptions{
		WaitTime: 10 * time.Second, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Logger: log,
	})
	before := waitReady(t, src, 10*time.Second)

	agent.Stop()
	meshtest.Eventually(t, 10*time.Second, "both watches to fail", func() error {
		if logs.count("consul query failed") < 2 {
			return errors.New("both watches have not failed yet")
		}
		return nil
	})
	if src.Current() != before {
		t.Fatal("bundle changed while the agent was down")
	}

	agent.Restart()
	meshtest.Eventually(t, 20*time.Second, "the bundle of the restarted agent", func() error {
		if b := src.Current(); b.ID.TrustDomain == before.ID.TrustDomain {
			return fmt.Errorf("still trust domain %s", b.ID.TrustDomain)
		}
		return nil
	})
	b := src.Current()
	if _, err := b.Leaf.Leaf.Verify(x509.VerifyOptions{Roots: b.Roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("new leaf does not verify against the new roots: %v", err)
	}
}

// TestCARotation rotates the CA through Consul's API (a new private key
// for the built-in provider) while web calls cart over mTLS, each request
// on a new connection: no request may fail, the new root must reach the
// bundles, and both leaves must be re-issued by it.
func TestCARotation(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := agent.Client()
	log, logs := newLogger(t)
	// The default WaitTime: with waits shorter than its 30s rotation
	// jitter, the agent draws the jitter again on each query (see
	// CAOptions.WaitTime) and the leaves may take minutes to rotate.
	web := runCAWith(t, client, "web", CAOptions{Logger: log.With("side", "web")})
	cart := runCAWith(t, client, "cart", CAOptions{Logger: log.With("side", "cart")})
	oldWeb, oldCart := waitReady(t, web, 10*time.Second), waitReady(t, cart, 10*time.Second)

	addr := mtlsServer(t, cart, whoami)
	c := mtlsClient(t, web, "cart", "default", false)
	if _, err := get(c, "https://"+addr+"/"); err != nil {
		t.Fatalf("before the rotation: %v", err)
	}

	// The load: a few workers, a new TLS handshake per request.
	var (
		ok, failed atomic.Int64
		errMu      sync.Mutex
		errs       []string
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(5 * time.Millisecond):
				}
				if _, err := get(c, "https://"+addr+"/"); err != nil {
					failed.Add(1)
					errMu.Lock()
					if len(errs) < 5 {
						errs = append(errs, err.Error())
					}
					errMu.Unlock()
					continue
				}
				ok.Add(1)
			}
		})
	}
	loadStart := time.Now()
	time.Sleep(300 * time.Millisecond)

	// Rotate: the same provider with a new private key, so a new root,
	// cross-signed by the old one.
	conf, _, err := client.Connect().CAGetConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	newConf := &api.CAConfig{Provider: "consul", Config: maps.Clone(conf.Config)}
	newConf.Config["PrivateKey"] = string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	rotated := time.Now()
	if _, err := client.Connect().CASetConfig(newConf, nil); err != nil {
		t.Fatalf("CASetConfig: %v", err)
	}
	roots, _, err := client.Connect().CARoots(nil)
	if err != nil {
		t.Fatal(err)
	}
	var newRoot *x509.Certificate
	for _, r := range roots.Roots {
		if r.ID == roots.ActiveRootID {
			blk, _ := pem.Decode([]byte(r.RootCertPEM))
			if newRoot, err = x509.ParseCertificate(blk.Bytes); err != nil {
				t.Fatal(err)
			}
		}
	}
	if newRoot == nil || len(roots.Roots) != 2 {
		t.Fatalf("after CASetConfig: %d roots, active %s", len(roots.Roots), roots.ActiveRootID)
	}
	if newRoot.PublicKey.(*ecdsa.PublicKey).Equal(oldCart.Leaf.Leaf.PublicKey) {
		t.Fatal("impossible: new root has the key of a leaf")
	}

	// The new root reaches both bundles (the roots watch: at once).
	trusts := func(b *identity.Bundle) bool {
		_, err := newRoot.Verify(x509.VerifyOptions{Roots: b.Roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err == nil
	}
	meshtest.Eventually(t, 10*time.Second, "the new root in both bundles", func() error {
		for name, src := range map[string]*CASource{"web": web, "cart": cart} {
			if !trusts(src.Current()) {
				return fmt.Errorf("%s does not trust the new root yet", name)
			}
		}
		return nil
	})
	t.Logf("new root in both bundles %v after CASetConfig", time.Since(rotated).Round(time.Millisecond))

	// The agent re-issues each leaf at a random time within 30s of seeing
	// the new root (its herd protection), so for a while one side has a
	// new leaf and the other an old one. The load runs through all of it.
	signedByNew := func(b *identity.Bundle) bool {
		return bytes.Equal(b.Leaf.Leaf.AuthorityKeyId, newRoot.SubjectKeyId)
	}
	for _, side := range []struct {
		name string
		src  *CASource
	}{{"web", web}, {"cart", cart}} {
		meshtest.Eventually(t, 40*time.Second, side.name+"'s leaf from the new root", func() error {
			if !signedByNew(side.src.Current()) {
				return fmt.Errorf("%s's leaf is not from the new root yet", side.name)
			}
			return nil
		})
		t.Logf("%s's new leaf in its bundle %v after CASetConfig", side.name, time.Since(rotated).Round(time.Millisecond))
	}
	if d := 3*time.Second - time.Since(loadStart); d > 0 {
		time.Sleep(d)
	}
	close(stop)
	wg.Wait()
	t.Logf("load: %d requests in %v, %d failed", ok.Load()+failed.Load(), time.Since(loadStart).Round(time.Millisecond), failed.Load())
	if failed.Load() != 0 || ok.Load() == 0 {
		t.Errorf("%d requests failed, %d succeeded during the rotation; first errors: %q", failed.Load(), ok.Load(), errs)
	}

	for name, pair := range map[string][2]*identity.Bundle{"web": {oldWeb, web.Current()}, "cart": {oldCart, cart.Current()}} {
		old, cur := pair[0], pair[1]
		if cur.ID != old.ID {
			t.Errorf("%s: identity changed from %s to %s", name, old.ID, cur.ID)
		}
		if len(cur.Leaf.Certificate) < 2 {
			t.Errorf("%s: new leaf has no intermediate (want the cross-signed root)", name)
		}
		// The new leaf still chains to the old root alone through the
		// cross-signed intermediate, for peers that have not seen the
		// new root yet.
		inter := x509.NewCertPool()
		for _, d := range cur.Leaf.Certificate[1:] {
			ic, err := x509.ParseCertificate(d)
			if err != nil {
				t.Fatal(err)
			}
			inter.AddCert(ic)
		}
		if _, err := cur.Leaf.Leaf.Verify(x509.VerifyOptions{Roots: old.Roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("%s: new leaf does not chain to the old roots: %v", name, err)
		}
	}
	for _, msg := range []string{"consul CA roots changed", "consul leaf certificate rotated"} {
		if n := logs.count(msg); n != 2 {
			t.Errorf("logged %q %d times, want 2 (web and cart)", msg, n)
		}
	}
}
