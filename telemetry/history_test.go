package telemetry

import (
	"context"
	"fmt"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// TestLatencyBuckets: every duration falls in a bucket whose bounds hold
// it, buckets grow by at most a quarter, and quantiles read from them are
// within 12.5% of the exact ones.
func TestLatencyBuckets(t *testing.T) {
	for _, d := range []time.Duration{0, 1, 1023, 1024, 1500, 2047, 2048, 3 * time.Microsecond, 999 * time.Microsecond,
		time.Millisecond, 2500 * time.Microsecond, 42 * time.Millisecond, time.Second, 90 * time.Second, 10 * time.Minute} {
		i := latencyBucket(d)
		lo, hi := latencyBounds(i)
		last := i == latencyBuckets-1
		if i < 0 || i >= latencyBuckets || float64(d) < lo || (!last && float64(d) >= hi) {
			t.Errorf("latencyBucket(%v) = %d with bounds [%v, %v)", d, i, lo, hi)
		}
		if i > 1 && !last && hi/lo > 1.25+1e-9 {
			t.Errorf("bucket %d is [%v, %v): wider than a quarter", i, lo, hi)
		}
	}
	// 1..1000 ms, one each: p50 is 500 ms, p99 990 ms.
	var counts [latencyBuckets]uint64
	for ms := 1; ms <= 1000; ms++ {
		counts[latencyBucket(time.Duration(ms)*time.Millisecond)]++
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.99, 990 * time.Millisecond}, {0.01, 10 * time.Millisecond}} {
		got := latencyQuantile(&counts, c.q)
		if ratio := float64(got) / float64(c.want); ratio < 0.875 || ratio > 1.125 {
			t.Errorf("quantile %v = %v, want %v within 12.5%%", c.q, got, c.want)
		}
	}
	var empty [latencyBuckets]uint64
	if got := latencyQuantile(&empty, 0.5); got != 0 {
		t.Errorf("quantile of nothing = %v, want 0", got)
	}
}

