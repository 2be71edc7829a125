package config

import "testing"

func TestExpand(t *testing.T) {
	setEnv(t, map[string]string{"A": "alpha", "EMPTY": "", "NESTED": "${A}"})
	for _, tc := range []struct{ in, want, err string }{
		{in: "plain", want: "plain"},
		{in: "${A}", want: "alpha"},
		{in: "x-${A}-${A}-y", want: "x-alpha-alpha-y"},
		{in: "${A:-x}", want: "alpha"},
		{in: "${UNSET:-x}", want: "x"},
		{in: "${EMPTY:-x}", want: "x"},
		{in: "${EMPTY}", want: ""},
		{in: "${UNSET:-}", want: ""},
		{in: "${UNSET:-a:-b}", want: "a:-b"},
		{in: "${NESTED}", want: "${A}"}, // values are not expanded again
		{in: "$${A}", want: "${A}"},
		{in: "$${A} ${A}", want: "${A} alpha"},
		{in: "$A", want: "$A"},
		{in: "cost: $5 {A}", want: "cost: $5 {A}"},
		{in: "$", want: "$"},
		{in: "${UNSET}", err: `environment variable "UNSET" is not set`},
		{in: "${A", err: `unterminated "${A"`},
		{in: "${}", err: `invalid environment variable name ""`},
		{in: "${A B}", err: `invalid environment variable name "A B"`},
		{in: "${9A}", err: `invalid environment variable name "9A"`},
	} {
		got, err := expand(tc.in)
		switch {
		case tc.err != "" && (err == nil || err.Error() != tc.err):
			t.Errorf("expand(%q) = %q, %v; want error %q", tc.in, got, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("expand(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
