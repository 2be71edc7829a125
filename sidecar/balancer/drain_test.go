package balancer

import (
	"testing"

	"github.com/sidemesh/sidemesh/discovery"
)

// TestDrained: every policy sends no new work to a drained endpoint, a
// request pinned to it still goes there, and when every endpoint is
// drained, traffic keeps flowing.
func TestDrained(t *testing.T) {
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			policy, err := NewPolicy(name, PolicyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			d := &Drained{}
			b := New("cart", policy, Options{Drained: d})
			var eps []discovery.Endpoint
			for _, id := range []string{"a", "b", "c"} {
				eps = append(eps, discovery.Endpoint{ID: id, Service: "cart", Address: "127.0.0.1", Port: 1, Weight: 1})
			}
			b.Update(discovery.Snapshot{Endpoints: eps})
			d.Set([]string{"b"})
			for i := range 300 {
				r := Request{}
				if i%2 == 0 {
					r = clientKey(i)
				}
				p, err := b.Pick(r)
				if err != nil {
					t.Fatal(err)
				}
				p.Done(Result{})
				if p.Endpoint.ID == "b" {
					t.Fatalf("pick %d went to the drained endpoint", i)
				}
			}
			p, err := b.Pick(Request{Affinity: "b"})
			if err != nil || p.Endpoint.ID != "b" {
				t.Fatalf("a request pinned to the drained endpoint went to %v (%v)", p.Endpoint, err)
			}
			p.Done(Result{})
			d.Set([]string{"a", "b", "c"})
			if p, err := b.Pick(Request{}); err != nil {
				t.Fatalf("every endpoint drained: %v", err)
			} else {
				p.Done(Result{})
			}
			d.Set(nil)
			seen := map[string]bool{}
			for i := range 300 {
				p, _ := b.Pick(clientKey(i))
				p.Done(Result{})
				seen[p.Endpoint.ID] = true
			}
			if !seen["b"] {
				t.Errorf("undrained, b got no new work: %v", seen)
			}
		})
	}
}
