package consul

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// fakeConsul answers health queries from a script, one answer per query,
// recording the index and token of each; once the script is done it
// blocks every query like an idle blocking query.
type fakeConsul struct {
	t    *testing.T
	srv  *httptest.Server
	stop chan struct{}

	mu      sync.Mutex
	script  []answer
	indexes []string // the index parameter of each health query, "0" if none
	tokens  []string // X-Consul-Token of every request
	paths   []string // path and query of every request
}

type answer struct {
	status  int
	index   uint64
	entries []*api.ServiceEntry
	body    string        // used when status is not 200
	delay   time.Duration // before answering, as a blocking query would
}

func newFakeConsul(t *testing.T, script ...answer) *fakeConsul {
	f := &fakeConsul{t: t, script: script, stop: make(chan struct{})}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() {
		close(f.stop)
		f.srv.Close()
	})
	return f
}

func (f *fakeConsul) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.tokens = append(f.tokens, r.Header.Get("X-Consul-Token"))
	f.paths = append(f.paths, r.URL.RequestURI())
	if r.URL.Path == "/v1/status/leader" {
		f.mu.Unlock()
		fmt.Fprint(w, `"127.0.0.1:8300"`)
		return
	}
	if r.Method == http.MethodPut { // registrations and check updates
		f.mu.Unlock()
		return
	}
	idx := r.URL.Query().Get("index")
	if idx == "" {
		idx = "0"
	}
	f.indexes = append(f.indexes, idx)
	if len(f.script) == 0 {
		f.mu.Unlock()
		select {
		case <-r.Context().Done():
		case <-f.stop:
		}
		return
	}
	a := f.script[0]
	f.script = f.script[1:]
	f.mu.Unlock()
	if a.delay > 0 {
		select {
		case <-time.After(a.delay):
		case <-r.Context().Done():
			return
		}
	}

	w.Header().Set("X-Consul-Index", strconv.FormatUint(a.index, 10))
	if a.status != 0 && a.status != http.StatusOK {
		http.Error(w, a.body, a.status)
		return
	}
	if a.entries == nil {
		a.entries = []*api.ServiceEntry{}
	}
	if err := json.NewEncoder(w).Encode(a.entries); err != nil {
		f.t.Error(err)
	}
}

func (f *fakeConsul) seen() (indexes, tokens, paths []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.indexes), slices.Clone(f.tokens), slices.Clone(f.paths)
}

