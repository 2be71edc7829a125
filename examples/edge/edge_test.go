// Package edge holds the example edge config; its test keeps it valid
// and its routes where the comments say they go.
package edge

import (
	"net/http/httptest"
	"testing"

	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/edge"
)

func TestExampleRoutes(t *testing.T) {
	cfg, err := config.Load("edge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tab := edge.Compile(cfg.Edge.Routes)
	for _, c := range []struct{ path, version, want string }{
		{"/", "", "frontend"},
		{"/api/catalog/items", "", "catalog-v2"},
		{"/api/catalog/items", "1", "catalog-v1"},
		{"/shop/cart", "", "legacy"},
		{"/nothing/here", "", ""},
	} {
		r := httptest.NewRequest("GET", c.path, nil)
		if c.version != "" {
			r.Header.Set("X-Api-Version", c.version)
		}
		m, _ := tab.Match("127.0.0.1", c.path, r)
		got := ""
		if m.Route != nil {
			got = m.Route.Name
		}
		if got != c.want {
			t.Errorf("%s (version %q): route %q, want %q", c.path, c.version, got, c.want)
		}
	}
}
