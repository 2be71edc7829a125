package health

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

func TestThresholds(t *testing.T) {
	u := newUpstream(t, 500)
	rec := &recorder{servers: map[string]*upstream{"a": u}}
	logs := &logRecorder{}
	targets := newTargetList(Target{"a", u.addr()})
	c := New(fastSettings(Settings{Path: "/healthz"}, 2, 3), targets.get, rec.set, slog.New(logs))
	start(t, c)

	// Healthy at first; out after exactly 3 failures. setHealthy runs
	// before the target's next check can start, so what the server served
	// at the call is exact.
	flips := rec.waitFlips(t, "a", 1)
	if f := flips[0]; f.healthy || !slices.Equal(f.served, []int{500, 500, 500}) {
		t.Fatalf("first flip %+v, want unhealthy after [500 500 500]", f)
	}

	// Back after exactly 2 passes.
	u.status.Store(302)
	flips = rec.waitFlips(t, "a", 2)
	f := flips[1]
	if !f.healthy {
		t.Fatalf("second flip %+v, want healthy", f)
	}
	if n := len(f.served); n < 5 || !slices.Equal(f.served[n-3:], []int{500, 302, 302}) {
		t.Fatalf("healthy after serving %v, want it to end with [500 302 302]", f.served)
	}

	// The logs say which endpoint flipped and why.
	attrs, ok := logs.find(slog.LevelWarn, "endpoint unhealthy")
	if !ok || attrs["id"] != "a" || attrs["addr"] != u.addr() || !strings.Contains(attrs["reason"], "status 500") {
		t.Errorf("warn log %v (found %v), want id, addr and the failure", attrs, ok)
	}
	if attrs, ok := logs.find(slog.LevelInfo, "endpoint healthy"); !ok || attrs["id"] != "a" || attrs["reason"] == "" {
		t.Errorf("info log %v (found %v), want id and reason", attrs, ok)
	}
	if attrs, ok := logs.find(slog.LevelDebug, "health check failed"); !ok || !strings.Contains(attrs["reason"], "status 500") {
		t.Errorf("debug log %v (found %v), want the failure", attrs, ok)
	}
}

// A failure between passes starts the count again, and the other way round.
func TestThresholdsNeedConsecutiveResults(t *testing.T) {
	var served atomic.Int64
	addr := serveFunc(t, func(w http.ResponseWriter, r *http.Request) {
		if served.Add(1)%2 == 1 {
			w.WriteHeader(500)
		}
	})
	rec := &recorder{}
	targets := newTargetList(Target{"a", addr})
	c := New(fastSettings(Settings{Path: "/"}, 2, 2), targets.get, rec.set, nil)
	start(t, c)
	meshtest.WaitFor(t, waitTimeout, "10 checks", func() bool { return served.Load() >= 10 })
	if f := rec.of("a"); len(f) != 0 {
		t.Errorf("alternating results flipped the target: %+v", f)
	}
}

func TestTCPReopen(t *testing.T) {
	ln := listen(t)
	addr := ln.Addr().String()
	var accepted atomic.Int64
	var wg sync.WaitGroup
	serve := func(ln net.Listener) {
		wg.Go(func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				accepted.Add(1)
				conn.Close()
			}
		})
	}
	serve(ln)
	t.Cleanup(wg.Wait)

	rec := &recorder{}
	targets := newTargetList(Target{"a", addr})
	c := New(fastSettings(Settings{TCP: true}, 2, 2), targets.get, rec.set, nil)
	start(t, c)
	meshtest.WaitFor(t, waitTimeout, "TCP checks", func() bool { return accepted.Load() >= 2 })
	if f := rec.of("a"); len(f) != 0 {
		t.Fatalf("listening endpoint flipped: %+v", f)
	}

	ln.Close()
	if f := rec.waitFlips(t, "a", 1)[0]; f.healthy {
		t.Fatalf("closed port: flip %+v, want unhealthy", f)
	}

	var ln2 net.Listener
	meshtest.WaitFor(t, waitTimeout, "listening again on "+addr, func() bool {
		var err error
		ln2, err = net.Listen("tcp", addr)
		return err == nil
	})
	t.Cleanup(func() { ln2.Close() })
	serve(ln2)
	if f := rec.waitFlips(t, "a", 2)[1]; !f.healthy {
		t.Fatalf("reopened port: flip %+v, want healthy", f)
	}
}

func TestH2CRun(t *testing.T) {
	u := startUpstream(t, 503, true)
	rec := &recorder{}
	targets := newTargetList(Target{"a", u.addr()})
	c := New(fastSettings(Settings{Path: "/", HTTP2: true}, 1, 1), targets.get, rec.set, nil)
	start(t, c)
	rec.waitFlips(t, "a", 1)
	u.status.Store(200)
	if f := rec.waitFlips(t, "a", 2)[1]; !f.healthy {
		t.Fatalf("flip %+v, want healthy", f)
	}
	if h := u.lastHit(t); h.proto != 2 {
		t.Errorf("checked with HTTP/%d, want HTTP/2", h.proto)
	}
}

