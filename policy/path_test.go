package policy

import (
	"errors"
	"net/url"
	"path"
	"strings"
	"testing"
)

var normalizeCases = []struct {
	raw  string
	want string // "" means ErrAmbiguousPath
}{
	// Already normalized.
	{"/", "/"},
	{"/a", "/a"},
	{"/a/", "/a/"},
	{"/api/v1/items", "/api/v1/items"},
	{"/a:b@c!$&'()*+,;=", "/a:b@c!$&'()*+,;="},
	{"/%3A%40", "/%3A%40"},

	// CVE-2019-9901: dot segments, raw and encoded.
	{"/public/../admin", "/admin"},
	{"/public/./../admin", "/admin"},
	{"/a/./b", "/a/b"},
	{"/a/b/..", "/a/"},
	{"/a/b/.", "/a/b/"},
	{"/a/b/../", "/a/"},
	{"/a/%2e%2e/b", "/b"},
	{"/a/%2E%2e/b", "/b"},
	{"/a/.%2e/b", "/b"},
	{"/a/%2e/b", "/a/b"},
	{"/a/..", "/"},
	{"/a/...", "/a/..."},
	{"/a/..b", "/a/..b"},
	{"/a/b..", "/a/b.."},

	// Merged slashes.
	{"//admin", "/admin"},
	{"///admin//x///", "/admin/x/"},
	{"//", "/"},
	{"/a//../b", "/b"}, // "//" is an empty segment, dropped before ".." is applied

	// Unreserved decoded, the rest kept and upper-cased.
	{"/%41%42c", "/ABc"},
	{"/%7E%7euser", "/~~user"},
	{"/%2D%2E%5F", "/-._"},
	{"/a%3ab", "/a%3Ab"},
	{"/a%3Fb", "/a%3Fb"},
	{"/a%23b", "/a%23b"},
	{"/%e2%82%ac", "/%E2%82%AC"},
	{"/a%20b", "/a%20b"},
	{"/%252F", "/%252F"}, // decoded once only: the text "%2F"
	{"/%25", "/%25"},

	// Bytes that may not appear raw are encoded.
	{"/caf\xc3\xa9", "/caf%C3%A9"},
	{"/a\"b", "/a%22b"},
	{"/{x}|[y]^`<>", "/%7Bx%7D%7C%5By%5D%5E%60%3C%3E"},

	// CVE-2021-29492: escaped slashes and backslashes, any case.
	{"/admin/..%2Fsecret", ""},
	{"/admin/..%2fsecret", ""},
	{"/a%2Fb", ""},
	{"/a%5Cb", ""},
	{"/a%5cb", ""},
	{"/a\\b", ""},
	{"/a/..\\admin", ""},

	// NUL, fragments, queries, controls.
	{"/a%00b", ""},
	{"/a\x00b", ""},
	{"/a#frag", ""},
	{"/#", ""},
	{"/a?x=1", ""},
	{"/a b", ""},
	{"/a\tb", ""},
	{"/a\nb", ""},
	{"/a\x7fb", ""},

	// Invalid percent-encoding.
	{"/%zz", ""},
	{"/%4", ""},
	{"/%", ""},
	{"/a%g1", ""},
	{"/%u002e", ""},

	// Above the root.
	{"/..", ""},
	{"/../", ""},
	{"/../a", ""},
	{"/a/../..", ""},
	{"/a/../../b", ""},
	{"/%2e%2e/a", ""},

	// Not starting with '/'.
	{"", ""},
	{"*", ""},
	{"a/b", ""},
	{"../a", ""},
	{"http://x/a", ""},

	// Path parameters on dot segments (Tomcat).
	{"/public/..;/admin", ""},
	{"/public/.;x/admin", ""},
	{"/public/%2e%2e;/admin", ""},
	{"/a;b/c", "/a;b/c"},
	{"/...;/c", "/...;/c"},
}

