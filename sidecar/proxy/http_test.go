package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
)

// seen is what a backend handler recorded about the request it got.
type seen struct {
	Method, RequestURI, Host, Body string
	ProtoMajor                     int
	TLS                            bool
	Header                         http.Header
	Trailer                        http.Header
}

// recorder is a backend handler that records each request, then answers
// with answer (or 200 "ok" when nil).
type recorder struct {
	mu     sync.Mutex
	reqs   []seen
	answer func(w http.ResponseWriter, r *http.Request)
}

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rec.mu.Lock()
	rec.reqs = append(rec.reqs, seen{
		Method: r.Method, RequestURI: r.RequestURI, Host: r.Host, Body: string(body),
		ProtoMajor: r.ProtoMajor, TLS: r.TLS != nil,
		Header: r.Header.Clone(), Trailer: r.Trailer.Clone(),
	})
	rec.mu.Unlock()
	if rec.answer != nil {
		rec.answer(w, r)
		return
	}
	io.WriteString(w, "ok")
}

// last returns the last recorded request.
func (rec *recorder) last(t testing.TB) seen {
	t.Helper()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.reqs) == 0 {
		t.Fatal("backend got no request")
	}
	return rec.reqs[len(rec.reqs)-1]
}

func TestHTTP1RequestAndResponseArriveIntact(t *testing.T) {
	rec := &recorder{answer: func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("X-Backend", "a")
		w.Header().Add("X-Backend", "b")
		w.Header().Add("Set-Cookie", "s=1")
		w.Header().Add("Set-Cookie", "t=2")
		w.Header().Set("Content-Type", "application/x-test")
		w.WriteHeader(http.StatusTeapot)
		io.WriteString(w, "short and stout")
	}}
	backend := startBackend(t, h1, rec)
	addr, _ := startOutbound(t, "catalog", upstreamOpts{}, hostPort(backend))
	c := newClient(t, addr, h1)

	for _, host := range []string{"catalog", "catalog.mesh", "catalog:8080", "Catalog.mesh:80"} {
		t.Run(host, func(t *testing.T) {
			const uri = "/a/b%2Fc/d?x=1&y=a+b&z=%26&x=2"
			req, err := http.NewRequestWithContext(testCtx(t, testTimeout), http.MethodPatch,
				"http://"+host+uri, strings.NewReader("the request body"))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("X-Client", "c1")
			req.Header.Add("Accept-Encoding", "gzip")
			resp, body := do(t, c, req)

			got := rec.last(t)
			if got.Method != http.MethodPatch || got.RequestURI != uri || got.Body != "the request body" {
				t.Errorf("backend got %s %s body %q; want PATCH %s body %q", got.Method, got.RequestURI, got.Body, uri, "the request body")
			}
			if got.Host != host {
				t.Errorf("backend Host = %q, want %q (preserved)", got.Host, host)
			}
			if v := got.Header.Get("X-Client"); v != "c1" {
				t.Errorf("backend X-Client = %q", v)
			}
			if v := got.Header.Get("Accept-Encoding"); v != "gzip" {
				t.Errorf("backend Accept-Encoding = %q, want it forwarded untouched", v)
			}
			if resp.StatusCode != http.StatusTeapot || body != "short and stout" {
				t.Errorf("client got %d %q", resp.StatusCode, body)
			}
			if v := resp.Header.Values("X-Backend"); joined(v) != "a | b" {
				t.Errorf("X-Backend = %q", v)
			}
			if v := resp.Header.Values("Set-Cookie"); joined(v) != "s=1 | t=2" {
				t.Errorf("Set-Cookie = %q", v)
			}
			if v := resp.Header.Get("Content-Type"); v != "application/x-test" {
				t.Errorf("Content-Type = %q", v)
			}
			if v := resp.Header.Get("X-Sidemesh-Error"); v != "" {
				t.Errorf("X-Sidemesh-Error = %q on a proxied response", v)
			}
		})
	}
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestRequestID(t *testing.T) {
	rec := &recorder{}
	backend := startBackend(t, h1, rec)
	addr, _ := startOutbound(t, "catalog", upstreamOpts{}, hostPort(backend))
	c := newClient(t, addr, h1)

	get(t, c, "http://catalog/", nil)
	first := rec.last(t).Header.Values("X-Request-Id")
	if len(first) != 1 || !uuidV4.MatchString(first[0]) {
		t.Fatalf("generated X-Request-Id = %q, want one UUID v4", first)
	}
	get(t, c, "http://catalog/", nil)
	if second := rec.last(t).Header.Get("X-Request-Id"); second == first[0] || !uuidV4.MatchString(second) {
		t.Errorf("second generated X-Request-Id = %q (first %q), want a new UUID v4", second, first[0])
	}

	get(t, c, "http://catalog/", http.Header{"X-Request-Id": {"caller-chosen-id"}})
	if v := rec.last(t).Header.Values("X-Request-Id"); joined(v) != "caller-chosen-id" {
		t.Errorf("X-Request-Id = %q, want the caller's kept", v)
	}
}

