package sidecar

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
)

// TestOriginalDestinationServiceAt: an original destination is matched
// to the upstream with an endpoint at that address and port, else to the
// only upstream with one on that IP address.
func TestOriginalDestinationServiceAt(t *testing.T) {
	ups := map[string]*upstream{}
	for name, eps := range map[string][]discovery.Endpoint{
		"catalog": {{ID: "c1", Address: "10.0.0.1", Port: 21000}, {ID: "c2", Address: "10.0.0.2", Port: 21000}},
		"cart":    {{ID: "k1", Address: "10.0.0.3", Port: 21000}, {ID: "k2", Address: "10.0.0.2", Port: 21001}},
		"v6":      {{ID: "s1", Address: "fd00::1", Port: 21000}},
	} {
		for i := range eps {
			eps[i].Service, eps[i].Weight = name, 1
		}
		b := balancer.New(name, balancer.RoundRobin{}, balancer.Options{})
		b.Update(discovery.Snapshot{Service: name, Endpoints: eps})
		ups[name] = &upstream{bal: b}
	}
	ups["tcp-without-balancer"] = &upstream{}
	table := newRouteTable(ups, nil)
	for _, tc := range []struct{ dst, want string }{
		{"10.0.0.1:8081", "catalog"},  // the app's port: by IP address
		{"10.0.0.1:21000", "catalog"}, // the sidecar's own address
		{"10.0.0.3:80", "cart"},
		{"10.0.0.2:21001", "cart"},         // exact address wins over a shared IP
		{"10.0.0.2:8081", ""},              // two services on that IP, neither port
		{"10.0.0.9:8081", ""},              // unknown
		{"[fd00::1]:8081", "v6"},           // IPv6
		{"[::ffff:10.0.0.1]:1", "catalog"}, // IPv4-mapped
	} {
		if got := table.serviceAt(netip.MustParseAddrPort(tc.dst)); got != tc.want {
			t.Errorf("serviceAt(%s) = %q, want %q", tc.dst, got, tc.want)
		}
	}
}

// TestOriginalDestinationUnknownRoute: refuse answers 502; passthrough
// refuses a request it passed through itself (the sidecar's own
// connections are being redirected back to it) with 508.
func TestOriginalDestinationUnknownRoute(t *testing.T) {
	log := quietLogger()
	for _, tc := range []struct {
		policy string
		header bool
		status int
	}{
		{config.OriginalDestinationRefuse, false, http.StatusBadGateway},
		{config.OriginalDestinationPassthrough, true, http.StatusLoopDetected},
		{"", true, http.StatusLoopDetected},
	} {
		rt := unknownDestinationRoute(tc.policy, log)
		r := httptest.NewRequest("GET", "http://10.0.0.9:8081/", nil)
		if tc.header {
			r.Header.Set(passthroughHeader, "1")
		}
		err := rt.Handler.ServeHTTP(httptest.NewRecorder(), r)
		var pe *pipeline.Error
		if !errors.As(err, &pe) || pe.Status != tc.status {
			t.Errorf("policy %q, header %v: error %v, want status %d", tc.policy, tc.header, err, tc.status)
		}
	}
}
