//go:build linux

package main

import (
	"context"
	"errors"
	"testing"
	"time"
)

// fakeClock is a clock that only moves when told: SleepUntil jumps to the
// time asked for, and the fake target's Send moves it by its service time.
// Used with one worker, so that nothing runs concurrently.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time { return c.now }

func (c *fakeClock) SleepUntil(t time.Time) {
	if t.After(c.now) {
		c.now = t
	}
}

func (c *fakeClock) advance(d time.Duration) { c.now = c.now.Add(d) }

// TestOpenLoopChargesStalls is the coordinated-omission check: a target
// that answers in 0.1 ms but stalls 100 ms once, at 1,000 requests/s.
// A closed-loop tool would record one slow request; the open loop records
// the ~110 requests that were due during the stall and the catch-up after
// it, each with the time it waited.
func TestOpenLoopChargesStalls(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1000, 0)}
	const service, stall = 100 * time.Microsecond, 100 * time.Millisecond
	sent := 0
	ol := &openLoop{
		Rate: 1000, Duration: time.Second, Workers: 1, Clock: clk,
		Send: func(int) error {
			if sent == 100 {
				clk.advance(stall)
			} else {
				clk.advance(service)
			}
			sent++
			return nil
		},
	}
	r := ol.run(context.Background())
	if r.Requests != 1000 || r.Errors != 0 || sent != 1000 {
		t.Fatalf("recorded %d requests (%d errors), sent %d; want 1000, 0, 1000", r.Requests, r.Errors, sent)
	}
	// Request 100 took 100 ms; request 100+k (k ≥ 1) was due at 100+k ms
	// and answered at 200 + 0.1k ms: it waited 100 - 0.9k ms. So 110
	// requests (k = 0..109) took more than 1 ms, 11% of them.
	if max := r.Latency.Max(); max < 99_000 || max > 101_000 {
		t.Errorf("max latency %d µs, want 100 ms", max)
	}
	if p88 := r.Latency.ValueAtQuantile(88); p88 > 200 {
		t.Errorf("p88 %d µs, want the service time, 100 µs", p88)
	}
	if p90 := r.Latency.ValueAtQuantile(90); p90 < 1000 {
		t.Errorf("p90 %d µs: the requests delayed by the stall were not charged for it (coordinated omission)", p90)
	}
	if p95 := r.Latency.ValueAtQuantile(95); p95 < 40_000 || p95 > 60_000 {
		// The 50th slowest of 1,000: k = 49, 100 - 0.9×49 = 55.9 ms.
		t.Errorf("p95 %d µs, want about 56 ms", p95)
	}
	// The send lag is the waiting alone: request 101 was sent 99 ms late.
	if lag := r.Lag.Max(); lag < 98_000 || lag > 100_000 {
		t.Errorf("max send lag %d µs, want 99 ms", lag)
	}
	if r.Window != time.Second-time.Millisecond+service {
		// From when request 0 was due to the last answer: 999 ms + 0.1 ms.
		t.Errorf("window %v, want 999.1ms", r.Window)
	}
}

// TestOpenLoopKeepsSchedule: a target faster than the schedule is
// charged its service time only, the requests leave on time, and the
// warm-up is sent but not recorded.
func TestOpenLoopKeepsSchedule(t *testing.T) {
	clk := &fakeClock{now: time.Unix(1000, 0)}
	var sentAt []time.Time
	var ends int
	ol := &openLoop{
		Rate: 2000, Warmup: 250 * time.Millisecond, Duration: 500 * time.Millisecond, Workers: 1, Clock: clk,
		Send: func(int) error {
			sentAt = append(sentAt, clk.Now())
			clk.advance(50 * time.Microsecond)
			if len(sentAt)%100 == 0 {
				return errors.New("every hundredth fails")
			}
			return nil
		},
		Hooks: hooks{end: func() { ends++ }},
	}
	r := ol.run(context.Background())
	if len(sentAt) != 1500 {
		t.Fatalf("sent %d requests, want 500 of warm-up and 1,000 measured", len(sentAt))
	}
	if r.Requests+r.Errors != 1000 || r.Errors != 10 {
		t.Errorf("recorded %d answers and %d errors, want 990 and 10", r.Requests, r.Errors)
	}
	for i, at := range sentAt {
		if want := time.Unix(1000, 0).Add(time.Duration(i) * 500 * time.Microsecond); !at.Equal(want) {
			t.Fatalf("request %d sent at +%v, want +%v", i, at.Sub(time.Unix(1000, 0)), want.Sub(time.Unix(1000, 0)))
		}
	}
	if min, max := r.Latency.Min(), r.Latency.Max(); min != 50 || max != 50 {
		t.Errorf("latency %d–%d µs, want 50 µs", min, max)
	}
	if r.Lag.Max() != 0 {
		t.Errorf("send lag up to %d µs, want none", r.Lag.Max())
	}
	if ends != 1 {
		t.Errorf("end hook called %d times, want once", ends)
	}
}

func TestOpenLoopSchedule(t *testing.T) {
	ol := &openLoop{Rate: 3}
	for i, want := range []time.Duration{0, 333333333, 666666667, time.Second} {
		if got := ol.due(int64(i)); got != want {
			t.Errorf("due(%d) at 3/s = %v, want %v", i, got, want)
		}
	}
	for _, tc := range []struct {
		d    time.Duration
		want int64
	}{{0, 0}, {time.Second, 3}, {1100 * time.Millisecond, 4}} {
		if got := ol.count(tc.d); got != tc.want {
			t.Errorf("count(%v) at 3/s = %d, want %d", tc.d, got, tc.want)
		}
	}
}

// TestOpenLoopRealClock runs a short open loop on the real clock with
// several workers, as the harness does, against an instant target.
func TestOpenLoopRealClock(t *testing.T) {
	var started, ended bool
	ol := &openLoop{
		Rate: 2000, Warmup: 50 * time.Millisecond, Duration: 200 * time.Millisecond, Workers: 4,
		Send:  func(int) error { return nil },
		Hooks: hooks{start: func() { started = true }, end: func() { ended = true }},
	}
	r := ol.run(context.Background())
	if r.Requests != 400 || r.Errors != 0 {
		t.Errorf("recorded %d requests, %d errors; want 400, 0", r.Requests, r.Errors)
	}
	if !started || !ended {
		t.Errorf("hooks called: start %v, end %v", started, ended)
	}
	if r.Window < 190*time.Millisecond {
		t.Errorf("window %v, want about 200 ms", r.Window)
	}
}