// rawRequest writes req verbatim to addr and reads the response.
func rawRequest(t testing.TB, addr, req string) *http.Response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func TestHopByHopHeadersAreStripped(t *testing.T) {
	rec := &recorder{answer: func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "X-Resp-Hop")
		w.Header().Set("X-Resp-Hop", "backend-only")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-Resp-End", "kept")
	}}
	backend := startBackend(t, h1, rec)
	hopByHop := []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Transfer-Encoding", "Upgrade", "X-Custom"}

	for _, tc := range []struct {
		name    string
		trusted bool
		te      string // the TE header the client sends
		wantTE  string // the TE header the backend must see
	}{
		{name: "untrusted", te: "gzip"},
		{name: "untrusted TE trailers", te: "trailers, deflate", wantTE: "trailers"},
		{name: "trusted", trusted: true, te: "gzip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := upstreamOpts{}
			if tc.trusted {
				o.Trusted = trustLoopback
			}
			addr, _ := startOutbound(t, "catalog", o, hostPort(backend))
			resp := rawRequest(t, addr, "POST /hop HTTP/1.1\r\n"+
				"Host: catalog\r\n"+
				"Connection: X-Forwarded-For, X-Custom\r\n"+
				"Keep-Alive: timeout=5\r\n"+
				"Proxy-Connection: keep-alive\r\n"+
				"TE: "+tc.te+"\r\n"+
				"Upgrade: foo/1\r\n"+
				"X-Custom: for-the-proxy-only\r\n"+
				"X-Forwarded-For: 6.6.6.6\r\n"+
				"X-End-To-End: kept\r\n"+
				"Transfer-Encoding: chunked\r\n"+
				"\r\n"+
				"5\r\nhello\r\n0\r\n\r\n")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			got := rec.last(t)
			if got.Body != "hello" {
				t.Errorf("backend body = %q", got.Body)
			}
			for _, h := range hopByHop {
				if h == "Te" && tc.wantTE != "" {
					continue
				}
				if v, ok := got.Header[h]; ok {
					t.Errorf("backend got hop-by-hop %s: %q", h, v)
				}
			}
			if v := got.Header.Values("Te"); tc.wantTE != "" && joined(v) != tc.wantTE {
				t.Errorf("backend TE = %q, want %q", v, tc.wantTE)
			}
			// X-Forwarded-For was named in Connection: it is for this hop
			// only, trusted peer or not, and the proxy sets its own.
			if v := got.Header.Values("X-Forwarded-For"); joined(v) != "127.0.0.1" {
				t.Errorf("backend X-Forwarded-For = %q, want only the proxy-set 127.0.0.1", v)
			}
			if v := got.Header.Get("X-End-To-End"); v != "kept" {
				t.Errorf("backend X-End-To-End = %q", v)
			}
			for _, h := range []string{"Connection", "X-Resp-Hop", "Keep-Alive"} {
				if v, ok := resp.Header[h]; ok {
					t.Errorf("client got backend's hop-by-hop %s: %q", h, v)
				}
			}
			if v := resp.Header.Get("X-Resp-End"); v != "kept" {
				t.Errorf("client X-Resp-End = %q", v)
			}
		})
	}
}

