package transcode

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/sidemesh/sidemesh/sidecar/pipeline"
	"github.com/sidemesh/sidemesh/sidecar/transcode/transcodetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// h2cHandler is a pipeline.Handler that proxies to addr over h2c, as an
// upstream of protocol grpc does.
func h2cHandler(t *testing.T, addr string) pipeline.Handler {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p}
	t.Cleanup(tr.CloseIdleConnections)
	rp := &httputil.ReverseProxy{
		Rewrite:   func(pr *httputil.ProxyRequest) { pr.Out.URL.Scheme, pr.Out.URL.Host = "http", addr },
		Transport: tr,
	}
	return pipeline.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		rp.ServeHTTP(w, r)
		return nil
	})
}

// serve starts an HTTP server in front of h.
func serve(t *testing.T, h *Handler) string {
	t.Cleanup(h.Close)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h.ServeHTTP(w, r); err != nil {
			http.Error(w, err.Error(), pipeline.AsError(err).Status)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func listen(t *testing.T) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// setup starts the Library and a transcoder in front of it, from its
// compiled descriptors or (reflect) its server reflection.
func setup(t *testing.T, o Options, reflect bool) (*transcodetest.Library, string) {
	lib := transcodetest.Start(t, listen(t))
	o.Service, o.Handler = "library", h2cHandler(t, lib.Addr)
	if !reflect {
		d, err := Compile(transcodetest.Compile(t, false))
		if err != nil {
			t.Fatal(err)
		}
		o.Descriptors = d
	}
	return lib, serve(t, New(o))
}

func do(t *testing.T, method, u, body string, hdr ...string) (int, http.Header, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, u, rd)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s %s: %d, not JSON: %q", method, u, resp.StatusCode, b)
	}
	return resp.StatusCode, resp.Header, out
}

func TestTranscodeGetBindsPathAndQuery(t *testing.T) {
	for _, reflect := range []bool{false, true} {
		t.Run(map[bool]string{false: "descriptors", true: "reflection"}[reflect], func(t *testing.T) {
			lib, base := setup(t, Options{Headers: []string{"Authorization"}}, reflect)
			q := url.Values{"include_reviews": {"true"}, "filter.min_year": {"1990"}, "filter.genre": {"SCIENCE"}, "fields": {"a", "b"}, "revision": {"9007199254740993"}}
			code, hdr, got := do(t, "GET", base+"/v1/shelves/s%201/books/b1?"+q.Encode(), "", "Authorization", "Bearer x", "Cookie", "secret=1")
			if code != 200 {
				t.Fatalf("status %d: %v", code, got)
			}
			want := map[string]any{
				"name": "shelves/s 1/books/b1", "isbn": "9007199254740993", "genre": "FICTION", "shelfId": "s 1",
				"note": "reviews=true min_year=1990 genre=2 revision=9007199254740993 fields=a,b",
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("%s = %#v, want %#v (all: %v)", k, got[k], v, got)
				}
			}
			md := lib.Metadata()
			if v := md.Get("authorization"); len(v) != 1 || v[0] != "Bearer x" {
				t.Errorf("authorization metadata %q, want the allowed header", v)
			}
			if v := md.Get("cookie"); len(v) != 0 {
				t.Errorf("cookie metadata %q: not allowed, must not be sent", v)
			}
			if hdr.Get("Grpc-Metadata-X-Library-Version") != "1" || hdr.Get("Grpc-Trailer-X-Library-Served") != "GetBook" {
				t.Errorf("response metadata not passed on as headers: %v", hdr)
			}
		})
	}
}

func TestTranscodePostBody(t *testing.T) {
	_, base := setup(t, Options{}, false)
	code, _, got := do(t, "POST", base+"/v1/shelves/s1/books", `{"title":"Dune","isbn":"9007199254740993","genre":"SCIENCE","tags":["x","y"],"author":{"name":"Herbert","bornYear":1920}}`)
	if code != 200 {
		t.Fatalf("status %d: %v", code, got)
	}
	if got["name"] != "shelves/s1/books/new" || got["title"] != "Dune" || got["isbn"] != "9007199254740993" || got["genre"] != "SCIENCE" {
		t.Errorf("got %v", got)
	}
	if a, _ := got["author"].(map[string]any); a["bornYear"] != float64(1920) {
		t.Errorf("author %v, want bornYear 1920", got["author"])
	}
}

