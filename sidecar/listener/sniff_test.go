package listener

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// classifyCases are first bytes and what they are; more marks bytes too
// short to tell.
var classifyCases = []struct {
	in   string
	want Detected
	more bool
}{
	// HTTP/1.x request lines, whatever the method.
	{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", DetectedHTTP1, false},
	{"POST /api/cart?x=1 HTTP/1.1\r\n", DetectedHTTP1, false},
	{"PUT /a HTTP/1.1\r\n", DetectedHTTP1, false},
	{"DELETE /a HTTP/1.1\r\n", DetectedHTTP1, false},
	{"PATCH /a HTTP/1.1\r\n", DetectedHTTP1, false},
	{"HEAD /a HTTP/1.0\r\n", DetectedHTTP1, false},
	{"OPTIONS * HTTP/1.1\r\n", DetectedHTTP1, false},
	{"CONNECT db.example:5432 HTTP/1.1\r\n", DetectedHTTP1, false},
	{"TRACE / HTTP/1.1\r\n", DetectedHTTP1, false},
	{"PROPFIND /dav HTTP/1.1\r\n", DetectedHTTP1, false},
	{"GET http://catalog/items HTTP/1.1\n", DetectedHTTP1, false}, // bare LF
	// The HTTP/2 preface (h2c with prior knowledge).
	{h2Preface, DetectedHTTP2, false},
	{h2Preface + "\x00\x00\x12\x04", DetectedHTTP2, false},
	// A TLS ClientHello: a handshake record of TLS 1.0 to 1.3.
	{"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", DetectedTLS, false},
	{"\x16\x03\x03", DetectedTLS, false},
	// Anything else.
	{"PING\r\n", DetectedOpaque, false},                       // Redis inline
	{"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", DetectedOpaque, false}, // Redis RESP
	{"GET key\r\n", DetectedOpaque, false},                    // Redis inline, an HTTP method
	{"SET k v\r\n", DetectedOpaque, false},
	{"SSH-2.0-OpenSSH_9.6\r\n", DetectedOpaque, false},
	{"\x00\x00\x00\x08\x04\xd2\x16\x2f", DetectedOpaque, false}, // PostgreSQL SSLRequest
	{"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", DetectedOpaque, false}, // a broken preface
	{"GET / HTTP/2.0\r\n", DetectedOpaque, false},
	{"GET / HTTP/1.x\r\n", DetectedOpaque, false},
	{"GET / HTTP/1.1 \r\n", DetectedOpaque, false},
	{"GET  / HTTP/1.1\r\n", DetectedOpaque, false}, // an empty target
	{" / HTTP/1.1\r\n", DetectedOpaque, false},     // no method
	{"GET /a\x01b HTTP/1.1\r\n", DetectedOpaque, false},
	{"GET / HTTP/1.1\rX", DetectedOpaque, false},
	{"\x16\x01", DetectedOpaque, false},
	{strings.Repeat("A", maxMethod+1), DetectedOpaque, false},
	{"hello\n", DetectedOpaque, false},
	// Too short to tell: detection reads on.
	{"", 0, true},
	{"G", 0, true},
	{"GET", 0, true},
	{"GET ", 0, true},
	{"GET /items", 0, true},
	{"GET /items ", 0, true},
	{"GET /items HTTP/1", 0, true},
	{"GET /items HTTP/1.", 0, true},
	{"GET /items HTTP/1.1", 0, true},
	{"GET /items HTTP/1.1\r", 0, true},
	{"PRI * HTTP/2.0\r\n", 0, true},
	{"P", 0, true},
	{"\x16", 0, true},
	{strings.Repeat("A", maxMethod), 0, true},
}

func TestClassify(t *testing.T) {
	for _, tc := range classifyCases {
		got, more := classify([]byte(tc.in))
		if more != tc.more || !more && got != tc.want {
			t.Errorf("classify(%q) = %v, more %v; want %v, more %v", tc.in, got, more, tc.want, tc.more)
		}
	}
}

// FuzzClassify: classify never panics and never changes its mind: once a
// prefix of the bytes tells, the whole says the same, so detection can
// stop at the first read that tells whatever the reads' sizes.
func FuzzClassify(f *testing.F) {
	for _, tc := range classifyCases {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		whole, wholeMore := classify(b)
		for i := range len(b) {
			got, more := classify(b[:i])
			if !more && (wholeMore || got != whole) {
				t.Fatalf("classify(%q) = %v, but the whole %q is %v (more %v)", b[:i], got, b, whole, wholeMore)
			}
		}
	})
}

