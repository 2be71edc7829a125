package ratelimit

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// TestExactUnderConcurrency: 500 concurrent requests against a bucket of
// 100 admit exactly 100 (Kong#2629 admitted more).
func TestExactUnderConcurrency(t *testing.T) {
	clk := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	l := New(Limit{Rate: 1, Burst: 100}, 10, clk.now)
	var allowed atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 500 {
		wg.Go(func() {
			<-start
			if l.Allow("ada").Allowed {
				allowed.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	if allowed.Load() != 100 {
		t.Fatalf("%d of 500 admitted, want exactly 100", allowed.Load())
	}
}

// TestRefillAndHeaders: a refused request is told when a token comes; a
// second later (at 1/s) one does; Remaining and Reset describe the
// bucket.
func TestRefillAndHeaders(t *testing.T) {
	clk := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	l := New(Limit{Rate: 2, Burst: 4}, 10, clk.now)
	for i := range 4 {
		d := l.Allow("k")
		if !d.Allowed || d.Remaining != 3-i {
			t.Fatalf("request %d: %+v, want allowed with %d left", i, d, 3-i)
		}
	}
	d := l.Allow("k")
	if d.Allowed || d.RetryAfter != 500*time.Millisecond || d.Reset != 2*time.Second {
		t.Fatalf("over the burst: %+v, want refused, retry after 0.5 s, full in 2 s", d)
	}
	clk.add(500 * time.Millisecond)
	if d := l.Allow("k"); !d.Allowed {
		t.Fatalf("after the retry delay: %+v", d)
	}
	if d := l.Allow("other"); !d.Allowed || d.Remaining != 3 {
		t.Fatalf("another key: %+v, want its own full bucket", d)
	}
}

// TestKeysBounded: past MaxKeys the least recently used key is
// forgotten and counted.
func TestKeysBounded(t *testing.T) {
	l := New(Limit{Rate: 1, Burst: 1}, 3, nil)
	for i := range 10 {
		l.Allow(fmt.Sprint(i))
	}
	l.Allow("8") // recently used: kept
	l.Allow("x")
	st := l.Stats()
	if st.Keys != 3 || st.Evictions != 8 {
		t.Fatalf("stats %+v, want 3 keys and 8 evictions", st)
	}
	if l.Allow("8").Allowed {
		t.Error("key 8 was forgotten although recently used (its bucket is empty)")
	}
}

func TestParseRate(t *testing.T) {
	for s, want := range map[string]float64{"100/s": 100, "6000/m": 100, "3600/h": 1, "0.5/s": 0.5} {
		if got, err := ParseRate(s); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	for _, s := range []string{"", "100", "100/d", "-1/s", "0/s", "x/s"} {
		if _, err := ParseRate(s); err == nil {
			t.Errorf("ParseRate(%q) accepted", s)
		}
	}
}

// BenchmarkAllow: one key, and many keys (each request a map lookup and
// an LRU move besides the bucket).
func BenchmarkAllow(b *testing.B) {
	l := New(Limit{Rate: 1e9, Burst: 1 << 30}, 100000, nil)
	b.Run("one-key", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			l.Allow("ada")
		}
	})
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprint("10.0.", i/256, ".", i%256)
	}
	b.Run("1024-keys", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			l.Allow(keys[i&1023])
			i++
		}
	})
}
