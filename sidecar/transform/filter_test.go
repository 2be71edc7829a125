package transform

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

// newFilter returns the filter of a transform that edits response
// fields (removes "secret", sets "edge": true) and, for requests,
// renames "name" to "full_name" and the query parameter q to search.
func newFilter(t *testing.T, max int) *Filter {
	t.Helper()
	f, err := New(&config.Transform{
		MaxBodyBytes: max,
		Request: &config.RequestTransform{
			JSON:  &config.JSONTransform{Rename: map[string]string{"name": "full_name"}},
			Query: &config.QueryTransform{Rename: map[string]string{"q": "search"}},
		},
		Response: &config.ResponseTransform{JSON: &config.JSONTransform{Remove: []string{"secret"}, Set: map[string]config.JSONValue{"edge": config.JSONValue("true")}}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func serve(f *Filter, r *http.Request, h pipeline.HandlerFunc) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	if err := f.Serve(rec, r, h); err != nil {
		rec.Code = 599
	}
	return rec
}

func TestFilterResponse(t *testing.T) {
	f := newFilter(t, 1024)
	big := `{"secret":1,"pad":"` + strings.Repeat("x", 2000) + `"}`
	gz := func(s string) string {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		io.WriteString(zw, s)
		zw.Close()
		return b.String()
	}
	for _, tc := range []struct {
		name     string
		header   map[string]string
		status   int
		body     []string // written in these pieces, with a flush after each
		want     string
		warn     string
		gunzip   bool
		noLength bool // the response must not get a Content-Length
	}{
		{name: "json", header: map[string]string{"Content-Type": "application/json"}, body: []string{`{"id":1,"secret":"s"}`}, want: `{"id":1,"edge":true}`},
		{name: "problem+json error", status: 404, header: map[string]string{"Content-Type": "application/problem+json; charset=utf-8"}, body: []string{`{"secret":1}`}, want: `{"edge":true}`},
		{name: "pieces and flushes", header: map[string]string{"Content-Type": "application/json"}, body: []string{`{"id":90071992547409`, `93,"secret":`, `"s"}`}, want: `{"id":9007199254740993,"edge":true}`},
		{name: "text passes", header: map[string]string{"Content-Type": "text/plain"}, body: []string{`{"secret":1}`}, want: `{"secret":1}`, noLength: true},
		{name: "no content type passes", body: []string{`{"secret":1}`}, want: `{"secret":1}`, noLength: true},
		{name: "invalid JSON passes with warning", header: map[string]string{"Content-Type": "application/json"}, body: []string{`{"secret":`}, want: `{"secret":`, warn: WarnInvalid},
		{name: "not an object passes", header: map[string]string{"Content-Type": "application/json"}, body: []string{`[1,2]`}, want: `[1,2]`},
		{name: "empty body passes", header: map[string]string{"Content-Type": "application/json"}, body: nil, want: ``, noLength: true},
		{name: "content length too large", header: map[string]string{"Content-Type": "application/json", "Content-Length": strconv.Itoa(len(big))}, body: []string{big}, want: big, warn: WarnTooLarge},
		{name: "grows too large", header: map[string]string{"Content-Type": "application/json"}, body: []string{big[:1000], big[1000:]}, want: big, warn: WarnTooLarge, noLength: true},
		{name: "gzip", header: map[string]string{"Content-Type": "application/json", "Content-Encoding": "gzip"}, body: []string{gz(`{"secret":1,"id":2}`)}, want: `{"id":2,"edge":true}`, gunzip: true},
		{name: "gzip decodes too large", header: map[string]string{"Content-Type": "application/json", "Content-Encoding": "gzip"}, body: []string{gz(big)}, want: big, warn: WarnTooLarge, gunzip: true},
		{name: "broken gzip", header: map[string]string{"Content-Type": "application/json", "Content-Encoding": "gzip"}, body: []string{"not gzip"}, want: "not gzip", warn: WarnGzip},
		{name: "brotli passes", header: map[string]string{"Content-Type": "application/json", "Content-Encoding": "br"}, body: []string{"\x1b\x00"}, want: "\x1b\x00", warn: WarnEncoding, noLength: true},
		{name: "event stream passes", header: map[string]string{"Content-Type": "text/event-stream"}, body: []string{"data: {\"secret\":1}\n\n"}, want: "data: {\"secret\":1}\n\n", noLength: true},
		{name: "grpc+json passes", header: map[string]string{"Content-Type": "application/grpc+json"}, body: []string{`{"secret":1}`}, want: `{"secret":1}`, noLength: true},
		{name: "206 passes", status: 206, header: map[string]string{"Content-Type": "application/json"}, body: []string{`{"secret":1}`}, want: `{"secret":1}`, noLength: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			rec := serve(f, r, func(w http.ResponseWriter, r *http.Request) error {
				for k, v := range tc.header {
					w.Header().Set(k, v)
				}
				if tc.status != 0 {
					w.WriteHeader(tc.status)
				}
				for _, p := range tc.body {
					io.WriteString(w, p)
					http.NewResponseController(w).Flush()
				}
				return nil
			})
			got, n := rec.Body.String(), rec.Body.Len()
			if tc.gunzip {
				zr, err := gzip.NewReader(rec.Body)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(zr)
				got = string(b)
			}
			if got != tc.want {
				t.Errorf("body %q, want %q", got, tc.want)
			}
			if w := rec.Header().Get(HeaderWarning); w != tc.warn {
				t.Errorf("%s: %q, want %q", HeaderWarning, w, tc.warn)
			}
			if cl := rec.Header().Get("Content-Length"); tc.noLength && cl != "" || !tc.noLength && cl != strconv.Itoa(n) {
				t.Errorf("Content-Length %q with a body of %d bytes", cl, n)
			}
			if want := max(tc.status, 200); rec.Code != want {
				t.Errorf("status %d, want %d", rec.Code, want)
			}
		})
	}
}

func TestFilterResponseHeaders(t *testing.T) {
	f := newFilter(t, 1024)
	rec := serve(f, httptest.NewRequest("GET", "/", nil), func(w http.ResponseWriter, r *http.Request) error {
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", "12")
		h.Set("Etag", `"v1"`)
		h.Add("Set-Cookie", "a=1; Path=/")
		h.Add("Set-Cookie", "b=2, c=3; Expires=Wed, 21 Oct 2026 07:28:00 GMT")
		io.WriteString(w, `{"secret":1}`)
		return nil
	})
	if got := rec.Header().Values("Set-Cookie"); len(got) != 2 || got[0] != "a=1; Path=/" || got[1] != "b=2, c=3; Expires=Wed, 21 Oct 2026 07:28:00 GMT" {
		t.Errorf("Set-Cookie %q", got)
	}
	if got := rec.Header().Get("Etag"); got != `W/"v1"` {
		t.Errorf("ETag %q, want the weak W/\"v1\"", got)
	}
	if rec.Body.String() != `{"edge":true}` || rec.Header().Get("Content-Length") != "13" {
		t.Errorf("body %q, Content-Length %q", rec.Body, rec.Header().Get("Content-Length"))
	}
}

func TestFilterRequest(t *testing.T) {
	f := newFilter(t, 64)
	var gotBody, gotQuery string
	var gotLen int64
	backend := func(w http.ResponseWriter, r *http.Request) error {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return err
		}
		gotBody, gotQuery, gotLen = string(b), r.URL.RawQuery, r.ContentLength
		return nil
	}
	for _, tc := range []struct {
		name, ctype, in, want, warn string
		chunked                     bool
	}{
		{name: "rename", ctype: "application/json", in: `{"id":18446744073709551615,"name":"Ada"}`, want: `{"id":18446744073709551615,"full_name":"Ada"}`},
		{name: "chunked", ctype: "application/json", in: `{"name":"Ada"}`, want: `{"full_name":"Ada"}`, chunked: true},
		{name: "not JSON", ctype: "application/x-www-form-urlencoded", in: `name=Ada`, want: `name=Ada`},
		{name: "invalid JSON", ctype: "application/json", in: `{"name":`, want: `{"name":`},
		{name: "too large", ctype: "application/json", in: `{"name":"` + strings.Repeat("a", 100) + `"}`, want: `{"name":"` + strings.Repeat("a", 100) + `"}`, warn: WarnRequestTooLarge},
		{name: "too large chunked", ctype: "application/json", in: `{"name":"` + strings.Repeat("a", 100) + `"}`, want: `{"name":"` + strings.Repeat("a", 100) + `"}`, warn: WarnRequestTooLarge, chunked: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/?q=go&page=2", strings.NewReader(tc.in))
			r.Header.Set("Content-Type", tc.ctype)
			if tc.chunked {
				r.ContentLength = -1
				r.Body = io.NopCloser(io.MultiReader(strings.NewReader(tc.in)))
			}
			rec := serve(f, r, backend)
			if rec.Code != 200 {
				t.Fatalf("status %d", rec.Code)
			}
			if gotBody != tc.want || gotQuery != "search=go&page=2" {
				t.Errorf("backend got %q ?%s, want %q ?search=go&page=2", gotBody, gotQuery, tc.want)
			}
			if tc.warn == "" && gotLen != int64(len(gotBody)) {
				t.Errorf("ContentLength %d for a body of %d bytes", gotLen, len(gotBody))
			}
			if w := rec.Header().Get(HeaderWarning); w != tc.warn {
				t.Errorf("%s: %q, want %q", HeaderWarning, w, tc.warn)
			}
		})
	}
}
