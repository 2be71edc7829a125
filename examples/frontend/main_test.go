package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// fakeOutbound stands in for the sidecar's outbound listener: it sends
// each request it gets on the returned channel (dropping any beyond the
// first few) and answers with status and body.
func fakeOutbound(t *testing.T, status int, body string) (*httptest.Server, <-chan *http.Request) {
	t.Helper()
	reqs := make(chan *http.Request, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case reqs <- r.Clone(context.Background()):
		default:
		}
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv, reqs
}

// traceparent is the W3C trace context the tests' requests carry.
const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// get sends GET / with X-Request-Id to a frontend whose outbound is addr.
func get(t *testing.T, addr string) *httptest.ResponseRecorder {
	t.Helper()
	return getPath(t, addr, "/")
}

// getPath sends GET path with X-Request-Id and a traceparent to a frontend
// whose outbound is addr and whose cart is the service "cart".
func getPath(t *testing.T, addr, path string) *httptest.ResponseRecorder {
	t.Helper()
	h := newHandler("fe", "catalog", "cart", newMeshClient(addr, 5*time.Second), slog.New(slog.DiscardHandler))
	req := httptest.NewRequest(http.MethodGet, path, nil).WithContext(t.Context())
	req.Header.Set("X-Request-Id", "rid-1")
	req.Header.Set("Traceparent", traceparent)
	req.Header.Set("Tracestate", "vendor=1")
	req.Header.Set(peerHeader, "spiffe://mesh.local/ns/default/svc/visitor")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestPageGoesThroughOutbound(t *testing.T) {
	srv, reqs := fakeOutbound(t, http.StatusOK, `{"instance":"catalog-2","items":["a"],"request_id":"rid-1"}`)
	rec := get(t, srv.Listener.Addr().String())

	if rec.Code != http.StatusOK {
		t.Fatalf("status %d (%s), want 200", rec.Code, rec.Body)
	}
	got := <-reqs // sent before the answer that get waited for
	if got.Host != "catalog" || got.URL.Path != "/items" || got.Header.Get("X-Request-Id") != "rid-1" {
		t.Errorf("outbound got Host %q path %q X-Request-Id %q, want catalog, /items, rid-1",
			got.Host, got.URL.Path, got.Header.Get("X-Request-Id"))
	}
	if got.Header.Get("Traceparent") != traceparent || got.Header.Get("Tracestate") != "vendor=1" {
		t.Errorf("outbound got traceparent %q tracestate %q, want the incoming trace context passed on",
			got.Header.Get("Traceparent"), got.Header.Get("Tracestate"))
	}
	var page struct {
		Frontend       string `json:"frontend"`
		RequestID      string `json:"request_id"`
		Peer           string `json:"peer"`
		UpstreamStatus int    `json:"upstream_status"`
		Catalog        struct {
			Instance string `json:"instance"`
		} `json:"catalog"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil {
		t.Fatalf("body %q: %v", rec.Body, err)
	}
	if page.Frontend != "fe" || page.RequestID != "rid-1" || page.UpstreamStatus != 200 || page.Catalog.Instance != "catalog-2" ||
		page.Peer != "spiffe://mesh.local/ns/default/svc/visitor" {
		t.Errorf("page %+v", page)
	}
}

func TestCartGoesThroughOutbound(t *testing.T) {
	srv, reqs := fakeOutbound(t, http.StatusOK, `{"instance":"cart-1","items":[]}`)
	rec := getPath(t, srv.Listener.Addr().String(), "/cart")
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d (%s), want 200", rec.Code, rec.Body)
	}
	got := <-reqs
	if got.Host != "cart" || got.URL.Path != "/cart" || got.Header.Get("Traceparent") != traceparent {
		t.Errorf("outbound got Host %q path %q traceparent %q, want cart, /cart and the incoming trace context",
			got.Host, got.URL.Path, got.Header.Get("Traceparent"))
	}
	var page cartResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil {
		t.Fatalf("body %q: %v", rec.Body, err)
	}
	if page.Frontend != "fe" || page.UpstreamStatus != 200 || !strings.Contains(string(page.Cart), `"cart-1"`) {
		t.Errorf("page %+v", page)
	}

	denied, _ := fakeOutbound(t, http.StatusForbidden, "denied\n")
	if rec := getPath(t, denied.Listener.Addr().String(), "/cart"); rec.Code != http.StatusBadGateway || !strings.Contains(rec.Body.String(), "403") {
		t.Errorf("cart answering 403: got %d %q, want 502 naming the 403", rec.Code, rec.Body)
	}
}

func TestUpstreamErrors(t *testing.T) {
	bad, _ := fakeOutbound(t, http.StatusBadGateway, "no upstream for host \"catalog\"\n")
	notJSON, _ := fakeOutbound(t, http.StatusOK, "<html>")
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()

	for _, tt := range []struct {
		name, addr, want string
	}{
		{"status", bad.Listener.Addr().String(), `502 Bad Gateway: no upstream for host "catalog"`},
		{"not json", notJSON.Listener.Addr().String(), "non-JSON: <html>"},
		{"unreachable", closed.Listener.Addr().String(), "connect"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rec := get(t, tt.addr)
			if rec.Code != http.StatusBadGateway || !strings.Contains(rec.Body.String(), tt.want) {
				t.Errorf("got %d %q, want 502 containing %q", rec.Code, rec.Body, tt.want)
			}
		})
	}
}
