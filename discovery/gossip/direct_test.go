package gossip

import (
	"context"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// putSilently stores a version of key on p without queueing a broadcast,
// so that only a direct message can teach it to another member.
func putSilently(p *Pool, key, value string) {
	s := p.store
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.putLocked(&entry{key: key, value: []byte(value), owner: s.node, incarnation: s.incarnation,
		version: s.tick(), expires: now.Add(time.Hour).UnixMilli()}, now)
}

func TestPushAndPullKey(t *testing.T) {
	a := startPool(t, testConfig("a"))
	b := startPool(t, testConfig("b", a.Addr()))
	c := startPool(t, testConfig("c", a.Addr()))
	meshtest.WaitFor(t, 10*time.Second, "three members", func() bool {
		return a.NumMembers() == 3 && b.NumMembers() == 3 && c.NumMembers() == 3
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	putSilently(a, "sticky/pulled", "app-1")
	found, err := b.PullKey(ctx, "a", "sticky/pulled")
	if err != nil || !found {
		t.Fatalf("b pulls from a: found %v, %v", found, err)
	}
	if e, ok := b.Store().Get("sticky/pulled"); !ok || string(e.Value) != "app-1" || e.Owner != "a" {
		t.Fatalf("b after the pull: %+v %v", e, ok)
	}

	putSilently(a, "sticky/pushed", "app-2")
	if err := a.PushKey(ctx, "c", "sticky/pushed"); err != nil {
		t.Fatal(err)
	}
	// PushKey returns once c has merged it: no waiting here.
	if e, ok := c.Store().Get("sticky/pushed"); !ok || string(e.Value) != "app-2" {
		t.Fatalf("c right after the push: %+v %v", e, ok)
	}

	if found, err := c.PullKey(ctx, "b", "sticky/nobody-has-it"); err != nil || found {
		t.Fatalf("pull of an unknown key: found %v, %v", found, err)
	}
	if _, err := c.PullKey(ctx, "stranger", "sticky/pulled"); err == nil {
		t.Fatal("pull from a node that is not a member succeeded")
	}
	if err := c.PushKey(ctx, "a", "sticky/nothing-here"); err == nil {
		t.Fatal("push of a key c does not hold succeeded")
	}

	// A member that dies without leaving: asks to it fail within the
	// caller's deadline instead of hanging.
	putSilently(a, "sticky/lost", "app-3")
	a.Shutdown()
	short, cancelShort := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancelShort()
	start := time.Now()
	if found, err := b.PullKey(short, "a", "sticky/lost"); err == nil || found {
		t.Fatalf("pull from a dead member: found %v, %v", found, err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("pull from a dead member took %v", took)
	}
}

func TestDirectCodec(t *testing.T) {
	e := &entry{key: "sticky/k", value: []byte("v"), owner: "a", incarnation: 3, version: 9, expires: 12345}
	q, err := decodeAsk(encodeAsk(7, askPush, "a", "sticky/k", e))
	if err != nil || q.id != 7 || q.op != askPush || q.from != "a" || q.entry == nil || q.entry.version != 9 {
		t.Fatalf("push ask round trip: %+v %v", q, err)
	}
	if q, err := decodeAsk(encodeAsk(8, askPull, "b", "sticky/k", nil)); err != nil || q.entry != nil || q.key != "sticky/k" {
		t.Fatalf("pull ask round trip: %+v %v", q, err)
	}
	for _, a := range []*answerMsg{{id: 1}, {id: 2, found: true}, {id: 3, found: true, entry: e}, {id: 4, entry: e}} {
		got, err := decodeAnswer(encodeAnswer(a))
		if err != nil || got.id != a.id || got.found != a.found || (got.entry == nil) != (a.entry == nil) {
			t.Fatalf("answer %+v round trip: %+v %v", a, got, err)
		}
	}
	bad := [][]byte{
		{msgAsk},
		{msgAsk, codecVersion, 1, 9, 1, 'a', 1, 'k'}, // unknown op
		encodeAsk(1, askPull, "a", "k", nil)[:5],     // truncated
		{msgAnswer, codecVersion, 1, 7},              // unknown flags
		append(encodeAnswer(&answerMsg{id: 1}), 0),   // trailing
	}
	other := encodeAsk(1, askPush, "a", "another-key", e) // entry under another key
	bad = append(bad, other)
	for _, b := range bad {
		if _, err := decodeAsk(b); err == nil && b[0] == msgAsk {
			t.Errorf("decodeAsk(%q) accepted garbage", b)
		}
		if _, err := decodeAnswer(b); err == nil && b[0] == msgAnswer {
			t.Errorf("decodeAnswer(%q) accepted garbage", b)
		}
	}
}

// FuzzDecodeDirect: any bytes a member may send decode to a valid message
// or an error, never a panic, and what decodes encodes back to itself.
func FuzzDecodeDirect(f *testing.F) {
	e := &entry{key: "sticky/k", value: []byte("v"), owner: "a", incarnation: 3, version: 9, expires: 12345}
	f.Add(encodeAsk(7, askPush, "a", "sticky/k", e))
	f.Add(encodeAsk(8, askPull, "b", "sticky/k", nil))
	f.Add(encodeAnswer(&answerMsg{id: 3, found: true, entry: e}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if q, err := decodeAsk(b); err == nil {
			if again, err := decodeAsk(encodeAsk(q.id, q.op, q.from, q.key, q.entry)); err != nil || again.key != q.key {
				t.Fatalf("ask %+v does not round-trip: %v", q, err)
			}
		}
		if a, err := decodeAnswer(b); err == nil {
			if again, err := decodeAnswer(encodeAnswer(a)); err != nil || again.id != a.id || again.found != a.found {
				t.Fatalf("answer %+v does not round-trip: %v", a, err)
			}
		}
	})
}
