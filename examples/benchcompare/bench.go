//go:build linux

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// trustDomain is the SPIFFE trust domain of the harness's CA.
const trustDomain = "bench.local"

// jwtIssuer is the issuer of the edge-jwt row's token.
const jwtIssuer = "https://issuer.bench.local/"

// bench is what every row shares: the work folder, the binaries, the
// certificates, the JWT, and the backend.
type bench struct {
	dir         string            // work folder: certificates, configs, logs
	certs       string            // dir/certs: ca.pem and the leaves app, client, edge
	sidemesh    string            // absolute path of the sidemesh binary
	self        string            // the harness's own binary, for the roles
	tools       map[string]string // nginx, haproxy, wrk: their paths, when a row needs them
	clientTLS   *tls.Config
	jwks, token string // the edge-jwt row's key set file and token
	backendPort int
	backendProc *proc
}

// backend returns the backend's address.
func (b *bench) backend() string { return addr(b.backendPort) }

// newBench makes the CA and leaves with `sidemesh ca`, a JWT signing key,
// its key set and a token, and starts the backend.
func newBench(ctx context.Context, dir, sidemesh string, tools map[string]string) (*bench, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("the harness's own binary: %w", err)
	}
	b := &bench{dir: dir, certs: filepath.Join(dir, "certs"), sidemesh: sidemesh, self: self, tools: tools}
	if err := b.makeCerts(ctx); err != nil {
		return nil, err
	}
	if err := b.makeJWT(); err != nil {
		return nil, err
	}
	if err := b.startBackend(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// makeCerts makes the CA and the leaves: app (the pair's back sidecar and
// back nginx), client (their front), edge (the TLS listeners of the edge
// and nginx-tls; its DNS name is edge).
func (b *bench) makeCerts(ctx context.Context) error {
	run := func(args ...string) error {
		out, err := exec.CommandContext(ctx, b.sidemesh, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("sidemesh %s: %w\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run("ca", "init", "--dir", b.certs, "--trust-domain", trustDomain); err != nil {
		return err
	}
	for _, svc := range []string{"app", "client", "edge"} {
		if err := run("ca", "issue", "--dir", b.certs, "--service", svc); err != nil {
			return err
		}
	}
	// nginx's workers may run as another user (nobody, when started as
	// root) and read nothing after start, but keep the folder readable
	// for them anyway; it is a throwaway CA in a temporary folder.
	if err := os.Chmod(b.certs, 0o755); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	ca, err := os.ReadFile(filepath.Join(b.certs, "ca.pem"))
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return fmt.Errorf("certificates: no certificate in %s", filepath.Join(b.certs, "ca.pem"))
	}
	b.clientTLS = &tls.Config{RootCAs: roots, ServerName: "edge", MinVersion: tls.VersionTLS12}
	return nil
}

// makeJWT writes the edge-jwt row's JWKS (one ES256 public key) and signs
// the token its load generators send, valid for a day.
func (b *bench) makeJWT() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("jwt: %w", err)
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "bench", Algorithm: string(jose.ES256), Use: "sig"}}}
	js, err := json.Marshal(set)
	if err != nil {
		return fmt.Errorf("jwt: key set: %w", err)
	}
	b.jwks = filepath.Join(b.dir, "jwks.json")
	if err := os.WriteFile(b.jwks, js, 0o644); err != nil {
		return fmt.Errorf("jwt: %w", err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "bench"}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return fmt.Errorf("jwt: signer: %w", err)
	}
	now := time.Now()
	claims, err := json.Marshal(map[string]any{
		"iss": jwtIssuer, "aud": "bench", "sub": "bench-client",
		"iat": now.Unix(), "exp": now.Add(24 * time.Hour).Unix(),
	})
	if err != nil {
		return fmt.Errorf("jwt: claims: %w", err)
	}
	sig, err := signer.Sign(claims)
	if err != nil {
		return fmt.Errorf("jwt: sign: %w", err)
	}
	if b.token, err = sig.CompactSerialize(); err != nil {
		return fmt.Errorf("jwt: %w", err)
	}
	return nil
}

// startBackend starts the backend process and waits until it answers.
func (b *bench) startBackend(ctx context.Context) error {
	p, err := freePorts(1)
	if err != nil {
		return err
	}
	b.backendPort = p[0]
	b.backendProc, err = startProc("backend", filepath.Join(b.dir, "backend.log"), []string{roleEnv + "=" + roleBackend},
		b.self, "-listen", b.backend())
	if err != nil {
		return err
	}
	r := &rowRun{spec: rowSpec{Name: "backend"}, dir: b.dir, procs: []*proc{b.backendProc}}
	r.h1, r.h2 = plainTargets(b.backendPort, b.backendPort)
	if err := r.waitReady(ctx, 10*time.Second); err != nil {
		b.backendProc.stop()
		return err
	}
	return nil
}

// close stops the backend.
func (b *bench) close() error {
	if b.backendProc == nil {
		return nil
	}
	return b.backendProc.stop()
}
