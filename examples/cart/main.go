// Command cart is a tiny shopping-cart HTTP service for the sidemesh
// examples. It keeps carts in memory, in this instance only: a client that
// lands on another instance sees an empty cart, which is what the edge's
// sticky sessions are for.
//
//	POST /cart/items?item=NAME  add NAME to the caller's cart
//	GET  /cart                  the caller's cart
//	GET  /healthz               200
//
// The cart is named by the cart_id cookie; a request without one gets a
// new cart and the cookie. Both answers are
//
//	{"instance": "cart-1", "cart_id": "...", "items": ["..."], "peer": "spiffe://..."}
//
// with peer the caller's SPIFFE ID when its sidecar set
// X-Sidemesh-Peer-Identity (mutual TLS).
//
// Usage:
//
//	cart -listen 127.0.0.1:8082 -instance cart-1
//
// It logs with log/slog to stderr and shuts down gracefully on SIGINT or
// SIGTERM.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// peerHeader is where a sidemesh sidecar with mutual TLS puts the
// caller's verified SPIFFE ID (the default tls.identity_header).
const peerHeader = "X-Sidemesh-Peer-Identity"

// cookieName names a client's cart.
const cookieName = "cart_id"

// Bounds that keep a public example from growing without limit.
const (
	maxCarts     = 10000
	maxItems     = 100
	maxItemBytes = 100
)

// cartResponse is the body of both routes.
type cartResponse struct {
	Instance string   `json:"instance"`
	CartID   string   `json:"cart_id"`
	Items    []string `json:"items"`
	// Peer is the caller's SPIFFE ID, as the sidecar vouched for it;
	// empty without mutual TLS.
	Peer string `json:"peer,omitempty"`
}

func main() {
	if err := run(); err != nil {
		slog.Error("cart stopped", "err", err)
		os.Exit(1)
	}
}

// run parses the flags and serves until SIGINT or SIGTERM.
func run() error {
	listen := flag.String("listen", "127.0.0.1:8082", "`address` to listen on")
	instance := flag.String("instance", "cart", "instance `name` reported in responses")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("instance", *instance)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, *listen, newHandler(*instance, log), log)
}

// carts holds every cart of this instance. Safe for concurrent use.
type carts struct {
	mu    sync.Mutex
	items map[string][]string
}

// get returns a copy of cart id's items (nil for an unknown cart).
func (c *carts) get(id string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.items[id]...)
}

// add appends item to cart id and returns the cart's items, or an error
// when a bound is reached.
func (c *carts) add(id, item string) ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cur, ok := c.items[id]
	if !ok && len(c.items) >= maxCarts {
		return nil, errors.New("too many carts")
	}
	if len(cur) >= maxItems {
		return nil, fmt.Errorf("a cart holds at most %d items", maxItems)
	}
	cur = append(cur, item)
	c.items[id] = cur
	return append([]string(nil), cur...), nil
}

// newHandler returns the service's routes.
func newHandler(instance string, log *slog.Logger) http.Handler {
	store := &carts{items: make(map[string][]string)}
	answer := func(w http.ResponseWriter, r *http.Request, id string, items []string) {
		if items == nil {
			items = []string{}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if err := json.NewEncoder(w).Encode(cartResponse{Instance: instance, CartID: id, Items: items, Peer: r.Header.Get(peerHeader)}); err != nil {
			log.Warn("write response", "err", err)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /cart", func(w http.ResponseWriter, r *http.Request) {
		id := cartID(w, r)
		answer(w, r, id, store.get(id))
	})
	mux.HandleFunc("POST /cart/items", func(w http.ResponseWriter, r *http.Request) {
		item := r.URL.Query().Get("item")
		if item == "" || len(item) > maxItemBytes {
			http.Error(w, fmt.Sprintf("want ?item= with 1 to %d bytes", maxItemBytes), http.StatusBadRequest)
			return
		}
		id := cartID(w, r)
		items, err := store.add(id, item)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInsufficientStorage)
			return
		}
		log.Info("added", "cart_id", id, "item", item, "peer", r.Header.Get(peerHeader))
		answer(w, r, id, items)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// cartID returns the request's cart ID, or a new one set as a cookie.
func cartID(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(cookieName); err == nil && len(c.Value) == 32 {
		if _, err := hex.DecodeString(c.Value); err == nil {
			return c.Value
		}
	}
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	id := hex.EncodeToString(b[:])
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode})
	return id
}

// serve runs h on addr until ctx is done, then shuts down gracefully,
// giving in-flight requests up to 5s.
func serve(ctx context.Context, addr string, h http.Handler, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String())

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
