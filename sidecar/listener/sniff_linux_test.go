package listener

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// TestDetectionRedirected serves an HTTP server with Detection on a
// socket that every connection to 192.0.2.10, an address beyond a veth
// pair in a namespace the test creates, is redirected to. HTTP/1 and
// h2c are served by the handler, which sees the original destination; a line protocol,
// a silent client and a client of an opaque port go to Opaque, with the
// bytes detection read; a connection to the listener itself is HTTP
// whatever it sends; a DialGuarded connection that comes back is refused
// before Opaque sees it; Shutdown ends the opaque connections still open.
func TestDetectionRedirected(t *testing.T) {
	ns := newVethNetns(t)

	var sock *Socket
	ns.do(func() (err error) { sock, err = Listen(context.Background(), "127.0.0.1:0", nil); return err })
	t.Cleanup(sock.Close)
	ns.run("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "192.0.2.10",
		"-j", "REDIRECT", "--to-ports", strconv.Itoa(sock.Addr().(*net.TCPAddr).Port))

	var opaque atomic.Int32 // connections Opaque was called with
	var logs meshtest.LogBuffer
	srv := NewHTTP(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dst, err := RequestOriginalDestination(r)
		if err != nil {
			fmt.Fprint(w, "http none")
			return
		}
		fmt.Fprint(w, "http ", dst)
	}), HTTPOptions{Logger: slog.New(slog.NewTextHandler(&logs, nil)), Detection: &Detection{
		Timeout: func(dst netip.AddrPort) time.Duration {
			if dst.Port() == 3306 {
				return 0
			}
			return 100 * time.Millisecond
		},
		// Opaque greets with what detection found, then echoes lines.
		Opaque: func(ctx context.Context, c net.Conn, dst netip.AddrPort, how Detected) {
			opaque.Add(1)
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			fmt.Fprintf(c, "%s %s\n", how, dst)
			lines := bufio.NewScanner(c)
			for lines.Scan() {
				fmt.Fprintf(c, "echo %s\n", lines.Text())
			}
		},
	}})
	srv.Serve(sock)
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			srv.Shutdown(context.Background())
		}
	})

	dial := func(addr string) (net.Conn, *bufio.Reader) {
		t.Helper()
		var c net.Conn
		ns.do(func() (err error) { c, err = net.DialTimeout("tcp", addr, testDeadline); return err })
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(testDeadline))
		return c, bufio.NewReader(c)
	}
	readLine := func(r *bufio.Reader) string {
		t.Helper()
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading a line: %q, %v", line, err)
		}
		return line[:len(line)-1]
	}
	get := func(addr string) string {
		t.Helper()
		c, r := dial(addr)
		fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: catalog\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatalf("GET over %s: %v", addr, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return string(body)
	}

	if got := get("192.0.2.10:80"); got != "http 192.0.2.10:80" {
		t.Errorf("redirected HTTP: %q, want it served by the handler with its original destination", got)
	}
	// h2c with prior knowledge, over a connection dialled in the namespace.
	h2, _ := dial("192.0.2.10:80")
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &h2c, DialContext: func(context.Context, string, string) (net.Conn, error) { return h2, nil }}
	defer tr.CloseIdleConnections()
	if resp, err := (&http.Client{Transport: tr, Timeout: testDeadline}).Get("http://catalog/"); err != nil {
		t.Errorf("redirected h2c: %v", err)
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || string(body) != "http 192.0.2.10:80" {
			t.Errorf("redirected h2c: %s %q, want HTTP/2 served by the handler with its original destination", resp.Proto, body)
		}
	}
	if got := get(sock.Addr().String()); got != "http none" {
		t.Errorf("HTTP to the listener itself: %q, want it served with no original destination", got)
	}
	c, r := dial("192.0.2.10:80")
	fmt.Fprint(c, "ping\n")
	if got, echo := readLine(r), readLine(r); got != "opaque 192.0.2.10:80" || echo != "echo ping" {
		t.Errorf("a line protocol: %q then %q, want opaque and its line echoed", got, echo)
	}
	// A silent client gets its server's greeting once the detect timeout
	// has passed, a client of an opaque port at once.
	_, r = dial("192.0.2.10:25")
	if got := readLine(r); got != "timeout 192.0.2.10:25" {
		t.Errorf("a silent client: %q, want opaque after the detect timeout", got)
	}
	_, held := dial("192.0.2.10:3306")
	if got := readLine(held); got != "skipped 192.0.2.10:3306" {
		t.Errorf("a client of an opaque port: %q, want it opaque without detection", got)
	}
	// To the listener itself, bytes that are not HTTP get a 400 from the
	// HTTP server: explicit clients are never detected. (The line is
	// longer than the HTTP/2 preface, which net/http waits for first.)
	c, r = dial(sock.Addr().String())
	fmt.Fprint(c, "ping from a client that is not an HTTP client\n")
	if resp, err := http.ReadResponse(r, nil); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a line protocol to the listener itself: %v, %v; want 400 from the HTTP server", resp, err)
	}

	// This process's own connection, redirected back, is refused before
	// Opaque sees it; its port is forgotten once it is closed.
	before := opaque.Load()
	var own net.Conn
	ns.do(func() (err error) {
		own, err = DialGuarded(context.Background(), "tcp", "192.0.2.10:5000")
		return err
	})
	own.SetDeadline(time.Now().Add(testDeadline))
	if n, err := own.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("the process's own redirected connection: read %d, %v; want it closed", n, err)
	}
	port := uint16(own.LocalAddr().(*net.TCPAddr).Port)
	if !ownPorts.has(port) {
		t.Errorf("DialGuarded's open connection on port %d is not remembered", port)
	}
	own.Close()
	if ownPorts.has(port) {
		t.Errorf("DialGuarded's closed connection on port %d is still remembered", port)
	}
	if n := opaque.Load() - before; n != 0 {
		t.Errorf("Opaque was called %d times for the refused connection", n)
	}
	if !strings.Contains(logs.String(), "redirected connection refused: it is this process's own connection") {
		t.Errorf("the refusal is not logged:\n%s", logs.String())
	}

	// Shutdown waits for the opaque connection still open (held), then
	// ends it.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	srv.Shutdown(ctx)
	stopped = true
	if line, err := held.ReadString('\n'); err == nil {
		t.Errorf("after Shutdown the opaque connection is open: read %q", line)
	}
}
