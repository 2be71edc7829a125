package sticky

import (
	"log/slog"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/sidecar/config"
)

// TestCookieBelongsToItsRoute: a cookie verifies on the route that issued
// it, under the current or the previous key, and nowhere else: not on
// another route to the same service, not under a key the edges no longer
// hold.
func TestCookieBelongsToItsRoute(t *testing.T) {
	pool, err := gossip.Start(gossip.Config{NodeName: "t", Bind: "127.0.0.1:0", Insecure: true, Profile: "local", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Shutdown()
	oldKey, newKey, otherKey := make([]byte, KeySize), make([]byte, KeySize), make([]byte, KeySize)
	newKey[0], otherKey[0] = 1, 2
	keys, _ := NewKeys(oldKey)
	table := NewTable(pool.Store(), keys, TableOptions{ClockSkew: time.Second})
	route := func(name string) *Route {
		return table.Route(&config.Route{Name: name, Sticky: &config.Sticky{Mode: config.StickyCookieMode, MaxSessions: 10}})
	}
	shop, cart := route("shop"), route("cart")
	id := []byte("0123456789abcdef")
	issued := shop.cookieValue(table.ring.Load(), id)
	if got, ok := shop.verify(issued); !ok || string(got) != string(id) {
		t.Fatalf("the issuing route refuses its own cookie %q", issued)
	}
	if _, ok := cart.verify(issued); ok {
		t.Fatal("another route accepted shop's cookie")
	}

	rotated, _ := NewKeys(newKey, oldKey)
	table.SetKeys(rotated)
	if _, ok := shop.verify(issued); !ok {
		t.Fatal("after a rotation, a cookie signed with the previous key is refused")
	}
	if now := shop.cookieValue(table.ring.Load(), id); now == issued {
		t.Fatal("after a rotation, cookies are still signed with the previous key")
	}
	retired, _ := NewKeys(otherKey)
	table.SetKeys(retired)
	if _, ok := shop.verify(issued); ok {
		t.Fatal("a cookie signed with a key no longer held was accepted")
	}
}
