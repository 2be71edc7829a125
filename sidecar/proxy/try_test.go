package proxy_test

import (
	"net/http"
	"strconv"
	"sync"
	"testing"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/proxy"
)

// roundTripFunc adapts a function to http.RoundTripper.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestTryFiltersSeeEveryTry: try filters wrap the transport of every try,
// the first filter outermost, each try addressed to its own endpoint; a
// retry after a connect failure goes through them again.
func TestTryFiltersSeeEveryTry(t *testing.T) {
	rec := &recorder{}
	live := hostPort(startBackend(t, h1, rec))
	dead := deadAddr(t)
	var mu sync.Mutex
	var seen []string
	mark := func(name string) proxy.TryFilter {
		return func(next http.RoundTripper) http.RoundTripper {
			return roundTripFunc(func(r *http.Request) (*http.Response, error) {
				mu.Lock()
				seen = append(seen, name+"@"+r.URL.Host)
				mu.Unlock()
				r = r.Clone(r.Context()) // RoundTripper's contract: never change the caller's request
				r.Header.Add("X-Try-Filter", name)
				return next.RoundTrip(r)
			})
		}
	}
	addr, _ := startOutbound(t, "catalog", upstreamOpts{
		TryFilters: []proxy.TryFilter{mark("outer"), mark("inner")},
		Retry:      proxy.RetryPolicy{Attempts: 1, OnConnectFailure: true},
	}, dead, live)
	c := newClient(t, addr, h1)
	// Round robin from a random start: two requests make sure one of
	// them starts at the dead endpoint.
	for range 2 {
		resp, _ := get(t, c, "http://catalog/x", nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	got := map[string]int{}
	for i, s := range seen {
		got[s]++
		if i%2 == 0 && s[:5] != "outer" || i%2 == 1 && s[:5] != "inner" {
			t.Errorf("filter order %v: outer must see each try first", seen)
			break
		}
	}
	if got["outer@"+live] != 2 || got["inner@"+live] != 2 || got["outer@"+dead] < 1 || got["inner@"+dead] != got["outer@"+dead] {
		t.Errorf("filters saw %v: want both on each of the 2 tries that reached %s and on at least one retried try to %s", got, live, dead)
	}
	if v := rec.last(t).Header.Values("X-Try-Filter"); len(v) != 2 || v[0] != "outer" || v[1] != "inner" {
		t.Errorf("endpoint got X-Try-Filter %v", v)
	}
}

// headerPicker adds a response header to every pick, as a sticky-session
// picker adds its cookie.
type headerPicker struct {
	balancer.Picker
	n  int
	mu sync.Mutex
}

func (p *headerPicker) Pick(r balancer.Request) (balancer.Pick, error) {
	pk, err := p.Picker.Pick(r)
	if err == nil {
		p.mu.Lock()
		p.n++
		n := p.n
		p.mu.Unlock()
		pk.Header = http.Header{"Set-Cookie": {"pick=" + strconv.Itoa(n) + "; Path=/"}}
	}
	return pk, err
}

// TestPickHeaderReachesClient: headers a picker returns are added to the
// endpoint's response, next to the endpoint's own.
func TestPickHeaderReachesClient(t *testing.T) {
	backend := startBackend(t, h1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Set-Cookie", "app=1")
	}))
	addr, _ := startOutbound(t, "catalog", upstreamOpts{Wrap: func(p balancer.Picker) balancer.Picker {
		return &headerPicker{Picker: p}
	}}, hostPort(backend))
	resp, _ := get(t, newClient(t, addr, h1), "http://catalog/", nil)
	if v := resp.Header.Values("Set-Cookie"); len(v) != 2 || v[0] != "app=1" || v[1] != "pick=1; Path=/" {
		t.Errorf("Set-Cookie %q, want the endpoint's then the picker's", v)
	}
}
