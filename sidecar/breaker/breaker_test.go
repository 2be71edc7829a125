package breaker

import (
	"reflect"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func st(code int) Outcome { return Outcome{Status: code} }

var (
	transportErr = Outcome{Transport: true}
	hungUp       = Outcome{Status: 500, Transport: true, Local: true}
)

func repeat(o Outcome, n int) []Outcome {
	out := make([]Outcome, n)
	for i := range out {
		out[i] = o
	}
	return out
}

func seq(parts ...[]Outcome) []Outcome { return slices.Concat(parts...) }

// transitions records a Breaker's onChange calls.
type transitions struct {
	mu  sync.Mutex
	got []transition
}

func (r *transitions) onChange(from, to State) {
	r.mu.Lock()
	r.got = append(r.got, transition{from, to})
	r.mu.Unlock()
}

func (r *transitions) list() []transition {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{Closed: "closed", HalfOpen: "half-open", Open: "open", State(7): "state(7)"} {
		if got := s.String(); got != want {
			t.Errorf("State(%d).String() = %q, want %q", int(s), got, want)
		}
	}
}

func TestSettingsWithDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   Settings
		want Settings
	}{
		{"zero", Settings{}, Settings{
			ConsecutiveFailures: 5, MinRequests: 20, Interval: 10 * time.Second,
			OpenTimeout: 10 * time.Second, HalfOpenRequests: 1,
		}},
		{"kept", Settings{
			ConsecutiveFailures: 3, FailureRatio: 0.5, MinRequests: 7, Interval: time.Minute,
			OpenTimeout: time.Second, HalfOpenRequests: 4, FailureStatuses: []int{503},
		}, Settings{
			ConsecutiveFailures: 3, FailureRatio: 0.5, MinRequests: 7, Interval: time.Minute,
			OpenTimeout: time.Second, HalfOpenRequests: 4, FailureStatuses: []int{503},
		}},
		{"clamped", Settings{
			FailureRatio: 1.5, Interval: -time.Second, OpenTimeout: -1, HalfOpenRequests: 1 << 30,
		}, Settings{
			FailureRatio: 1, MinRequests: 20, Interval: 10 * time.Second,
			OpenTimeout: 10 * time.Second, HalfOpenRequests: MaxHalfOpenRequests,
		}},
		{"ratio only", Settings{FailureRatio: 0.5}, Settings{
			FailureRatio: 0.5, MinRequests: 20, Interval: 10 * time.Second,
			OpenTimeout: 10 * time.Second, HalfOpenRequests: 1,
		}},
		{"negative ratio is off", Settings{FailureRatio: -0.5}, Settings{
			ConsecutiveFailures: 5, MinRequests: 20, Interval: 10 * time.Second,
			OpenTimeout: 10 * time.Second, HalfOpenRequests: 1,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.in.WithDefaults()
			if !slices.Equal(got.FailureStatuses, tt.want.FailureStatuses) {
				t.Fatalf("FailureStatuses = %v, want %v", got.FailureStatuses, tt.want.FailureStatuses)
			}
			got.FailureStatuses, tt.want.FailureStatuses = nil, nil
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("WithDefaults() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestFailed(t *testing.T) {
	tests := []struct {
		name     string
		statuses []int
		o        Outcome
		want     bool
	}{
		{"500", nil, st(500), true},
		{"503", nil, st(503), true},
		{"599", nil, st(599), true},
		{"200", nil, st(200), false},
		{"404 is a success", nil, st(404), false},
		{"429 is a success", nil, st(429), false},
		{"transport", nil, transportErr, true},
		{"no status, no transport (clean TCP)", nil, st(0), false},
		{"local with failure status", nil, Outcome{Status: 502, Local: true}, false},
		{"local transport", nil, hungUp, false},
		{"listed status", []int{503}, st(503), true},
		{"unlisted 5xx", []int{503}, st(500), false},
		{"listed 4xx", []int{429}, st(429), true},
		{"transport with list", []int{503}, transportErr, true},
		{"empty list counts no status", []int{}, st(500), false},
		{"empty list still counts transport", []int{}, transportErr, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := New("t", Settings{FailureStatuses: tt.statuses}, nil)
			if got := b.Failed(tt.o); got != tt.want {
				t.Errorf("Failed(%+v) = %v, want %v", tt.o, got, tt.want)
			}
		})
	}
}

func TestNewCopiesFailureStatuses(t *testing.T) {
	statuses := []int{503}
	b := New("t", Settings{FailureStatuses: statuses}, nil)
	statuses[0] = 500
	if !b.Failed(st(503)) || b.Failed(st(500)) {
		t.Error("Breaker follows changes to the caller's FailureStatuses")
	}
}

func TestTrip(t *testing.T) {
	ratio := Settings{ConsecutiveFailures: 100, FailureRatio: 0.5, MinRequests: 10}
	tests := []struct {
		name     string
		s        Settings
		outcomes []Outcome
		want     State
	}{
		{"4 consecutive failures", Settings{}, repeat(st(500), 4), Closed},
		{"5 consecutive failures", Settings{}, repeat(st(500), 5), Open},
		{"consecutive transport failures", Settings{}, repeat(transportErr, 5), Open},
		{"custom threshold", Settings{ConsecutiveFailures: 2}, repeat(st(502), 2), Open},
		{"interleaved success", Settings{},
			seq(repeat(st(500), 4), repeat(st(200), 1), repeat(st(500), 4)), Closed},
		{"interleaved success, long run", Settings{},
			slices.Repeat([]Outcome{st(500), st(500), st(500), st(500), st(200)}, 50), Closed},
		{"4xx is a success", Settings{},
			seq(repeat(st(500), 4), repeat(st(404), 1), repeat(st(500), 4)), Closed},
		{"only 4xx", Settings{}, repeat(st(400), 100), Closed},
		{"ratio reached at MinRequests", ratio,
			slices.Repeat([]Outcome{st(200), st(500)}, 5), Open},
		{"ratio reached before MinRequests", ratio,
			slices.Repeat([]Outcome{st(200), st(500)}, 4), Closed},
		{"ratio not reached", ratio,
			slices.Repeat([]Outcome{st(200), st(200), st(200), st(500)}, 10), Closed},
		{"ratio only: consecutive failures below MinRequests", Settings{FailureRatio: 0.5, MinRequests: 10},
			repeat(st(500), 9), Closed},
		{"ratio only: trips at MinRequests", Settings{FailureRatio: 0.5, MinRequests: 10},
			repeat(st(500), 10), Open},
		{"ratio off by default", Settings{ConsecutiveFailures: 100},
			slices.Repeat([]Outcome{st(200), st(500), st(500)}, 30), Closed},
		{"FailureStatuses: other 5xx ignored", Settings{FailureStatuses: []int{503}},
			repeat(st(500), 20), Closed},
		{"FailureStatuses: listed status trips", Settings{FailureStatuses: []int{503}},
			repeat(st(503), 5), Open},
		{"FailureStatuses: unlisted 5xx is a success", Settings{FailureStatuses: []int{503}},
			seq(repeat(st(503), 4), repeat(st(500), 1), repeat(st(503), 4)), Closed},
		{"FailureStatuses: transport counts", Settings{FailureStatuses: []int{503}},
			repeat(transportErr, 5), Open},
		{"Local never counts", Settings{}, repeat(hungUp, 100), Closed},
		{"Local does not break a run", Settings{},
			seq(repeat(st(500), 4), repeat(hungUp, 3), repeat(st(500), 1)), Open},
		{"Local does not count towards the ratio", ratio,
			seq(repeat(hungUp, 20), repeat(st(500), 5)), Closed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rec transitions
			b := New("t", tt.s, rec.onChange)
			for _, o := range tt.outcomes {
				b.Record(o)
			}
			if got := b.State(); got != tt.want {
				t.Fatalf("State() = %v, want %v", got, tt.want)
			}
			var want []transition
			if tt.want == Open {
				want = []transition{{Closed, Open}}
			}
			if got := rec.list(); !slices.Equal(got, want) {
				t.Errorf("transitions = %v, want %v", got, want)
			}
		})
	}
}

// trip opens b with failures and returns the time right after.
func trip(t *testing.T, b *Breaker) time.Time {
	t.Helper()
	for range 1000 {
		if b.State() == Open {
			return time.Now()
		}
		b.Record(st(500))
	}
	t.Fatal("breaker did not trip")
	return time.Time{}
}

func TestOpenRefusesUntilOpenTimeout(t *testing.T) {
	b := New("t", Settings{OpenTimeout: 10 * time.Second}, nil)
	if !b.Allow(time.Now()) {
		t.Fatal("closed breaker refused")
	}
	t0 := trip(t, b)
	for _, d := range []time.Duration{0, time.Second, 9 * time.Second} {
		if b.Allow(t0.Add(d)) {
			t.Errorf("open breaker allowed a request %v after tripping", d)
		}
	}
	// Outcomes of requests sent before it tripped are dropped.
	for range 10 {
		b.Record(st(200))
	}
	if b.State() != Open {
		t.Errorf("State() = %v after outcomes recorded while open, want open", b.State())
	}
	if !b.Allow(t0.Add(10*time.Second + 2*time.Millisecond)) {
		t.Error("no probe admitted after OpenTimeout")
	}
}

func TestHalfOpenAdmitsExactlyHalfOpenRequests(t *testing.T) {
	for _, n := range []uint32{1, 3, 10} {
		b := New("t", Settings{OpenTimeout: 10 * time.Second, HalfOpenRequests: n}, nil)
		probeAt := trip(t, b).Add(10*time.Second + 2*time.Millisecond)

		var admitted atomic.Int32
		var start, done sync.WaitGroup
		start.Add(1)
		for range 64 {
			done.Go(func() {
				start.Wait()
				for range 4 {
					if b.Allow(probeAt) {
						admitted.Add(1)
					}
				}
			})
		}
		start.Done()
		done.Wait()
		if got := admitted.Load(); got != int32(n) {
			t.Errorf("HalfOpenRequests %d: %d probes admitted, want %d", n, got, n)
		}
	}
}

func TestHungProbesGetNewRound(t *testing.T) {
	const timeout = 10 * time.Second
	b := New("t", Settings{OpenTimeout: timeout, HalfOpenRequests: 2}, nil)
	t1 := trip(t, b).Add(timeout + 2*time.Millisecond).Truncate(time.Millisecond)
	steps := []struct {
		at   time.Duration // after t1
		want bool
	}{
		{0, true},
		{time.Second, true}, // the round fills up here
		{time.Second, false},
		{2 * time.Second, false},
		{time.Second + timeout - time.Millisecond, false},
		{time.Second + timeout, true}, // its probes hung: a new round
		{time.Second + timeout, true},
		{time.Second + timeout, false},
		{time.Second + 2*timeout - time.Millisecond, false},
		{time.Second + 2*timeout, true},
	}
	for i, s := range steps {
		if got := b.Allow(t1.Add(s.at)); got != s.want {
			t.Fatalf("step %d: Allow(t1+%v) = %v, want %v", i, s.at, got, s.want)
		}
	}
}

// waitForProbe polls until b admits a probe at the current time.
func waitForProbe(t *testing.T, b *Breaker) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !b.Allow(time.Now()) {
		if time.Now().After(deadline) {
			t.Fatal("no probe admitted within 5s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestProbes(t *testing.T) {
	tests := []struct {
		name   string
		probes uint32
		result []Outcome // outcomes of the admitted probes
		want   []transition
	}{
		{"one probe succeeds", 1, []Outcome{st(200)},
			[]transition{{Closed, Open}, {Open, HalfOpen}, {HalfOpen, Closed}}},
		{"three probes succeed", 3, []Outcome{st(200), st(204), st(404)},
			[]transition{{Closed, Open}, {Open, HalfOpen}, {HalfOpen, Closed}}},
		{"probe fails", 1, []Outcome{st(503)},
			[]transition{{Closed, Open}, {Open, HalfOpen}, {HalfOpen, Open}}},
		{"probe times out", 1, []Outcome{transportErr},
			[]transition{{Closed, Open}, {Open, HalfOpen}, {HalfOpen, Open}}},
		{"second probe fails", 3, []Outcome{st(200), st(500)},
			[]transition{{Closed, Open}, {Open, HalfOpen}, {HalfOpen, Open}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rec transitions
			b := New("t", Settings{OpenTimeout: 50 * time.Millisecond, HalfOpenRequests: tt.probes}, rec.onChange)
			trip(t, b)
			waitForProbe(t, b)
			for range tt.probes - 1 {
				if !b.Allow(time.Now()) {
					t.Fatal("round refused a probe before it was full")
				}
			}
			if b.Allow(time.Now()) {
				t.Fatal("round admitted more than HalfOpenRequests probes")
			}
			for i, o := range tt.result {
				b.Record(o)
				if i < len(tt.result)-1 && b.State() != HalfOpen {
					t.Fatalf("State() = %v after probe %d, want half-open", b.State(), i)
				}
			}
			want := tt.want[len(tt.want)-1].to
			if got := b.State(); got != want {
				t.Errorf("State() = %v, want %v", got, want)
			}
			if got := rec.list(); !slices.Equal(got, tt.want) {
				t.Errorf("transitions = %v, want %v", got, tt.want)
			}
			reopened := want == Open
			if got := b.Allow(time.Now()); got == reopened {
				t.Errorf("Allow right after the probes = %v, want %v", got, !reopened)
			}
			if reopened {
				waitForProbe(t, b) // and it probes again after another OpenTimeout
			}
		})
	}
}

func TestCallbackMayUseBreaker(t *testing.T) {
	var b *Breaker
	var states []State
	b = New("t", Settings{ConsecutiveFailures: 1}, func(from, to State) {
		states = append(states, b.State())
		b.Record(st(500)) // dropped: open
		b.Allow(time.Now())
	})
	b.Record(st(500))
	if !slices.Equal(states, []State{Open}) {
		t.Errorf("callback saw states %v, want [open]", states)
	}
}

func TestCallbackPanicDoesNotWedge(t *testing.T) {
	var rec transitions
	panicking := true
	b := New("t", Settings{ConsecutiveFailures: 1, OpenTimeout: 20 * time.Millisecond}, func(from, to State) {
		rec.onChange(from, to)
		if panicking {
			panicking = false
			panic("callback")
		}
	})
	func() {
		defer func() {
			if recover() == nil {
				t.Error("callback's panic was swallowed")
			}
		}()
		b.Record(st(500))
	}()
	waitForProbe(t, b)
	b.Record(st(200))
	want := []transition{{Closed, Open}, {Open, HalfOpen}, {HalfOpen, Closed}}
	if got := rec.list(); !slices.Equal(got, want) {
		t.Errorf("transitions = %v, want %v", got, want)
	}
}

// TestConcurrent hammers one Breaker from many goroutines (run it with
// -race) and checks that the callback sees one change at a time, in order:
// every change starts where the one before ended.
func TestConcurrent(t *testing.T) {
	var (
		inCallback atomic.Int32
		mu         sync.Mutex
		last       = Closed
		changes    int
		bad        []transition
	)
	b := New("t", Settings{ConsecutiveFailures: 3, OpenTimeout: time.Millisecond, HalfOpenRequests: 2},
		func(from, to State) {
			if inCallback.Add(1) != 1 {
				t.Error("callbacks overlap")
			}
			mu.Lock()
			if from != last {
				bad = append(bad, transition{from, to})
			}
			last = to
			changes++
			mu.Unlock()
			inCallback.Add(-1)
		})
	// Run until the breaker has gone round its states often enough.
	var enough atomic.Bool
	deadline := time.Now().Add(5 * time.Second)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := 0; !enough.Load(); i++ {
				if i%64 == 0 {
					mu.Lock()
					enough.Store(changes >= 300 || time.Now().After(deadline))
					mu.Unlock()
				}
				if !b.Allow(time.Now()) {
					runtime.Gosched()
					continue
				}
				switch {
				case (g+i)%3 == 0:
					b.Record(st(200))
				case i%7 == 0:
					b.Record(hungUp)
				default:
					b.Record(transportErr)
				}
				_ = b.State()
			}
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(bad) > 0 {
		t.Errorf("changes out of order: %v", bad)
	}
	if last != b.State() {
		t.Errorf("last change reported went to %v, State() = %v", last, b.State())
	}
	if changes < 300 {
		t.Errorf("only %d state changes in 5s", changes)
	}
}

func TestAllowDoesNotAllocate(t *testing.T) {
	closed := New("t", Settings{}, nil)
	open := New("t", Settings{}, nil)
	t0 := trip(t, open)
	probing := New("t", Settings{HalfOpenRequests: MaxHalfOpenRequests}, nil)
	probeAt := trip(t, probing).Add(time.Minute)
	for _, tt := range []struct {
		name string
		f    func()
	}{
		{"closed", func() { closed.Allow(t0) }},
		{"open", func() { open.Allow(t0) }},
		{"admitting probes", func() { probing.Allow(probeAt) }},
		{"State", func() { open.State() }},
	} {
		if n := testing.AllocsPerRun(100, tt.f); n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", tt.name, n)
		}
	}
}

func TestRecordDoesNotAllocate(t *testing.T) {
	b := New("t", Settings{ConsecutiveFailures: 1 << 30}, func(State, State) {})
	if n := testing.AllocsPerRun(100, func() { b.Record(st(200)); b.Record(st(500)) }); n != 0 {
		t.Errorf("%v allocations per Record, want 0", n)
	}
}
