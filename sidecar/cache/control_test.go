package cache

import (
	"net/http"
	"testing"
	"time"
)

func TestParseCacheControl(t *testing.T) {
	d := parseCacheControl([]string{`public, max-age=60`, `S-MAXAGE="120", stale-if-error=30,no-cache="Set-Cookie"`, "max-age=x"})
	want := directives{public: true, noCache: true, maxAge: 0, hasMaxAge: true, sMaxAge: 2 * time.Minute, hasSMaxAge: true, staleIfError: 30 * time.Second}
	if d != want {
		t.Fatalf("got %+v, want %+v", d, want)
	}
	if d := parseCacheControl([]string{"max-age=99999999999"}); d.maxAge != maxDelta {
		t.Fatalf("huge max-age: %v", d.maxAge)
	}
}

func TestFreshness(t *testing.T) {
	date := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		cc, expires string
		want        time.Duration
		explicit    bool
	}{
		{"max-age=10, s-maxage=20", "", 20 * time.Second, true},
		{"max-age=10", "Thu, 01 Jan 2026 01:00:00 GMT", 10 * time.Second, true},
		{"", "Thu, 01 Jan 2026 01:00:00 GMT", time.Hour, true},
		{"", "0", 0, true},
		{"public", "", 0, false},
	} {
		h := http.Header{}
		if tc.expires != "" {
			h.Set("Expires", tc.expires)
		}
		got, explicit := freshness(h, parseCacheControl([]string{tc.cc}), date)
		if got != tc.want || explicit != tc.explicit {
			t.Errorf("%q %q: %v %v, want %v %v", tc.cc, tc.expires, got, explicit, tc.want, tc.explicit)
		}
	}
}

func TestParseRange(t *testing.T) {
	for _, tc := range []struct {
		s               string
		size            int64
		want            byteRange
		ok, satisfiable bool
	}{
		{"bytes=0-0", 10, byteRange{0, 0}, true, true},
		{"bytes=2-", 10, byteRange{2, 9}, true, true},
		{"bytes=-4", 10, byteRange{6, 9}, true, true},
		{"bytes=-40", 10, byteRange{0, 9}, true, true},
		{"bytes=-0", 10, byteRange{}, true, false},
		{"bytes=10-12", 10, byteRange{}, true, false},
		{"bytes=0-1,4-5", 10, byteRange{}, false, false},
		{"bytes=5-1", 10, byteRange{}, false, false},
		{"items=0-1", 10, byteRange{}, false, false},
		{"bytes=a-b", 10, byteRange{}, false, false},
		{"bytes=-", 10, byteRange{}, false, false},
		{"bytes=+1-2", 10, byteRange{}, false, false},
	} {
		got, ok, sat := parseRange(tc.s, tc.size)
		if got != tc.want || ok != tc.ok || sat != tc.satisfiable {
			t.Errorf("%q/%d: %+v %v %v, want %+v %v %v", tc.s, tc.size, got, ok, sat, tc.want, tc.ok, tc.satisfiable)
		}
	}
}

func TestEtagMatch(t *testing.T) {
	for _, tc := range []struct {
		list, etag string
		want       bool
	}{
		{`"a"`, `"a"`, true},
		{`W/"a"`, `"a"`, true},
		{`"b", W/"a"`, `W/"a"`, true},
		{`"b"`, `"a"`, false},
		{`*`, `"a"`, true},
		{`*`, ``, false},
	} {
		if got := etagMatch(tc.list, tc.etag); got != tc.want {
			t.Errorf("%q vs %q: %v", tc.list, tc.etag, got)
		}
	}
}

// FuzzParseRange: any Range value and size give a range inside the
// representation, or none.
func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"bytes=0-1", "bytes=-5", "bytes=3-", "bytes=9223372036854775807-", "bytes=-9223372036854775807"} {
		f.Add(s, int64(10))
	}
	f.Fuzz(func(t *testing.T, s string, size int64) {
		if size < 0 {
			return
		}
		r, ok, sat := parseRange(s, size)
		if sat && (!ok || r.first < 0 || r.last < r.first || r.last >= size) {
			t.Fatalf("%q/%d: %+v", s, size, r)
		}
	})
}

// FuzzParseCacheControl: no Cache-Control value makes a negative window.
func FuzzParseCacheControl(f *testing.F) {
	f.Add("max-age=60, stale-if-error=99999999999999999999")
	f.Add(`no-cache="a,b", s-maxage=-1`)
	f.Fuzz(func(t *testing.T, s string) {
		d := parseCacheControl([]string{s})
		if d.maxAge < 0 || d.sMaxAge < 0 || d.staleIfError < 0 || d.staleWhileRevalidate < 0 {
			t.Fatalf("%q: %+v", s, d)
		}
	})
}