// newQuietTelemetry returns metrics-only telemetry without an access log.
func newQuietTelemetry(t *testing.T) *Telemetry {
	t.Helper()
	tel, err := New(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	return tel
}

// endServer records one request served by listener for service, with
// status, lasting d.
func endServer(tel *Telemetry, listener, service string, status int, d time.Duration) {
	r := httptest.NewRequest("GET", "/x", nil)
	ctx := tel.BeginServer(context.Background(), r, listener, service, time.Now())
	tel.EndServer(ctx, r, ServerRecord{Listener: listener, Service: service, Start: time.Now().Add(-d), Status: status})
}

// TestHistory: each sample adds a point per series with the requests,
// errors (5xx and unanswered), latency quantiles and retries of the
// interval; a dedicated upstream listener counts as outbound, the inbound
// listener on its own.
func TestHistory(t *testing.T) {
	tel := newQuietTelemetry(t)
	c := tel.Client("cart", "round_robin")
	start := tel.history.last

	for range 90 {
		endServer(tel, "outbound", "cart", 200, 10*time.Millisecond)
	}
	for range 8 {
		endServer(tel, "upstream/cart", "cart", 200, 10*time.Millisecond)
	}
	endServer(tel, "outbound", "cart", 503, 400*time.Millisecond)
	endServer(tel, "outbound", "cart", 0, 400*time.Millisecond)
	endServer(tel, "outbound", "cart", 404, 10*time.Millisecond) // a client error, not an error of the service
	endServer(tel, "inbound", "web", 200, 2*time.Millisecond)
	c.Retry()
	c.Retry()
	c.RetryBudgetExhausted()

	first := start.Add(5 * time.Second)
	tel.history.sample(first)
	second := first.Add(5 * time.Second)
	endServer(tel, "outbound", "cart", 200, time.Millisecond)
	tel.history.sample(second)

	hist := tel.History()
	if len(hist) != 2 {
		t.Fatalf("History has %d series, want inbound web and outbound cart: %+v", len(hist), hist)
	}
	in, out := hist[0], hist[1]
	if in.Listener != ListenerInbound || in.Service != "web" || in.HasRetries || len(in.Points) != 2 || in.Points[0].Requests != 1 || in.Points[1].Requests != 0 {
		t.Errorf("inbound series = %+v", in)
	}
	if out.Listener != ListenerOutbound || out.Service != "cart" || len(out.Points) != 2 {
		t.Fatalf("outbound series = %+v", out)
	}
	p := out.Points[0]
	if p.End != first || p.Seconds != 5 || p.Requests != 101 || p.Errors != 2 || p.Retries != 2 || p.RetryBudgetExhausted != 1 {
		t.Errorf("first point = %+v, want 101 requests, 2 errors, 2 retries, 1 refused over 5 s", p)
	}
	if p.P50 < 8750*time.Microsecond || p.P50 > 11250*time.Microsecond || p.P99 < 350*time.Millisecond || p.P99 > 450*time.Millisecond {
		t.Errorf("first point latency p50 %v p99 %v, want about 10ms and 400ms", p.P50, p.P99)
	}
	if q := out.Points[1]; q.End != second || q.Requests != 1 || q.Errors != 0 || q.Retries != 0 || q.P50 > 1125*time.Microsecond {
		t.Errorf("second point = %+v, want 1 quick request", q)
	}
	if !out.HasRetries || out.RetriesTotal != 2 || out.RetryBudgetExhaustedTotal != 1 {
		t.Errorf("retry totals = %v %d %d", out.HasRetries, out.RetriesTotal, out.RetryBudgetExhaustedTotal)
	}

	// The ring keeps the last HistoryPoints points, oldest first.
	at := second
	for range HistoryPoints + 3 {
		at = at.Add(5 * time.Second)
		tel.history.sample(at)
	}
	out = tel.History()[1]
	if len(out.Points) != HistoryPoints || out.Points[len(out.Points)-1].End != at || out.Points[0].End != at.Add(-(HistoryPoints-1)*5*time.Second) {
		t.Errorf("after %d samples: %d points from %v to %v", HistoryPoints+5, len(out.Points), out.Points[0].End, out.Points[len(out.Points)-1].End)
	}
}

// TestRecordingDoesNotAllocate: what the request path adds for the
// history costs no allocation.
func TestRecordingDoesNotAllocate(t *testing.T) {
	tel := newQuietTelemetry(t)
	c := tel.Client("cart", "round_robin")
	s := tel.metrics.server("outbound", "cart")
	if n := testing.AllocsPerRun(1000, func() {
		tel.metrics.server("outbound", "cart").stats.record(200, 3*time.Millisecond)
		s.stats.record(503, time.Second)
		c.Retry()
		c.RetryBudgetExhausted()
	}); n != 0 {
		t.Errorf("recording allocates %v times", n)
	}
}

// TestEventLog: the log keeps the last events, newest first, numbered,
// and takes concurrent writers.
func TestEventLog(t *testing.T) {
	l := NewEventLog(3)
	if got := l.Events(); len(got) != 0 {
		t.Fatalf("empty log has %v", got)
	}
	for i := 1; i <= 5; i++ {
		l.Add("kind", fmt.Sprint("s", i), "")
	}
	got := l.Events()
	var subjects []string
	for _, e := range got {
		subjects = append(subjects, fmt.Sprintf("%d:%s", e.Seq, e.Subject))
	}
	if want := "5:s5 4:s4 3:s3"; strings.Join(subjects, " ") != want {
		t.Errorf("events = %v, want %s", subjects, want)
	}

	l = NewEventLog(DefaultEventLogSize)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 100 {
				l.Add("k", fmt.Sprint(w, "/", i), "")
				if i%10 == 0 {
					l.Events()
				}
			}
		})
	}
	wg.Wait()
	got = l.Events()
	if len(got) != DefaultEventLogSize || got[0].Seq != 400 || got[len(got)-1].Seq != 301 {
		t.Errorf("after 400 concurrent events: %d kept, seq %d..%d", len(got), got[0].Seq, got[len(got)-1].Seq)
	}
	var nilLog *EventLog
	nilLog.Add("k", "s", "d")
	if nilLog.Events() != nil {
		t.Error("a nil log returned events")
	}
}

