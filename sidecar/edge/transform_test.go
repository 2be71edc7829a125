package edge_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// startTransformBackend serves the responses TestTransform edits:
// /echo answers with the request's body and query inside a JSON
// object, with two Set-Cookie headers; /gzip, a gzip-encoded JSON
// object without a Content-Length; /text, JSON-looking text; /big, a
// JSON object of 5000 bytes; /events, one server-sent event, then a
// second once release is closed.
func startTransformBackend(t *testing.T, release <-chan struct{}) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Add("Set-Cookie", "session=abc; Path=/; HttpOnly")
		w.Header().Add("Set-Cookie", "theme=dark; Expires=Wed, 21 Oct 2026 07:28:00 GMT")
		fmt.Fprintf(w, `{"id":9007199254740993,"secret":"s","request":%s,"query":%q,"length":%d}`, body, r.URL.RawQuery, r.ContentLength)
	})
	mux.HandleFunc("/gzip", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		io.WriteString(zw, `{"id":9007199254740993,"secret":"s","items":[1,2,3]}`)
		zw.Close()
	})
	mux.HandleFunc("/text", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, `{"secret":"s"}`)
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"secret":"s","pad":"%s"}`, strings.Repeat("x", 5000-len(`{"secret":"s","pad":""}`)))
	})
	mux.HandleFunc("/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"secret\":1}\n\n")
		http.NewResponseController(w).Flush()
		<-release
		io.WriteString(w, "data: {\"secret\":2}\n\n")
	})
	ln := meshtest.Listen(t)
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// TestTransform: request body and query edits, response field changes
// with an int64 id exact, several Set-Cookie headers kept apart, a gzip
// response decoded and encoded again, a text body and an oversized one
// passed unchanged (the latter with the warning header), and an event
// stream not held: the client reads the first event while the backend
// waits to send the second.
func TestTransform(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	app := startTransformBackend(t, release)
	ln := meshtest.Listen(t)
	addr := ln.Addr().String()
	startEdge(t, fmt.Sprintf(`
edge:
  listeners: [{ listen: %s }]
  routes:
    - name: api
      transform:
        max_body_bytes: 4096
        request:
          json: { rename: { name: full_name }, set: { source: edge } }
          query: { rename: { q: search }, remove: [debug] }
        response:
          json: { remove: [secret], set: { meta.edge: true } }
      backends: [{ service: app }]
upstreams:
  - { service: app, endpoints: [{ address: %s }] }
`, addr, app), ln)
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	do := func(method, target, body string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, "http://"+addr+target, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "api.example.com"
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, target, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("%s %s: reading the body: %v", method, target, err)
		}
		return resp, string(b)
	}

	t.Run("request and response", func(t *testing.T) {
		resp, body := do("POST", "/echo?q=go&debug=1&page=2", `{"id":9007199254740993,"name":"Ada"}`)
		sent := `{"id":9007199254740993,"full_name":"Ada","source":"edge"}`
		want := fmt.Sprintf(`{"id":9007199254740993,"request":%s,"query":"search=go&page=2","length":%d,"meta":{"edge":true}}`, sent, len(sent))
		if resp.StatusCode != 200 || body != want {
			t.Errorf("%d %s\nwant %s", resp.StatusCode, body, want)
		}
		if cl := resp.ContentLength; cl != int64(len(body)) {
			t.Errorf("Content-Length %d for %d bytes", cl, len(body))
		}
		cookies := resp.Header.Values("Set-Cookie")
		if len(cookies) != 2 || cookies[0] != "session=abc; Path=/; HttpOnly" || cookies[1] != "theme=dark; Expires=Wed, 21 Oct 2026 07:28:00 GMT" {
			t.Errorf("Set-Cookie lines %q, want the backend's two", cookies)
		}
	})
	t.Run("gzip", func(t *testing.T) {
		resp, body := do("GET", "/gzip", "")
		if resp.Header.Get("Content-Encoding") != "gzip" || resp.ContentLength != int64(len(body)) {
			t.Fatalf("Content-Encoding %q, Content-Length %d for %d bytes", resp.Header.Get("Content-Encoding"), resp.ContentLength, len(body))
		}
		zr, err := gzip.NewReader(strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		plain, err := io.ReadAll(zr)
		if want := `{"id":9007199254740993,"items":[1,2,3],"meta":{"edge":true}}`; err != nil || string(plain) != want {
			t.Errorf("decoded %s (%v), want %s", plain, err, want)
		}
	})
	t.Run("text passes", func(t *testing.T) {
		resp, body := do("GET", "/text", "")
		if body != `{"secret":"s"}` || resp.Header.Get("X-Sidemesh-Transform") != "" {
			t.Errorf("%q, warning %q", body, resp.Header.Get("X-Sidemesh-Transform"))
		}
	})
	t.Run("oversized passes with warning", func(t *testing.T) {
		resp, body := do("GET", "/big", "")
		if len(body) != 5000 || !strings.HasPrefix(body, `{"secret":"s"`) {
			t.Errorf("%d bytes, starting %.20q; want the backend's 5000 unchanged", len(body), body)
		}
		if w := resp.Header.Get("X-Sidemesh-Transform"); w != "skipped; body too large" {
			t.Errorf("X-Sidemesh-Transform %q", w)
		}
	})
	t.Run("event stream not held", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "http://"+addr+"/events", nil)
		req.Host = "api.example.com"
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		br := bufio.NewReader(resp.Body)
		// The backend sends the second event only once release is
		// closed, after this read: were the stream held, it would not
		// return (and the client's timeout would fail the test).
		first, err := br.ReadString('\n')
		if err != nil || first != "data: {\"secret\":1}\n" {
			t.Fatalf("first event %q, %v", first, err)
		}
		once.Do(func() { close(release) })
		rest, err := io.ReadAll(br)
		if err != nil || !bytes.Equal(rest, []byte("\ndata: {\"secret\":2}\n\n")) {
			t.Errorf("rest %q, %v", rest, err)
		}
	})
}
