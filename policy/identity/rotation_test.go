package identity

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// fileSerial returns the serial of the first certificate in a PEM file.
func fileSerial(t *testing.T, path string) *big.Int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber
}

// TestRotationUnderLoad rotates leaves and then the CA on disk under a
// server and a client that both use FileSources, while four workers send
// requests over new and reused connections: none may fail, and new
// handshakes must present the new leaves.
func TestRotationUnderLoad(t *testing.T) {
	const minLoad = 2 * time.Second
	dir := t.TempDir()
	caA, caB := newCA(t, "example.org"), newCA(t, "example.org")
	caFile := filepath.Join(dir, "ca.pem")
	writeFile(t, caFile, caA.CertPEM())
	writeLeaf := func(ca *TestCA, service string) *big.Int {
		t.Helper()
		certFile, _, err := ca.WriteLeaf(dir, service, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return fileSerial(t, certFile)
	}
	// writeSlowly writes a new key in place, waits for the sources to poll
	// that half-written state, then writes the certificate.
	writeSlowly := func(ca *TestCA, service string) *big.Int {
		t.Helper()
		leaf := valid(t, ca, service)
		writeFile(t, filepath.Join(dir, service+"-key.pem"), keyPEM(t, leaf))
		time.Sleep(120 * time.Millisecond)
		writeFile(t, filepath.Join(dir, service+".pem"), certPEM(leaf))
		return leaf.Leaf.SerialNumber
	}
	writeLeaf(caA, "catalog")
	writeLeaf(caA, "web")

	logger, logs := testLogger()
	defer func() {
		if t.Failed() {
			t.Logf("source logs:\n%s", logs)
		}
	}()
	open := func(service string) *FileSource {
		s, err := NewFileSource(filepath.Join(dir, service+".pem"), filepath.Join(dir, service+"-key.pem"), caFile,
			FileOptions{Interval: 50 * time.Millisecond, Logger: logger.With("source", service)})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	server, client := open("catalog"), open("web")
	ctx, cancel := context.WithCancel(context.Background())
	var running sync.WaitGroup
	for _, s := range []*FileSource{server, client} {
		running.Go(func() { s.Run(ctx) })
	}
	defer running.Wait()
	defer cancel()

	addr := startHTTPS(t, server, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Client-Serial", r.TLS.PeerCertificates[0].SerialNumber.Text(16))
	}))
	fresh := &http.Transport{TLSClientConfig: ClientConfig(client, "catalog", ""), DisableKeepAlives: true}
	h1 := &http.Transport{TLSClientConfig: ClientConfig(client, "catalog", ""), MaxIdleConnsPerHost: 4}
	h2 := &http.Transport{TLSClientConfig: ClientConfig(client, "catalog", ""), ForceAttemptHTTP2: true}
	for _, tr := range []*http.Transport{fresh, h1, h2} {
		defer tr.CloseIdleConnections()
	}
	// get sends one request and returns the serials of the server's leaf
	// and, as the server saw it, of the client's.
	get := func(tr *http.Transport) (serverSerial, clientSerial string, err error) {
		c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		resp, err := c.Get("https://" + addr + "/")
		if err != nil {
			return "", "", err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK {
			return "", "", fmt.Errorf("status %s", resp.Status)
		}
		return resp.TLS.PeerCertificates[0].SerialNumber.Text(16), resp.Header.Get("X-Client-Serial"), nil
	}

	var requests, failures atomic.Int64
	var errMu sync.Mutex
	var errs []error
	stop := make(chan struct{})
	var workers sync.WaitGroup
	for _, tr := range []*http.Transport{fresh, fresh, h1, h2} {
		workers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				requests.Add(1)
				if _, _, err := get(tr); err != nil {
					failures.Add(1)
					errMu.Lock()
					if len(errs) < 5 {
						errs = append(errs, err)
					}
					errMu.Unlock()
				}
			}
		})
	}
	start := time.Now()
	stopLoad := sync.OnceFunc(func() {
		close(stop)
		workers.Wait()
	})
	defer stopLoad()

	// sees waits until new handshakes present the leaves with these serials
	// (nil: either).
	sees := func(step string, serverSerial, clientSerial *big.Int) {
		t.Helper()
		meshtest.WaitFor(t, 10*time.Second, step, func() bool {
			s, c, err := get(fresh)
			return err == nil && (serverSerial == nil || s == serverSerial.Text(16)) &&
				(clientSerial == nil || c == clientSerial.Text(16))
		})
	}
	rootsAre := func(step string, cas ...*TestCA) {
		t.Helper()
		want := pool(cas...)
		meshtest.WaitFor(t, 10*time.Second, step, func() bool {
			return server.Current().Roots.Equal(want) && client.Current().Roots.Equal(want)
		})
	}

	// (a) New leaves, new keys, same CA.
	// Every other one is written slowly: key first, certificate later.
	for i := range 4 {
		write := writeLeaf
		if i%2 == 1 {
			write = writeSlowly
		}
		sees(fmt.Sprintf("server leaf %d", i+1), write(caA, "catalog"), nil)
		sees(fmt.Sprintf("client leaf %d", i+1), nil, write(caA, "web"))
	}

	// (b) The CA: trust both, move the leaves to the new one, drop the old.
	writeFile(t, caFile, append(caA.CertPEM(), caB.CertPEM()...))
	rootsAre("both CAs trusted", caA, caB)
	sees("server leaf from the new CA", writeSlowly(caB, "catalog"), nil)
	clientSerial := writeSlowly(caB, "web")
	meshtest.WaitFor(t, 10*time.Second, "client leaf from the new CA loaded", func() bool { return serial(client).Cmp(clientSerial) == 0 })
	sees("client leaf from the new CA", nil, clientSerial)
	writeFile(t, caFile, caB.CertPEM())
	rootsAre("old CA dropped", caB)
	sees("after the old CA is dropped", serial(server), serial(client))

	// A workload still on the old CA is refused now, both ways.
	oldWeb := static(rawBundle(valid(t, caA, "web"), caA, caB))
	oldTr := &http.Transport{TLSClientConfig: ClientConfig(oldWeb, "catalog", "")}
	defer oldTr.CloseIdleConnections()
	if _, _, err := get(oldTr); err == nil {
		t.Error("a client with a leaf from the dropped CA was accepted")
	}
	oldOnly := &http.Transport{TLSClientConfig: ClientConfig(static(rawBundle(valid(t, caA, "web"), caA)), "catalog", "")}
	defer oldOnly.CloseIdleConnections()
	if _, _, err := get(oldOnly); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("a client trusting only the dropped CA: %v", err)
	}

	rotated := time.Since(start)
	if d := minLoad - rotated; d > 0 {
		time.Sleep(d)
	}
	stopLoad()
	n, failed := requests.Load(), failures.Load()
	t.Logf("%d requests in %v, %d failed; rotations took %v; sources logged %d reloads and %d half-written states",
		n, time.Since(start).Round(time.Millisecond), failed, rotated.Round(time.Millisecond),
		logs.count("level=INFO", "reloaded"), logs.count("level=WARN"))
	if n := logs.count("level=WARN", "private key does not match"); n < 4 {
		t.Errorf("the sources saw %d half-written leaves, want at least 4", n)
	}
	if failed > 0 {
		t.Errorf("%d of %d requests failed, first ones: %v", failed, n, errors.Join(errs...))
	}
}
