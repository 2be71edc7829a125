package breaker

import (
	"testing"
	"time"
)

func BenchmarkAllow(b *testing.B) {
	now := time.Now()
	b.Run("closed", func(b *testing.B) {
		br := New("b", Settings{}, nil)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				br.Allow(now)
			}
		})
	})
	b.Run("open", func(b *testing.B) {
		br := New("b", Settings{ConsecutiveFailures: 1}, nil)
		br.Record(transportErr)
		now := time.Now()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				br.Allow(now)
			}
		})
	})
}

func BenchmarkRecord(b *testing.B) {
	b.Run("success", func(b *testing.B) {
		br := New("b", Settings{}, func(State, State) {})
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				br.Record(st(200))
			}
		})
	})
	b.Run("mixed", func(b *testing.B) {
		br := New("b", Settings{ConsecutiveFailures: 1 << 30}, func(State, State) {})
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if i++; i%4 == 0 {
					br.Record(st(503))
				} else {
					br.Record(st(200))
				}
			}
		})
	})
}

func BenchmarkEjected(b *testing.B) {
	var h Host
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h.Ejected(now)
		}
	})
}

func BenchmarkOutlierRecord(b *testing.B) {
	o := NewOutlier(OutlierSettings{}, nil)
	o.SetSize(1)
	var h Host
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			o.Record("a", &h, st(200), now)
		}
	})
}
