package consul

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

func TestBlockingLoopIndexHandling(t *testing.T) {
	t.Parallel()
	type answer struct {
		index uint64
		err   error
	}
	script := []answer{
		{index: 10},               // first query: no index
		{index: 10},               // wait timed out: same index
		{index: 5},                // backwards: reset to 0
		{index: 0},                // zero: block on 1
		{index: 12},               // a change
		{err: errors.New("boom")}, // an error: reset to 0
		{index: 13},
	}
	log, logs := newLogger(t)
	l := blockingLoop{what: "test", waitTime: time.Minute, minBackoff: time.Millisecond, maxBackoff: time.Millisecond, log: log}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu   sync.Mutex
		seen []uint64
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.run(ctx, func(q *api.QueryOptions) (*api.QueryMeta, error) {
			if q.WaitTime != time.Minute || q.Context() == nil {
				t.Errorf("query options %+v", q)
			}
			mu.Lock()
			n := len(seen)
			seen = append(seen, q.WaitIndex)
			mu.Unlock()
			if n >= len(script) {
				<-q.Context().Done() // block like a long poll until cancelled
				return nil, q.Context().Err()
			}
			a := script[n]
			if a.err != nil {
				return nil, a.err
			}
			return &api.QueryMeta{LastIndex: a.index}, nil
		})
	}()
	meshtest.Eventually(t, 5*time.Second, "the loop to run through the script", func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) <= len(script) {
			return errors.New("script not done")
		}
		return nil
	})
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	want := []uint64{0, 10, 10, 0, 1, 12, 0, 13}
	if !slices.Equal(seen, want) {
		t.Errorf("indexes = %v, want %v", seen, want)
	}
	if logs.count("consul query failed") != 1 || logs.count("consul answers again") != 1 {
		t.Errorf("logs:\n%s", logs.String())
	}
}

func TestLatestReplacesUnread(t *testing.T) {
	t.Parallel()
	ch := make(latest[int], 1)
	for i := range 3 {
		ch.publish(i) // never blocks
	}
	if v := <-ch; v != 2 {
		t.Errorf("reader got %d, want the newest (2)", v)
	}
	select {
	case v := <-ch:
		t.Errorf("stale value %d left in the channel", v)
	default:
	}
}
