// Command catalog is a tiny product-catalog HTTP service for the sidemesh
// examples. GET /items answers with the instance name, a few products, the
// X-Request-Id the request carried and the caller's SPIFFE ID from
// X-Sidemesh-Peer-Identity (set by the sidecar when mutual TLS is on), so
// a caller can see which instance served it, that the request ID crossed
// the mesh, and who the catalog's sidecar vouched for.
//
// Usage:
//
//	catalog -listen 127.0.0.1:8081 -instance catalog-1 -latency 20ms
//
// It logs with log/slog to stderr and shuts down gracefully on SIGINT or
// SIGTERM.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// items is the whole product catalog.
var items = []string{"espresso machine", "burr grinder", "milk jug"}

// peerHeader is where a sidemesh sidecar with mutual TLS puts the
// caller's verified SPIFFE ID (the default tls.identity_header).
const peerHeader = "X-Sidemesh-Peer-Identity"

// itemsResponse is the body of GET /items.
type itemsResponse struct {
	Instance  string   `json:"instance"`
	Items     []string `json:"items"`
	RequestID string   `json:"request_id"`
	// Peer is the caller's SPIFFE ID, as the sidecar vouched for it;
	// empty without mutual TLS.
	Peer string `json:"peer,omitempty"`
}

func main() {
	if err := run(); err != nil {
		slog.Error("catalog stopped", "err", err)
		os.Exit(1)
	}
}

// run parses the flags and serves until SIGINT or SIGTERM.
func run() error {
	listen := flag.String("listen", "127.0.0.1:8081", "`address` to listen on")
	instance := flag.String("instance", "catalog", "instance `name` reported in responses")
	latency := flag.Duration("latency", 0, "delay added to every /items request")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("instance", *instance)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, *listen, newHandler(*instance, *latency, log), *latency, log)
}

// newHandler returns the service's routes: GET /items and GET /healthz.
// Each /items request waits latency first, or less if the client goes away.
func newHandler(instance string, latency time.Duration, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /items", func(w http.ResponseWriter, r *http.Request) {
		if latency > 0 {
			t := time.NewTimer(latency)
			defer t.Stop()
			select {
			case <-t.C:
			case <-r.Context().Done():
				return
			}
		}
		id, peer := r.Header.Get("X-Request-Id"), r.Header.Get(peerHeader)
		if peer != "" {
			log.Info("items", "request_id", id, "peer", peer, "remote", r.RemoteAddr)
		} else {
			log.Info("items", "request_id", id, "remote", r.RemoteAddr)
		}
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(itemsResponse{Instance: instance, Items: items, RequestID: id, Peer: peer}); err != nil {
			log.Warn("write response", "err", err)
		}
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// serve runs h on addr until ctx is done, then shuts down gracefully,
// giving in-flight requests up to 5s. The write timeout leaves room for
// the configured latency.
func serve(ctx context.Context, addr string, h http.Handler, latency time.Duration, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10*time.Second + latency,
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
