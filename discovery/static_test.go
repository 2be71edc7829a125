package discovery

import (
	"context"
	"testing"
	"time"
)

func TestStaticWatch(t *testing.T) {
	src := NewStatic(map[string][]Endpoint{
		"cart": {{Address: "10.0.0.1", Port: 80}, {ID: "custom", Address: "10.0.0.2", Port: 81, Weight: 3}},
	})
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := src.Watch(ctx, "cart")
	if err != nil {
		t.Fatal(err)
	}
	snap := <-ch
	if snap.Service != "cart" || len(snap.Endpoints) != 2 {
		t.Fatalf("snapshot = %+v", snap)
	}
	first, second := snap.Endpoints[0], snap.Endpoints[1]
	if first.ID != "10.0.0.1:80" || first.Weight != 1 || first.Service != "cart" {
		t.Errorf("defaults not applied: %+v", first)
	}
	if second.ID != "custom" || second.Weight != 3 || second.HostPort() != "10.0.0.2:81" {
		t.Errorf("explicit values lost: %+v", second)
	}
	// Snapshots are copies: changing one does not change the source.
	snap.Endpoints[0].Address = "mutated"
	ch2, _ := src.Watch(ctx, "cart")
	if again := <-ch2; again.Endpoints[0].Address != "10.0.0.1" {
		t.Errorf("source shares memory with its snapshots: %+v", again.Endpoints[0])
	}

	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("a second snapshot from a static source")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed after the context was cancelled")
	}
}

func TestStaticUnknownService(t *testing.T) {
	if _, err := NewStatic(nil).Watch(context.Background(), "nope"); err == nil {
		t.Fatal("watching an unknown service succeeded")
	}
}

func TestHostPortIPv6(t *testing.T) {
	if got := (Endpoint{Address: "::1", Port: 8080}).HostPort(); got != "[::1]:8080" {
		t.Fatalf("HostPort = %q", got)
	}
}
