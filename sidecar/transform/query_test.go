package transform

import "testing"

func TestQueryEdit(t *testing.T) {
	q, err := NewQueryEdit(map[string]string{"api_version": "2", "lang": "en us"}, []string{"debug", "token"}, map[string]string{"q": "search"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ in, want string }{
		{"", "api_version=2&lang=en+us"},
		{"a=1&debug=true&b=2", "a=1&b=2&api_version=2&lang=en+us"},
		{"lang=fr&x=%2F&lang=de&api_version=1", "lang=en+us&x=%2F&api_version=2"},
		{"q=hello+world&search=old&page=2", "search=hello+world&page=2&api_version=2&lang=en+us"},
		{"search=kept&api_version=2&lang=en+us", "search=kept&api_version=2&lang=en+us"},
		{"to%6Ben=s&bad%zz=1&flag", "bad%zz=1&flag&api_version=2&lang=en+us"},
	} {
		got, _ := q.Apply(tc.in)
		if got != tc.want {
			t.Errorf("Apply(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	none, _ := NewQueryEdit(nil, []string{"x"}, nil)
	if got, changed := none.Apply("a=1&b=%20"); changed || got != "a=1&b=%20" {
		t.Errorf("Apply with nothing to do = %q, %v", got, changed)
	}
	for _, bad := range [][]string{{""}, {"x", "x"}} {
		if _, err := NewQueryEdit(nil, bad, nil); err == nil {
			t.Errorf("NewQueryEdit(remove %q) succeeded", bad)
		}
	}
	if _, err := NewQueryEdit(map[string]string{"a": "1"}, nil, map[string]string{"b": "a"}); err == nil {
		t.Error("NewQueryEdit with a name set and renamed to succeeded")
	}
}
