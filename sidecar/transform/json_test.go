package transform

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestJSONEdit(t *testing.T) {
	for _, tc := range []struct {
		name   string
		set    map[string]string
		remove []string
		rename map[string]string
		in     string
		want   string // "" when unchanged
	}{
		{name: "set existing keeps place", set: map[string]string{"b": `"x"`}, in: `{"a":1,"b":2,"c":3}`, want: `{"a":1,"b":"x","c":3}`},
		{name: "set new appends", set: map[string]string{"d": `{"k": [1, 2]}`}, in: `{"a":1}`, want: `{"a":1,"d":{"k":[1,2]}}`},
		{name: "set nested creates objects", set: map[string]string{"meta.edge.v": `2`}, in: `{"a":1}`, want: `{"a":1,"meta":{"edge":{"v":2}}}`},
		{name: "set nested into existing", set: map[string]string{"user.role": `"admin"`}, in: `{"user": {"id": 7, "name": "x"}, "z": 0}`, want: `{"user":{"id":7,"name":"x","role":"admin"},"z":0}`},
		{name: "set through non-object skipped", set: map[string]string{"a.b": `1`}, in: `{"a":[1]}`},
		{name: "remove top", remove: []string{"secret"}, in: `{"id":1,"secret":"s","n":2}`, want: `{"id":1,"n":2}`},
		{name: "remove nested", remove: []string{"user.password"}, in: `{"user":{"name":"a","password":"p"}}`, want: `{"user":{"name":"a"}}`},
		{name: "remove missing unchanged", remove: []string{"nope", "a.b.c"}, in: `{"a": {"b": 1}}`},
		{name: "remove every duplicate", remove: []string{"role"}, in: `{"role":"user","x":1,"role":"admin"}`, want: `{"x":1}`},
		{name: "set every duplicate", set: map[string]string{"role": `"guest"`}, in: `{"role":"user","role":"admin"}`, want: `{"role":"guest","role":"guest"}`},
		{name: "rename in place", rename: map[string]string{"b": "beta"}, in: `{"a":1,"b":2,"c":3}`, want: `{"a":1,"beta":2,"c":3}`},
		{name: "rename replaces target", rename: map[string]string{"b": "c"}, in: `{"a":1,"b":2,"c":3}`, want: `{"a":1,"c":2}`},
		{name: "rename nested in place", rename: map[string]string{"u.n": "u.name"}, in: `{"u":{"n":"x","id":1}}`, want: `{"u":{"name":"x","id":1}}`},
		{name: "rename across objects", rename: map[string]string{"user_id": "user.id"}, in: `{"user_id":12,"user":{"n":"x"}}`, want: `{"user":{"n":"x","id":12}}`},
		{name: "rename moves object", rename: map[string]string{"a": "b.c"}, in: `{"a":{"x":[1,{"y":2}]}}`, want: `{"b":{"c":{"x":[1,{"y":2}]}}}`},
		{name: "rename missing unchanged", rename: map[string]string{"a": "b"}, in: `{"x":1}`},
		{name: "rename into non-object skipped", rename: map[string]string{"a": "x.b"}, in: `{"a":1,"x":2}`},
		{name: "int64 exact", set: map[string]string{"big": `9007199254740993`}, in: `{"id":9007199254740993,"f":1.10,"e":1e400}`, want: `{"id":9007199254740993,"f":1.10,"e":1e400,"big":9007199254740993}`},
		{name: "escaped keys kept", remove: []string{"x"}, in: `{"\u00e9":1,"a\"b":2,"<":3,"x":0}`, want: `{"\u00e9":1,"a\"b":2,"<":3}`},
		{name: "escaped key matched decoded", remove: []string{"é"}, in: `{"\u00e9":1,"a":2}`, want: `{"a":2}`},
		{name: "inner whitespace kept", remove: []string{"x"}, in: "{ \"a\" : [ 1 , 2 ] ,\n \"x\": 0 }", want: `{"a":[ 1 , 2 ]}`},
		{name: "not an object unchanged", remove: []string{"a"}, in: `[{"a":1}]`},
		{name: "scalar unchanged", remove: []string{"a"}, in: ` 12 `},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set := map[string]json.RawMessage{}
			for k, v := range tc.set {
				set[k] = json.RawMessage(v)
			}
			e, err := NewJSONEdit(set, tc.remove, tc.rename)
			if err != nil {
				t.Fatal(err)
			}
			out, changed, err := e.Apply([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			want := tc.want
			if want == "" {
				want = tc.in
			}
			if changed != (tc.want != "") || string(out) != want {
				t.Errorf("Apply(%s)\n got %s (changed %v)\nwant %s", tc.in, out, changed, want)
			}
			if !json.Valid(out) {
				t.Errorf("output is not JSON: %s", out)
			}
		})
	}
}

