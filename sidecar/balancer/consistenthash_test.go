package balancer

import (
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/discovery"
)

// clientKey returns the i-th of many distinct client addresses.
func clientKey(i int) Request {
	return Request{Client: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})}
}

// mapping returns the endpoint ID each of n client keys is sent to.
func mapping(t *testing.T, p Policy, s discovery.Snapshot, n int) []string {
	t.Helper()
	b := newBalancer(t, p, s)
	ids := make([]string, n)
	for i := range ids {
		pk := mustPick(t, b, clientKey(i))
		ids[i] = pk.Endpoint.ID
		pk.Done(Result{Status: 200})
	}
	return ids
}

func TestConsistentHashIsStable(t *testing.T) {
	s := snapshot(5)
	first := mapping(t, ConsistentHash{}, s, 2000)
	if again := mapping(t, ConsistentHash{}, s, 2000); !slices.Equal(first, again) {
		t.Error("the same keys went elsewhere on a second balancer")
	}
	// Every sidecar builds the same table whatever order discovery lists
	// the endpoints in.
	rev := s
	rev.Endpoints = slices.Clone(s.Endpoints)
	slices.Reverse(rev.Endpoints)
	if reversed := mapping(t, ConsistentHash{}, rev, 2000); !slices.Equal(first, reversed) {
		t.Error("the mapping depends on the order of the endpoints in the snapshot")
	}
	// ip_hash is consistent_hash on source_ip.
	if ip := mapping(t, IPHash{}, s, 2000); !slices.Equal(first, ip) {
		t.Error("ip_hash maps keys unlike consistent_hash on source_ip")
	}
	// The same key on one balancer, many times.
	b := newBalancer(t, ConsistentHash{}, s)
	want := mustPick(t, b, clientKey(7)).Endpoint
	for range 100 {
		if got := mustPick(t, b, clientKey(7)).Endpoint; got != want {
			t.Fatalf("key 7 went to %s, then %s", want.ID, got.ID)
		}
	}
}

func TestConsistentHashSpreadsKeys(t *testing.T) {
	const n = 100000
	t.Run("equal weights", func(t *testing.T) {
		counts := map[string]int{}
		for _, id := range mapping(t, ConsistentHash{}, snapshot(10), n) {
			counts[id]++
		}
		for id, c := range counts {
			if c < 9000 || c > 11000 {
				t.Errorf("%s got %d of %d keys, want about 10000", id, c, n)
			}
		}
		if len(counts) != 10 {
			t.Errorf("keys went to %d endpoints, want 10", len(counts))
		}
	})
	t.Run("weighted", func(t *testing.T) {
		counts := map[string]int{}
		for _, id := range mapping(t, ConsistentHash{}, weighted(2, 1, 1, 4), n) {
			counts[id]++
		}
		for id, share := range map[string]float64{"e0": 0.25, "e1": 0.125, "e2": 0.125, "e3": 0.5} {
			if got := float64(counts[id]) / n; math.Abs(got-share) > 0.1*share {
				t.Errorf("%s got %.3f of the keys, want %.3f", id, got, share)
			}
		}
	})
	t.Run("table slots follow weights", func(t *testing.T) {
		b := newBalancer(t, ConsistentHash{}, weighted(2, 1, 1))
		p := b.picker.Load().Picker.(*hashPicker)
		slots := make([]int, 3)
		for _, i := range p.table {
			slots[i]++
		}
		if r := float64(slots[0]) / float64(slots[1]+slots[2]) * 2; math.Abs(r-2) > 0.02 {
			t.Errorf("slots = %v: weight 2 fills %.3f times a weight 1's, want 2", slots, r)
		}
	})
}

func TestConsistentHashMovesFewKeys(t *testing.T) {
	const keys = 100000
	ten := snapshot(10)
	base := mapping(t, ConsistentHash{}, ten, keys)

	moved := func(other []string) float64 {
		n := 0
		for i := range base {
			if base[i] != other[i] {
				n++
			}
		}
		return float64(n) / keys
	}

	t.Run("one added", func(t *testing.T) {
		s := snapshot(11)
		got := mapping(t, ConsistentHash{}, s, keys)
		f := moved(got)
		t.Logf("adding an 11th endpoint moved %.4f of the keys (ideal 1/11 = %.4f)", f, 1.0/11)
		if f > 2.0/11 {
			t.Errorf("adding one endpoint to 10 moved %.3f of the keys, want below 2/11", f)
		}
	})
	t.Run("one removed", func(t *testing.T) {
		s := ten
		s.Endpoints = slices.Delete(slices.Clone(ten.Endpoints), 3, 4) // drop e3
		got := mapping(t, ConsistentHash{}, s, keys)
		f := moved(got)
		t.Logf("removing one of 10 endpoints moved %.4f of the keys (ideal 1/10)", f)
		if f > 2.0/10 {
			t.Errorf("removing one endpoint of 10 moved %.3f of the keys, want below 2/10", f)
		}
		// e3's keys must all move; Maglev moves a few others besides.
		for i := range base {
			if base[i] == "e3" && got[i] == "e3" {
				t.Fatalf("key %d still goes to the removed e3", i)
			}
		}
	})
}

