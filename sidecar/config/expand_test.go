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

// TestEnvInFlowMapping: ${NAME} works inside a flow mapping (the README's
// own style), where its braces would otherwise end the mapping, and
// positions after it on the line stay right.
func TestEnvInFlowMapping(t *testing.T) {
	setEnv(t, map[string]string{"PORT": "8080", "HOST": "127.0.0.1"})
	c := mustParse(t, "service: { name: cart, port: ${PORT}, address: ${HOST} }\noutbound: { listen: ${HOST}:${OUT:-15001} }\n")
	if c.Service.Port != 8080 || c.Service.Address != "127.0.0.1" || c.Outbound.Listen != "127.0.0.1:15001" {
		t.Fatalf("service %+v, outbound %q", c.Service, c.Outbound.Listen)
	}
	if pos := c.pos("service.address"); pos != (Position{Line: 1, Column: 48}) {
		t.Errorf("service.address at %v, want 1:48", pos)
	}
	_, err := Parse("t.yaml", []byte("service: { name: cart, port: ${NOPE} }\n"))
	if err == nil || err.Error() != `t.yaml:1:30: service.port: environment variable "NOPE" is not set` {
		t.Errorf("unset variable in a flow mapping: %v", err)
	}
}
