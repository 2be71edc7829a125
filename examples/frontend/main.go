// Command frontend is a tiny HTTP service for the sidemesh examples that
// calls another service through its sidecar. GET / fetches
// http://catalog/items via the sidecar's outbound listener, passing on the
// X-Request-Id it received, and wraps the answer, with the caller's SPIFFE
// ID when its sidecar set X-Sidemesh-Peer-Identity (mutual TLS):
//
//	{"frontend": "frontend", "request_id": "...", "peer": "spiffe://...", "catalog": {...}, "upstream_status": 200}
//
// When the catalog cannot be reached, or answers with anything but 200 and
// JSON, GET / answers 502 with the reason as text.
//
// With -cart NAME, GET /cart fetches http://NAME/cart the same way and
// wraps it as {"frontend", "request_id", "cart", "upstream_status"}.
//
// Like every app in a mesh, it passes the W3C trace context it received
// (traceparent, tracestate, baggage) on to the calls it makes, so the
// sidecars' spans of one request join one trace.
//
// Usage:
//
//	frontend -listen 127.0.0.1:8080 -outbound 127.0.0.1:15001 [-cart cart]
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// maxBody bounds how much of the catalog's answer is read.
const maxBody = 1 << 20

// peerHeader is where a sidemesh sidecar with mutual TLS puts the
// caller's verified SPIFFE ID (the default tls.identity_header).
const peerHeader = "X-Sidemesh-Peer-Identity"

// pageResponse is the body of GET /.
type pageResponse struct {
	Frontend  string `json:"frontend"`
	RequestID string `json:"request_id"`
	// Peer is the caller's SPIFFE ID, as the sidecar vouched for it;
	// empty without mutual TLS.
	Peer           string          `json:"peer,omitempty"`
	Catalog        json.RawMessage `json:"catalog"`
	UpstreamStatus int             `json:"upstream_status"`
}

// cartResponse is the body of GET /cart.
type cartResponse struct {
	Frontend       string          `json:"frontend"`
	RequestID      string          `json:"request_id"`
	Cart           json.RawMessage `json:"cart"`
	UpstreamStatus int             `json:"upstream_status"`
}

// propagated are the request headers passed on to upstream calls: the
// request ID and the W3C trace context.
var propagated = []string{"X-Request-Id", "Traceparent", "Tracestate", "Baggage"}

func main() {
	if err := run(); err != nil {
		slog.Error("frontend stopped", "err", err)
		os.Exit(1)
	}
}

// run parses the flags and serves until SIGINT or SIGTERM.
func run() error {
	listen := flag.String("listen", "127.0.0.1:8080", "`address` to listen on")
	outbound := flag.String("outbound", "127.0.0.1:15001", "`address` of the sidecar's outbound listener")
	name := flag.String("name", "frontend", "`name` reported in responses")
	upstream := flag.String("upstream", "catalog", "mesh `service` to call")
	cart := flag.String("cart", "", "mesh `service` GET /cart calls; empty: no /cart")
	timeout := flag.Duration("timeout", 5*time.Second, "bound on each call to the upstream")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("instance", *name)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	client := newMeshClient(*outbound, *timeout)
	return serve(ctx, *listen, newHandler(*name, *upstream, *cart, client, log), *timeout+5*time.Second, log)
}

// newMeshClient returns a client that sends every request to the sidecar's
// outbound listener at outbound, whatever host its URL names: the URL's
// host becomes the Host header, which tells the sidecar which service to
// route to. Each request is bounded by timeout.
func newMeshClient(outbound string, timeout time.Duration) *http.Client {
	dialer := &net.Dialer{Timeout: 2 * time.Second}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy: nil, // the sidecar is the only proxy; ignore HTTP_PROXY
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, network, outbound)
			},
			MaxIdleConnsPerHost: 32,
			IdleConnTimeout:     60 * time.Second,
		},
	}
}

// newHandler returns the service's routes: GET / calls upstream's /items
// with client, GET /cart (when cart is not empty) calls cart's /cart,
// GET /healthz answers 200.
func newHandler(name, upstream, cart string, client *http.Client, log *slog.Logger) http.Handler {
	url := "http://" + upstream + "/items"
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-Id")
		status, body, err := fetch(r.Context(), client, url, r.Header)
		if err != nil {
			log.Warn("upstream failed", "upstream", upstream, "request_id", id, "err", err)
			http.Error(w, fmt.Sprintf("%s: %v", upstream, err), http.StatusBadGateway)
			return
		}
		log.Info("page", "request_id", id, "upstream_status", status)
		w.Header().Set("Content-Type", "application/json")
		page := pageResponse{Frontend: name, RequestID: id, Peer: r.Header.Get(peerHeader), Catalog: body, UpstreamStatus: status}
		if err := json.NewEncoder(w).Encode(page); err != nil {
			log.Warn("write response", "err", err)
		}
	})
	if cart != "" {
		cartURL := "http://" + cart + "/cart"
		mux.HandleFunc("GET /cart", func(w http.ResponseWriter, r *http.Request) {
			id := r.Header.Get("X-Request-Id")
			status, body, err := fetch(r.Context(), client, cartURL, r.Header)
			if err != nil {
				log.Warn("upstream failed", "upstream", cart, "request_id", id, "err", err)
				http.Error(w, fmt.Sprintf("%s: %v", cart, err), http.StatusBadGateway)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			if err := json.NewEncoder(w).Encode(cartResponse{Frontend: name, RequestID: id, Cart: body, UpstreamStatus: status}); err != nil {
				log.Warn("write response", "err", err)
			}
		})
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// fetch GETs url, passing on the propagated headers of in, and returns
// the status and JSON body of a 200 answer. Any other answer is an error
// that quotes the start of its body.
func fetch(ctx context.Context, client *http.Client, url string, in http.Header) (int, json.RawMessage, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	for _, name := range propagated {
		if v := in.Values(name); len(v) > 0 {
			req.Header[name] = v
		}
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil, fmt.Errorf("answered %s: %s", resp.Status, excerpt(body))
	}
	if !json.Valid(body) {
		return resp.StatusCode, nil, fmt.Errorf("answered non-JSON: %s", excerpt(body))
	}
	return resp.StatusCode, body, nil
}

// excerpt returns the first 200 bytes of b, trimmed, for an error message.
func excerpt(b []byte) []byte {
	if len(b) > 200 {
		b = b[:200]
	}
	return bytes.TrimSpace(b)
}

// serve runs h on addr until ctx is done, then shuts down gracefully,
// giving in-flight requests up to 5s. writeTimeout must leave room for the
// call to the upstream.
func serve(ctx context.Context, addr string, h http.Handler, writeTimeout time.Duration, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      writeTimeout,
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