// pipe returns the two ends of an in-memory connection, closed when the
// test ends. A write on one returns once the other has read it all.
func pipe(t *testing.T) (client, server net.Conn) {
	client, server = net.Pipe()
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// testDeadline bounds every read of a test that should succeed.
const testDeadline = 5 * time.Second

// TestDetectPartialReads: a request line that arrives one byte, then the
// rest, is read on until it tells; the connection then reads from its
// first byte, so the HTTP server sees the whole request.
func TestDetectPartialReads(t *testing.T) {
	client, server := pipe(t)
	const req = "GET /items HTTP/1.1\r\nHost: catalog\r\n\r\n"
	go func() {
		client.Write([]byte(req[:1])) // returns once detect read it: its first read is 1 byte
		client.Write([]byte(req[1:]))
	}()
	head, how, err := detect(server, testDeadline)
	if err != nil || how != DetectedHTTP1 {
		t.Fatalf("detect = %v, %v; want http/1", how, err)
	}
	if len(head) < 2 || !strings.HasPrefix(req, string(head)) {
		t.Fatalf("detect read %q, want a prefix of the request longer than its first read", head)
	}
	r, err := http.ReadRequest(bufio.NewReader(&sniffedConn{Conn: server, head: head}))
	if err != nil || r.Method != "GET" || r.URL.Path != "/items" || r.Host != "catalog" {
		t.Fatalf("the request read after detection: %+v, %v", r, err)
	}
}

// TestDetectProtocols: what a client sends first decides; its bytes are
// all read again from the sniffed connection.
func TestDetectProtocols(t *testing.T) {
	tlsHello := func(c net.Conn) {
		tls.Client(c, &tls.Config{ServerName: "catalog", MinVersion: tls.VersionTLS12}).Handshake()
	}
	send := func(s string) func(net.Conn) { return func(c net.Conn) { c.Write([]byte(s)) } }
	for _, tc := range []struct {
		name   string
		client func(net.Conn)
		want   Detected
	}{
		{"http/1", send("POST /cart HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), DetectedHTTP1},
		{"h2c", send(h2Preface), DetectedHTTP2},
		{"tls", tlsHello, DetectedTLS},
		{"line protocol", send("ping\r\n"), DetectedOpaque},
		{"ended before telling", func(c net.Conn) { c.Write([]byte("GE")); c.Close() }, DetectedOpaque},
		{"request line too long", send("GET /" + strings.Repeat("a", detectMaxBytes) + " HTTP/1.1\r\n"), DetectedOpaque},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := pipe(t)
			go tc.client(client)
			head, how, err := detect(server, testDeadline)
			if err != nil || how != tc.want {
				t.Fatalf("detect = %v, %v; want %v", how, err, tc.want)
			}
			if len(head) > detectMaxBytes {
				t.Errorf("detect read %d bytes, more than %d", len(head), detectMaxBytes)
			}
			sc := &sniffedConn{Conn: server, head: head}
			got := make([]byte, len(head))
			if _, err := io.ReadFull(sc, got); err != nil || !bytes.Equal(got, head) {
				t.Errorf("reading the sniffed connection: %q, %v; want %q first", got, err, head)
			}
		})
	}
}

// TestDetectSilentClient: a client that sends nothing (a server-first
// protocol) is taken as opaque once the timeout passes, and the
// connection is usable afterwards: its read deadline is cleared.
func TestDetectSilentClient(t *testing.T) {
	client, server := pipe(t)
	const timeout = 50 * time.Millisecond
	start := time.Now()
	head, how, err := detect(server, timeout)
	if err != nil || how != DetectedTimeout || len(head) != 0 {
		t.Fatalf("detect = %q, %v, %v; want nothing, timeout", head, how, err)
	}
	if waited := time.Since(start); waited < timeout {
		t.Errorf("detect gave up after %v, before its timeout of %v", waited, timeout)
	}
	go client.Write([]byte("late"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "late" {
		t.Errorf("reading after detection: %q, %v; the deadline was not cleared", buf, err)
	}
}

// TestAcceptNotRedirectedAllocatesNothing: with Detection on, a
// connection that was not redirected, the explicit client of the hot
// path, is passed on by Accept without an allocation.
func TestAcceptNotRedirectedAllocatesNothing(t *testing.T) {
	ln := meshtest.Listen(t)
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h := newHandoff(ln.Addr())
	l := &sniffListener{handoff: h, srv: &Server{detection: &Detection{}}}
	const runs = 100
	go func() {
		for range runs + 1 { // AllocsPerRun's warm-up, then runs
			h.deliver(c)
		}
	}()
	allocs := testing.AllocsPerRun(runs, func() {
		if got, err := l.Accept(); got != c || err != nil {
			t.Fatalf("Accept = %v, %v; want the connection as it came", got, err)
		}
	})
	if allocs != 0 {
		t.Errorf("Accept of a connection that was not redirected: %v allocations, want 0", allocs)
	}
}

// TestDialGuardedForgetsPorts: DialGuarded remembers the port of the
// connection it returns until it is closed, and no other: a name that
// resolves to several addresses (localhost: 127.0.0.1 and perhaps ::1)
// leaves nothing behind.
func TestDialGuardedForgetsPorts(t *testing.T) {
	ln := meshtest.Listen(t)
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	remembered := func() int {
		ownPorts.mu.Lock()
		defer ownPorts.mu.Unlock()
		return len(ownPorts.n)
	}
	before := remembered()
	c, err := DialGuarded(context.Background(), "tcp", net.JoinHostPort("localhost", port))
	if err != nil {
		t.Fatal(err)
	}
	own := uint16(c.LocalAddr().(*net.TCPAddr).Port)
	if runtime.GOOS == "linux" && (!ownPorts.has(own) || remembered() != before+1) {
		t.Errorf("with the connection open: port %d remembered %v, %d ports remembered; want it alone", own, ownPorts.has(own), remembered()-before)
	}
	c.Close()
	if remembered() != before {
		t.Errorf("with the connection closed, %d ports remembered, want none", remembered()-before)
	}
	if _, err := DialGuarded(context.Background(), "tcp", "127.0.0.1:1"); err == nil || remembered() != before {
		t.Errorf("a failed dial: %v, %d ports remembered; want an error and none", err, remembered()-before)
	}
}
