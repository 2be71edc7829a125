package identity

import (
	"sync"
	"sync/atomic"
)

// Source provides the current Bundle. Implementations swap bundles
// atomically and must be safe for concurrent use; Current never blocks,
// because TLS callbacks call it during every handshake.
type Source interface {
	// Current returns the latest bundle, or nil until the source is ready.
	// Once it has returned a bundle it never returns nil again.
	Current() *Bundle
	// Ready returns a channel that is closed once a first bundle is loaded.
	Ready() <-chan struct{}
}

// StaticSource serves whatever bundle it was last given: tests use it, and
// so do sources fed by someone else (Consul's CA, say), which call Set on
// every change. The zero value is not usable; call NewStaticSource. All
// methods are safe for concurrent use.
type StaticSource struct {
	cur   atomic.Pointer[Bundle]
	ready chan struct{}
	once  sync.Once
}

// NewStaticSource returns a source that is not ready until the first Set.
func NewStaticSource() *StaticSource {
	return &StaticSource{ready: make(chan struct{})}
}

// Set publishes b, which must not be nil and must not be modified
// afterwards; the first Set makes the source ready. Set does not check b:
// use NewBundle for that.
func (s *StaticSource) Set(b *Bundle) {
	if b == nil {
		panic("identity: StaticSource.Set(nil)")
	}
	s.cur.Store(b)
	s.once.Do(func() { close(s.ready) })
}

// Current returns the bundle of the last Set, or nil before the first.
func (s *StaticSource) Current() *Bundle { return s.cur.Load() }

// Ready returns a channel closed by the first Set.
func (s *StaticSource) Ready() <-chan struct{} { return s.ready }

var _ Source = (*StaticSource)(nil)
