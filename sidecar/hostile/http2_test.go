package hostile_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2conn is a raw HTTP/2 (h2c, prior knowledge) connection to addr.
type h2conn struct {
	net.Conn
	fr *http2.Framer
}

func dialH2(t *testing.T, addr string) *h2conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return &h2conn{Conn: c, fr: fr}
}

// headers encodes a request's header block.
func headers(path string, extra ...hpack.HeaderField) []byte {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range append([]hpack.HeaderField{
		{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: "app"}, {Name: ":path", Value: path},
	}, extra...) {
		enc.WriteField(f)
	}
	return buf.Bytes()
}

// until reads frames until one satisfies stop or the connection ends; it
// returns the frame, whether the server sent GOAWAY on the way, and the
// error that ended the reading (a timeout: the server kept the connection
// open).
func (c *h2conn) until(stop func(http2.Frame) bool) (http2.Frame, bool, error) {
	goaway := false
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return nil, goaway, err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.fr.WriteSettingsAck()
			}
		case *http2.GoAwayFrame:
			goaway = true
		}
		if stop(f) {
			return f, goaway, nil
		}
	}
}

// status returns the :status of a response's HEADERS, 0 if f is another
// frame.
func status(f http2.Frame) string {
	if mh, ok := f.(*http2.MetaHeadersFrame); ok {
		return mh.PseudoValue("status")
	}
	return ""
}

// stillServes: after the attack, a fresh connection gets an answer.
func stillServes(t *testing.T, m *mesh) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+m.out+"/api/after", nil)
	req.Host = "app"
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("after the attack: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("after the attack: %d", resp.StatusCode)
	}
}

// TestHTTP2RapidReset: thousands of streams opened and reset at once
// (CVE-2023-44487) are absorbed; the connection is closed or keeps
// working, the app is not flooded, and the listener still serves.
func TestHTTP2RapidReset(t *testing.T) {
	m := startMesh(t)
	m.app.take()
	c := dialH2(t, m.out)
	block := headers("/api/reset")
	const streams = 2000
	for i := range streams {
		id := uint32(2*i + 1)
		if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true, EndStream: true}); err != nil {
			break // the server closed the connection: a fine answer
		}
		if err := c.fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
			break
		}
	}
	c.Close()
	if n := len(m.app.take()); n > streams/2 {
		t.Errorf("the app got %d of %d reset requests", n, streams)
	}
	stillServes(t, m)
}

// TestHTTP2ContinuationFlood: a header block that never ends (HEADERS then
// endless CONTINUATION frames, CVE-2024-27316 and kin) is cut once it
// exceeds the header limit: the connection is closed, nothing reaches the
// app.
func TestHTTP2ContinuationFlood(t *testing.T) {
	m := startMesh(t)
	m.app.take()
	c := dialH2(t, m.out)
	block := headers("/api/flood")
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: false, EndStream: true}); err != nil {
		t.Fatal(err)
	}
	junk := headers("/x", hpack.HeaderField{Name: "x-junk", Value: strings.Repeat("j", 1000)})
	sent := 0
	for range 10000 {
		if err := c.fr.WriteContinuation(1, false, junk); err != nil {
			break
		}
		sent += len(junk)
	}
	_, _, err := c.until(func(http2.Frame) bool { return false })
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("the connection is still open after %d bytes of one header block", sent)
	}
	if reqs := m.app.take(); len(reqs) != 0 {
		t.Errorf("the app got %v", targets(reqs))
	}
	stillServes(t, m)
}

// TestHTTP2HPACKBomb: a small header block that expands (by indexing one
// large field in the dynamic table and referring to it again and again)
// beyond the header limit is refused, not forwarded.
func TestHTTP2HPACKBomb(t *testing.T) {
	m := startMesh(t)
	m.app.take()
	c := dialH2(t, m.out)
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range []hpack.HeaderField{
		{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: "app"}, {Name: ":path", Value: "/api/bomb"},
	} {
		enc.WriteField(f)
	}
	big := hpack.HeaderField{Name: "x-bomb", Value: strings.Repeat("b", 3000)}
	enc.WriteField(big) // indexed: later copies cost one byte each
	for range 4000 {
		enc.WriteField(big)
	}
	block := buf.Bytes()
	if len(block) > 16<<10 {
		// Send the block in CONTINUATION frames of the default max size.
		first := block[:16<<10]
		rest := block[16<<10:]
		c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: first, EndStream: true})
		for len(rest) > 0 {
			n := min(len(rest), 16<<10)
			c.fr.WriteContinuation(1, n == len(rest), rest[:n])
			rest = rest[n:]
		}
	} else {
		c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true, EndStream: true})
	}
	f, _, _ := c.until(func(f http2.Frame) bool {
		_, rst := f.(*http2.RSTStreamFrame)
		return status(f) != "" || rst
	})
	if st := status(f); st == "200" {
		t.Errorf("a %d-byte header list was served", 4000*3000)
	}
	if reqs := m.app.take(); len(reqs) != 0 {
		t.Errorf("the app got %v", targets(reqs))
	}
	stillServes(t, m)
}

// TestConnectionFlood: a thousand idle connections do not keep the
// listener from answering the next client, and each is bounded by the
// header timeout.
func TestConnectionFlood(t *testing.T) {
	m := startMesh(t)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 1000 {
		c, err := net.DialTimeout("tcp", m.out, 2*time.Second)
		if err != nil {
			t.Fatalf("after %d connections: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	stillServes(t, m)
	// The header timeout (300ms here) closes them all.
	conns[0].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conns[0].Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("an idle connection that sent nothing: %v, want it closed (EOF)", err)
	}
}