func TestConsistentHashOn(t *testing.T) {
	s := snapshot(8)
	req := func(mod func(*http.Request)) Request {
		r, _ := http.NewRequest("GET", "http://svc/a/b?q=1", nil)
		r.RemoteAddr = "192.0.2.1:5555"
		mod(r)
		return Request{HTTP: r}
	}
	// spread reports how many endpoints 200 requests built by key(i) went to.
	spread := func(b *Balancer, key func(i int) Request) int {
		seen := map[string]bool{}
		for i := range 200 {
			seen[mustPick(t, b, key(i)).Endpoint.ID] = true
		}
		return len(seen)
	}

	tests := []struct {
		hashOn string
		// same returns requests that must go to one endpoint.
		same []Request
		// key(i) returns requests with 200 different keys.
		key func(i int) Request
	}{
		{
			hashOn: "source_ip", // from X-Forwarded-For, whatever the peer
			same: []Request{
				req(func(r *http.Request) { r.Header.Set("X-Forwarded-For", "203.0.113.9") }),
				req(func(r *http.Request) {
					r.Header.Set("X-Forwarded-For", "203.0.113.9, 10.0.0.1")
					r.RemoteAddr = "198.51.100.7:1"
				}),
				req(func(r *http.Request) { r.Header.Set("X-Forwarded-For", " ::ffff:203.0.113.9") }),
				{Client: netip.MustParseAddr("203.0.113.9")},
			},
			key: func(i int) Request {
				return req(func(r *http.Request) { r.Header.Set("X-Forwarded-For", fmt.Sprintf("203.0.%d.%d", i/100, i%100)) })
			},
		},
		{
			hashOn: "source_ip", // from RemoteAddr
			same: []Request{
				req(func(r *http.Request) { r.RemoteAddr = "198.51.100.7:1000" }),
				req(func(r *http.Request) { r.RemoteAddr = "198.51.100.7:2000" }),
				req(func(r *http.Request) { r.RemoteAddr = "[::ffff:198.51.100.7]:3000" }),
			},
			key: func(i int) Request {
				return req(func(r *http.Request) { r.RemoteAddr = fmt.Sprintf("198.51.%d.%d:80", i/100, i%100) })
			},
		},
		{
			hashOn: "header:x-user-id", // canonicalised once
			same: []Request{
				req(func(r *http.Request) { r.Header.Set("X-User-Id", "alice") }),
				req(func(r *http.Request) { r.Header["X-User-Id"] = []string{"alice", "bob"}; r.RemoteAddr = "192.0.2.2:1" }),
			},
			key: func(i int) Request {
				return req(func(r *http.Request) { r.Header.Set("X-User-Id", fmt.Sprint("user", i)) })
			},
		},
		{
			hashOn: "cookie:session", // among other cookies, in any Cookie line
			same: []Request{
				req(func(r *http.Request) { r.Header.Set("Cookie", "session=abc123") }),
				req(func(r *http.Request) { r.Header.Set("Cookie", "theme=dark; session=abc123; lang=fr") }),
				req(func(r *http.Request) { r.Header.Set("Cookie", `a=1;session="abc123"`) }),
				req(func(r *http.Request) {
					r.Header["Cookie"] = []string{"theme=dark; sessionx=zzz", "lang=fr;  session=abc123 "}
				}),
				req(func(r *http.Request) { r.Header.Set("Cookie", "session=bad\\value; session=abc123") }),
			},
			key: func(i int) Request {
				return req(func(r *http.Request) { r.Header.Set("Cookie", fmt.Sprintf("theme=dark; session=s%d", i)) })
			},
		},
		{
			hashOn: "path",
			same: []Request{
				req(func(*http.Request) {}),
				req(func(r *http.Request) { r.URL.RawQuery = "other=2"; r.RemoteAddr = "192.0.2.3:1" }),
			},
			key: func(i int) Request {
				return req(func(r *http.Request) { r.URL.Path = fmt.Sprintf("/items/%d", i) })
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.hashOn, func(t *testing.T) {
			p, err := NewPolicy("consistent_hash", PolicyOptions{HashOn: tt.hashOn})
			if err != nil {
				t.Fatal(err)
			}
			b := newBalancer(t, p, s)
			want := mustPick(t, b, tt.same[0]).Endpoint
			for i, r := range tt.same[1:] {
				if got := mustPick(t, b, r).Endpoint; got != want {
					t.Errorf("request %d went to %s, want %s like request 0", i+1, got.ID, want.ID)
				}
			}
			if n := spread(b, tt.key); n < 7 {
				t.Errorf("200 different keys went to %d of 8 endpoints, want them spread", n)
			}
		})
	}
}

func TestConsistentHashMissingKeyIsRandom(t *testing.T) {
	seedRand(t, 5)
	for _, hashOn := range []string{"header:X-User", "cookie:session", "path", "source_ip"} {
		p, err := NewPolicy("consistent_hash", PolicyOptions{HashOn: hashOn})
		if err != nil {
			t.Fatal(err)
		}
		b := newBalancer(t, p, weighted(1, 1, 2))
		r, _ := http.NewRequest("GET", "http://svc/", nil)
		r.Header.Set("Cookie", "other=1")
		r.URL.Path = ""
		r.RemoteAddr = "not an address"
		const n = 4000
		counts := countPicks(t, b, n, Request{HTTP: r})
		for id, share := range map[string]float64{"e0": 0.25, "e1": 0.25, "e2": 0.5} {
			if got := float64(counts[id]) / n; math.Abs(got-share) > 0.05 {
				t.Errorf("%s: %s got %.3f of keyless requests, want about %.2f (weighted random)", hashOn, id, got, share)
			}
		}
	}
	// A TCP connection has no header: random too.
	p, _ := NewPolicy("consistent_hash", PolicyOptions{HashOn: "header:X-User"})
	b := newBalancer(t, p, snapshot(3))
	if counts := countPicks(t, b, 300, Request{}); len(counts) != 3 {
		t.Errorf("keyless TCP picks went to %d of 3 endpoints, want all", len(counts))
	}
}

func TestConsistentHashRetryWalksTheTable(t *testing.T) {
	s := snapshot(6)
	b := newBalancer(t, ConsistentHash{}, s)
	other := newBalancer(t, ConsistentHash{}, s) // another sidecar
	for i := range 200 {
		r := clientKey(i)
		first := mustPick(t, b, r).Endpoint
		r.MarkTried(first)
		second := mustPick(t, b, r).Endpoint
		if second == first {
			t.Fatalf("key %d: retry went back to the tried %s", i, first.ID)
		}
		if again := mustPick(t, b, r).Endpoint; again != second {
			t.Fatalf("key %d: retry went to %s, then %s", i, second.ID, again.ID)
		}
		r2 := clientKey(i)
		r2.MarkTried(byID(t, other, first.ID))
		if got := mustPick(t, other, r2).Endpoint; got.ID != second.ID {
			t.Fatalf("key %d: retry went to %s on one sidecar, %s on another", i, second.ID, got.ID)
		}
		r.MarkTried(second)
		if third := mustPick(t, b, r).Endpoint; third == first || third == second {
			t.Fatalf("key %d: second retry went back to %s", i, third.ID)
		}
	}
}

func TestCookieValue(t *testing.T) {
	tests := []struct {
		lines []string
		want  string
		ok    bool
	}{
		{nil, "", false},
		{[]string{"session=abc"}, "abc", true},
		{[]string{"a=1; session=abc; b=2"}, "abc", true},
		{[]string{"a=1", "b=2;session=abc"}, "abc", true},
		{[]string{`session="q"`}, "q", true},
		{[]string{`session="`}, "", false},
		{[]string{"session"}, "", true},
		{[]string{"sessionid=x; session_=y"}, "", false},
		{[]string{" session =x"}, "x", true},
		{[]string{"session=a b"}, "a b", true},
		{[]string{"session=a;b"}, "a", true},
		{[]string{"session=\x7f; session=ok"}, "ok", true},
	}
	for _, tt := range tests {
		got, ok := cookieValue(tt.lines, "session")
		if got != tt.want || ok != tt.ok {
			t.Errorf("cookieValue(%q) = %q, %v; want %q, %v", tt.lines, got, ok, tt.want, tt.ok)
		}
	}
}

// FuzzCookieValue holds the allocation-free cookie scan to net/http's
// parsing of the same Cookie header.
func FuzzCookieValue(f *testing.F) {
	for _, s := range []string{"session=abc", "a=1; session=abc; b=2", `session="x"`, "session=a\\b; session=c", " ; ;session = v ", "session"} {
		f.Add(s, "")
	}
	f.Add("a=1", "session=2")
	f.Fuzz(func(t *testing.T, line1, line2 string) {
		lines := []string{line1}
		if line2 != "" {
			lines = append(lines, line2)
		}
		if strings.Count(line1+line2, ";") > 1000 {
			t.Skip() // net/http gives up on too many cookies
		}
		r := &http.Request{Header: http.Header{"Cookie": lines}}
		got, ok := cookieValue(lines, "session")
		c, err := r.Cookie("session")
		if (err == nil) != ok || err == nil && c.Value != got {
			t.Fatalf("cookieValue(%q) = %q, %v; net/http says %v, %v", lines, got, ok, c, err)
		}
	})
}