func TestJSONEditInvalid(t *testing.T) {
	e, err := NewJSONEdit(nil, []string{"a"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{``, `{`, `{"a":1}x`, `{"a":}`, `{"a":1,}`, `{1:2}`, `nope`, `{"a":1}{"b":2}`} {
		if out, changed, err := e.Apply([]byte(in)); !errors.Is(err, ErrNotJSON) || changed || string(out) != in {
			t.Errorf("Apply(%q) = %q, %v, %v; want it back unchanged with ErrNotJSON", in, out, changed, err)
		}
	}
}

func TestNewJSONEditRefuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		set    map[string]json.RawMessage
		remove []string
		rename map[string]string
	}{
		{name: "empty path", remove: []string{""}},
		{name: "empty segment", remove: []string{"a..b"}},
		{name: "trailing dot", set: map[string]json.RawMessage{"a.": json.RawMessage(`1`)}},
		{name: "not JSON", set: map[string]json.RawMessage{"a": json.RawMessage(`edge`)}},
		{name: "set and remove", set: map[string]json.RawMessage{"a": json.RawMessage(`1`)}, remove: []string{"a"}},
		{name: "inside another", set: map[string]json.RawMessage{"a.b": json.RawMessage(`1`)}, remove: []string{"a"}},
		{name: "rename into itself", rename: map[string]string{"a": "a.b"}},
		{name: "twice removed", remove: []string{"x", "x"}},
	} {
		if _, err := NewJSONEdit(tc.set, tc.remove, tc.rename); err == nil {
			t.Errorf("%s: NewJSONEdit succeeded", tc.name)
		}
	}
}

// FuzzJSONEdit: any bytes in, no panic; valid JSON in, valid JSON out,
// and every number of the input that no edit touched comes out as it
// went in.
func FuzzJSONEdit(f *testing.F) {
	for _, s := range []string{
		`{"id":9007199254740993,"user":{"name":"a","password":"p"},"tmp":[1,2]}`,
		`{"a":{"b":{"c":1}},"a":2}`, `[]`, `{}`, `{"user":"x"}`, `{"\u0000":1}`, ` {"x" : { } } `, `{"a`,
	} {
		f.Add([]byte(s))
	}
	e, err := NewJSONEdit(map[string]json.RawMessage{"user.role": json.RawMessage(`"admin"`), "v": json.RawMessage(`12345678901234567890`)},
		[]string{"user.password", "tmp"}, map[string]string{"id": "user.id", "a.b": "a.c"})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, _, err := e.Apply(in)
		valid := json.Valid(in)
		if valid && err != nil {
			t.Fatalf("valid JSON %q refused: %v", in, err)
		}
		if valid && !json.Valid(out) {
			t.Fatalf("valid JSON %q came out invalid: %q", in, out)
		}
		if !valid && err == nil && string(out) != string(in) {
			t.Fatalf("invalid JSON %q came out changed: %q", in, out)
		}
	})
}
