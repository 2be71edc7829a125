package consul

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/consul/api"
)

// blockingLoop is the blocking-query loop shared by the CASource and
// Intentions watches. It follows the same rules as Source.run (and
// Consul's api/watch/plan.go): carry the index, reset it after an error or
// when it goes backwards, back off with a cap on errors, and abort the
// long poll when ctx is done. It uses the package helpers nextIndex,
// backoff and sleep of source.go.
type blockingLoop struct {
	// what names the watch in logs and errors ("ca roots", "leaf web").
	what string
	// waitTime bounds each blocking query; minBackoff and maxBackoff
	// bound the backoff between failed queries. All three are positive,
	// with minBackoff <= maxBackoff.
	waitTime, minBackoff, maxBackoff time.Duration
	log                              *slog.Logger
}

// run calls query until ctx is done, first with WaitIndex 0 (answer at
// once) and then with the index of the last answer, so that each call
// blocks until something changed or waitTime passed. query runs on the
// caller's goroutine; it must use q (which carries the index, the wait
// time and a context that is cancelled with ctx or when the query has
// taken too long) and handle the answer itself, returning its QueryMeta.
// An unchanged answer (a query that timed out) is passed to query's own
// handling too: skipping it is the caller's job. run returns when ctx is
// done.
func (l blockingLoop) run(ctx context.Context, query func(q *api.QueryOptions) (*api.QueryMeta, error)) {
	var (
		index    uint64
		failures int
	)
	for {
		meta, err := l.once(ctx, index, query)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			failures++
			// The index may be meaningless now (the agent may have
			// restarted with a fresh state): ask for the current state.
			index = 0
			wait := backoff(failures, l.minBackoff, l.maxBackoff)
			err = fmt.Errorf("consul: watch %s: %w", l.what, err)
			if failures == 1 {
				l.log.Warn("consul query failed; keeping the last answer", "error", err, "retry_in", wait)
			} else {
				l.log.Debug("consul query still failing", "error", err, "failures", failures, "retry_in", wait)
			}
			if !sleep(ctx, wait) {
				return
			}
			continue
		}
		if failures > 0 {
			l.log.Info("consul answers again", "watch", l.what, "failures", failures)
			failures = 0
		}
		index = nextIndex(index, meta.LastIndex)
	}
}

// once runs one query, giving up after waitTime plus Consul's jitter
// (waitTime/16) plus queryGrace, or as soon as ctx is done.
func (l blockingLoop) once(ctx context.Context, index uint64, query func(q *api.QueryOptions) (*api.QueryMeta, error)) (*api.QueryMeta, error) {
	ctx, cancel := context.WithTimeout(ctx, l.waitTime+l.waitTime/16+queryGrace)
	defer cancel()
	q := (&api.QueryOptions{WaitIndex: index, WaitTime: l.waitTime}).WithContext(ctx)
	return query(q)
}

// latest is a channel of one value where a newer value replaces an unread
// older one, so that its single sender never blocks on a slow reader.
type latest[T any] chan T

// publish sends v, first dropping an unread older value if the buffer is
// full. The channel must have a buffer of at least one and publish must
// be its only sender.
func (ch latest[T]) publish(v T) {
	for {
		select {
		case ch <- v:
			return
		default:
		}
		// Full: drop the stale value. The reader may have taken it
		// meanwhile; then the send above succeeds on the next round.
		select {
		case <-ch:
		default:
		}
	}
}

// watchDefaults fills the zero blocking-query settings shared by the
// watches of this package (wait time, backoff bounds) and returns the
// logger to use: discarding when nil.
func watchDefaults(wait, minBackoff, maxBackoff *time.Duration, log *slog.Logger) *slog.Logger {
	if *wait <= 0 {
		*wait = DefaultWaitTime
	}
	if *minBackoff <= 0 {
		*minBackoff = DefaultMinBackoff
	}
	if *maxBackoff <= 0 {
		*maxBackoff = DefaultMaxBackoff
	}
	*maxBackoff = max(*maxBackoff, *minBackoff)
	if log == nil {
		return discardLogger
	}
	return log
}
