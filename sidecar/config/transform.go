package config

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Transform changes the JSON bodies and the query of a route's requests
// and the JSON bodies of its responses (see docs/edge.md,
// "Transformation"). Bodies that are not JSON, or larger than
// MaxBodyBytes, pass unchanged; streaming responses are never held.
type Transform struct {
	// Request edits the request before it is sent on. Nil: no edits.
	Request *RequestTransform `yaml:"request"`
	// Response edits the response before it is passed on. Nil: no edits.
	Response *ResponseTransform `yaml:"response"`
	// MaxBodyBytes bounds the bodies held in memory to be edited, after
	// gzip decoding. A larger body passes unchanged; a response then
	// carries X-Sidemesh-Transform: skipped; body too large. Default
	// 1 MiB (1048576).
	MaxBodyBytes int `yaml:"max_body_bytes"`
}

// RequestTransform edits a request's JSON body and query.
type RequestTransform struct {
	// JSON edits the body when it is JSON. Nil: the body is not read.
	JSON *JSONTransform `yaml:"json"`
	// Query edits the query parameters. Nil: none.
	Query *QueryTransform `yaml:"query"`
}

// ResponseTransform edits a response's JSON body.
type ResponseTransform struct {
	// JSON edits the body when it is JSON. Required.
	JSON *JSONTransform `yaml:"json"`
}

// JSONTransform edits the fields of a JSON object body. A field is named
// by a dotted path through objects ("user.address.city"); each field is
// edited by one entry only, and no edited field lies inside another.
// Numbers and untouched fields are copied as they are, in their order.
type JSONTransform struct {
	// Set puts a value at a path, creating the objects on the way: any
	// YAML value, a string, number, boolean, null, list or mapping,
	// turned into JSON (an integer keeps every digit; see JSONValue).
	Set map[string]JSONValue `yaml:"set"`
	// Remove deletes fields; a missing one is no error.
	Remove []string `yaml:"remove"`
	// Rename moves a field's value from one path (the key) to another.
	Rename map[string]string `yaml:"rename"`
}

// QueryTransform edits a request's query parameters, keeping the order
// of the others.
type QueryTransform struct {
	// Set gives a parameter one value, replacing any it had.
	Set map[string]string `yaml:"set"`
	// Remove deletes parameters, every value of each.
	Remove []string `yaml:"remove"`
	// Rename gives a parameter another name, keeping its values.
	Rename map[string]string `yaml:"rename"`
}

// DefaultTransformMaxBodyBytes is the default of Transform.MaxBodyBytes.
const DefaultTransformMaxBodyBytes = 1 << 20

func (t *Transform) setDefaults() { *t = Transform{MaxBodyBytes: DefaultTransformMaxBodyBytes} }

// SetValues returns the values of Set as JSON; t must have passed
// validation.
func (t *JSONTransform) SetValues() map[string]json.RawMessage {
	out := make(map[string]json.RawMessage, len(t.Set))
	for k, v := range t.Set {
		out[k] = json.RawMessage(v)
	}
	return out
}

// transform checks route r's transform at path (the route's).
func (v *validator) transform(path string, r *Route) {
	t := r.Transform
	if t == nil {
		return
	}
	path += ".transform"
	if t.MaxBodyBytes < 1 {
		v.errorf(path+".max_body_bytes", "must be at least 1, got %d", t.MaxBodyBytes)
	}
	if t.Request != nil {
		if t.Request.JSON == nil && t.Request.Query == nil {
			v.errorf(path+".request", "write json, query or both")
		}
		v.jsonTransform(path+".request.json", t.Request.JSON)
		v.queryTransform(path+".request.query", t.Request.Query)
	}
	if t.Response != nil {
		if t.Response.JSON == nil {
			v.errorf(path+".response", "write json: the edits of the response body")
		}
		v.jsonTransform(path+".response.json", t.Response.JSON)
	}
	if t.Request == nil && t.Response == nil {
		v.errorf(path, "nothing to transform: write request or response edits")
	}
	if r.Redirect != nil {
		v.errorf(path, "a route that redirects sends nothing on to transform")
	}
}

// editedField is one field a transform section names, for the overlap
// check.
type editedField struct {
	at   string // the config path that names it
	path []string
}

// jsonTransform checks the JSON edits at path.
func (v *validator) jsonTransform(path string, t *JSONTransform) {
	if t == nil {
		return
	}
	var fields []editedField
	field := func(at, s string) {
		p, ok := v.fieldPath(at, s)
		if !ok {
			return
		}
		for _, f := range fields {
			n := min(len(p), len(f.path))
			if slices.Equal(p[:n], f.path[:n]) {
				v.errorf(at, "field %s overlaps %s (at %s): edit each field once, and none inside another", quote(s), quote(strings.Join(f.path, ".")), v.where(f.at))
				return
			}
		}
		fields = append(fields, editedField{at, p})
	}
	for _, from := range slices.Sorted(maps.Keys(t.Rename)) {
		if from == t.Rename[from] {
			v.errorf(path+".rename."+from, "renames %s to itself", quote(from))
			continue
		}
		field(path+".rename."+from, from)
		field(path+".rename."+from, t.Rename[from])
	}
	for _, k := range slices.Sorted(maps.Keys(t.Set)) {
		field(path+".set."+k, k)
	}
	for i, s := range t.Remove {
		field(fmt.Sprintf("%s.remove[%d]", path, i), s)
	}
	if len(t.Set)+len(t.Remove)+len(t.Rename) == 0 {
		v.errorf(path, "write set, remove or rename")
	}
}

// fieldPath checks the dotted field path s written at at.
func (v *validator) fieldPath(at, s string) ([]string, bool) {
	if s == "" {
		v.errorf(at, "empty field path: name a field, e.g. user.id")
		return nil, false
	}
	p := strings.Split(s, ".")
	if slices.Contains(p, "") {
		v.errorf(at, "field path %s has an empty segment: write names joined by single dots, e.g. user.id", quote(s))
		return nil, false
	}
	return p, true
}

// queryTransform checks the query edits at path.
func (v *validator) queryTransform(path string, t *QueryTransform) {
	if t == nil {
		return
	}
	seen := map[string]string{} // name -> where
	param := func(at, name string) {
		if name == "" {
			v.errorf(at, "empty parameter name")
			return
		}
		if first, dup := seen[name]; dup {
			v.errorf(at, "parameter %s is also edited at %s: edit each parameter once", quote(name), v.where(first))
			return
		}
		seen[name] = at
	}
	for _, from := range slices.Sorted(maps.Keys(t.Rename)) {
		if from == t.Rename[from] {
			v.errorf(path+".rename."+from, "renames %s to itself", quote(from))
			continue
		}
		param(path+".rename."+from, from)
		param(path+".rename."+from, t.Rename[from])
	}
	for _, k := range slices.Sorted(maps.Keys(t.Set)) {
		param(path+".set."+k, k)
	}
	for i, name := range t.Remove {
		param(fmt.Sprintf("%s.remove[%d]", path, i), name)
	}
	if len(t.Set)+len(t.Remove)+len(t.Rename) == 0 {
		v.errorf(path, "write set, remove or rename")
	}
}