func TestForwardedHeaders(t *testing.T) {
	rec := &recorder{}
	backend := startBackend(t, h1, rec)
	forged := http.Header{
		"X-Forwarded-For":   {"10.1.1.1, 10.2.2.2"},
		"X-Forwarded-Host":  {"api.example.com"},
		"X-Forwarded-Proto": {"https"},
		"Forwarded":         {"for=10.1.1.1;proto=https"},
	}
	for _, tc := range []struct {
		name               string
		trusted            bool
		hdr                http.Header
		xff, xfh, xfp, fwd string
	}{
		{name: "untrusted without", xff: "127.0.0.1", xfh: "catalog.mesh", xfp: "http"},
		{name: "untrusted forged", hdr: forged, xff: "127.0.0.1", xfh: "catalog.mesh", xfp: "http"},
		{name: "trusted without", trusted: true, xff: "127.0.0.1", xfh: "catalog.mesh", xfp: "http"},
		{name: "trusted chain", trusted: true, hdr: forged,
			xff: "10.1.1.1, 10.2.2.2, 127.0.0.1", xfh: "api.example.com", xfp: "https", fwd: "for=10.1.1.1;proto=https"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := upstreamOpts{}
			if tc.trusted {
				o.Trusted = trustLoopback
			}
			addr, _ := startOutbound(t, "catalog", o, hostPort(backend))
			get(t, newClient(t, addr, h1), "http://catalog.mesh/", tc.hdr)
			got := rec.last(t).Header
			if v := got.Values("X-Forwarded-For"); joined(v) != tc.xff {
				t.Errorf("X-Forwarded-For = %q, want %q", v, tc.xff)
			}
			if v := got.Values("X-Forwarded-Host"); joined(v) != tc.xfh {
				t.Errorf("X-Forwarded-Host = %q, want %q", v, tc.xfh)
			}
			if v := got.Values("X-Forwarded-Proto"); joined(v) != tc.xfp {
				t.Errorf("X-Forwarded-Proto = %q, want %q", v, tc.xfp)
			}
			if v := got.Values("Forwarded"); joined(v) != tc.fwd {
				t.Errorf("Forwarded = %q, want %q", v, tc.fwd)
			}
		})
	}
}

func TestUpstreamFailures(t *testing.T) {
	stop := make(chan struct{})
	hang := startBackend(t, h1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}))
	t.Cleanup(func() { close(stop) }) // runs before hang.Close

	for _, tc := range []struct {
		name     string
		backends []string
		timeout  time.Duration
		status   int
		kind     string
		min, max time.Duration
	}{
		{name: "connect failure", backends: []string{deadAddr(t)}, status: 503, kind: "connect_failure", max: time.Second},
		{name: "no endpoints", status: 503, kind: "no_endpoints", max: time.Second},
		{name: "timeout", backends: []string{hostPort(hang)}, timeout: 200 * time.Millisecond,
			status: 504, kind: "timeout", min: 200 * time.Millisecond, max: 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs logBuffer
			rp := &recordingPicker{}
			o := upstreamOpts{Timeout: tc.timeout, Logger: logs.logger(),
				Wrap: func(p balancer.Picker) balancer.Picker { rp.Picker = p; return rp }}
			addr, _ := startOutbound(t, "catalog", o, tc.backends...)
			c := newClient(t, addr, h1)

			for _, proto := range []string{"GET", "POST"} {
				req, _ := http.NewRequestWithContext(testCtx(t, testTimeout), proto, "http://catalog/x", strings.NewReader("body"))
				start := time.Now()
				resp, body := do(t, c, req)
				elapsed := time.Since(start)
				if resp.StatusCode != tc.status || resp.Header.Get("X-Sidemesh-Error") != tc.kind {
					t.Errorf("%s: got %d %s %q; want %d %s", proto, resp.StatusCode, resp.Header.Get("X-Sidemesh-Error"), body, tc.status, tc.kind)
				}
				if !strings.Contains(body, `"catalog"`) {
					t.Errorf("body %q does not name the upstream", body)
				}
				if elapsed < tc.min || elapsed > tc.max {
					t.Errorf("%s: answered after %v, want between %v and %v", proto, elapsed, tc.min, tc.max)
				}
			}
			if len(tc.backends) > 0 {
				for _, r := range rp.waitResults(t, 2) {
					if r.Err == nil {
						t.Errorf("balancer result %+v: want the failure reported", r)
					}
				}
			}
			if !strings.Contains(logs.String(), "kind="+tc.kind) {
				t.Errorf("log does not record kind=%s:\n%s", tc.kind, logs.String())
			}
		})
	}
}

