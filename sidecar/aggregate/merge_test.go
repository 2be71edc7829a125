package aggregate

import (
	"errors"
	"strings"
	"testing"

	"github.com/sidemesh/sidemesh/sidecar/config"
)

func TestMerge(t *testing.T) {
	user := part{leg: "user", key: "user", body: []byte(`{"id": 7, "name": "Ada"}`)}
	tests := []struct {
		name   string
		parts  []part
		policy string
		concat []string
		want   string // or the error's text, after "error: "
	}{
		{"under keys", []part{user, {leg: "orders", key: "orders", body: []byte(`[1, 2]`)}}, config.ConflictError, nil,
			`{"orders":[1,2],"user":{"id":7,"name":"Ada"}}`},
		{"top level", []part{{leg: "a", body: []byte(`{"x": 1}`)}, {leg: "b", body: []byte(`{"y": "2"}`)}}, config.ConflictError, nil,
			`{"x":1,"y":"2"}`},
		{"failed left out", []part{{leg: "a", body: []byte(`{"x": 1}`)}, {leg: "b", failed: true, body: []byte(`{"x": 2}`)}}, config.ConflictError, nil,
			`{"x":1}`},
		{"equal values agree", []part{{leg: "a", body: []byte(`{"x": {"k": 1}}`)}, {leg: "b", body: []byte(`{"x":{"k":1}}`)}}, config.ConflictError, nil,
			`{"x":{"k":1}}`},
		{"conflict error", []part{{leg: "a", body: []byte(`{"x": 1, "z": 1}`)}, {leg: "b", body: []byte(`{"z": 2, "x": 2}`)}}, config.ConflictError, nil,
			`error: legs "a" and "b" both set "x" to different values (on_conflict: error)`},
		{"conflict first", []part{{leg: "a", body: []byte(`{"x": 1}`)}, {leg: "b", body: []byte(`{"x": 2}`)}, {leg: "c", body: []byte(`{"x": 3}`)}}, config.ConflictFirst, nil,
			`{"x":1}`},
		{"conflict last", []part{{leg: "a", body: []byte(`{"x": 1}`)}, {leg: "b", body: []byte(`{"x": 2}`)}, {leg: "c", body: []byte(`{"x": 3}`)}}, config.ConflictLast, nil,
			`{"x":3}`},
		{"key against top level", []part{{leg: "a", body: []byte(`{"user": 1}`)}, user}, config.ConflictFirst, nil,
			`{"user":1}`},
		{"concat", []part{{leg: "a", body: []byte(`{"items": [1, 2]}`)}, {leg: "b", body: []byte(`{"items": [3]}`)}, {leg: "c", key: "items", body: []byte(`[{"n": 4}]`)}}, config.ConflictError, []string{"items"},
			`{"items":[1,2,3,{"n":4}]}`},
		{"concat needs arrays", []part{{leg: "a", body: []byte(`{"items": [1]}`)}, {leg: "b", body: []byte(`{"items": 2}`)}}, config.ConflictError, []string{"items"},
			`error: legs "a" and "b" both set "items" to different values (on_conflict: error)`},
		{"empty bodies", []part{{leg: "a", key: "a"}, {leg: "b", body: []byte(" \n")}}, config.ConflictError, nil,
			`{"a":null}`},
		{"big numbers kept", []part{{leg: "a", body: []byte(`{"id": 12345678901234567890123}`)}}, config.ConflictError, nil,
			`{"id":12345678901234567890123}`},
		{"top level not an object", []part{{leg: "a", body: []byte(`[1]`)}}, config.ConflictError, nil,
			`error: leg "a": the response is not a JSON object, which merging at the top level needs: json: cannot unmarshal array into Go value of type map[string]json.RawMessage`},
		{"not JSON", []part{{leg: "a", key: "a", body: []byte(`<html>`)}}, config.ConflictError, nil,
			`error: leg "a": the response is not JSON`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := merge(tt.parts, tt.policy, tt.concat)
			if want, isErr := strings.CutPrefix(tt.want, "error: "); isErr {
				if err == nil || err.Error() != want {
					t.Fatalf("merge: %v (%s), want error %q", err, got, want)
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Fatalf("merge = %s, %v; want %s", got, err, tt.want)
			}
		})
	}
}

// TestMergeConflictIsTyped: the handler tells a conflict from a bad
// body by its type.
func TestMergeConflictIsTyped(t *testing.T) {
	_, err := merge([]part{{leg: "a", body: []byte(`{"x":1}`)}, {leg: "b", body: []byte(`{"x":2}`)}}, config.ConflictError, nil)
	var c *conflictError
	if !errors.As(err, &c) || c.key != "x" || c.first != "a" || c.last != "b" {
		t.Fatalf("err = %#v", err)
	}
}

func TestMostRestrictive(t *testing.T) {
	tests := []struct {
		ccs  []string
		want string
	}{
		{[]string{"max-age=60", "public, max-age=30"}, "max-age=30"},
		{[]string{"max-age=60", "private, max-age=120"}, "private, max-age=60"},
		{[]string{"max-age=60", "no-cache"}, "no-cache"},
		{[]string{"max-age=60", ""}, "no-cache"},
		{[]string{"private, max-age=60", "public"}, "private, no-cache"},
		{[]string{"max-age=60", "no-store", "private"}, "no-store"},
		{[]string{`Max-Age="10", s-maxage=100`, "max-age=0"}, "max-age=0"},
		{[]string{"max-age=bad"}, "no-cache"},
	}
	for _, tt := range tests {
		if got := mostRestrictive(tt.ccs); got != tt.want {
			t.Errorf("mostRestrictive(%q) = %q, want %q", tt.ccs, got, tt.want)
		}
	}
}

func TestField(t *testing.T) {
	body := []byte(`{"user": {"id": 42, "name": "a b/c", "ok": true, "tags": [1], "none": null}, "big": 9007199254740993}`)
	tests := []struct {
		path string
		want string // or "error: ..."
	}{
		{"user.id", "42"},
		{"user.name", "a b/c"},
		{"user.ok", "true"},
		{"big", "9007199254740993"},
		{"user.tags", "error: field user.tags is an array, not a string, number or boolean"},
		{"user.none", "error: field user.none is null, not a string, number or boolean"},
		{"user", "error: field user is an object, not a string, number or boolean"},
		{"user.missing", "error: the response has no field user.missing"},
		{"user.id.x", "error: field user.id is not a JSON object"},
	}
	for _, tt := range tests {
		got, err := field(body, strings.Split(tt.path, "."))
		if want, isErr := strings.CutPrefix(tt.want, "error: "); isErr {
			if err == nil || err.Error() != want {
				t.Errorf("field(%s) = %q, %v; want error %q", tt.path, got, err, want)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("field(%s) = %q, %v; want %q", tt.path, got, err, tt.want)
		}
	}
}
