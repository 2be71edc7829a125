package config

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

func TestValidateDefault(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
}

// TestValidateInCode checks a Config built without a file: errors carry
// paths but no positions.
func TestValidateInCode(t *testing.T) {
	c := Default()
	c.Service = &Service{Name: "cart", Address: "127.0.0.1", Port: 8080, Protocol: ProtocolHTTP, Weight: 1}
	c.Inbound.Listen = "127.0.0.1:15001"
	up := Upstream{Service: "catalog", Protocol: ProtocolHTTP, Balancer: "round_robin", ConnectTimeout: time.Second}
	c.Upstreams = []Upstream{up, up}
	c.Upstreams[0].Endpoints = []Endpoint{{Address: "10.0.0.1:80", Weight: 1}, {Address: "10.0.0.1:80", Weight: 1}}
	c.Log.Level = ""

	err := c.Validate()
	list, ok := err.(ErrorList)
	if !ok {
		t.Fatalf("Validate = %v, want an ErrorList", err)
	}
	want := `upstreams[0].endpoints[1].address: duplicate endpoint "10.0.0.1:80" (first at upstreams[0].endpoints[0].address)
upstreams[1].service: upstream "catalog" is declared twice (first at upstreams[0].service)
upstreams[1].endpoints: upstream "catalog" has no endpoints and no discovery source
outbound.listen: duplicate listen address 127.0.0.1:15001 (also used by inbound.listen)
log.level: unknown log level "" (want one of: debug, info, warn, error)`
	if got := list.Error(); got != want {
		t.Errorf("Validate =\n%s\nwant\n%s", got, want)
	}
	for _, e := range list {
		if e.Pos != (Position{}) || e.File != "" {
			t.Errorf("error %q has a position %v in %q", e, e.Pos, e.File)
		}
	}
}

func TestValidateListenClashes(t *testing.T) {
	for _, tc := range []struct {
		outbound, upstream string
		clash              bool
	}{
		{"127.0.0.1:9000", "127.0.0.1:9000", true},
		{"127.0.0.1:9000", "localhost:9000", true},
		{"0.0.0.0:9000", "127.0.0.2:9000", true},
		{"127.0.0.2:9000", "0.0.0.0:9000", true},
		{":9000", "[::1]:9000", true},
		{"[::]:9000", "10.1.1.1:9000", true},
		{"127.0.0.1:9000", "127.0.0.2:9000", false},
		{"127.0.0.1:9000", "127.0.0.1:9001", false},
		{"[::1]:9000", "127.0.0.1:9000", false},
	} {
		c := Default()
		c.Outbound.Listen = tc.outbound
		c.Upstreams = []Upstream{{
			Service: "a", Listen: tc.upstream, Protocol: ProtocolTCP, Balancer: "round_robin",
			ConnectTimeout: time.Second, Endpoints: []Endpoint{{Address: "10.0.0.1:1", Weight: 1}},
		}}
		if err := c.Validate(); (err != nil) != tc.clash {
			t.Errorf("outbound %s, upstream %s: Validate = %v, want clash %v", tc.outbound, tc.upstream, err, tc.clash)
		}
	}
}

func TestValidateInboundWithoutService(t *testing.T) {
	c := Default()
	c.Inbound.Listen = c.Outbound.Listen // unused without a service
	if err := c.Validate(); err != nil {
		t.Errorf("Validate = %v", err)
	}
}

func TestTrustedPrefixes(t *testing.T) {
	c := Default()
	c.TrustedProxies = []string{"10.1.2.3/8", "192.168.1.1", "::1", "fd00::/8"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("192.168.1.1/32"),
		netip.MustParsePrefix("::1/128"),
		netip.MustParsePrefix("fd00::/8"),
	}
	if got := c.TrustedPrefixes(); !slices.Equal(got, want) {
		t.Errorf("TrustedPrefixes = %v, want %v", got, want)
	}
}

func TestErrorString(t *testing.T) {
	for _, tc := range []struct {
		err  Error
		want string
	}{
		{Error{File: "a.yaml", Pos: Position{3, 7}, Path: "service.port", Msg: "bad"}, "a.yaml:3:7: service.port: bad"},
		{Error{File: "a.yaml", Pos: Position{3, 0}, Msg: "invalid YAML"}, "a.yaml:3: invalid YAML"},
		{Error{File: "a.yaml", Path: "log.level", Msg: "bad"}, "a.yaml: log.level: bad"},
		{Error{Path: "log.level", Msg: "bad"}, "log.level: bad"},
		{Error{Pos: Position{1, 1}, Path: "upstreams[0]", Msg: `unknown key "x" in upstreams[0]`}, `1:1: unknown key "x" in upstreams[0]`},
		{Error{Msg: "bad"}, "bad"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("%+v.Error() = %q, want %q", tc.err, got, tc.want)
		}
	}
}

func TestErrorListSorted(t *testing.T) {
	l := ErrorList{
		{Pos: Position{3, 1}, Msg: "c"},
		{Pos: Position{1, 9}, Msg: "b"},
		{Msg: "a"},
		{Pos: Position{1, 2}, Msg: "a2"},
		{Pos: Position{3, 1}, Msg: "d"},
	}
	if got, want := l.err().Error(), "a\n1:2: a2\n1:9: b\n3:1: c\n3:1: d"; got != want {
		t.Errorf("sorted:\n%s\nwant\n%s", got, want)
	}
	if err := (ErrorList{}).err(); err != nil {
		t.Errorf("empty list err() = %v, want nil", err)
	}
}
