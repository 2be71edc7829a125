package config

import (
	"reflect"
	"testing"
	"time"
)

func TestParseAggregate(t *testing.T) {
	c, err := Parse("agg.yaml", []byte(`
edge:
  listeners: [{ listen: 127.0.0.1:8080 }]
  routes:
    - name: order-page
      timeout: 2s
      aggregate:
        concat: [items]
        legs:
          - { name: order, service: orders, path: "/orders/1" }
          - { name: user, service: users, path: "/users/{order.customer.id}?v=2", method: POST, timeout: 1s, required: false, under: . , headers: [Authorization] }
          - { name: found, service: discovered, path: /x, under: extra }
upstreams: [{ service: orders, endpoints: [{ address: 127.0.0.1:9000 }] }, { service: users, endpoints: [{ address: 127.0.0.1:9001 }] }]
discovery: { consul: { address: 127.0.0.1:8500 } }
`))
	if err != nil {
		t.Fatal(err)
	}
	a := c.Edge.Routes[0].Aggregate
	if a.OnConflict != ConflictError || a.MaxLegBytes != DefaultMaxLegBytes || a.AllowSetCookie {
		t.Errorf("defaults: %+v", a)
	}
	order, user := a.Legs[0], a.Legs[1]
	if order.Method != "GET" || !order.Required || order.Key() != "order" || order.Timeout != 0 {
		t.Errorf("leg defaults: %+v", order)
	}
	if user.Method != "POST" || user.Required || user.Key() != "" || user.Timeout != time.Second || a.Legs[2].Key() != "extra" {
		t.Errorf("legs: %+v", a.Legs)
	}
	parts, err := user.PathParts()
	want := []PathPart{{Literal: "/users/"}, {Leg: "order", Field: []string{"customer", "id"}}, {Literal: "?v=2"}}
	if err != nil || !reflect.DeepEqual(parts, want) {
		t.Errorf("PathParts = %+v, %v; want %+v", parts, err, want)
	}
	// A leg's service without an upstreams entry gets one, found by
	// discovery, as a backend's does.
	if got := c.Edge.BackendServices(); !reflect.DeepEqual(got, []string{"orders", "users", "discovered"}) {
		t.Errorf("BackendServices = %v", got)
	}
	if len(c.Upstreams) != 3 || c.Upstreams[2].Service != "discovered" {
		t.Errorf("upstreams: %+v", c.Upstreams)
	}
}
