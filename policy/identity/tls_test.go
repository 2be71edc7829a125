package identity

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// outcome is what each end of one handshake saw.
type outcome struct {
	serverErr, clientErr     error
	serverState, clientState tls.ConnectionState
}

// handshake runs one TLS connection over 127.0.0.1 between server and
// client configs. After its handshake the server writes a byte, which the
// client reads: in TLS 1.3 the client's handshake completes before the
// server has checked the client's certificate, so a refusal by the server
// shows up on that read.
func handshake(t *testing.T, server, client *tls.Config) outcome {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return handshakeOn(t, ln, server, client)
}

func handshakeOn(t *testing.T, ln net.Listener, server, client *tls.Config) outcome {
	t.Helper()
	var o outcome
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			o.serverErr = err
			return
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Server(c, server)
		defer tc.Close()
		if o.serverErr = tc.Handshake(); o.serverErr != nil {
			return
		}
		o.serverState = tc.ConnectionState()
		if _, err := tc.Write([]byte{'k'}); err != nil {
			o.serverErr = err
			return
		}
		io.Copy(io.Discard, tc) // until the client closes
	}()
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(c, client)
	o.clientErr = tc.Handshake()
	if o.clientErr == nil {
		var b [1]byte
		if _, o.clientErr = io.ReadFull(tc, b[:]); o.clientErr == nil {
			o.clientState = tc.ConnectionState()
		}
	}
	tc.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not finish")
	}
	return o
}