// TestMemberWatch: members present at the first poll are not news; then
// joins, graceful leaves, failures, returns and disappearances are.
func TestMemberWatch(t *testing.T) {
	l := NewEventLog(10)
	var w memberWatch
	w.poll([]Member{{"a", "10.0.0.1:7946", "alive"}, {"b", "10.0.0.2:7946", "alive"}, {"old", "10.0.0.9:7946", "dead"}}, l)
	if got := l.Events(); len(got) != 0 {
		t.Fatalf("the first poll recorded %v", got)
	}
	w.poll([]Member{{"a", "10.0.0.1:7946", "dead"}, {"b", "10.0.0.2:7946", "left"}, {"c", "10.0.0.3:7946", "alive"}, {"old", "10.0.0.9:7946", "dead"}}, l)
	w.poll([]Member{{"a", "10.0.0.1:7946", "alive"}, {"b", "10.0.0.2:7946", "left"}}, l)
	w.poll(nil, l)
	var got []string
	for _, e := range l.Events() {
		got = append(got, e.Kind+" "+e.Subject)
	}
	want := []string{ // newest first
		"member_left a",
		"member_left c", "member_joined a",
		"member_joined c", "member_left b", "member_failed a",
	}
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Errorf("events:\n  %s\nwant\n  %s", strings.Join(got, ", "), strings.Join(want, ", "))
	}
}