func TestTranscodeStatusToHTTP(t *testing.T) {
	_, base := setup(t, Options{}, false)
	code, _, got := do(t, "GET", base+"/v1/shelves/s1/books/missing", "")
	if code != 404 || got["code"] != float64(5) || !strings.Contains(got["message"].(string), "not found") {
		t.Errorf("NOT_FOUND: %d %v", code, got)
	}
	code, _, got = do(t, "GET", base+"/v1/shelves/bad/books/b", "")
	if code != 400 || got["code"] != float64(3) {
		t.Fatalf("INVALID_ARGUMENT: %d %v", code, got)
	}
	details, _ := got["details"].([]any)
	if len(details) != 1 || details[0].(map[string]any)["@type"] != "type.googleapis.com/google.rpc.BadRequest" {
		t.Errorf("details %v, want the BadRequest", got["details"])
	}
	code, _, got = do(t, "GET", base+"/v2/nothing", "")
	if code != 404 || got["code"] != float64(5) {
		t.Errorf("unbound path: %d %v", code, got)
	}
}

func TestTranscodeStrictAndLenient(t *testing.T) {
	_, strict := setup(t, Options{}, false)
	_, lenient := setup(t, Options{Lenient: true}, false)
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/v1/shelves/s/books/b?colour=red", ""},
		{"POST", "/v1/shelves/s/books", `{"title":"x","colour":"red"}`},
	} {
		if code, _, got := do(t, c.method, strict+c.path, c.body); code != 400 || got["code"] != float64(3) {
			t.Errorf("strict %s %s: %d %v, want 400", c.method, c.path, code, got)
		}
		if code, _, got := do(t, c.method, lenient+c.path, c.body); code != 200 {
			t.Errorf("lenient %s %s: %d %v, want 200", c.method, c.path, code, got)
		}
	}
	if code, _, got := do(t, "GET", strict+"/v1/shelves/s/books/b?revision=x", ""); code != 400 || !strings.Contains(got["message"].(string), "int64") {
		t.Errorf("bad int64: %d %v", code, got)
	}
}

func TestTranscodeBounds(t *testing.T) {
	lib, base := setup(t, Options{MaxRequestBytes: 64, MaxResponseBytes: 16}, false)
	code, _, got := do(t, "POST", base+"/v1/shelves/s/books", `{"title":"`+strings.Repeat("x", 100)+`"}`)
	if code != 413 {
		t.Errorf("oversized request: %d %v, want 413", code, got)
	}
	if n := lib.Calls.Load(); n != 0 {
		t.Errorf("the server saw %d calls, want none", n)
	}
	code, _, got = do(t, "GET", base+"/v1/shelves/s/books/b", "")
	if code != 502 || !strings.Contains(got["message"].(string), "max_response_bytes") {
		t.Errorf("oversized response: %d %v, want 502 naming the bound", code, got)
	}
}

func TestTranscodeServerStreamFlushesEachMessage(t *testing.T) {
	lib, base := setup(t, Options{}, false)
	step := make(chan struct{})
	lib.SetStep(step)
	resp, err := http.Get(base + "/v1/shelves/s/books:stream?count=3")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	transcodetest.ReadStream(t, resp.Body, step, "s", 3)
}

func TestTranscodeReflectionFindsNewMethod(t *testing.T) {
	old := missInterval
	missInterval = 0
	t.Cleanup(func() { missInterval = old })
	lib, base := setup(t, Options{}, true)
	if code, _, got := do(t, "DELETE", base+"/v1/shelves/s/books/b", ""); code != 404 {
		t.Fatalf("before: %d %v, want 404", code, got)
	}
	lib.SetVersion(t, true)
	code, _, got := do(t, "DELETE", base+"/v1/shelves/s/books/b", "")
	if code != 200 || got["name"] != "shelves/s/books/b" {
		t.Errorf("after the backend gained DeleteBook: %d %v", code, got)
	}
}

