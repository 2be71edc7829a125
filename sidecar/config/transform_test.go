package config

import (
	"encoding/json"
	"testing"
)

// transformExample is the example of docs/edge.md, "Transformation".
const transformExample = `
edge:
  listeners: [{ listen: 0.0.0.0:8080 }]
  routes:
    - name: users
      matches: [{ path: { prefix: /api/users } }]
      backends: [{ service: users }]
      transform:
        request:
          json:
            rename: { name: full_name }         # move a field's value
            set: { client.source: edge }        # any YAML value; creates "client" when missing
          query:
            rename: { q: search }
            remove: [debug]                     # every value of each
            set: { api_version: "2" }           # one value, replacing any
        response:
          json:
            remove: [password_hash, internal.trace]
            set: { meta.served_by: edge, meta.version: 2 }
        # max_body_bytes: 1048576 (1 MiB, the default)
upstreams: [{ service: users, endpoints: [{ address: 127.0.0.1:9000 }] }]
`

// TestTransformConfig: the documented example parses, with the default
// bound, and its set values come out as JSON text, integers digit for
// digit.
func TestTransformConfig(t *testing.T) {
	c, err := Parse("edge.yaml", []byte(transformExample))
	if err != nil {
		t.Fatal(err)
	}
	tr := c.Edge.Routes[0].Transform
	if tr == nil || tr.MaxBodyBytes != DefaultTransformMaxBodyBytes {
		t.Fatalf("transform %+v, want max_body_bytes %d", tr, DefaultTransformMaxBodyBytes)
	}
	if got := tr.Request.Query.Set["api_version"]; got != "2" {
		t.Errorf("query set api_version = %q", got)
	}
	vals := tr.Response.JSON.SetValues()
	if string(vals["meta.served_by"]) != `"edge"` || string(vals["meta.version"]) != "2" || !json.Valid(vals["meta.version"]) {
		t.Errorf("response set values %q", vals)
	}
	c, err = Parse("edge.yaml", []byte(`
edge:
  listeners: [{ listen: 127.0.0.1:8080 }]
  routes:
    - name: api
      transform: { max_body_bytes: 64, response: { json: { set: { id: 9007199254740993, flags: { beta: true } } } } }
      backends: [{ service: api }]
upstreams: [{ service: api, endpoints: [{ address: 127.0.0.1:9000 }] }]
`))
	if err != nil {
		t.Fatal(err)
	}
	tr = c.Edge.Routes[0].Transform
	if vals := tr.Response.JSON.SetValues(); tr.MaxBodyBytes != 64 || string(vals["id"]) != "9007199254740993" || string(vals["flags"]) != `{"beta":true}` {
		t.Errorf("max_body_bytes %d, set values %q", tr.MaxBodyBytes, vals)
	}
}