func TestClientHangUpIsNotAnUpstreamFailure(t *testing.T) {
	arrived := make(chan struct{}, 1)
	backendDone := make(chan struct{}, 1)
	backend := startBackend(t, h1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-r.Context().Done() // the proxy cancels its request when the client leaves
		backendDone <- struct{}{}
	}))
	var logs logBuffer
	rp := &recordingPicker{}
	addr, _ := startOutbound(t, "catalog", upstreamOpts{Logger: logs.logger(),
		Wrap: func(p balancer.Picker) balancer.Picker { rp.Picker = p; return rp }}, hostPort(backend))
	c := newClient(t, addr, h1)

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://catalog/slow", nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	waitFor(t, arrived, "request at the backend")
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("client error = %v, want context.Canceled", err)
	}
	waitFor(t, backendDone, "backend to see the cancellation")

	res := rp.waitResults(t, 1)
	if !res[0].Local {
		t.Errorf("client hang-up reported to the balancer as endpoint failure: %+v", res[0])
	}
	if strings.Contains(logs.String(), "level=WARN") || strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("client hang-up logged as a proxy error:\n%s", logs.String())
	}
}

// waitFor waits for a value on ch or fails the test after a deadline.
func waitFor[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// TestConnectionReusedAfterFailureWithUnreadBody: a failed upstream leaves
// the client's request body unread. The HTTP/1.1 connection must still
// carry the next request (golang.org/issue/68560 made the server panic and
// drop it in full-duplex mode).
func TestConnectionReusedAfterFailureWithUnreadBody(t *testing.T) {
	addr, _ := startOutbound(t, "catalog", upstreamOpts{}, deadAddr(t))
	c := newClient(t, addr, h1)
	for i := range 4 {
		reused := false
		trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) { reused = ci.Reused }}
		ctx := httptrace.WithClientTrace(testCtx(t, testTimeout), trace)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://catalog/upload",
			strings.NewReader(strings.Repeat("b", 10000)))
		resp, _ := do(t, c, req)
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("request %d: status %d", i, resp.StatusCode)
		}
		if i > 0 && !reused {
			t.Errorf("request %d: connection not reused", i)
		}
	}
}

// TestTimeoutBoundsHeadersNotBody: the upstream Timeout is the wait for
// response headers; a body streaming for longer is not cut.
func TestTimeoutBoundsHeadersNotBody(t *testing.T) {
	const timeout = 100 * time.Millisecond
	backend := startBackend(t, h1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fw := newFlushWriter(w)
		for i := range 5 {
			fmt.Fprintf(fw, "part %d\n", i)
			time.Sleep(timeout / 2) // the slow body under test
		}
	}))
	addr, _ := startOutbound(t, "catalog", upstreamOpts{Timeout: timeout}, hostPort(backend))
	resp, body := get(t, newClient(t, addr, h1), "http://catalog/slow-body", nil)
	if resp.StatusCode != 200 || strings.Count(body, "part") != 5 {
		t.Errorf("got %d %q", resp.StatusCode, body)
	}
}