func TestTemplates(t *testing.T) {
	for _, c := range []struct {
		tmpl, path string
		want       []string // nil: no match
	}{
		{"/v1/shelves/{shelf}/books/{book}", "/v1/shelves/a/books/b", []string{"a", "b"}},
		{"/v1/shelves/{shelf}/books/{book}", "/v1/shelves/a/books", nil},
		{"/v1/shelves/{shelf}/books/{book}", "/v1/shelves/a/books/b/c", nil},
		{"/v1/shelves/{shelf}/books/{book}", "/v1/shelves//books/b", nil},
		{"/v1/{name=shelves/*}", "/v1/shelves/x", []string{"shelves/x"}},
		{"/v1/{name=shelves/*}", "/v1/books/x", nil},
		{"/v1/{name=files/**}", "/v1/files/a/b%2Fc", []string{"files/a/b/c"}},
		{"/v1/shelves/{shelf}/books:stream", "/v1/shelves/a/books:stream", []string{"a"}},
		{"/v1/shelves/{shelf}/books:stream", "/v1/shelves/a/books", nil},
		{"/v1/*/x", "/v1/y/x", []string{}},
		{"/v1/a%20b/{x}", "/v1/a%20b/%C3%A9", []string{"é"}},
	} {
		tm, err := parseTemplate(c.tmpl)
		if err != nil {
			t.Fatalf("%s: %v", c.tmpl, err)
		}
		got, ok := tm.match(c.path)
		if ok != (c.want != nil) || ok && strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("%s on %s: %q %v, want %q", c.tmpl, c.path, got, ok, c.want)
		}
	}
	for _, bad := range []string{"v1/x", "/v1/{x", "/v1/**/x", "/v1/{a.}", "/v1/x:", "/v1//x"} {
		if _, err := parseTemplate(bad); err == nil {
			t.Errorf("%s: parsed", bad)
		}
	}
}

func FuzzTemplate(f *testing.F) {
	for _, s := range []string{"/v1/shelves/{shelf}/books/{book}", "/v1/{name=shelves/*/books/**}:get", "/{a=**}"} {
		f.Add(s, "/v1/shelves/a/books/b")
	}
	f.Fuzz(func(t *testing.T, tmpl, path string) {
		tm, err := parseTemplate(tmpl)
		if err != nil {
			return
		}
		if vals, ok := tm.match(path); ok && len(vals) != len(tm.vars) {
			t.Fatalf("%d values for %d variables", len(vals), len(tm.vars))
		}
	})
}

// FuzzBuildRequest: whatever the path, query and body, building the
// request message fails cleanly or yields a message that encodes.
func FuzzBuildRequest(f *testing.F) {
	d, err := Compile(transcodetest.Compile(f, false))
	if err != nil {
		f.Fatal(err)
	}
	f.Add("GET", "/v1/shelves/a/books/b", "filter.min_year=3&fields=a&fields=b&revision=-1", "")
	f.Add("POST", "/v1/shelves/a/books", "book.title=x", `{"title":"t","isbn":"12","author":{"bornYear":3}}`)
	f.Add("GET", "/v1/shelves/a%2Fb/books:stream", "count=2&filter.genre=FICTION", "")
	f.Fuzz(func(t *testing.T, method, path, query, body string) {
		b, vals := d.t.match(method, path)
		if b == nil {
			return
		}
		q, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		for _, strict := range []bool{true, false} {
			msg, err := buildRequest(b, []byte(body), vals, q, strict, d.t.types)
			if err != nil {
				var re *requestError
				if !errors.As(err, &re) {
					t.Fatalf("%v is not a request error", err)
				}
				continue
			}
			if _, err := proto.Marshal(msg); err != nil {
				t.Fatalf("the message does not encode: %v", err)
			}
		}
	})
}

func TestTranscodeMultiSegmentVariablesAndResponseBody(t *testing.T) {
	_, base := setup(t, Options{}, false)
	for _, path := range []string{"/v1/shelves/s1", "/v1beta/shelves/s1"} { // the rule and its additional binding
		code, _, got := do(t, "GET", base+path, "")
		if code != 200 || got["name"] != "shelves/s1" || got["theme"] != "science fiction" {
			t.Errorf("GET %s: %d %v", path, code, got)
		}
	}
	// body "*" with a nested path variable; response_body answers the
	// book alone.
	code, _, got := do(t, "PATCH", base+"/v1/shelves/s1/books/b1", `{"book":{"title":"New","name":"ignored"}}`)
	if code != 200 || got["name"] != "shelves/s1/books/b1" || got["title"] != "New" || got["etag"] != nil {
		t.Errorf("PATCH: %d %v", code, got)
	}
}