// TestProcessAndBuildMetrics: /metrics has the Go runtime's and the
// process's series, and sidemesh_build_info with the build's labels.
func TestProcessAndBuildMetrics(t *testing.T) {
	tel, err := New(context.Background(), Options{Build: BuildInfo{Version: "v1.2.3", Commit: "0123456789ab"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	text := metricsText(t, tel)
	wants := []string{
		fmt.Sprintf(`sidemesh_build_info{commit="0123456789ab",goversion=%q,version="v1.2.3"} 1`, runtime.Version()),
		"go_goroutines ", "go_gc_duration_seconds", "go_memstats_heap_alloc_bytes ",
	}
	if runtime.GOOS == "linux" {
		wants = append(wants, "process_cpu_seconds_total ", "process_resident_memory_bytes ", "process_open_fds ")
	}
	for _, want := range wants {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q; it has:\n%s", want, grepLines(text, "_info"))
		}
	}
}

// TestObservedFeaturesOff: the series of a feature that is off are not
// exported at all (no gossip, no mutual TLS, no breaker, no outlier
// ejection, no health checks, a static feed's age), while the retry
// counters of known upstreams are, at 0.
func TestObservedFeaturesOff(t *testing.T) {
	tel, err := New(context.Background(), Options{Observed: Observed{
		Endpoints: func() []EndpointState {
			return []EndpointState{
				{Upstream: "plain", Endpoint: "10.0.0.1:80", Breaker: "closed", Healthy: true},
				{Upstream: "full", Endpoint: "10.0.0.2:80", Breaker: "open", Healthy: false, HasBreaker: true, HasOutlier: true, HealthChecked: true},
			}
		},
		Discovery: func() []DiscoveryState {
			return []DiscoveryState{
				{Upstream: "plain", Backend: "static", LastSnapshot: time.Now().Add(-time.Hour), Static: true},
				{Upstream: "full", Backend: "consul", LastSnapshot: time.Now().Add(-time.Minute)},
			}
		},
		Upstreams:     func() []string { return []string{"full"} },
		GossipMembers: func() (int, bool) { return 0, false },
		LeafExpiry:    func() (time.Time, bool) { return time.Time{}, false },
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	text := metricsText(t, tel)
	for _, absent := range []string{
		"sidemesh_gossip_members", "sidemesh_tls_certificate_expiry_seconds",
		`sidemesh_endpoint_breaker_state{sidemesh_breaker_state="closed",sidemesh_endpoint="10.0.0.1:80"`,
		`sidemesh_endpoint_ejected{sidemesh_endpoint="10.0.0.1:80"`, `sidemesh_endpoint_healthy{sidemesh_endpoint="10.0.0.1:80"`,
		`sidemesh_discovery_snapshot_age_seconds{sidemesh_discovery_backend="static"`,
		`sidemesh_upstream_retries_total{sidemesh_upstream="plain"}`, // no retry counters for an upstream not listed
	} {
		if strings.Contains(text, absent) {
			t.Errorf("/metrics has %s, for a feature that is off:\n%s", absent, grepLines(text, absent))
		}
	}
	for _, want := range []string{
		`sidemesh_endpoint_breaker_state{sidemesh_breaker_state="open",sidemesh_endpoint="10.0.0.2:80",sidemesh_upstream="full"} 1`,
		`sidemesh_endpoint_ejected{sidemesh_endpoint="10.0.0.2:80",sidemesh_upstream="full"} 0`,
		`sidemesh_endpoint_healthy{sidemesh_endpoint="10.0.0.2:80",sidemesh_upstream="full"} 0`,
		`sidemesh_discovery_errors_total{sidemesh_discovery_backend="static",sidemesh_upstream="plain"} 0`,
		`sidemesh_upstream_retries_total{sidemesh_upstream="full"} 0`,
		`sidemesh_upstream_retry_budget_exhausted_total{sidemesh_upstream="full"} 0`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("/metrics lacks\n  %s\nin:\n%s", want, grepLines(text, "sidemesh_"))
		}
	}
	var age float64
	if _, err := fmt.Sscan(strings.TrimPrefix(grepLines(text, `sidemesh_discovery_snapshot_age_seconds{sidemesh_discovery_backend="consul",sidemesh_upstream="full"} `),
		`sidemesh_discovery_snapshot_age_seconds{sidemesh_discovery_backend="consul",sidemesh_upstream="full"} `), &age); err != nil || age < 59 || age > 70 {
		t.Errorf("snapshot age of the consul feed = %v (%v), want about 60 s:\n%s", age, err, grepLines(text, "snapshot_age"))
	}

	// The retry counters count, through any Client of the upstream.
	tel.Client("full", "random").Retry()
	tel.Client("full", "random").RetryBudgetExhausted()
	text = metricsText(t, tel)
	for _, want := range []string{`sidemesh_upstream_retries_total{sidemesh_upstream="full"} 1`, `sidemesh_upstream_retry_budget_exhausted_total{sidemesh_upstream="full"} 1`} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("/metrics lacks %s:\n%s", want, grepLines(text, "retr"))
		}
	}
}

// TestMembershipEvents: with Observed.Members, telemetry polls the pool
// and records who joins.
func TestMembershipEvents(t *testing.T) {
	var mu sync.Mutex
	members := []Member{{"self", "127.0.0.1:1", "alive"}}
	tel, err := New(context.Background(), Options{Observed: Observed{Members: func() []Member {
		mu.Lock()
		defer mu.Unlock()
		return append([]Member(nil), members...)
	}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tel.Shutdown(context.Background()) })
	mu.Lock()
	members = append(members, Member{"peer", "127.0.0.1:2", "alive"})
	mu.Unlock()
	meshtest.Eventually(t, 10*time.Second, "a member_joined event for peer", func() error {
		if evs := tel.Events(); len(evs) != 1 || evs[0].Kind != EventMemberJoined || evs[0].Subject != "peer" {
			return fmt.Errorf("events %+v", evs)
		}
		return nil
	})
	tel.RecordEvent("config_reloaded", "config", "new config applied")
	if evs := tel.Events(); len(evs) != 2 || evs[0].Kind != "config_reloaded" || evs[0].Seq != 2 {
		t.Errorf("events = %+v", evs)
	}
}
