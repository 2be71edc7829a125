package balancer

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/breaker"
)

// testPolicy is a configured policy for table tests.
type testPolicy struct {
	name string
	p    Policy
}

// allPolicies returns every registered policy with default settings, and
// consistent_hash on each hash_on form.
func allPolicies(t testing.TB) []testPolicy {
	t.Helper()
	var ps []testPolicy
	for _, n := range Names() {
		p, _ := Lookup(n)
		ps = append(ps, testPolicy{n, p})
	}
	for _, on := range []string{"header:X-User", "cookie:session", "path"} {
		p, err := NewPolicy("consistent_hash", PolicyOptions{HashOn: on})
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, testPolicy{"consistent_hash(" + on + ")", p})
	}
	return ps
}

// keyedRequest returns a request that carries the i-th key of every
// hash_on form.
func keyedRequest(i int) Request {
	r, _ := http.NewRequest("GET", fmt.Sprintf("http://svc/items/%d", i), nil)
	r.RemoteAddr = "192.0.2.1:4000"
	r.Header.Set("X-Forwarded-For", fmt.Sprintf("203.0.113.%d, 10.0.0.1", i%256))
	r.Header.Set("X-User", fmt.Sprint("user", i))
	r.Header.Set("Cookie", fmt.Sprintf("theme=dark; session=s%d; lang=fr", i))
	return Request{HTTP: r}
}

func TestNames(t *testing.T) {
	want := []string{"consistent_hash", "ip_hash", "least_connections", "least_response_time", "random", "round_robin", "weighted_round_robin"}
	if got := Names(); !slices.Equal(got, want) {
		t.Fatalf("Names() = %v, want %v", got, want)
	}
	for _, n := range Names() {
		p, ok := Lookup(n)
		if !ok || p.Name() != n {
			t.Errorf("Lookup(%q) = %v, %v", n, p, ok)
		}
		if q, err := NewPolicy(n, PolicyOptions{}); err != nil || q.Name() != n {
			t.Errorf("NewPolicy(%q) = %v, %v", n, q, err)
		}
	}
	if _, ok := Lookup(DefaultPolicy); !ok {
		t.Errorf("default policy %q is not registered", DefaultPolicy)
	}
}

func TestNewPolicy(t *testing.T) {
	tests := []struct {
		name, hashOn string
		want         Policy
		err          string // substring of the error; "" for none
	}{
		{"consistent_hash", "", ConsistentHash{}, ""},
		{"consistent_hash", "source_ip", ConsistentHash{HashOn: "source_ip"}, ""},
		{"consistent_hash", "path", ConsistentHash{HashOn: "path"}, ""},
		{"consistent_hash", "header:X-Tenant", ConsistentHash{HashOn: "header:X-Tenant"}, ""},
		{"consistent_hash", "cookie:sid", ConsistentHash{HashOn: "cookie:sid"}, ""},
		{"ip_hash", "source_ip", IPHash{}, ""},
		{"ip_hash", "path", nil, "ip_hash: hash_on \"path\""},
		{"consistent_hash", "query:id", nil, "want source_ip, path, header:NAME or cookie:NAME"},
		{"consistent_hash", "header:", nil, "not a valid header name"},
		{"consistent_hash", "cookie:a b", nil, "not a valid cookie name"},
		{"round_robin", "path", nil, "round_robin: hash_on \"path\": hash_on applies only to consistent_hash and ip_hash"},
		{"least_response_time", "source_ip", nil, "least_response_time"},
		{"fastest", "", nil, `unknown policy "fastest", want one of consistent_hash, ip_hash,`},
	}
	for _, tt := range tests {
		got, err := NewPolicy(tt.name, PolicyOptions{HashOn: tt.hashOn})
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("NewPolicy(%q, %q): %v", tt.name, tt.hashOn, err)
		case tt.err == "" && got != tt.want:
			t.Errorf("NewPolicy(%q, %q) = %#v, want %#v", tt.name, tt.hashOn, got, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("NewPolicy(%q, %q) error = %v, want one containing %q", tt.name, tt.hashOn, err, tt.err)
		}
	}
}

func TestValidHashOn(t *testing.T) {
	for _, s := range []string{"", "source_ip", "path", "header:X-Request-Id", "header:x-request-id", "cookie:JSESSIONID", "cookie:__Host-sid"} {
		if err := ValidHashOn(s); err != nil {
			t.Errorf("ValidHashOn(%q) = %v, want nil", s, err)
		}
	}
	for _, s := range []string{"ip", "Path", "header", "header:", "header:a:b", "header:a b", "cookie:", "cookie:a=b", "cookie:;", "source_ip "} {
		if err := ValidHashOn(s); err == nil {
			t.Errorf("ValidHashOn(%q) = nil, want an error", s)
		}
	}
}

// downModes make an endpoint unavailable in each of the ways a policy must
// respect.
var downModes = []struct {
	name string
	opts Options
	down func(t *testing.T, b *Balancer, id string)
}{
	{
		name: "breaker open",
		opts: Options{Breaker: &breaker.Settings{ConsecutiveFailures: 1, OpenTimeout: time.Hour}},
		down: func(t *testing.T, b *Balancer, id string) {
			fail(b, id)
			if s := byID(t, b, id).BreakerState(); s != breaker.Open {
				t.Fatalf("%s's breaker is %v, want open", id, s)
			}
		},
	},
	{
		name: "ejected",
		opts: Options{Outlier: &breaker.OutlierSettings{Consecutive5xx: 1, BaseEjection: time.Hour, MaxEjectionPercent: 100}},
		down: func(t *testing.T, b *Balancer, id string) {
			fail(b, id)
			if byID(t, b, id).EjectedUntil().IsZero() {
				t.Fatalf("%s was not ejected", id)
			}
		},
	},
	{
		name: "unhealthy",
		down: func(t *testing.T, b *Balancer, id string) {
			b.SetHealthy(id, false)
			if byID(t, b, id).Healthy() {
				t.Fatalf("%s is still healthy", id)
			}
		},
	},
}

