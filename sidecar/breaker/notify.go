package breaker

import (
	"sync"
	"sync/atomic"
)

// notifier delivers events to a callback in the order they were queued,
// one at a time, never with the queuing code's locks held.
//
// Events are queued with push, which may be called with other locks held
// (gobreaker's OnStateChange runs under its mutex). Whoever pushes calls
// flush once its locks are released; flush delivers everything queued,
// including what other goroutines push meanwhile. When another goroutine is
// already delivering, flush returns at once and leaves the events to it, so
// a callback that re-enters (calls Record) does not deadlock and deliveries
// never overlap.
type notifier[E any] struct {
	deliver func(E)

	pending atomic.Bool // the queue is not empty; lets flush skip the lock

	mu       sync.Mutex // guards queue and draining; taken after any caller lock
	queue    []E
	draining bool
}

// push queues e. It never calls deliver. A nil notifier discards e.
func (n *notifier[E]) push(e E) {
	if n == nil {
		return
	}
	n.mu.Lock()
	n.queue = append(n.queue, e)
	n.pending.Store(true)
	n.mu.Unlock()
}

// flush delivers the queued events unless another goroutine is already
// doing so. It must be called with no lock held that deliver could need.
// A nil notifier does nothing.
func (n *notifier[E]) flush() {
	if n == nil || !n.pending.Load() {
		return
	}
	n.mu.Lock()
	if n.draining {
		n.mu.Unlock()
		return
	}
	n.draining = true
	locked := true
	defer func() {
		// Also runs when deliver panics: hand over to the next flush.
		if !locked {
			n.mu.Lock()
		}
		n.draining = false
		n.mu.Unlock()
	}()
	for len(n.queue) > 0 {
		batch := n.queue
		n.queue = nil
		n.mu.Unlock()
		locked = false
		for _, e := range batch {
			n.deliver(e)
		}
		n.mu.Lock()
		locked = true
	}
	n.pending.Store(false)
}