func TestHandshake(t *testing.T) {
	ca := newCA(t, "example.org")
	unknown := newCA(t, "example.org") // same trust domain, not trusted
	foreign := newCA(t, "other.org")   // another trust domain, trusted (federation)
	now := time.Now()

	catalog := rawBundle(valid(t, ca, "catalog"), ca, foreign)
	web := rawBundle(valid(t, ca, "web"), ca, foreign)
	notReady := NewStaticSource()

	// rawClient presents leaf and checks nothing, for the refusals that
	// only the server can make (ClientConfig would refuse first).
	rawClient := func(leaf *tls.Certificate) *tls.Config {
		return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*leaf}}
	}
	tests := []struct {
		name         string
		server       *Bundle
		serverSrc    Source // instead of server
		client       *Bundle
		clientCfg    *tls.Config // instead of ClientConfig of client
		want, wantNS string
		serverReason string // the server's error mentions it; "" for none
		clientReason string
		mismatch     bool // the refusal wraps ErrIdentityMismatch
	}{
		{name: "valid", server: catalog, client: web, want: "catalog"},
		{name: "valid in the wanted namespace", server: catalog, client: web, want: "catalog", wantNS: "default"},
		{name: "wrong service", server: catalog, client: web, want: "cart",
			clientReason: "server is spiffe://example.org/ns/default/svc/catalog: peer identity mismatch: want spiffe://example.org/ns/<any>/svc/cart", mismatch: true},
		{name: "wrong namespace", server: catalog, client: web, want: "catalog", wantNS: "prod",
			clientReason: "want spiffe://example.org/ns/prod/svc/catalog", mismatch: true},
		{name: "server from an unknown CA", server: rawBundle(valid(t, unknown, "catalog"), ca), client: web, want: "catalog",
			clientReason: "certificate signed by unknown authority"},
		{name: "client from an unknown CA", server: catalog, client: rawBundle(valid(t, unknown, "web"), ca, unknown), want: "catalog",
			serverReason: "certificate signed by unknown authority"},
		{name: "expired client certificate", server: catalog,
			client: rawBundle(issue(t, ca, "web", now.Add(-2*time.Hour), now.Add(-time.Hour)), ca), want: "catalog",
			serverReason: "certificate has expired or is not yet valid: current time"},
		{name: "not yet valid client certificate", server: catalog,
			client: rawBundle(issue(t, ca, "web", now.Add(time.Hour), now.Add(2*time.Hour)), ca), want: "catalog",
			serverReason: "is before"},
		{name: "expired server certificate", server: rawBundle(issue(t, ca, "catalog", now.Add(-2*time.Hour), now.Add(-time.Hour)), ca),
			client: web, want: "catalog", clientReason: "is after"},
		{name: "no client certificate", server: catalog,
			clientCfg:    &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13},
			serverReason: "client didn't provide a certificate"},
		{name: "client certificate with two URI SANs", server: catalog,
			clientCfg:    rawClient(withURIs(t, ca, "spiffe://example.org/ns/default/svc/web", "spiffe://example.org/ns/default/svc/admin")),
			serverReason: "must have exactly one URI SAN (a SPIFFE ID), has 2"},
		{name: "client certificate without URI SAN", server: catalog, clientCfg: rawClient(withURIs(t, ca)), serverReason: "has 0"},
		{name: "server certificate with two URI SANs",
			server: rawBundle(withURIs(t, ca, "spiffe://example.org/ns/default/svc/catalog", "spiffe://example.org/ns/default/svc/cart"), ca),
			client: web, want: "catalog", clientReason: "exactly one URI SAN"},
		{name: "client from another trust domain", server: catalog, clientCfg: rawClient(valid(t, foreign, "web")),
			serverReason: `trust domain "other.org", want "example.org"`, mismatch: true},
		{name: "server from another trust domain", server: rawBundle(valid(t, foreign, "catalog"), foreign, ca), client: web,
			want: "catalog", clientReason: "server is spiffe://other.org/ns/default/svc/catalog", mismatch: true},
		{name: "server not ready", serverSrc: notReady, client: web, want: "catalog", serverReason: ErrNotReady.Error()},
		{name: "client not ready", server: catalog, clientCfg: ClientConfig(notReady, "catalog", ""), clientReason: ErrNotReady.Error()},
		{name: "TLS 1.2 client", server: catalog, clientCfg: func() *tls.Config {
			c := ClientConfig(static(web), "catalog", "")
			c.MinVersion, c.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
			return c
		}(), serverReason: "offered only unsupported versions"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ssrc := tc.serverSrc
			if ssrc == nil {
				ssrc = static(tc.server)
			}
			ccfg := tc.clientCfg
			if ccfg == nil {
				ccfg = ClientConfig(static(tc.client), tc.want, tc.wantNS)
			}
			o := handshake(t, ServerConfig(ssrc), ccfg)
			if tc.serverReason == "" && tc.clientReason == "" {
				if o.serverErr != nil || o.clientErr != nil {
					t.Fatalf("server: %v; client: %v", o.serverErr, o.clientErr)
				}
				if id, err := PeerID(o.serverState); err != nil || id != tc.client.ID {
					t.Errorf("server: PeerID = %v, %v; want %v", id, err, tc.client.ID)
				}
				if id, err := PeerID(o.clientState); err != nil || id != tc.server.ID {
					t.Errorf("client: PeerID = %v, %v; want %v", id, err, tc.server.ID)
				}
				if v := o.clientState.Version; v != tls.VersionTLS13 {
					t.Errorf("version %x, want TLS 1.3", v)
				}
				return
			}
			// Whichever end refuses, the handshake fails at both.
			if o.serverErr == nil || o.clientErr == nil {
				t.Fatalf("handshake succeeded at one end at least: server: %v; client: %v", o.serverErr, o.clientErr)
			}
			refusal := o.clientErr
			reason := tc.clientReason
			if tc.serverReason != "" {
				refusal, reason = o.serverErr, tc.serverReason
			}
			if !strings.Contains(refusal.Error(), reason) {
				t.Errorf("refusal %q does not mention %q", refusal, reason)
			}
			if tc.mismatch != errors.Is(refusal, ErrIdentityMismatch) {
				t.Errorf("refusal %q: errors.Is(ErrIdentityMismatch) = %v, want %v", refusal, !tc.mismatch, tc.mismatch)
			}
			t.Logf("server: %v; client: %v", o.serverErr, o.clientErr)
		})
	}
}

// TestServerConfigRotation: new handshakes use the roots and leaf Set last,
// and a session resumed from before a root rotation is not accepted.
func TestServerConfigRotation(t *testing.T) {
	oldCA, newCA := newCA(t, "example.org"), newCA(t, "example.org")
	server := static(rawBundle(valid(t, oldCA, "catalog"), oldCA))
	srvCfg := ServerConfig(server)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	client := ClientConfig(static(rawBundle(valid(t, oldCA, "web"), oldCA, newCA)), "catalog", "")
	client.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	client.ServerName = "catalog"
	for i, wantResume := range []bool{false, true} {
		o := handshakeOn(t, ln, srvCfg, client)
		if o.serverErr != nil || o.clientErr != nil {
			t.Fatalf("handshake %d: server: %v; client: %v", i, o.serverErr, o.clientErr)
		}
		if o.clientState.DidResume != wantResume {
			t.Fatalf("handshake %d: DidResume = %v, want %v", i, o.clientState.DidResume, wantResume)
		}
	}

	// Rotate the server to the new CA only: the old client's certificate
	// must be refused although it has a session ticket.
	serverLeaf := valid(t, newCA, "catalog")
	server.Set(rawBundle(serverLeaf, newCA))
	o := handshakeOn(t, ln, srvCfg, client)
	if o.serverErr == nil || !strings.Contains(o.serverErr.Error(), "unknown authority") {
		t.Fatalf("old client after root rotation: server: %v; client: %v", o.serverErr, o.clientErr)
	}
	if o.serverState.DidResume {
		t.Error("resumed a session whose chain ends in a dropped root")
	}

	fresh := ClientConfig(static(rawBundle(valid(t, newCA, "web"), newCA)), "catalog", "")
	o = handshakeOn(t, ln, srvCfg, fresh)
	if o.serverErr != nil || o.clientErr != nil {
		t.Fatalf("new client after rotation: server: %v; client: %v", o.serverErr, o.clientErr)
	}
	if got := o.clientState.PeerCertificates[0].SerialNumber; got.Cmp(serverLeaf.Leaf.SerialNumber) != 0 {
		t.Errorf("server presented serial %x, want the new leaf's %x", got, serverLeaf.Leaf.SerialNumber)
	}
}

