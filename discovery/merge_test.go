package discovery

import (
	"context"
	"testing"
	"time"
)

// chanSource is a Source fed by hand.
type chanSource struct{ ch chan Snapshot }

func (c chanSource) Watch(ctx context.Context, service string) (<-chan Snapshot, error) {
	out := make(chan Snapshot, 1)
	go func() {
		defer close(out)
		for {
			select {
			case s := <-c.ch:
				SendLatest(out, s)
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

func ids(s Snapshot) []string {
	var out []string
	for _, e := range s.Endpoints {
		out = append(out, e.ID)
	}
	return out
}

func next(t *testing.T, ch <-chan Snapshot) Snapshot {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("no snapshot")
		return Snapshot{}
	}
}

func TestMergeUnion(t *testing.T) {
	a, b := chanSource{make(chan Snapshot)}, chanSource{make(chan Snapshot)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := Merge(a, b).Watch(ctx, "svc")
	if err != nil {
		t.Fatal(err)
	}
	// One source delivering is enough for a first snapshot.
	a.ch <- Snapshot{Service: "svc", Endpoints: []Endpoint{{ID: "x", Weight: 1}, {ID: "y", Weight: 1}}}
	if got := ids(next(t, ch)); len(got) != 2 {
		t.Fatalf("first snapshot = %v, want x y", got)
	}
	// The second source adds z and knows y too: y from a wins.
	b.ch <- Snapshot{Service: "svc", Endpoints: []Endpoint{{ID: "y", Weight: 9}, {ID: "z", Weight: 1}}}
	s := next(t, ch)
	if got := ids(s); len(got) != 3 || got[0] != "x" || got[1] != "y" || got[2] != "z" {
		t.Fatalf("union = %v, want x y z", got)
	}
	if s.Endpoints[1].Weight != 1 {
		t.Errorf("y weight = %d, want the first source's 1", s.Endpoints[1].Weight)
	}
	// A source emptying removes only its own endpoints.
	a.ch <- Snapshot{Service: "svc"}
	if got := ids(next(t, ch)); len(got) != 2 || got[0] != "y" || got[1] != "z" {
		t.Fatalf("after a emptied: %v, want y z (from b)", got)
	}
	cancel()
	for range ch {
	}
}

func TestSendLatestReplacesUnread(t *testing.T) {
	ch := make(chan Snapshot, 1)
	SendLatest(ch, Snapshot{Service: "old"})
	SendLatest(ch, Snapshot{Service: "new"})
	if s := <-ch; s.Service != "new" {
		t.Fatalf("got %q, want the newest", s.Service)
	}
}
