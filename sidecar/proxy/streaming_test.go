package proxy_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
)

var protos = []struct {
	name  string
	proto backendProto
}{
	{"HTTP/1.1", h1},
	{"h2c", h2c},
}

// echoHandler streams the request body back as it arrives.
func echoHandler(w http.ResponseWriter, r *http.Request) {
	http.NewResponseController(w).EnableFullDuplex() // HTTP/1; HTTP/2 always is
	w.WriteHeader(http.StatusOK)
	fw := newFlushWriter(w)
	fw.rc.Flush()
	io.CopyBuffer(fw, r.Body, make([]byte, 32<<10))
}

// fillChunk fills b with bytes that depend on k.
func fillChunk(b []byte, k int) {
	rng := rand.NewChaCha8([32]byte{byte(k), byte(k >> 8), byte(k >> 16)})
	rng.Read(b)
}

// TestFullDuplexStreaming sends 32 MiB through the proxy and back, writing
// chunk k only after echo k-1 has come back. A proxy that buffered either
// body whole would deadlock, and the test's deadline would fail it.
func TestFullDuplexStreaming(t *testing.T) {
	const chunk, total = 64 << 10, 32 << 20
	for _, p := range protos {
		t.Run(p.name, func(t *testing.T) {
			backend := startBackend(t, p.proto, http.HandlerFunc(echoHandler))
			addr, bal := startOutbound(t, "catalog", upstreamOpts{HTTP2: p.proto == h2c}, hostPort(backend))
			c := newClient(t, addr, p.proto)

			ctx := testCtx(t, 60*time.Second)
			pr, pw := io.Pipe()
			defer pw.Close()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://catalog/echo", pr)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			out, in := make([]byte, chunk), make([]byte, chunk)
			for k := range total / chunk {
				fillChunk(out, k)
				if _, err := pw.Write(out); err != nil {
					t.Fatalf("write chunk %d: %v", k, err)
				}
				if _, err := io.ReadFull(resp.Body, in); err != nil {
					t.Fatalf("read echo %d: %v (is the proxy buffering?)", k, err)
				}
				if !bytes.Equal(in, out) {
					t.Fatalf("echo %d differs", k)
				}
				if k == 0 {
					if n := bal.Endpoints()[0].InFlight(); n != 1 {
						t.Errorf("InFlight while streaming = %d, want 1", n)
					}
				}
			}
			pw.Close()
			if rest, err := io.ReadAll(resp.Body); err != nil || len(rest) != 0 {
				t.Errorf("after the last echo: %d more bytes, %v", len(rest), err)
			}
		})
	}
}

// chachaReader returns the size-byte pseudo-random stream for seed.
func chachaReader(seed byte, size int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{seed}), size)
}

// TestLargeDownload streams 64 MiB from the backend and checks its
// checksum; neither side holds the body in memory. The backend sends the
// rest only once the client has most of the first MiB, so a proxy that
// buffers the response whole would deadlock. (Most, not all: a response
// of known length is not flushed before its end, so the write buffers
// along the way may hold its last few KiB until more data comes.)
func TestLargeDownload(t *testing.T) {
	const size, head, slack = 64 << 20, 1 << 20, 64 << 10
	want := sha256.New()
	io.Copy(want, chachaReader(7, size))

	for _, p := range protos {
		t.Run(p.name, func(t *testing.T) {
			gotHead := make(chan struct{})
			backend := startBackend(t, p.proto, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(size))
				src := chachaReader(7, size)
				fw := newFlushWriter(w)
				if _, err := io.CopyN(fw, src, head); err != nil {
					return
				}
				select {
				case <-gotHead:
				case <-r.Context().Done():
					return
				}
				io.Copy(w, src)
			}))
			addr, bal := startOutbound(t, "catalog", upstreamOpts{HTTP2: p.proto == h2c}, hostPort(backend))
			c := newClient(t, addr, p.proto)

			req, _ := http.NewRequestWithContext(testCtx(t, 60*time.Second), http.MethodGet, "http://catalog/big", nil)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.ContentLength != size {
				t.Errorf("Content-Length = %d, want %d", resp.ContentLength, size)
			}
			got := sha256.New()
			if _, err := io.CopyN(got, resp.Body, head-slack); err != nil {
				t.Fatalf("first MiB: %v (is the proxy buffering?)", err)
			}
			close(gotHead)
			n, err := io.Copy(got, resp.Body)
			if err != nil || n != size-head+slack {
				t.Fatalf("read %d bytes after the first MiB, err %v", n, err)
			}
			if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
				t.Error("checksum mismatch")
			}
			resp.Body.Close()
			waitIdle(t, bal)
		})
	}
}

