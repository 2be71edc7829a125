package sidecar

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/discovery"
	"github.com/sidemesh/sidemesh/internal/meshtest"
	"github.com/sidemesh/sidemesh/sidecar/balancer"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/listener"
	"github.com/sidemesh/sidemesh/sidecar/pipeline"
	"github.com/sidemesh/sidemesh/sidecar/proxy"
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

// lineServer answers each line it reads with name, a space and the line,
// on a listener at addr ("127.0.0.2:0"), closed when the test ends. It
// returns the address it listens on.
func lineServer(t *testing.T, addr, name string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	meshtest.Serve(t, ln, func(c net.Conn) {
		lines := bufio.NewScanner(c)
		for lines.Scan() {
			fmt.Fprintf(c, "%s %s\n", name, lines.Text())
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// TestOpaqueOriginalDestination: an opaque connection to an instance of
// a tcp upstream is balanced over its instances; one to an instance of an
// HTTP upstream is refused; one to an unknown address is passed through
// to it, or refused with original_destination: refuse.
func TestOpaqueOriginalDestination(t *testing.T) {
	l1 := lineServer(t, "127.0.0.2:0", "l1")
	l2 := lineServer(t, "127.0.0.3:0", "l2")
	outsider := lineServer(t, "127.0.0.5:0", "outsider")
	upstreamOf := func(name, protocol string, eps ...netip.AddrPort) *upstream {
		var list []discovery.Endpoint
		for i, ep := range eps {
			list = append(list, discovery.Endpoint{ID: fmt.Sprint(name, i), Service: name, Address: ep.Addr().String(), Port: int(ep.Port()), Weight: 1})
		}
		b := balancer.New(name, balancer.RoundRobin{}, balancer.Options{})
		b.Update(discovery.Snapshot{Service: name, Endpoints: list})
		u := &upstream{cfg: config.Upstream{Service: name, Protocol: protocol}, bal: b}
		if protocol == config.ProtocolTCP {
			u.tcp = &proxy.TCPTarget{Name: name, Picker: b}
		}
		return u
	}
	s := &Sidecar{log: quietLogger()}
	s.routes.Store(newRouteTable(map[string]*upstream{
		"ledger":  upstreamOf("ledger", config.ProtocolTCP, l1, l2),
		"catalog": upstreamOf("catalog", config.ProtocolHTTP, netip.MustParseAddrPort("127.0.0.4:21000")),
	}, nil))
	cfg := config.Default()
	s.cfg.Store(cfg)

	// call sends a line over an opaque connection redirected to dst and
	// returns the answer, "" when the connection was refused.
	call := func(dst string) string {
		t.Helper()
		client, conn := net.Pipe()
		defer client.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.serveOpaque(context.Background(), conn, netip.MustParseAddrPort(dst), listener.DetectedOpaque)
			conn.Close() // as the listener does
		}()
		client.SetDeadline(time.Now().Add(5 * time.Second))
		answer := ""
		if _, err := fmt.Fprint(client, "ping\n"); err == nil {
			answer, _ = bufio.NewReader(client).ReadString('\n')
		}
		client.Close()
		<-done
		return strings.TrimSuffix(answer, "\n")
	}

	answered := map[string]int{}
	for range 10 {
		answered[call("127.0.0.2:9000")]++ // ledger's app port on l1's address
	}
	if answered["l1 ping"] != 5 || answered["l2 ping"] != 5 {
		t.Errorf("10 connections to a ledger instance answered %v, want l1 and l2 five times each", answered)
	}
	if got := call("127.0.0.4:8081"); got != "" {
		t.Errorf("an opaque connection to an instance of catalog, an HTTP upstream, got %q; want it refused", got)
	}
	if got := call(outsider.String()); got != "outsider ping" {
		t.Errorf("an unknown destination with original_destination passthrough: %q, want it passed through", got)
	}
	refuse := config.Default()
	refuse.Outbound.OriginalDestination = config.OriginalDestinationRefuse
	s.cfg.Store(refuse)
	if got := call(outsider.String()); got != "" {
		t.Errorf("an unknown destination with original_destination refuse: %q, want it refused", got)
	}
}

// TestDetectTimeout: opaque ports and instances of tcp upstreams are not
// inspected; other destinations wait for outbound.detect_timeout.
func TestDetectTimeout(t *testing.T) {
	b := balancer.New("ledger", balancer.RoundRobin{}, balancer.Options{})
	b.Update(discovery.Snapshot{Service: "ledger", Endpoints: []discovery.Endpoint{{ID: "l1", Service: "ledger", Address: "10.0.0.1", Port: 21000, Weight: 1}}})
	s := &Sidecar{log: quietLogger()}
	s.routes.Store(newRouteTable(map[string]*upstream{"ledger": {bal: b, tcp: &proxy.TCPTarget{Picker: b}}}, nil))
	cfg := config.Default()
	cfg.Outbound.DetectTimeout = 300 * time.Millisecond
	s.cfg.Store(cfg)
	for _, tc := range []struct {
		dst  string
		want time.Duration
	}{
		{"10.0.0.9:3306", 0},                      // an opaque port by default
		{"10.0.0.1:8081", 0},                      // a ledger instance
		{"10.0.0.9:8081", 300 * time.Millisecond}, // unknown
	} {
		if got := s.detectTimeout(netip.MustParseAddrPort(tc.dst)); got != tc.want {
			t.Errorf("detectTimeout(%s) = %v, want %v", tc.dst, got, tc.want)
		}
	}
	cfg.Outbound.DetectTimeout, cfg.Outbound.OpaquePorts = 0, nil // a Config built in code
	if got := s.detectTimeout(netip.MustParseAddrPort("10.0.0.9:3306")); got != config.DefaultDetectTimeout {
		t.Errorf("detectTimeout with no opaque ports and no timeout = %v, want the default %v", got, config.DefaultDetectTimeout)
	}
}
