package health

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// waitTimeout bounds every wait in these tests; the checks themselves run
// every few tens of milliseconds.
const waitTimeout = 5 * time.Second

// fastSettings checks every 20ms with the given thresholds.
func fastSettings(s Settings, healthy, unhealthy int) Settings {
	s.Interval = 20 * time.Millisecond
	s.Timeout = time.Second
	s.HealthyThreshold = healthy
	s.UnhealthyThreshold = unhealthy
	return s
}

// hit is one request an upstream served.
type hit struct {
	status int
	host   string
	uri    string
	ua     string
	proto  int // major version
}

// upstream is an httptest server that answers with a status the test sets
// (0: hang until the client gives up) and records what it served.
type upstream struct {
	*httptest.Server
	status atomic.Int32
	conns  atomic.Int32 // connections accepted

	mu   sync.Mutex
	hits []hit
}

func newUpstream(t *testing.T, status int) *upstream {
	return startUpstream(t, status, false)
}

// startUpstream starts an upstream on 127.0.0.1; h2cOnly makes it serve
// only HTTP/2 with prior knowledge.
func startUpstream(t *testing.T, status int, h2cOnly bool) *upstream {
	u := &upstream{}
	u.status.Store(int32(status))
	u.Server = httptest.NewUnstartedServer(http.HandlerFunc(u.serve))
	u.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			u.conns.Add(1)
		}
	}
	if h2cOnly {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		u.Config.Protocols = &p
	}
	u.Start()
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	status := int(u.status.Load())
	u.mu.Lock()
	u.hits = append(u.hits, hit{status, r.Host, r.RequestURI, r.UserAgent(), r.ProtoMajor})
	u.mu.Unlock()
	if status == 0 {
		<-r.Context().Done()
		return
	}
	if status >= 300 && status < 400 {
		w.Header().Set("Location", "/elsewhere")
	}
	w.WriteHeader(status)
}

// serveFunc serves h on 127.0.0.1 until the test ends and returns the
// server's "host:port".
func serveFunc(t *testing.T, h http.HandlerFunc) string {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// addr returns the server's "host:port".
func (u *upstream) addr() string { return u.Listener.Addr().String() }

// served returns the statuses served so far, in order.
func (u *upstream) served() []int {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make([]int, len(u.hits))
	for i, h := range u.hits {
		out[i] = h.status
	}
	return out
}

// lastHit returns the latest request served; it fails the test if none was.
func (u *upstream) lastHit(t *testing.T) hit {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.hits) == 0 {
		t.Fatal("upstream served no request")
	}
	return u.hits[len(u.hits)-1]
}

func (u *upstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.hits)
}

// targetList is a targets function whose answer the test changes between
// rounds; it counts the rounds.
type targetList struct {
	list  atomic.Pointer[[]Target]
	calls atomic.Int64
}

func newTargetList(ts ...Target) *targetList {
	l := &targetList{}
	l.set(ts...)
	return l
}

func (l *targetList) set(ts ...Target) { l.list.Store(&ts) }

func (l *targetList) get() []Target {
	l.calls.Add(1)
	return slices.Clone(*l.list.Load())
}

// waitRounds waits until n more rounds have started.
func (l *targetList) waitRounds(t *testing.T, n int64) {
	t.Helper()
	target := l.calls.Load() + n
	meshtest.WaitFor(t, waitTimeout, "rounds", func() bool { return l.calls.Load() >= target })
}

// flip is one setHealthy call.
type flip struct {
	id      string
	healthy bool
	served  []int // what the target's upstream had served at the call, if known
}

// recorder records setHealthy calls; servers maps target IDs to upstreams
// whose served statuses are captured at each call.
type recorder struct {
	servers map[string]*upstream

	mu    sync.Mutex
	flips []flip
}

func (r *recorder) set(id string, healthy bool) {
	f := flip{id: id, healthy: healthy}
	if u := r.servers[id]; u != nil {
		f.served = u.served()
	}
	r.mu.Lock()
	r.flips = append(r.flips, f)
	r.mu.Unlock()
}

// of returns the calls made for id.
func (r *recorder) of(id string) []flip {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []flip
	for _, f := range r.flips {
		if f.id == id {
			out = append(out, f)
		}
	}
	return out
}

// waitFlips waits until id has had n calls and returns them.
func (r *recorder) waitFlips(t *testing.T, id string, n int) []flip {
	t.Helper()
	meshtest.WaitFor(t, waitTimeout, "setHealthy calls for "+id, func() bool { return len(r.of(id)) >= n })
	return r.of(id)
}

// start runs c until the test ends, and checks that Run then returns
// promptly. The returned function stops it early.
func start(t *testing.T, c *Checker) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	stop = sync.OnceFunc(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(waitTimeout):
			t.Errorf("Run did not return within %v of cancel", waitTimeout)
		}
	})
	t.Cleanup(stop)
	return stop
}

// logRecorder is a slog.Handler that keeps every record.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecorder) WithGroup(string) slog.Handler            { return h }

func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.records = append(h.records, r.Clone())
	h.mu.Unlock()
	return nil
}

// find returns the attributes of the first record with level and message.
func (h *logRecorder) find(level slog.Level, msg string) (map[string]string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.records {
		if r.Level != level || r.Message != msg {
			continue
		}
		attrs := map[string]string{}
		r.Attrs(func(a slog.Attr) bool {
			attrs[a.Key] = a.Value.String()
			return true
		})
		return attrs, true
	}
	return nil, false
}

var _ slog.Handler = (*logRecorder)(nil)
