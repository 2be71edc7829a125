package breaker

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// epoch is the fake clock's start.
var epoch = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// ejections records an Outlier's onChange calls.
type ejections struct {
	mu  sync.Mutex
	got []ejection
}

func (r *ejections) onChange(id string, ejected bool, until time.Time) {
	r.mu.Lock()
	r.got = append(r.got, ejection{id, ejected, until})
	r.mu.Unlock()
}

func (r *ejections) list() []ejection {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

func equalEjections(a, b []ejection) bool {
	return slices.EqualFunc(a, b, func(x, y ejection) bool {
		return x.id == y.id && x.ejected == y.ejected && x.until.Equal(y.until)
	})
}

func TestOutlierSettingsWithDefaults(t *testing.T) {
	def := OutlierSettings{
		Consecutive5xx: 5, ConsecutiveGatewayErrors: 5, BaseEjection: 30 * time.Second,
		MaxEjection: 300 * time.Second, MaxEjectionPercent: 50,
	}
	tests := []struct {
		name string
		in   OutlierSettings
		want OutlierSettings
	}{
		{"zero", OutlierSettings{}, def},
		{"kept", OutlierSettings{
			Consecutive5xx: 3, ConsecutiveGatewayErrors: 2, BaseEjection: time.Second,
			MaxEjection: time.Minute, MaxEjectionPercent: 10,
		}, OutlierSettings{
			Consecutive5xx: 3, ConsecutiveGatewayErrors: 2, BaseEjection: time.Second,
			MaxEjection: time.Minute, MaxEjectionPercent: 10,
		}},
		{"5xx rule off", OutlierSettings{ConsecutiveGatewayErrors: 3}, OutlierSettings{
			ConsecutiveGatewayErrors: 3, BaseEjection: 30 * time.Second,
			MaxEjection: 300 * time.Second, MaxEjectionPercent: 50,
		}},
		{"gateway rule off", OutlierSettings{Consecutive5xx: 3}, OutlierSettings{
			Consecutive5xx: 3, BaseEjection: 30 * time.Second,
			MaxEjection: 300 * time.Second, MaxEjectionPercent: 50,
		}},
		{"negative thresholds are off", OutlierSettings{Consecutive5xx: -1, ConsecutiveGatewayErrors: -1},
			OutlierSettings{BaseEjection: 30 * time.Second, MaxEjection: 300 * time.Second, MaxEjectionPercent: 50}},
		{"MaxEjection raised to BaseEjection", OutlierSettings{BaseEjection: 10 * time.Minute},
			OutlierSettings{
				Consecutive5xx: 5, ConsecutiveGatewayErrors: 5, BaseEjection: 10 * time.Minute,
				MaxEjection: 10 * time.Minute, MaxEjectionPercent: 50,
			}},
		{"clamped", OutlierSettings{BaseEjection: -1, MaxEjection: -1, MaxEjectionPercent: 250},
			OutlierSettings{
				Consecutive5xx: 5, ConsecutiveGatewayErrors: 5, BaseEjection: 30 * time.Second,
				MaxEjection: 300 * time.Second, MaxEjectionPercent: 100,
			}},
		{"negative percent", OutlierSettings{MaxEjectionPercent: -5}, def},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.in.WithDefaults(); got != tt.want {
				t.Errorf("WithDefaults() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestHostZeroValue(t *testing.T) {
	var h Host
	for _, now := range []time.Time{{}, time.Unix(0, 0), epoch} {
		if h.Ejected(now) {
			t.Errorf("zero Host ejected at %v", now)
		}
	}
	if u := h.EjectedUntil(); !u.IsZero() {
		t.Errorf("zero Host EjectedUntil() = %v, want zero", u)
	}
}

func TestOutlierEjects(t *testing.T) {
	gateway := OutlierSettings{ConsecutiveGatewayErrors: 3} // 5xx rule off
	tests := []struct {
		name     string
		s        OutlierSettings
		outcomes []Outcome
		want     bool
	}{
		{"4 consecutive 5xx", OutlierSettings{}, repeat(st(500), 4), false},
		{"5 consecutive 5xx", OutlierSettings{}, repeat(st(500), 5), true},
		{"mixed 5xx", OutlierSettings{}, []Outcome{st(500), st(501), st(599), st(500), st(507)}, true},
		{"transport counts as 5xx", OutlierSettings{},
			seq(repeat(st(500), 2), repeat(transportErr, 3)), true},
		{"success resets", OutlierSettings{},
			seq(repeat(st(500), 4), repeat(st(200), 1), repeat(st(500), 4)), false},
		{"4xx resets", OutlierSettings{},
			seq(repeat(st(500), 4), repeat(st(404), 1), repeat(st(500), 4)), false},
		{"clean TCP close resets", OutlierSettings{},
			seq(repeat(st(500), 4), repeat(st(0), 1), repeat(st(500), 4)), false},
		{"Local is ignored", OutlierSettings{}, repeat(hungUp, 100), false},
		{"Local does not reset", OutlierSettings{},
			seq(repeat(st(500), 4), repeat(Outcome{Status: 200, Local: true}, 1), repeat(st(500), 1)), true},
		{"custom threshold", OutlierSettings{Consecutive5xx: 2}, repeat(st(500), 2), true},
		{"gateway errors", gateway, []Outcome{st(502), st(503), st(504)}, true},
		{"gateway errors with transport", gateway, []Outcome{st(502), transportErr, st(504)}, true},
		{"other 5xx breaks a gateway run", gateway, []Outcome{st(502), st(503), st(500), st(504), st(502)}, false},
		{"5xx rule off", gateway, repeat(st(500), 50), false},
		{"gateway rule off", OutlierSettings{Consecutive5xx: 3},
			[]Outcome{st(502), st(503)}, false},
		{"gateway errors count as 5xx", OutlierSettings{Consecutive5xx: 3, ConsecutiveGatewayErrors: 10},
			[]Outcome{st(502), st(500), st(503)}, true},
		{"gateway rule first", OutlierSettings{Consecutive5xx: 10, ConsecutiveGatewayErrors: 2},
			[]Outcome{st(500), st(503), st(503)}, true},
		{"both rules off", OutlierSettings{Consecutive5xx: -1, ConsecutiveGatewayErrors: -1},
			repeat(transportErr, 50), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rec ejections
			o := NewOutlier(tt.s, rec.onChange)
			o.SetSize(1)
			var h Host
			now := epoch
			for _, oc := range tt.outcomes {
				now = now.Add(time.Millisecond)
				o.Record("a", &h, oc, now)
			}
			if got := h.Ejected(now); got != tt.want {
				t.Fatalf("Ejected() = %v, want %v", got, tt.want)
			}
			var want []ejection
			if tt.want {
				until := now.Add(tt.s.WithDefaults().BaseEjection)
				want = []ejection{{"a", true, until}}
				if got := h.EjectedUntil(); !got.Equal(until) {
					t.Errorf("EjectedUntil() = %v, want %v", got, until)
				}
			}
			if got := rec.list(); !equalEjections(got, want) {
				t.Errorf("onChange calls = %v, want %v", got, want)
			}
		})
	}
}

func TestOutlierMaxEjectionPercent(t *testing.T) {
	tests := []struct {
		size, percent int
		want          int // hosts ejected when all of them fail
	}{
		{1, 50, 1},
		{2, 50, 1},
		{3, 50, 1},
		{4, 50, 2},
		{10, 50, 5},
		{3, 10, 1},
		{3, 100, 3},
		{10, 35, 3},
		{0, 50, 1}, // SetSize not called yet
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d hosts, %d%%", tt.size, tt.percent), func(t *testing.T) {
			o := NewOutlier(OutlierSettings{MaxEjectionPercent: tt.percent}, nil)
			o.SetSize(tt.size)
			hosts := make([]Host, max(tt.size, 2))
			now := epoch
			for range 20 {
				for i := range hosts {
					o.Record(fmt.Sprint(i), &hosts[i], st(503), now)
				}
				now = now.Add(time.Millisecond)
			}
			ejected := 0
			for i := range hosts {
				if hosts[i].Ejected(now) {
					ejected++
				}
			}
			if ejected != tt.want {
				t.Errorf("%d hosts ejected, want %d", ejected, tt.want)
			}
		})
	}
}

func TestOutlierEjectsOnceThereIsRoom(t *testing.T) {
	var rec ejections
	o := NewOutlier(OutlierSettings{BaseEjection: 10 * time.Second}, rec.onChange)
	o.SetSize(3)
	var a, b, c Host
	now := epoch
	fail := func(id string, h *Host, n int) {
		for range n {
			o.Record(id, h, st(500), now)
		}
	}
	fail("a", &a, 5)
	fail("b", &b, 5)
	fail("c", &c, 3)
	if !a.Ejected(now) || b.Ejected(now) {
		t.Fatalf("ejected: a %v, b %v; want only a", a.Ejected(now), b.Ejected(now))
	}
	now = epoch.Add(10 * time.Second) // a's ejection ends
	if a.Ejected(now) {
		t.Fatal("a still ejected when its ejection ended")
	}
	fail("b", &b, 1) // b is past its threshold: ejected at its next failure
	if !b.Ejected(now) {
		t.Fatal("b not ejected once there was room")
	}
	fail("c", &c, 2) // c reaches its threshold, but b holds the only slot
	if c.Ejected(now) {
		t.Fatal("c ejected while b is")
	}
	want := []ejection{
		{"a", true, epoch.Add(10 * time.Second)},
		{"a", false, epoch.Add(10 * time.Second)},
		{"b", true, now.Add(10 * time.Second)},
	}
	if got := rec.list(); !equalEjections(got, want) {
		t.Errorf("onChange calls = %v, want %v", got, want)
	}
}

func TestOutlierEjectionTime(t *testing.T) {
	const base, maxEj = 10 * time.Second, 35 * time.Second
	tests := []struct {
		name string
		gaps []time.Duration // between the end of one ejection and the failures that start the next
		want []time.Duration // length of each ejection
	}{
		{"grows and is capped", []time.Duration{0, 0, 0, 0, 0},
			[]time.Duration{10 * time.Second, 20 * time.Second, 30 * time.Second, maxEj, maxEj}},
		{"decays after MaxEjection without an ejection", []time.Duration{0, 0, maxEj, 0},
			[]time.Duration{10 * time.Second, 20 * time.Second, 10 * time.Second, 20 * time.Second}},
		{"no decay just short of MaxEjection", []time.Duration{0, 0, maxEj - time.Nanosecond},
			[]time.Duration{10 * time.Second, 20 * time.Second, 30 * time.Second}},
		{"decays from a capped ejection", []time.Duration{0, 0, 0, 0, time.Hour},
			[]time.Duration{10 * time.Second, 20 * time.Second, 30 * time.Second, maxEj, 10 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := NewOutlier(OutlierSettings{Consecutive5xx: 1, BaseEjection: base, MaxEjection: maxEj}, nil)
			var h Host
			now := epoch
			for i, gap := range tt.gaps {
				now = now.Add(gap)
				o.Record("a", &h, st(500), now)
				got := h.EjectedUntil().Sub(now)
				if got != tt.want[i] {
					t.Fatalf("ejection %d lasts %v, want %v", i+1, got, tt.want[i])
				}
				now = h.EjectedUntil()
			}
		})
	}
}

func TestOutlierRestoration(t *testing.T) {
	var rec ejections
	o := NewOutlier(OutlierSettings{}, rec.onChange)
	o.SetSize(2)
	var a, b Host
	for range 5 {
		o.Record("a", &a, transportErr, epoch)
	}
	until := epoch.Add(30 * time.Second)
	if !a.Ejected(until.Add(-time.Nanosecond)) {
		t.Error("not ejected just before the ejection ends")
	}
	if a.Ejected(until) {
		t.Error("still ejected when the ejection ends")
	}
	want := []ejection{{"a", true, until}}
	if got := rec.list(); !equalEjections(got, want) {
		t.Fatalf("onChange calls = %v, want %v", got, want)
	}
	// Outcomes recorded while a is ejected are not counted, neither
	// towards the next ejection nor as a restoration.
	for range 10 {
		o.Record("a", &a, st(500), until.Add(-time.Second))
	}
	if got := rec.list(); !equalEjections(got, want) {
		t.Fatalf("onChange calls = %v, want %v", got, want)
	}
	// Restoration is reported at the next Record, for any host.
	o.Record("b", &b, st(200), until.Add(time.Minute))
	want = append(want, ejection{"a", false, until})
	if got := rec.list(); !equalEjections(got, want) {
		t.Fatalf("onChange calls = %v, want %v", got, want)
	}
	if got := a.EjectedUntil(); !got.Equal(until) {
		t.Errorf("EjectedUntil() = %v after restoration, want %v", got, until)
	}
	// The counters started afresh when a was ejected.
	for range 4 {
		o.Record("a", &a, st(500), until.Add(2*time.Minute))
	}
	if a.Ejected(until.Add(2 * time.Minute)) {
		t.Error("ejected again by failures recorded while ejected")
	}
}

func TestOutlierRestorationsInOrder(t *testing.T) {
	var rec ejections
	o := NewOutlier(OutlierSettings{Consecutive5xx: 1, MaxEjectionPercent: 100}, rec.onChange)
	o.SetSize(3)
	hosts := make([]Host, 3)
	for i, id := range []string{"c", "a", "b"} {
		o.Record(id, &hosts[i], st(500), epoch.Add(time.Duration(i)*time.Second))
	}
	var other Host
	o.Record("d", &other, st(200), epoch.Add(time.Hour))
	want := []ejection{
		{"c", true, epoch.Add(30 * time.Second)},
		{"a", true, epoch.Add(31 * time.Second)},
		{"b", true, epoch.Add(32 * time.Second)},
		{"c", false, epoch.Add(30 * time.Second)},
		{"a", false, epoch.Add(31 * time.Second)},
		{"b", false, epoch.Add(32 * time.Second)},
	}
	if got := rec.list(); !equalEjections(got, want) {
		t.Errorf("onChange calls = %v, want %v", got, want)
	}
}

func TestOutlierCallbackMayUseOutlier(t *testing.T) {
	var o *Outlier
	var h, other Host
	var got []ejection
	depth := 0
	o = NewOutlier(OutlierSettings{Consecutive5xx: 1}, func(id string, ejected bool, until time.Time) {
		if depth++; depth > 1 {
			t.Error("callback called from within itself")
		}
		got = append(got, ejection{id, ejected, until})
		o.SetSize(4)
		// At until the ejection has ended: this Record restores h, which
		// is reported after this call returns.
		o.Record("other", &other, st(200), until)
		depth--
	})
	o.Record("h", &h, st(500), epoch)
	until := epoch.Add(30 * time.Second)
	want := []ejection{{"h", true, until}, {"h", false, until}}
	if !equalEjections(got, want) {
		t.Errorf("onChange calls = %v, want %v", got, want)
	}
}

// TestOutlierConcurrent hammers one Outlier from many goroutines (run it
// with -race) and checks MaxEjectionPercent against what the callback is
// told: it hears of changes in order, so the hosts it was told are ejected
// never outnumber the limit, and each host alternates ejected, restored.
func TestOutlierConcurrent(t *testing.T) {
	const size, limit = 8, 4
	var (
		mu      sync.Mutex
		ejected = map[string]bool{}
		most    int
		changes int
		bad     []string
	)
	o := NewOutlier(OutlierSettings{Consecutive5xx: 3, BaseEjection: time.Millisecond, MaxEjection: 5 * time.Millisecond},
		func(id string, ej bool, until time.Time) {
			mu.Lock()
			defer mu.Unlock()
			if ejected[id] == ej {
				bad = append(bad, fmt.Sprintf("%s ejected=%v twice", id, ej))
			}
			ejected[id] = ej
			n := 0
			for _, e := range ejected {
				if e {
					n++
				}
			}
			most = max(most, n)
			changes++
		})
	o.SetSize(size)
	hosts := make([]Host, size)
	var clock atomic.Int64
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 5000 {
				now := epoch.Add(time.Duration(clock.Add(int64(10 * time.Microsecond))))
				k := (g*7 + i) % size
				if hosts[k].Ejected(now) {
					continue
				}
				oc := st(503)
				if k%2 == 0 && i%5 == 0 {
					oc = st(200)
				}
				o.Record(fmt.Sprint(k), &hosts[k], oc, now)
			}
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(bad) > 0 {
		t.Errorf("changes out of order: %v", bad)
	}
	if most > limit {
		t.Errorf("%d hosts ejected at once, limit %d", most, limit)
	}
	if most < limit || changes < 100 {
		t.Errorf("test too weak: at most %d ejected at once, %d changes", most, changes)
	}
}

func TestEjectedDoesNotAllocate(t *testing.T) {
	o := NewOutlier(OutlierSettings{Consecutive5xx: 1}, nil)
	var ejected, fine Host
	o.Record("a", &ejected, st(500), epoch)
	for _, h := range []*Host{&ejected, &fine} {
		if n := testing.AllocsPerRun(100, func() { h.Ejected(epoch) }); n != 0 {
			t.Errorf("%v allocations per Ejected, want 0", n)
		}
	}
	if n := testing.AllocsPerRun(100, func() { o.Record("b", &fine, st(200), epoch) }); n != 0 {
		t.Errorf("%v allocations per successful Record, want 0", n)
	}
}