// TestEarlyResponseWhileClientStillSends: the backend answers and ends
// the exchange while the client's request body is still open (as a gRPC
// server failing a stream does). The client must get the whole response.
func TestEarlyResponseWhileClientStillSends(t *testing.T) {
	backend := startBackend(t, h2c, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, 5)
		io.ReadFull(r.Body, buf)
		w.Header().Set("Trailer", "X-Status")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "got "+string(buf))
		w.Header().Set("X-Status", "early")
	}))
	addr, bal := startOutbound(t, "catalog", upstreamOpts{HTTP2: true}, hostPort(backend))
	c := newClient(t, addr, h2c)

	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequestWithContext(testCtx(t, 10*time.Second), http.MethodPost, "http://catalog/early", pr)
	go pw.Write([]byte("hello")) // and never close
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || string(body) != "got hello" {
		t.Fatalf("body %q, err %v", body, err)
	}
	if v := resp.Trailer.Get("X-Status"); v != "early" {
		t.Errorf("trailer X-Status = %q", v)
	}
	waitIdle(t, bal)
}

func TestTrailers(t *testing.T) {
	for _, cp := range protos {
		for _, p := range protos {
			t.Run("client "+cp.name+" upstream "+p.name, func(t *testing.T) { testTrailers(t, cp.proto, p.proto) })
		}
	}
}

func testTrailers(t *testing.T, clientProto, upstreamProto backendProto) {
	rec := &recorder{answer: func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Declared")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "body ")
		newFlushWriter(w).Write([]byte("streamed")) // no Content-Length: chunked
		w.Header().Set("X-Declared", "declared-value")
		w.Header().Set(http.TrailerPrefix+"X-Undeclared", "undeclared-value")
	}}
	backend := startBackend(t, upstreamProto, rec)
	addr, _ := startOutbound(t, "catalog", upstreamOpts{HTTP2: upstreamProto == h2c}, hostPort(backend))
	c := newClient(t, addr, clientProto)

	// A body of unknown length is sent chunked, with trailers.
	body := io.MultiReader(bytes.NewReader([]byte("request ")), bytes.NewReader([]byte("body")))
	req, _ := http.NewRequestWithContext(testCtx(t, testTimeout), http.MethodPost, "http://catalog/t", body)
	req.Trailer = http.Header{"X-Req-Trailer": {"sent-after-body"}}
	req.Header.Set("Te", "trailers")
	resp, got := do(t, c, req)

	if got != "body streamed" {
		t.Errorf("body = %q", got)
	}
	if clientProto == h1 && (len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked") {
		t.Errorf("response Transfer-Encoding = %v, want chunked", resp.TransferEncoding)
	}
	if v := resp.Trailer.Get("X-Declared"); v != "declared-value" {
		t.Errorf("declared trailer = %q (trailers %v)", v, resp.Trailer)
	}
	if v := resp.Trailer.Get("X-Undeclared"); v != "undeclared-value" {
		t.Errorf("undeclared trailer = %q (trailers %v)", v, resp.Trailer)
	}
	seen := rec.last(t)
	if seen.Body != "request body" {
		t.Errorf("backend body = %q", seen.Body)
	}
	if v := seen.Trailer.Get("X-Req-Trailer"); v != "sent-after-body" {
		t.Errorf("backend request trailer = %q (trailers %v)", v, seen.Trailer)
	}
}

// TestClientHangsUpMidBody: a client that leaves while the response
// streams releases the endpoint (in flight back to zero), cancels the
// backend's request, and is not reported as the endpoint's failure.
func TestClientHangsUpMidBody(t *testing.T) {
	for _, p := range protos {
		t.Run(p.name, func(t *testing.T) {
			backendDone := make(chan struct{}, 1)
			backend := startBackend(t, p.proto, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				defer func() { backendDone <- struct{}{} }()
				fw := newFlushWriter(w)
				chunk := bytes.Repeat([]byte("z"), 16<<10)
				for {
					if _, err := fw.Write(chunk); err != nil {
						return
					}
					select {
					case <-r.Context().Done():
						return
					default:
					}
				}
			}))
			rp := &recordingPicker{}
			addr, bal := startOutbound(t, "catalog", upstreamOpts{HTTP2: p.proto == h2c,
				Wrap: func(b balancer.Picker) balancer.Picker { rp.Picker = b; return rp }}, hostPort(backend))
			c := newClient(t, addr, p.proto)

			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://catalog/endless", nil)
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.CopyN(io.Discard, resp.Body, 1<<20); err != nil {
				t.Fatal(err)
			}
			cancel()
			resp.Body.Close()
			waitFor(t, backendDone, "the backend to see the client leave")
			waitIdle(t, bal)
			if res := rp.waitResults(t, 1)[0]; res.Err != nil || res.Status != http.StatusOK {
				t.Errorf("reported %+v, want status 200 and no error", res)
			}
		})
	}
}
