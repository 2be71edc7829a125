package main

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// do sends method path with the given cookies to h and decodes the answer.
func do(t *testing.T, h http.Handler, method, path string, cookies ...*http.Cookie) (*httptest.ResponseRecorder, cartResponse) {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for _, c := range cookies {
		req.AddCookie(c)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var body cartResponse
	if rec.Code == http.StatusOK {
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("%s %s: body %q: %v", method, path, rec.Body, err)
		}
	}
	return rec, body
}

func TestCartKeepsItemsPerCookie(t *testing.T) {
	h := newHandler("cart-3", slog.New(slog.DiscardHandler))

	rec, first := do(t, h, http.MethodPost, "/cart/items?item="+url.QueryEscape("milk jug"))
	if rec.Code != http.StatusOK || first.Instance != "cart-3" || len(first.Items) != 1 || first.Items[0] != "milk jug" {
		t.Fatalf("first add: %d %+v", rec.Code, first)
	}
	cookies := rec.Result().Cookies()
	if len(cookies) != 1 || cookies[0].Name != cookieName || cookies[0].Value != first.CartID {
		t.Fatalf("first add set cookies %v, want %s=%s", cookies, cookieName, first.CartID)
	}

	rec, second := do(t, h, http.MethodPost, "/cart/items?item=grinder", cookies[0])
	if rec.Code != http.StatusOK || second.CartID != first.CartID || len(second.Items) != 2 || len(rec.Result().Cookies()) != 0 {
		t.Fatalf("second add with the cookie: %d %+v cookies %v, want the same cart with 2 items and no new cookie", rec.Code, second, rec.Result().Cookies())
	}
	if _, got := do(t, h, http.MethodGet, "/cart", cookies[0]); len(got.Items) != 2 || got.Items[1] != "grinder" {
		t.Errorf("GET /cart with the cookie: %+v", got)
	}
	if _, other := do(t, h, http.MethodGet, "/cart"); other.CartID == first.CartID || len(other.Items) != 0 {
		t.Errorf("GET /cart without a cookie: %+v, want a new, empty cart", other)
	}
	forged := &http.Cookie{Name: cookieName, Value: "../../etc"}
	if _, got := do(t, h, http.MethodGet, "/cart", forged); got.CartID == forged.Value {
		t.Errorf("a malformed cookie was used as a cart ID: %+v", got)
	}
}

func TestCartBounds(t *testing.T) {
	h := newHandler("c", slog.New(slog.DiscardHandler))
	for _, path := range []string{"/cart/items", "/cart/items?item=", "/cart/items?item=" + strings.Repeat("x", maxItemBytes+1)} {
		if rec, _ := do(t, h, http.MethodPost, path); rec.Code != http.StatusBadRequest {
			t.Errorf("POST %.40q: %d, want 400", path, rec.Code)
		}
	}
	rec, _ := do(t, h, http.MethodPost, "/cart/items?item=x")
	c := rec.Result().Cookies()[0]
	for i := 1; i < maxItems; i++ {
		do(t, h, http.MethodPost, "/cart/items?item=x", c)
	}
	if rec, _ := do(t, h, http.MethodPost, "/cart/items?item=x", c); rec.Code != http.StatusInsufficientStorage {
		t.Errorf("item %d: %d, want 507", maxItems+1, rec.Code)
	}
	if rec, _ := do(t, h, http.MethodDelete, "/cart"); rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("DELETE /cart: %d, want 405", rec.Code)
	}
}