// fail feeds one failed request of endpoint id back through Done.
func fail(b *Balancer, id string) {
	for _, ep := range b.Endpoints() {
		if ep.ID == id {
			ep.state.inflight.Add(1)
			ep.pick().Done(Result{Status: 503, Latency: time.Millisecond})
		}
	}
}

func TestEveryPolicySkipsUnavailableEndpoints(t *testing.T) {
	for _, tp := range allPolicies(t) {
		for _, mode := range downModes {
			t.Run(tp.name+"/"+mode.name, func(t *testing.T) {
				b := New("svc", tp.p, mode.opts)
				b.Update(weighted(1, 3, 1)) // e1 would be the favourite
				mode.down(t, b, "e1")
				counts := map[string]int{}
				for i := range 300 {
					p := mustPick(t, b, keyedRequest(i))
					counts[p.Endpoint.ID]++
					p.Done(Result{Status: 200, Latency: time.Millisecond})
				}
				if counts["e1"] != 0 || counts["e0"] == 0 || counts["e2"] == 0 {
					t.Errorf("picks = %v, want none for the unavailable e1 and some for the others", counts)
				}

				// Everything down: panic mode spreads over all endpoints
				// rather than failing.
				mode.down(t, b, "e0")
				mode.down(t, b, "e2")
				counts = map[string]int{}
				for i := range 300 {
					p, err := b.Pick(keyedRequest(i))
					if err != nil {
						t.Fatalf("Pick with every endpoint down: %v", err)
					}
					counts[p.Endpoint.ID]++
					p.Done(Result{Status: 200, Latency: time.Millisecond})
				}
				want := 3
				if tp.name == "least_response_time" {
					// Failures count as slow responses (failurePenalty) and
					// 300 picks take far less than the decay time: the
					// endpoint that failed last stays the most expensive.
					want = 2
				}
				if len(counts) < want {
					t.Errorf("panic-mode picks = %v, want at least %d endpoints used", counts, want)
				}
			})
		}
	}
}

func TestEveryPolicyAvoidsTriedEndpoints(t *testing.T) {
	for _, tp := range allPolicies(t) {
		t.Run(tp.name, func(t *testing.T) {
			b := newBalancer(t, tp.p, weighted(1, 3, 1, 2))
			eps := b.Endpoints()
			for i := range 200 {
				r := keyedRequest(i)
				first := mustPick(t, b, r)
				first.Done(Result{Status: 200, Latency: time.Millisecond})
				r.MarkTried(first.Endpoint)
				second := mustPick(t, b, r)
				second.Done(Result{Status: 200, Latency: time.Millisecond})
				if second.Endpoint == first.Endpoint {
					t.Fatalf("retry %d went back to the tried %s", i, first.Endpoint.ID)
				}
				// Three of four tried: the fourth.
				r = keyedRequest(i)
				r.MarkTried(eps[i%4])
				r.MarkTried(eps[(i+1)%4])
				r.MarkTried(eps[(i+2)%4])
				if got := mustPick(t, b, r); got.Endpoint != eps[(i+3)%4] {
					t.Fatalf("with %s left untried, got %s", eps[(i+3)%4].ID, got.Endpoint.ID)
				} else {
					got.Done(Result{Status: 200})
				}
			}
			// All tried: still an endpoint.
			r := keyedRequest(0)
			for _, ep := range eps {
				r.MarkTried(ep)
			}
			p, err := b.Pick(r)
			if err != nil || p.Endpoint == nil {
				t.Fatalf("Pick with every endpoint tried = %v, %v; want an endpoint", p.Endpoint, err)
			}
			p.Done(Result{Status: 200})
		})
	}
}

func TestEveryPolicyPickIsAllocationFree(t *testing.T) {
	resilient := Options{
		Breaker: &breaker.Settings{},
		Outlier: &breaker.OutlierSettings{},
	}
	for _, tp := range allPolicies(t) {
		for _, opts := range []struct {
			name string
			o    Options
		}{{"plain", Options{}}, {"breaker+outlier", resilient}} {
			t.Run(tp.name+"/"+opts.name, func(t *testing.T) {
				b := New("svc", tp.p, opts.o)
				b.Update(weighted(1, 2, 3, 1, 1))
				r := keyedRequest(1)
				retry := keyedRequest(2)
				retry.MarkTried(mustPick(t, b, retry).Endpoint)
				sticky := keyedRequest(3)
				sticky.Affinity = "e2"
				for name, r := range map[string]Request{"first try": r, "retry": retry, "affinity": sticky} {
					allocs := testing.AllocsPerRun(1000, func() {
						p, err := b.Pick(r)
						if err != nil {
							t.Fatal(err)
						}
						p.Done(Result{Status: 200, Latency: time.Millisecond})
					})
					if allocs != 0 {
						t.Errorf("%s: Pick+Done allocates %.1f times per call, want 0", name, allocs)
					}
				}
			})
		}
	}
}
