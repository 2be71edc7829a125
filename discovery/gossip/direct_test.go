package gossip

import (
	"context"
	"errors"
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

func TestCall(t *testing.T) {
	a := startPool(t, testConfig("a"))
	b := startPool(t, testConfig("b", a.Addr()))
	meshtest.WaitFor(t, 10*time.Second, "two members", func() bool { return a.NumMembers() == 2 && b.NumMembers() == 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	b.Handle("echo", func(caller string, req []byte) []byte { return append([]byte(caller+":"), req...) })
	got, err := a.Call(ctx, "b", "echo", []byte("hi"))
	if err != nil || string(got) != "a:hi" {
		t.Fatalf("call: %q %v, want the caller's name and the request", got, err)
	}
	b.Handle("empty", func(string, []byte) []byte { return nil })
	if got, err := a.Call(ctx, "b", "empty", nil); err != nil || len(got) != 0 {
		t.Fatalf("call answered with nothing: %q %v", got, err)
	}
	if _, err := a.Call(ctx, "b", "nobody", nil); !errors.Is(err, ErrNoHandler) {
		t.Fatalf("call to a name without a handler: %v, want ErrNoHandler", err)
	}
	b.Handle("echo", nil)
	if _, err := a.Call(ctx, "b", "echo", nil); !errors.Is(err, ErrNoHandler) {
		t.Fatalf("call to a removed handler: %v, want ErrNoHandler", err)
	}
	if _, err := a.Call(ctx, "b", "echo", make([]byte, MaxCallPayload+1)); err == nil {
		t.Fatal("a request larger than MaxCallPayload was sent")
	}
}

func TestDirectCodec(t *testing.T) {
	e := &entry{key: "sticky/k", value: []byte("v"), owner: "a", incarnation: 3, version: 9, expires: 12345}
	q, err := decodeAsk(encodeAsk(7, askPush, "a", "sticky/k", e, nil))
	if err != nil || q.id != 7 || q.op != askPush || q.from != "a" || q.entry == nil || q.entry.version != 9 {
		t.Fatalf("push ask round trip: %+v %v", q, err)
	}
	if q, err := decodeAsk(encodeAsk(8, askPull, "b", "sticky/k", nil, nil)); err != nil || q.entry != nil || q.key != "sticky/k" {
		t.Fatalf("pull ask round trip: %+v %v", q, err)
	}
	if q, err := decodeAsk(encodeAsk(9, askCall, "c", "counts", nil, []byte("req"))); err != nil || string(q.payload) != "req" || q.key != "counts" {
		t.Fatalf("call ask round trip: %+v %v", q, err)
	}
	for _, a := range []*answerMsg{{id: 1}, {id: 2, found: true}, {id: 3, found: true, entry: e}, {id: 4, entry: e},
		{id: 5, found: true, payload: []byte("answer")}, {id: 6, found: true, payload: []byte{}}} {
		got, err := decodeAnswer(encodeAnswer(a))
		if err != nil || got.id != a.id || got.found != a.found || (got.entry == nil) != (a.entry == nil) ||
			(got.payload == nil) != (a.payload == nil) || string(got.payload) != string(a.payload) {
			t.Fatalf("answer %+v round trip: %+v %v", a, got, err)
		}
	}
	bad := [][]byte{
		{msgAsk},
		{msgAsk, codecVersion, 1, 9, 1, 'a', 1, 'k'},  // unknown op
		encodeAsk(1, askPull, "a", "k", nil, nil)[:5], // truncated
		{msgAnswer, codecVersion, 1, 8},               // unknown flags
		append(encodeAnswer(&answerMsg{id: 1}), 0),    // trailing
	}
	other := encodeAsk(1, askPush, "a", "another-key", e, nil) // entry under another key
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
	f.Add(encodeAsk(7, askPush, "a", "sticky/k", e, nil))
	f.Add(encodeAsk(8, askPull, "b", "sticky/k", nil, nil))
	f.Add(encodeAnswer(&answerMsg{id: 3, found: true, entry: e}))
	f.Add(encodeAsk(9, askCall, "c", "counts", nil, []byte("req")))
	f.Add(encodeAnswer(&answerMsg{id: 4, found: true, payload: []byte("answer")}))
	f.Fuzz(func(t *testing.T, b []byte) {
		if q, err := decodeAsk(b); err == nil {
			if again, err := decodeAsk(encodeAsk(q.id, q.op, q.from, q.key, q.entry, q.payload)); err != nil || again.key != q.key {
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