func TestNormalizePath(t *testing.T) {
	for _, c := range normalizeCases {
		got, err := NormalizePath(c.raw)
		if c.want == "" {
			if err == nil || !errors.Is(err, ErrAmbiguousPath) {
				t.Errorf("NormalizePath(%q) = %q, %v; want ErrAmbiguousPath", c.raw, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("NormalizePath(%q) = %q, %v; want %q", c.raw, got, err, c.want)
			continue
		}
		// Idempotence: a normalized path is a fixed point and takes
		// the fast path.
		again, err := NormalizePath(got)
		if err != nil || again != got {
			t.Errorf("NormalizePath(%q) = %q, %v; want it unchanged", got, again, err)
		}
		if !isNormalized(got) {
			t.Errorf("isNormalized(%q) = false for a normalized path", got)
		}
	}
}

func TestNormalizePathErrorsSayWhy(t *testing.T) {
	for raw, want := range map[string]string{
		"/a%2Fb":  "escaped slash",
		"/a%5cb":  "escaped backslash",
		"/a\\b":   "backslash",
		"/a%00":   "NUL",
		"/a#x":    "fragment",
		"/%zz":    "invalid percent-encoding",
		"/../x":   "above the root",
		"x":       "does not start with /",
		"/..;/x":  "parameter",
		"/a?b":    "query",
		"/a\r\nb": "control character",
	} {
		_, err := NormalizePath(raw)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("NormalizePath(%q) error = %v, want it to mention %q", raw, err, want)
		}
	}
}

func TestNormalizePathFastPathDoesNotAllocate(t *testing.T) {
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := NormalizePath("/api/v1/items/%C3%A9/x;y"); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("NormalizePath of a normalized path: %v allocations, want 0", allocs)
	}
}

func FuzzNormalizePath(f *testing.F) {
	for _, c := range normalizeCases {
		f.Add(c.raw)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		got, err := NormalizePath(raw)
		if err != nil {
			if !errors.Is(err, ErrAmbiguousPath) {
				t.Fatalf("NormalizePath(%q): error %v does not wrap ErrAmbiguousPath", raw, err)
			}
			if got != "" {
				t.Fatalf("NormalizePath(%q) = %q with an error", raw, got)
			}
			return
		}
		if !strings.HasPrefix(got, "/") {
			t.Fatalf("NormalizePath(%q) = %q: does not start with /", raw, got)
		}
		for _, bad := range []string{"//", "/./", "/../", "\\", "\x00", "#", "?", "%2F", "%2f", "%5C", "%5c"} {
			if strings.Contains(got, bad) {
				t.Fatalf("NormalizePath(%q) = %q: contains %q", raw, got, bad)
			}
		}
		if strings.HasSuffix(got, "/.") || strings.HasSuffix(got, "/..") {
			t.Fatalf("NormalizePath(%q) = %q: ends in a dot segment", raw, got)
		}
		again, err := NormalizePath(got)
		if err != nil || again != got {
			t.Fatalf("NormalizePath(%q) = %q, but NormalizePath(%q) = %q, %v", raw, got, got, again, err)
		}
		if !isNormalized(got) {
			t.Fatalf("isNormalized(%q) = false for NormalizePath's output", got)
		}
		// What the app sees after decoding once is already clean: no
		// dot segments, no empty segments, no new slashes.
		dec, err := url.PathUnescape(got)
		if err != nil {
			t.Fatalf("NormalizePath(%q) = %q: app cannot decode it: %v", raw, got, err)
		}
		if strings.Count(dec, "/") != strings.Count(got, "/") {
			t.Fatalf("NormalizePath(%q) = %q decodes to %q with other slashes", raw, got, dec)
		}
		want := dec
		if len(want) > 1 {
			want = strings.TrimSuffix(want, "/")
		}
		if c := path.Clean(dec); c != want {
			t.Fatalf("NormalizePath(%q) = %q decodes to %q, which path.Clean makes %q", raw, got, dec, c)
		}
	})
}

// FuzzIsNormalized checks the fast path against the slow one: whatever
// isNormalized accepts, normalize returns unchanged.
func FuzzIsNormalized(f *testing.F) {
	for _, c := range normalizeCases {
		f.Add(c.raw)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		if raw == "" || raw[0] != '/' || !isNormalized(raw) {
			return
		}
		out, err := normalize(nil, raw)
		if err != nil || string(out) != raw {
			t.Fatalf("isNormalized(%q) but normalize gives %q, %v", raw, out, err)
		}
	})
}
