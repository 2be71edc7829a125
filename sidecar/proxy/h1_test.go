package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/proxy"
)

// The HTTP/1.1 path of proxy.Transport (requests without a body), against
// an endpoint whose every byte the test chooses.

// scripted is an HTTP/1.1 endpoint that answers request n (0-based, over
// all connections) with answer(n, req), byte for byte, and closes the
// connection after it when answer says so.
type scripted struct {
	addr  string
	conns atomic.Int64 // connections accepted
	// closed receives the number of each request after which the
	// endpoint closed its connection; hungUp a value for each connection
	// the other side closed.
	closed chan int
	hungUp chan struct{}
}

func startScripted(t *testing.T, answer func(n int, req *http.Request) (raw string, closeAfter bool)) *scripted {
	t.Helper()
	return startScriptedOn(t, listen(t), answer)
}

// startScriptedOn is startScripted on ln (a TLS listener, say).
func startScriptedOn(t *testing.T, ln net.Listener, answer func(n int, req *http.Request) (raw string, closeAfter bool)) *scripted {
	t.Helper()
	s := &scripted{addr: ln.Addr().String(), closed: make(chan int, 100), hungUp: make(chan struct{}, 100)}
	var (
		n     atomic.Int64
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						if errors.Is(err, io.EOF) {
							s.hungUp <- struct{}{}
						}
						return
					}
					io.Copy(io.Discard, req.Body)
					i := int(n.Add(1) - 1)
					raw, closeAfter := answer(i, req)
					if _, err := io.WriteString(c, raw); err != nil {
						return
					}
					if closeAfter {
						c.Close()
						s.closed <- i
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return s
}

// ok is a 200 response with body.
func ok(body string) string {
	return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// newH1Transport returns a transport for the tests, closed when they end.
func newH1Transport(t *testing.T, o proxy.TransportOptions) *proxy.Transport {
	tr := proxy.NewTransport(o)
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// h1Do sends method to s through tr and returns the status and
// body, or the error.
func h1Do(ctx context.Context, tr http.RoundTripper, s *scripted, method string) (int, string, error) {
	req, _ := http.NewRequestWithContext(ctx, method, "http://"+s.addr+"/", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestH1ReusesConnections: sequential requests of every kind of bodiless
// response (a body, HEAD, 204, 304) share one connection.
func TestH1ReusesConnections(t *testing.T) {
	s := startScripted(t, func(n int, req *http.Request) (string, bool) {
		switch req.Method {
		case http.MethodHead:
			return "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false
		case http.MethodDelete:
			return "HTTP/1.1 204 No Content\r\n\r\n", false
		case http.MethodOptions:
			return "HTTP/1.1 304 Not Modified\r\n\r\n", false
		}
		return ok("hello"), false
	})
	tr := newH1Transport(t, proxy.TransportOptions{})
	ctx := testCtx(t, testTimeout)
	for i := range 20 {
		method := []string{http.MethodGet, http.MethodHead, http.MethodDelete, http.MethodOptions}[i%4]
		if _, _, err := h1Do(ctx, tr, s, method); err != nil {
			t.Fatalf("%s: %v", method, err)
		}
	}
	if n := s.conns.Load(); n != 1 {
		t.Errorf("%d connections for 20 sequential requests, want 1", n)
	}
}

// TestH1StaleConnection: an endpoint that closes an idle connection costs
// no request, whether it may be sent twice (GET: sent again on a new
// connection) or not (POST without a body: the connection is checked
// before it is used).
func TestH1StaleConnection(t *testing.T) {
	s := startScripted(t, func(n int, req *http.Request) (string, bool) {
		return ok(req.Method), true // then the endpoint closes, as on its idle timeout
	})
	tr := newH1Transport(t, proxy.TransportOptions{})
	ctx := testCtx(t, testTimeout)
	for i, method := range []string{http.MethodGet, http.MethodGet, http.MethodPost, http.MethodGet, http.MethodPost} {
		code, body, err := h1Do(ctx, tr, s, method)
		if err != nil || code != 200 || body != method {
			t.Fatalf("request %d (%s): %d %q %v", i, method, code, body, err)
		}
		waitFor(t, s.closed, "the endpoint to close the connection")
	}
}

// TestH1ResponseLongerThanAnnounced: bytes after the announced body are
// never read as the next response (a desync): the connection is dropped.
// Over TLS, the surplus of a body read in large buffers (as the proxy
// reads) stays in crypto/tls's buffer, not the transport's, once the
// body is long enough for full-size records (crypto/tls sends small ones
// for the first 128 KiB of a connection).
func TestH1ResponseLongerThanAnnounced(t *testing.T) {
	cert, roots := newCert(t, "127.0.0.1")
	first := strings.Repeat("f", 200<<10)
	answer := func(n int, req *http.Request) (string, bool) {
		if n == 0 {
			return ok(first) + ok("smuggled"), false // one write: one TLS record
		}
		return ok("second"), false
	}
	for _, tc := range []struct {
		name string
		ln   net.Listener
		tls  *tls.Config
	}{
		{"plain", listen(t), nil},
		{"TLS", tls.NewListener(listen(t), &tls.Config{Certificates: []tls.Certificate{cert}}), &tls.Config{RootCAs: roots}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startScriptedOn(t, tc.ln, answer)
			tr := newH1Transport(t, proxy.TransportOptions{TLS: tc.tls})
			ctx := testCtx(t, testTimeout)
			for _, want := range []string{first, "second"} {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.addr+"/", nil)
				resp, err := tr.RoundTrip(req)
				if err != nil {
					t.Fatal(err)
				}
				var body strings.Builder
				_, err = io.CopyBuffer(struct{ io.Writer }{&body}, resp.Body, make([]byte, 32<<10))
				resp.Body.Close()
				if err != nil || body.String() != want {
					t.Fatalf("got %d bytes %v, want %d", body.Len(), err, len(want))
				}
			}
			if n := s.conns.Load(); n != 2 {
				t.Errorf("%d connections, want 2: the first carried more than its response", n)
			}
		})
	}
}

// TestH1ResponseHeadLimit: a response head over the limit is refused, as
// http.Transport's MaxResponseHeaderBytes refuses it.
func TestH1ResponseHeadLimit(t *testing.T) {
	s := startScripted(t, func(n int, req *http.Request) (string, bool) {
		return "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("b", 2<<20) + "\r\nContent-Length: 0\r\n\r\n", true
	})
	tr := newH1Transport(t, proxy.TransportOptions{})
	_, _, err := h1Do(testCtx(t, testTimeout), tr, s, http.MethodGet)
	if err == nil || !strings.Contains(err.Error(), "exceeded 1048576 bytes") {
		t.Errorf("error %v, want the response head refused", err)
	}
}

// TestH1EarlyCloseDropsConnection: a body closed before its end closes
// its connection instead of draining it.
func TestH1EarlyCloseDropsConnection(t *testing.T) {
	s := startScripted(t, func(n int, req *http.Request) (string, bool) {
		return ok(strings.Repeat("x", 1<<20)), false
	})
	tr := newH1Transport(t, proxy.TransportOptions{})
	for range 2 {
		req, _ := http.NewRequestWithContext(testCtx(t, testTimeout), http.MethodGet, "http://"+s.addr+"/", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		io.CopyN(io.Discard, resp.Body, 10)
		resp.Body.Close()
		if _, err := resp.Body.Read(make([]byte, 1)); err == nil {
			t.Error("read after Close succeeded")
		}
	}
	if n := s.conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// TestH1Informational: 1xx responses reach the request's ClientTrace,
// which is how httputil.ReverseProxy forwards 103 Early Hints.
func TestH1Informational(t *testing.T) {
	s := startScripted(t, func(n int, req *http.Request) (string, bool) {
		return "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + ok("final"), false
	})
	tr := newH1Transport(t, proxy.TransportOptions{})
	var got []string
	ctx := httptrace.WithClientTrace(testCtx(t, testTimeout), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			got = append(got, fmt.Sprint(code, " ", h.Get("Link")))
			return nil
		},
	})
	if _, body, err := h1Do(ctx, tr, s, http.MethodGet); err != nil || body != "final" {
		t.Fatalf("got %q %v", body, err)
	}
	if len(got) != 1 || got[0] != "103 </style.css>; rel=preload" {
		t.Errorf("1xx seen: %q", got)
	}
}

// TestH1Cancel: cancelling the request's context ends a wait for the
// response at once, with the cause, and closes the connection, so the
// endpoint sees the caller leave.
func TestH1Cancel(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	s := startScripted(t, func(n int, req *http.Request) (string, bool) {
		arrived <- struct{}{}
		<-release
		return ok("late"), false
	})
	defer close(release)
	tr := newH1Transport(t, proxy.TransportOptions{})
	cause := errors.New("the caller left")
	ctx, cancel := context.WithCancelCause(testCtx(t, testTimeout))
	errc := make(chan error, 1)
	go func() {
		_, _, err := h1Do(ctx, tr, s, http.MethodGet)
		errc <- err
	}()
	waitFor(t, arrived, "the request at the endpoint")
	cancel(cause)
	if err := waitFor(t, errc, "RoundTrip to return"); !errors.Is(err, cause) {
		t.Errorf("error %v, want the cancellation's cause", err)
	}
}

// TestH1IdleTimeout: connections idle past the idle timeout are closed,
// and the next request opens a new one.
func TestH1IdleTimeout(t *testing.T) {
	s := startScripted(t, func(n int, req *http.Request) (string, bool) { return ok("x"), false })
	tr := newH1Transport(t, proxy.TransportOptions{IdleTimeout: 20 * time.Millisecond})
	for i := range 2 {
		if _, _, err := h1Do(testCtx(t, testTimeout), tr, s, http.MethodGet); err != nil {
			t.Fatal(err)
		}
		waitFor(t, s.hungUp, "the transport to close the idle connection")
		if n := s.conns.Load(); n != int64(i+1) {
			t.Errorf("%d connections after %d requests, want one each", n, i+1)
		}
	}
}

// TestH1Parallel: many requests at once over the pool, each getting its
// own response (run with -race).
func TestH1Parallel(t *testing.T) {
	s := startScripted(t, func(n int, req *http.Request) (string, bool) {
		return ok(req.URL.Query().Get("i")), n%7 == 0 // and a closed connection now and then
	})
	tr := newH1Transport(t, proxy.TransportOptions{MaxIdlePerEndpoint: 4})
	ctx := testCtx(t, testTimeout)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 50 {
				want := fmt.Sprint(g*1000 + i)
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.addr+"/?i="+want, nil)
				resp, err := tr.RoundTrip(req)
				if err != nil {
					t.Error(err)
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || string(b) != want {
					t.Errorf("got %q %v, want %q", b, err, want)
					return
				}
			}
		})
	}
	wg.Wait()
}