func (f *fakeConsul) client(t *testing.T) *api.Client {
	c, err := NewClient(Config{Address: f.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func entry(id string, port int, checks ...string) *api.ServiceEntry {
	e := &api.ServiceEntry{
		Node:    &api.Node{Node: "n1", Address: "10.0.0.1"},
		Service: &api.AgentService{ID: id, Service: "web", Port: port, Weights: api.AgentWeights{Passing: 1, Warning: 1}},
	}
	for i, status := range checks {
		e.Checks = append(e.Checks, &api.HealthCheck{CheckID: fmt.Sprintf("c%d", i), Status: status})
	}
	return e
}

func TestWatchIndexHandling(t *testing.T) {
	t.Parallel()
	a, b := entry("a", 1), entry("b", 2)
	f := newFakeConsul(t,
		answer{index: 10, entries: []*api.ServiceEntry{a}},    // first query: no index
		answer{index: 10, entries: []*api.ServiceEntry{a}},    // wait timed out: same index
		answer{index: 5, entries: []*api.ServiceEntry{a}},     // backwards: reset to 0
		answer{index: 0, entries: []*api.ServiceEntry{a}},     // zero: block on 1
		answer{index: 12, entries: []*api.ServiceEntry{b, a}}, // a change
		answer{status: 500, body: "boom"},                     // an error: reset to 0
		answer{index: 13, entries: []*api.ServiceEntry{a, b}}, // same set after the error
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := NewSource(f.client(t), SourceOptions{MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
	ch, err := src.Watch(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	first := recv(t, ch, 5*time.Second, "the first snapshot", func(discovery.Snapshot) bool { return true })
	if !slices.Equal(ids(first), []string{"a"}) {
		t.Errorf("first snapshot = %v, want [a]", ids(first))
	}
	second := recv(t, ch, 5*time.Second, "the second snapshot", func(discovery.Snapshot) bool { return true })
	if !slices.Equal(ids(second), []string{"a", "b"}) {
		t.Errorf("second snapshot = %v, want [a b] (sorted)", ids(second))
	}
	meshtest.Eventually(t, 5*time.Second, "the whole script of queries", func() error {
		if idx, _, _ := f.seen(); len(idx) < 8 {
			return fmt.Errorf("%d queries so far", len(idx))
		}
		return nil
	})
	noSnapshot(t, ch, 100*time.Millisecond, "unchanged results")
	idx, _, _ := f.seen()
	if want := []string{"0", "10", "10", "0", "1", "12", "0", "13"}; !slices.Equal(idx, want) {
		t.Errorf("query indexes = %v, want %v", idx, want)
	}
	cancel()
	waitClosed(t, ch, 5*time.Second)
}

// TestRecoveryGrace: when Consul answers again after being unreachable
// and lists nothing (an agent restarted without its state), the watch
// keeps its endpoints for the grace; it drops them only if Consul still
// lists nothing once the grace is over.
func TestRecoveryGrace(t *testing.T) {
	t.Parallel()
	a := entry("a", 1)
	const grace = 300 * time.Millisecond
	f := newFakeConsul(t,
		answer{index: 10, entries: []*api.ServiceEntry{a}},
		answer{status: 500, body: "agent restarting"},
		answer{index: 2},                                  // back, and empty: the grace starts
		answer{index: 3},                                  // still empty, within the grace
		answer{index: 4, delay: 2 * grace},                // still empty after it
		answer{index: 5, entries: []*api.ServiceEntry{a}}, // registered again
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := NewSource(f.client(t), SourceOptions{MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond, RecoveryGrace: grace})
	ch, err := src.Watch(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	recv(t, ch, 5*time.Second, "the first snapshot", func(s discovery.Snapshot) bool { return slices.Equal(ids(s), []string{"a"}) })
	begin := time.Now()
	empty := recv(t, ch, 5*time.Second, "the empty snapshot after the grace", func(discovery.Snapshot) bool { return true })
	if len(empty.Endpoints) != 0 || time.Since(begin) < grace {
		t.Errorf("got %v after %v, want nothing before the %v grace, then no endpoints", ids(empty), time.Since(begin), grace)
	}
	recv(t, ch, 5*time.Second, "a once registered again", func(s discovery.Snapshot) bool { return slices.Equal(ids(s), []string{"a"}) })
}

func TestNextIndex(t *testing.T) {
	for _, tc := range []struct{ prev, got, want uint64 }{
		{0, 7, 7},
		{7, 7, 7},
		{7, 9, 9},
		{9, 3, 0}, // backwards
		{0, 0, 1}, // zero
		{5, 0, 0}, // backwards to zero: reset first, the next answer sets 1
	} {
		if got := nextIndex(tc.prev, tc.got); got != tc.want {
			t.Errorf("nextIndex(%d, %d) = %d, want %d", tc.prev, tc.got, got, tc.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	for _, r := range []float64{0, 0.5, 0.999} {
		randFloat64 = func() float64 { return r }
		for failures, want := range map[int]time.Duration{1: 250, 2: 500, 3: 1000, 8: 30000, 100: 30000} {
			d := backoff(failures, 250*time.Millisecond, 30*time.Second)
			full := want * time.Millisecond
			if d < full/2 || d > full {
				t.Errorf("backoff(%d) with jitter %v = %v, want in [%v, %v]", failures, r, d, full/2, full)
			}
		}
	}
	t.Cleanup(func() { randFloat64 = defaultRandFloat64 })
}

var defaultRandFloat64 = randFloat64

func TestPublishReplacesUnread(t *testing.T) {
	t.Parallel()
	ch := make(chan discovery.Snapshot, 1)
	for i := range 3 {
		publish(ch, discovery.Snapshot{Service: strconv.Itoa(i)}) // never blocks
	}
	if s := <-ch; s.Service != "2" {
		t.Errorf("reader got snapshot %s, want the newest (2)", s.Service)
	}
	select {
	case s := <-ch:
		t.Errorf("stale snapshot %s left in the channel", s.Service)
	default:
	}
}

func TestWatchSlowReader(t *testing.T) {
	t.Parallel()
	f := newFakeConsul(t,
		answer{index: 1, entries: []*api.ServiceEntry{entry("a", 1)}},
		answer{index: 2, entries: []*api.ServiceEntry{entry("a", 1), entry("b", 2)}},
		answer{index: 3, entries: []*api.ServiceEntry{entry("c", 3)}},
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := NewSource(f.client(t), SourceOptions{}).Watch(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	// Nobody reads until the loop has gone through the whole script.
	meshtest.Eventually(t, 5*time.Second, "the loop to run through the script", func() error {
		if idx, _, _ := f.seen(); len(idx) < 4 {
			return fmt.Errorf("%d queries", len(idx))
		}
		return nil
	})
	s := <-ch
	if !slices.Equal(ids(s), []string{"c"}) {
		t.Errorf("slow reader got %v, want the newest snapshot [c]", ids(s))
	}
	noSnapshot(t, ch, 50*time.Millisecond, "older snapshots")
}

func TestWatchEmptyService(t *testing.T) {
	t.Parallel()
	if _, err := NewSource(&api.Client{}, SourceOptions{}).Watch(context.Background(), ""); err == nil {
		t.Error("Watch of an empty service name succeeded")
	}
}

func TestWatchQueryParameters(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		opts SourceOptions
		want string
	}{
		{SourceOptions{}, "/v1/health/service/web?wait=300000ms"},
		{SourceOptions{Mesh: true, WaitTime: time.Second}, "/v1/health/connect/web?wait=1000ms"},
		{SourceOptions{Datacenter: "dc2", Tags: []string{"a", "b"}, OnlyPassing: true}, "/v1/health/service/web?dc=dc2&passing=1&tag=a&tag=b&wait=300000ms"},
	} {
		f := newFakeConsul(t, answer{index: 1})
		ctx, cancel := context.WithCancel(context.Background())
		ch, err := NewSource(f.client(t), tc.opts).Watch(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		recv(t, ch, 5*time.Second, "the empty snapshot", func(s discovery.Snapshot) bool { return len(s.Endpoints) == 0 })
		cancel()
		waitClosed(t, ch, 5*time.Second)
		if _, _, paths := f.seen(); paths[0] != tc.want {
			t.Errorf("%+v: first query %s, want %s", tc.opts, paths[0], tc.want)
		}
	}
}

func TestEndpoints(t *testing.T) {
	weighted := func(e *api.ServiceEntry, passing, warning int) *api.ServiceEntry {
		e.Service.Weights = api.AgentWeights{Passing: passing, Warning: warning}
		return e
	}
	addressed := entry("addressed", 80, api.HealthPassing)
	addressed.Service.Address = "10.0.0.9"
	addressed.Service.Tags = []string{"t"}
	addressed.Service.Meta = map[string]string{"zone": "z1", "k": "v"}
	maint := entry("maint", 80, api.HealthPassing)
	maint.Checks = append(maint.Checks, &api.HealthCheck{CheckID: api.ServiceMaintPrefix + "maint", Status: api.HealthCritical})
	noNode := entry("no-node", 80)
	noNode.Node = nil

	got := endpoints("web", []*api.ServiceEntry{
		weighted(entry("z-passing", 80, api.HealthPassing, api.HealthPassing), 5, 2),
		weighted(entry("warning", 81, api.HealthPassing, api.HealthWarning), 5, 2),
		entry("critical", 82, api.HealthWarning, api.HealthCritical),
		weighted(entry("warning-zero", 83, api.HealthWarning), 5, 0),
		weighted(entry("passing-zero", 84, api.HealthPassing), 0, 1),
		entry("no-checks", 85),
		maint,
		addressed,
		noNode,
		{Service: nil},
		nil,
	})
	want := []discovery.Endpoint{
		{ID: "addressed", Service: "web", Address: "10.0.0.9", Port: 80, Weight: 1, Tags: []string{"t"}, Meta: map[string]string{"zone": "z1", "k": "v"}, Zone: "z1"},
		{ID: "no-checks", Service: "web", Address: "10.0.0.1", Port: 85, Weight: 1},
		{ID: "no-node", Service: "web", Address: "", Port: 80, Weight: 1},
		{ID: "warning", Service: "web", Address: "10.0.0.1", Port: 81, Weight: 2},
		{ID: "z-passing", Service: "web", Address: "10.0.0.1", Port: 80, Weight: 5},
	}
	if !sameEndpoints(got, want) {
		t.Errorf("endpoints =\n%+v\nwant\n%+v", got, want)
	}
	// The endpoints share nothing with the entries.
	got[0].Tags[0], got[0].Meta["k"] = "changed", "changed"
	if addressed.Service.Tags[0] != "t" || addressed.Service.Meta["k"] != "v" {
		t.Error("endpoints alias the entries' tags or meta")
	}
}

// FuzzEndpoints feeds arbitrary health responses to the mapping.
func FuzzEndpoints(f *testing.F) {
	seed, _ := json.Marshal([]*api.ServiceEntry{entry("a", 1, api.HealthPassing), entry("b", 2, api.HealthWarning)})
	f.Add(seed)
	f.Add([]byte(`[{"Service":{"ID":"x","Weights":{"Passing":-1}}},null,{}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var entries []*api.ServiceEntry
		if json.Unmarshal(data, &entries) != nil {
			return
		}
		eps := endpoints("web", entries)
		if !slices.IsSortedFunc(eps, func(a, b discovery.Endpoint) int { return compareIDs(a.ID, b.ID) }) {
			t.Errorf("endpoints not sorted: %v", eps)
		}
		for _, e := range eps {
			if e.Weight < 1 || e.Service != "web" {
				t.Errorf("bad endpoint %+v", e)
			}
		}
		if !sameEndpoints(eps, endpoints("web", entries)) {
			t.Error("mapping is not deterministic")
		}
	})
}

func compareIDs(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
