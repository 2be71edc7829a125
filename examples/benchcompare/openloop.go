//go:build linux

package main

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// clock is the open loop's time: the real one, or a fake in tests.
type clock interface {
	Now() time.Time
	// SleepUntil returns at t, or at once if t has passed.
	SleepUntil(t time.Time)
}

// realClock is the wall clock.
type realClock struct{}

// Now returns the current time.
func (realClock) Now() time.Time { return time.Now() }

// SleepUntil sleeps until t.
func (realClock) SleepUntil(t time.Time) {
	if d := time.Until(t); d > 0 {
		time.Sleep(d)
	}
}

// openLoop sends requests on a fixed schedule, whatever the target does:
// request i is due at start + i/rate. Each of workers (one connection
// each) takes the next request, waits until it is due, sends it and
// records its latency from the time it was DUE, not from when it could be
// sent. A target that stalls for 100 ms at 1,000 requests/s so charges
// the stall to the ~100 requests it delayed, as their users would see it,
// instead of to one request (the coordinated omission of closed-loop
// tools, which stop sending while they wait). Requests due in the first
// warmup are sent but not recorded; those due in the next duration are.
type openLoop struct {
	Rate     float64 // requests per second
	Warmup   time.Duration
	Duration time.Duration
	Workers  int
	Clock    clock
	// Send sends one request on worker's connection.
	Send func(worker int) error
	// Hooks: start when the first recorded request is due, end once every
	// recorded request has been answered.
	Hooks hooks
}

// due returns when request i is due, counted from the start.
func (o *openLoop) due(i int64) time.Duration {
	return time.Duration(math.Round(float64(i) * float64(time.Second) / o.Rate))
}

// count returns how many requests are due within d of the start.
func (o *openLoop) count(d time.Duration) int64 {
	return int64(math.Ceil(d.Seconds() * o.Rate))
}

// run sends the schedule's requests and returns what was recorded. It
// stops sending when ctx is done.
func (o *openLoop) run(ctx context.Context) loadResult {
	clk := o.Clock
	if clk == nil {
		clk = realClock{}
	}
	first, total := o.count(o.Warmup), o.count(o.Warmup+o.Duration)
	start := clk.Now()
	var next atomic.Int64
	lat, lag := make([]*hdrhistogram.Histogram, o.Workers), make([]*hdrhistogram.Histogram, o.Workers)
	oks, errs := make([]int64, o.Workers), make([]int64, o.Workers)
	var firstErr atomic.Pointer[error]
	// The start hook runs on a goroutine of its own, so that no request
	// waits for it (reading /proc takes milliseconds).
	hookDone := make(chan struct{})
	if o.Hooks.start != nil {
		go func() {
			defer close(hookDone)
			clk.SleepUntil(start.Add(o.due(first)))
			o.Hooks.start()
		}()
	} else {
		close(hookDone)
	}
	var wg sync.WaitGroup
	for w := range o.Workers {
		lat[w], lag[w] = newHist(), newHist()
		wg.Go(func() {
			for ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= total {
					return
				}
				due := start.Add(o.due(i))
				clk.SleepUntil(due)
				sent := clk.Now()
				err := o.Send(w)
				done := clk.Now()
				if i < first {
					continue
				}
				recordDuration(lag[w], sent.Sub(due))
				if err != nil {
					errs[w]++
					firstErr.CompareAndSwap(nil, &err)
					continue
				}
				oks[w]++
				recordDuration(lat[w], done.Sub(due))
			}
		})
	}
	wg.Wait()
	<-hookDone
	window := clk.Now().Sub(start.Add(o.due(first)))
	o.Hooks.onEnd()
	r := loadResult{Window: window, Latency: newHist(), Lag: newHist(), Generator: "go"}
	for w := range o.Workers {
		r.Latency.Merge(lat[w])
		r.Lag.Merge(lag[w])
		r.Requests += oks[w]
		r.Errors += errs[w]
	}
	if e := firstErr.Load(); e != nil {
		r.FirstErr = *e
	}
	return r
}
