package consul

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/internal/meshtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// app is a local app whose /healthz answers with a settable status.
type app struct {
	srv    *httptest.Server
	status atomic.Int32
	host   string
	port   int
}

func newApp(t *testing.T) *app {
	t.Helper()
	a := &app{}
	a.status.Store(http.StatusOK)
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(int(a.status.Load()))
	}))
	t.Cleanup(a.srv.Close)
	host, port, err := net.SplitHostPort(a.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a.host = host
	a.port, _ = strconv.Atoi(port)
	return a
}

func (a *app) set(code int) { a.status.Store(int32(code)) }

// recv waits up to d for a snapshot on ch that satisfies ok, skipping
// others, and fails the test if none comes or ch is closed.
func recv(t *testing.T, ch <-chan discovery.Snapshot, d time.Duration, what string, ok func(discovery.Snapshot) bool) discovery.Snapshot {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	var seen []discovery.Snapshot
	for {
		select {
		case s, open := <-ch:
			if !open {
				t.Fatalf("channel closed while waiting for %s; saw %v", what, seen)
			}
			if ok(s) {
				return s
			}
			seen = append(seen, s)
		case <-timer.C:
			t.Fatalf("no snapshot with %s after %v; saw %v", what, d, seen)
		}
	}
}

// noSnapshot fails the test if ch delivers anything within d.
func noSnapshot(t *testing.T, ch <-chan discovery.Snapshot, d time.Duration, why string) {
	t.Helper()
	select {
	case s, open := <-ch:
		t.Fatalf("%s: got snapshot %v (open %v), want none", why, s, open)
	case <-time.After(d):
	}
}

// waitClosed fails the test unless ch is closed within d (draining it).
func waitClosed(t *testing.T, ch <-chan discovery.Snapshot, d time.Duration) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case _, open := <-ch:
			if !open {
				return
			}
		case <-timer.C:
			t.Fatalf("channel not closed %v after cancel", d)
		}
	}
}

// with returns a predicate for snapshots holding an endpoint with id and
// weight (any weight if 0).
func with(id string, weight int) func(discovery.Snapshot) bool {
	return func(s discovery.Snapshot) bool {
		i := slices.IndexFunc(s.Endpoints, func(e discovery.Endpoint) bool { return e.ID == id })
		return i >= 0 && (weight == 0 || s.Endpoints[i].Weight == weight)
	}
}

func without(id string) func(discovery.Snapshot) bool {
	return func(s discovery.Snapshot) bool { return !with(id, 0)(s) }
}

func ids(s discovery.Snapshot) []string {
	var out []string
	for _, e := range s.Endpoints {
		out = append(out, e.ID)
	}
	return out
}

// logBuffer is the log a test reads back, with a count of a substring.
type logBuffer struct{ meshtest.LogBuffer }

func (b *logBuffer) count(s string) int { return strings.Count(b.String(), s) }

func newLogger(t *testing.T) (*slog.Logger, *logBuffer) {
	t.Helper()
	b := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", b.String())
		}
	})
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
