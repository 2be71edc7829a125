package config

import (
	"fmt"
	"time"
)

// OutboundListener configures the outbound listener: a Listener, and how
// it tells HTTP from other TCP on the connections transparent
// interception (sidemesh redirect) sends it. A connection made to the
// listener's own address is always served as HTTP. A redirected one is
// HTTP when its first bytes are an HTTP/1.x request line or the HTTP/2
// preface, and opaque TCP otherwise (a TLS ClientHello included: the app's
// own TLS is carried as bytes), routed by its original destination.
type OutboundListener struct {
	Listener `yaml:",inline"`
	// DetectTimeout bounds the wait for the first bytes of a redirected
	// connection. A client that sends nothing in that time is taken as
	// opaque TCP: a server-first protocol (MySQL, SMTP, FTP) reaches its
	// server this much late, unless its port is in OpaquePorts. Default
	// 1s (DefaultDetectTimeout); it must be positive (zero in a Config
	// built in code, which Validate refuses, is taken as the default).
	DetectTimeout time.Duration `yaml:"detect_timeout"`
	// OpaquePorts are original destination ports whose redirected
	// connections are opaque TCP at once, without waiting for their first
	// bytes (linkerd's opaque ports). Connections to an instance of an
	// upstream of protocol tcp are never inspected either. Default
	// DefaultOpaquePorts; a list written in the file replaces it, and []
	// inspects every port.
	OpaquePorts []int `yaml:"opaque_ports"`
}

// DefaultOpaquePorts are OutboundListener.OpaquePorts by default, as
// linkerd's: SMTP (25, 587), MySQL (3306), Galera (4444), PostgreSQL
// (5432), Redis (6379), Elasticsearch (9300) and memcached (11211).
var DefaultOpaquePorts = []int{25, 587, 3306, 4444, 5432, 6379, 9300, 11211}

// outboundDetection checks the detection settings of the outbound
// listener.
func (v *validator) outboundDetection(o *OutboundListener) {
	v.positive("outbound.detect_timeout", o.DetectTimeout)
	first := make(map[int]int, len(o.OpaquePorts))
	for i, p := range o.OpaquePorts {
		path := fmt.Sprintf("outbound.opaque_ports[%d]", i)
		if p < 1 || p > 65535 {
			v.errorf(path, "port must be between 1 and 65535, got %d", p)
			continue
		}
		if j, dup := first[p]; dup {
			v.errorf(path, "port %d is listed twice (first at %s)", p, v.where(fmt.Sprintf("outbound.opaque_ports[%d]", j)))
			continue
		}
		first[p] = i
	}
}
