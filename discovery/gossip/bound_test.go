package gossip

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

// TestLimit: a bounded prefix keeps its most recently used records and
// counts the rest as evicted; Touch protects a record; records outside
// the prefix, tombstones and tied records are not counted.
func TestLimit(t *testing.T) {
	clk := newFakeClock()
	s := newTestStore("a", 1, clk)
	s.Limit("sticky/r/", 50)
	s.Set("other/x", []byte("v"), SetOptions{})
	s.Set("sticky/r/tied", []byte("v"), SetOptions{Tied: true})
	for i := range 500 {
		if i == 10 {
			s.Set("sticky/r/keep", []byte("v"), SetOptions{TTL: time.Hour})
		}
		if i > 10 {
			s.Touch("sticky/r/keep")
		}
		s.Set(fmt.Sprintf("sticky/r/%d", i), []byte("endpoint"), SetOptions{TTL: time.Hour})
	}
	st := s.PrefixStats("sticky/r/")
	if st.Entries != 50 || st.Evictions != 451 {
		t.Fatalf("stats %+v: want 50 entries, 451 evicted (501 written)", st)
	}
	if _, ok := s.Get("sticky/r/keep"); !ok {
		t.Errorf("the touched key was evicted")
	}
	if _, ok := s.Get("sticky/r/499"); !ok {
		t.Errorf("the newest key was evicted")
	}
	if _, ok := s.Get("sticky/r/100"); ok {
		t.Errorf("an old key was kept")
	}
	for _, k := range []string{"other/x", "sticky/r/tied"} {
		if _, ok := s.Get(k); !ok {
			t.Errorf("%s was evicted", k)
		}
	}
	// Rewriting a held key is no new record; deleting one frees a slot.
	s.Set("sticky/r/499", []byte("endpoint2"), SetOptions{})
	s.Delete("sticky/r/498")
	if st := s.PrefixStats("sticky/r/"); st.Entries != 49 || st.Evictions != 451 {
		t.Fatalf("after a rewrite and a delete: %+v", st)
	}
	// A lower bound evicts at once.
	s.Limit("sticky/r/", 10)
	if st := s.PrefixStats("sticky/r/"); st.Entries != 10 || st.Evictions != 490 {
		t.Fatalf("after lowering the bound: %+v", st)
	}
}

// TestLimitAppliesToMerges: updates learned from another member count
// against the bound too.
func TestLimitAppliesToMerges(t *testing.T) {
	clk := newFakeClock()
	a, b := newTestStore("a", 1, clk), newTestStore("b", 1, clk)
	b.Limit("sticky/", 100)
	for i := range 1000 {
		a.Set(fmt.Sprintf("sticky/%d", i), []byte("v"), SetOptions{})
	}
	if err := b.mergeRemoteState(a.localState()); err != nil {
		t.Fatal(err)
	}
	if st := b.PrefixStats("sticky/"); st.Entries != 100 || st.Evictions != 900 || len(b.records) != 100 {
		t.Fatalf("b after merging 1000 entries: %+v, %d records", st, len(b.records))
	}
}

// TestLimitFlood: 200,000 writes under a bound of 10,000 hold 10,000
// records, and the memory estimate is within reach of what the heap grew
// by (it is what /sticky and the metrics report).
func TestLimitFlood(t *testing.T) {
	clk := newFakeClock()
	s := newTestStore("edge-a", 1, clk)
	s.Limit("sticky/cart/", 10_000)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 200_000 {
		s.Set(fmt.Sprintf("sticky/cart/%022d", i), []byte("1\x00cart\x00cart-10-0-0-7-8080\x001733300000000\x001733300000000"), SetOptions{TTL: time.Hour})
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	st := s.PrefixStats("sticky/cart/")
	if st.Entries != 10_000 || len(s.records) != 10_000 {
		t.Fatalf("%+v, %d records: want 10,000", st, len(s.records))
	}
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	perEntry := float64(grown) / 10_000
	t.Logf("%d bytes reported, heap grew %d bytes: %.0f bytes per session measured, %d estimated", st.Bytes, grown, perEntry, st.Bytes/10_000)
	if float64(st.Bytes) < 0.5*float64(grown) || float64(st.Bytes) > 2*float64(grown) {
		t.Errorf("the estimate (%d bytes) is off the heap's growth (%d bytes) by more than 2x", st.Bytes, grown)
	}
}
