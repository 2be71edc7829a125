package health

import (
	"crypto/tls"
	"time"
)

// Defaults for the zero fields of Settings.
const (
	DefaultInterval           = 10 * time.Second
	DefaultTimeout            = 2 * time.Second
	DefaultHealthyThreshold   = 2
	DefaultUnhealthyThreshold = 3
)

// Settings configure active health checks for one upstream. The zero value
// has checks off. New reads Settings once; change them before calling New,
// never after.
type Settings struct {
	// Path is the path, with an optional query, that an HTTP check GETs,
	// such as "/healthz" (a missing leading "/" is added). A 2xx or 3xx
	// answer is healthy; redirects are not followed. Empty, with TCP
	// false, means checks are off.
	Path string
	// TCP makes a TCP connect the check instead of an HTTP request; Path,
	// Host and HTTP2 are then ignored. Default false.
	TCP bool
	// Host is the Host header of HTTP checks, normally the upstream's
	// service name. Empty means the endpoint's "host:port".
	Host string
	// HTTP2 makes HTTP checks speak HTTP/2 with prior knowledge (h2c), for
	// upstreams that serve only HTTP/2 such as gRPC. Default false:
	// HTTP/1.1.
	HTTP2 bool
	// TLS, when set, makes checks use TLS with this configuration (the
	// mesh's mutual TLS toward other sidecars): HTTP checks send https
	// (h2 by ALPN when HTTP2 is set), TCP checks complete a handshake.
	TLS *tls.Config
	// Interval is the time between two checks of an endpoint. Zero or
	// negative means 10s. Each check is delayed by a random part of a
	// tenth of Interval, so checks of different endpoints do not align and
	// the time between two checks of one endpoint varies by up to ±10%.
	Interval time.Duration
	// Timeout bounds one check: the connect and, for HTTP, the response
	// and the part of its body that is read. Zero or negative means 2s.
	Timeout time.Duration
	// HealthyThreshold is the number of consecutive passes that mark an
	// unhealthy endpoint healthy again. Zero or negative means 2.
	HealthyThreshold int
	// UnhealthyThreshold is the number of consecutive failures that mark
	// a healthy endpoint unhealthy. Zero or negative means 3.
	UnhealthyThreshold int
}

// WithDefaults returns s with its zero (or negative) durations and
// thresholds replaced by their defaults. It does not turn checks on.
func (s Settings) WithDefaults() Settings {
	if s.Interval <= 0 {
		s.Interval = DefaultInterval
	}
	if s.Timeout <= 0 {
		s.Timeout = DefaultTimeout
	}
	if s.HealthyThreshold < 1 {
		s.HealthyThreshold = DefaultHealthyThreshold
	}
	if s.UnhealthyThreshold < 1 {
		s.UnhealthyThreshold = DefaultUnhealthyThreshold
	}
	return s
}

// Enabled reports whether s turns checks on: a Path or TCP is set.
func (s Settings) Enabled() bool { return s.Path != "" || s.TCP }