func TestTargetsChange(t *testing.T) {
	a, b, c := newUpstream(t, 200), newUpstream(t, 500), newUpstream(t, 500)
	rec := &recorder{}
	targets := newTargetList(Target{"a", a.addr()}, Target{"b", b.addr()})
	ch := New(fastSettings(Settings{Path: "/"}, 1, 1), targets.get, rec.set, nil)
	start(t, ch)
	rec.waitFlips(t, "b", 1)

	// b goes, c comes: c is checked from the next round on.
	targets.set(Target{"a", a.addr()}, Target{"c", c.addr()})
	if f := rec.waitFlips(t, "c", 1)[0]; f.healthy {
		t.Fatalf("new failing target: flip %+v, want unhealthy", f)
	}

	// b is no longer checked, and nothing more is said about it, even
	// though it now passes.
	b.status.Store(200)
	targets.waitRounds(t, 2) // a check of b started before the change has ended
	hits := b.count()
	targets.waitRounds(t, 5)
	if n := b.count(); n != hits {
		t.Errorf("removed target checked %d more times", n-hits)
	}
	if f := rec.of("b"); len(f) != 1 {
		t.Errorf("setHealthy calls for removed target: %+v, want only the first", f)
	}

	// Its state was dropped: back, it starts healthy, so passing checks
	// flip nothing.
	targets.set(Target{"a", a.addr()}, Target{"b", b.addr()}, Target{"c", c.addr()})
	meshtest.WaitFor(t, waitTimeout, "checks of b again", func() bool { return b.count() >= hits+3 })
	if f := rec.of("b"); len(f) != 1 {
		t.Errorf("returning target: calls %+v, want none after the first", f)
	}
	if f := rec.of("a"); len(f) != 0 {
		t.Errorf("healthy target flipped: %+v", f)
	}
}

// A target that keeps its ID but moves keeps its health (the caller holds
// it) and is judged at the new address.
func TestTargetMoves(t *testing.T) {
	bad, good := newUpstream(t, 500), newUpstream(t, 200)
	rec := &recorder{}
	targets := newTargetList(Target{"a", bad.addr()})
	c := New(fastSettings(Settings{Path: "/"}, 2, 1), targets.get, rec.set, nil)
	start(t, c)
	rec.waitFlips(t, "a", 1)

	targets.set(Target{"a", good.addr()})
	if f := rec.waitFlips(t, "a", 2)[1]; !f.healthy {
		t.Fatalf("moved to a passing address: flip %+v, want healthy", f)
	}
	if n := good.count(); n < 2 {
		t.Errorf("healthy after %d checks of the new address, want 2", n)
	}
}

func TestDuplicateIDs(t *testing.T) {
	bad, good := newUpstream(t, 500), newUpstream(t, 200)
	rec := &recorder{}
	// The first of a duplicated ID wins.
	targets := newTargetList(Target{"a", good.addr()}, Target{"a", bad.addr()})
	c := New(fastSettings(Settings{Path: "/"}, 1, 1), targets.get, rec.set, nil)
	start(t, c)
	meshtest.WaitFor(t, waitTimeout, "checks", func() bool { return good.count() >= 3 })
	if n := bad.count(); n != 0 {
		t.Errorf("second target with a duplicated ID checked %d times", n)
	}
	if f := rec.of("a"); len(f) != 0 {
		t.Errorf("flips %+v, want none", f)
	}
}

func TestCancelStopsChecks(t *testing.T) {
	u := newUpstream(t, 0) // hangs
	rec := &recorder{}
	targets := newTargetList(Target{"a", u.addr()})
	s := fastSettings(Settings{Path: "/"}, 1, 1)
	s.Timeout = time.Minute
	c := New(s, targets.get, rec.set, nil)
	stop := start(t, c)
	meshtest.WaitFor(t, waitTimeout, "a check in flight", func() bool { return u.count() >= 1 })

	begin := time.Now()
	stop()
	if d := time.Since(begin); d > time.Second {
		t.Errorf("Run took %v to return after cancel", d)
	}
	// A check cut short by the end of Run is not the endpoint's failure.
	if f := rec.of("a"); len(f) != 0 {
		t.Errorf("flips %+v, want none", f)
	}
}

func TestInFlightBound(t *testing.T) {
	var inflight, peak atomic.Int64
	release := make(chan struct{})
	addr := serveFunc(t, func(http.ResponseWriter, *http.Request) {
		n := inflight.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		<-release
		inflight.Add(-1)
	})
	var list []Target
	for i := range maxInFlight + 8 {
		list = append(list, Target{ID: string(rune('A' + i)), Addr: addr})
	}
	targets := newTargetList(list...)
	s := fastSettings(Settings{Path: "/"}, 1, 1)
	s.Timeout = time.Minute
	c := New(s, targets.get, func(string, bool) {}, nil)
	stop := start(t, c)
	defer stop()
	defer close(release)

	meshtest.WaitFor(t, waitTimeout, "the in-flight limit", func() bool { return inflight.Load() >= maxInFlight })
	targets.waitRounds(t, 3)
	if p := peak.Load(); p != maxInFlight {
		t.Errorf("%d checks in flight at once, want at most %d", p, maxInFlight)
	}
}

func TestDisabledRunReturns(t *testing.T) {
	targets := newTargetList(Target{"a", "127.0.0.1:1"})
	c := New(Settings{}, targets.get, func(string, bool) {}, nil)
	done := make(chan struct{})
	go func() {
		c.Run(context.Background())
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatal("Run with checks off did not return")
	}
	if n := targets.calls.Load(); n != 0 {
		t.Errorf("targets called %d times with checks off", n)
	}
}