// startHTTPS serves h with ServerConfig(src) on 127.0.0.1 until the test ends.
func startHTTPS(t *testing.T, src Source, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, TLSConfig: ServerConfig(src), ErrorLog: log.New(io.Discard, "", 0)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeTLS(ln, "", "")
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ln.Addr().String()
}

func TestHTTP(t *testing.T) {
	ca := newCA(t, "example.org")
	addr := startHTTPS(t, static(rawBundle(valid(t, ca, "catalog"), ca)), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := PeerID(*r.TLS)
		if err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		io.WriteString(w, id.String())
	}))
	web := static(rawBundle(valid(t, ca, "web"), ca))

	for _, tc := range []struct {
		name      string
		force     bool
		wantProto string
	}{
		{"HTTP/1.1 by default", false, "HTTP/1.1"},
		{"HTTP/2 when forced", true, "HTTP/2.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: ClientConfig(web, "catalog", ""), ForceAttemptHTTP2: tc.force}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + addr + "/")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.Proto != tc.wantProto || string(body) != "spiffe://example.org/ns/default/svc/web" {
				t.Errorf("got %s %q, want %s and the client's ID", resp.Proto, body, tc.wantProto)
			}
		})
	}

	t.Run("plain HTTP client", func(t *testing.T) {
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://" + addr + "/")
		if err == nil {
			resp.Body.Close()
			// net/http answers a plain request on a TLS port with a 400.
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("plain HTTP request: status %s, want an error or 400", resp.Status)
			}
		}
		t.Logf("plain HTTP request: %v", err)
	})
}

// TestPlainClient: bytes that are not TLS fail the server's handshake.
func TestPlainClient(t *testing.T) {
	ca := newCA(t, "example.org")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		errc <- tls.Server(c, ServerConfig(static(rawBundle(valid(t, ca, "catalog"), ca)))).Handshake()
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: catalog\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	bufio.NewReader(c).ReadString('\n')
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "does not look like a TLS handshake") {
			t.Errorf("server handshake: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server did not finish")
	}
}

// TestPeerIDIncomplete: PeerID needs a completed handshake with a certificate.
func TestPeerIDIncomplete(t *testing.T) {
	if _, err := PeerID(tls.ConnectionState{}); err == nil {
		t.Error("PeerID of an incomplete handshake succeeded")
	}
	if _, err := PeerID(tls.ConnectionState{HandshakeComplete: true}); err == nil {
		t.Error("PeerID without certificates succeeded")
	}
}

// TestServerConfigWithoutConfigForClient: a caller that drops
// GetConfigForClient still gets full verification against current roots.
func TestServerConfigWithoutConfigForClient(t *testing.T) {
	ca, unknown := newCA(t, "example.org"), newCA(t, "example.org")
	server := ServerConfig(static(rawBundle(valid(t, ca, "catalog"), ca)))
	server.GetConfigForClient = nil
	for _, tc := range []struct {
		name, reason string
		client       *Bundle
	}{
		{"valid", "", rawBundle(valid(t, ca, "web"), ca)},
		{"unknown CA", "unknown authority", rawBundle(valid(t, unknown, "web"), ca)},
		{"expired", "is after", rawBundle(issue(t, ca, "web", time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)), ca)},
	} {
		o := handshake(t, server, ClientConfig(static(tc.client), "catalog", ""))
		switch {
		case tc.reason == "" && (o.serverErr != nil || o.clientErr != nil):
			t.Errorf("%s: server: %v; client: %v", tc.name, o.serverErr, o.clientErr)
		case tc.reason != "" && (o.serverErr == nil || !strings.Contains(o.serverErr.Error(), tc.reason)):
			t.Errorf("%s: server error %v, want one mentioning %q", tc.name, o.serverErr, tc.reason)
		}
	}
}
