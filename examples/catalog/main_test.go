package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestItems(t *testing.T) {
	h := newHandler("catalog-7", 0, slog.New(slog.DiscardHandler))
	req := httptest.NewRequest(http.MethodGet, "/items", nil)
	req.Header.Set("X-Request-Id", "abc123")
	req.Header.Set(peerHeader, "spiffe://mesh.local/ns/default/svc/frontend")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)

	if rec.Code != http.StatusOK {
		t.Fatalf("status %d, want 200", rec.Code)
	}
	var got itemsResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatalf("body %q: %v", rec.Body, err)
	}
	if got.Instance != "catalog-7" || got.RequestID != "abc123" || len(got.Items) == 0 ||
		got.Peer != "spiffe://mesh.local/ns/default/svc/frontend" {
		t.Errorf("got %+v, want instance catalog-7, request_id abc123, some items and the peer's SPIFFE ID", got)
	}
}

func TestRoutes(t *testing.T) {
	srv := httptest.NewServer(newHandler("c", 0, slog.New(slog.DiscardHandler)))
	defer srv.Close()
	for _, tt := range []struct {
		method, path string
		want         int
	}{
		{http.MethodGet, "/healthz", http.StatusOK},
		{http.MethodGet, "/nope", http.StatusNotFound},
		{http.MethodPost, "/items", http.StatusMethodNotAllowed},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), tt.method, srv.URL+tt.path, nil)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s %s: status %d, want %d", tt.method, tt.path, resp.StatusCode, tt.want)
		}
	}
}
