package sticky_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
	"github.com/sidemesh/sidemesh/sidecar/sticky"
)

// discardWriter is a ResponseWriter that keeps nothing.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(int)             {}

// BenchmarkStickyLookup is the sticky filter's cost per request on a hit
// (a session's token hashed, found in the table, handed to the balancer,
// the response settled), against the same request with no filter, on
// one edge: the table lookup is local; no gossip or owner exchange is on
// a hit's path.
func BenchmarkStickyLookup(b *testing.B) {
	pool, err := gossip.Start(gossip.Config{NodeName: "bench", Bind: "127.0.0.1:0", Insecure: true, Profile: "local", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Shutdown()
	keys, err := sticky.NewKeys(make([]byte, sticky.KeySize))
	if err != nil {
		b.Fatal(err)
	}
	table := sticky.NewTable(pool.Store(), keys, sticky.TableOptions{ClockSkew: 5 * time.Second})
	for _, mode := range []string{config.StickyHeaderMode, config.StickyCookieMode} {
		rc := &config.Route{Name: "shop-" + mode, Sticky: &config.Sticky{
			Mode: mode, Header: "X-User", IdleTimeout: 30 * time.Minute, AbsoluteTimeout: 12 * time.Hour,
			OnUnavailable: config.StickyFallback, MaxSessions: 100_000,
			Cookie: config.StickyCookie{Name: "sm_shop", Path: "/", Secure: true, HTTPOnly: true, SameSite: "strict"},
		}}
		next := pipeline.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			info := pipeline.InfoFrom(r.Context())
			info.Upstream, info.EndpointID = "app", "app-1"
			w.WriteHeader(200)
			return nil
		})
		filtered := pipeline.Chain(next, table.Route(rc).Filter())
		// A first request begins the session; its token is reused.
		req := httptest.NewRequest("GET", "http://shop/cart", nil)
		req.Header.Set("X-User", "user-1")
		info := &pipeline.Info{}
		w := &discardWriter{h: http.Header{}}
		if err := filtered.ServeHTTP(w, req.WithContext(pipeline.WithInfo(context.Background(), info))); err != nil {
			b.Fatal(err)
		}
		if c := w.h.Get("Set-Cookie"); c != "" {
			ck, err := http.ParseSetCookie(c)
			if err != nil {
				b.Fatal(err)
			}
			req.AddCookie(&http.Cookie{Name: ck.Name, Value: ck.Value})
		}
		for _, h := range []struct {
			name string
			h    pipeline.Handler
		}{{"none", next}, {mode, filtered}} {
			b.Run(fmt.Sprintf("%s/%s", mode, h.name), func(b *testing.B) {
				info := &pipeline.Info{}
				r := req.WithContext(pipeline.WithInfo(context.Background(), info))
				b.ReportAllocs()
				for b.Loop() {
					*info = pipeline.Info{}
					clear(w.h)
					h.h.ServeHTTP(w, r)
				}
				if h.name != "none" && info.Sticky != sticky.OutcomeHit {
					b.Fatalf("outcome %q, want a hit", info.Sticky)
				}
			})
		}
	}
}
