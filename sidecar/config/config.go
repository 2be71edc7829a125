// Package config defines the sidemesh configuration file: its structure,
// its defaults, strict YAML loading with ${ENV} expansion, and validation
// that reports every problem at once as "file:line:col: message".
//
// The pipeline is Default, then Load/Parse overlaying the file, then
// Validate. A Config returned by Load or Parse has passed Validate.
package config

import (
	"slices"
	"time"
)

// Config is the whole configuration of one sidemesh process.
type Config struct {
	// Service is the local application this sidecar fronts. Nil for a
	// client-only workload, which then has no inbound listener.
	Service *Service `yaml:"service"`
	// Inbound is the mesh-facing listener that forwards to Service.
	// Default listen address 0.0.0.0:21000; ignored when Service is nil.
	Inbound Listener `yaml:"inbound"`
	// Outbound is the loopback listener the local app sends plain HTTP to;
	// the Host header names the upstream. Default 127.0.0.1:15001. With
	// transparent interception it also takes the app's other TCP (see
	// OutboundListener).
	Outbound OutboundListener `yaml:"outbound"`
	// Admin, when set, serves the admin API (readiness, endpoints,
	// discovery and identity state). Default listen 127.0.0.1:19000.
	Admin *Admin `yaml:"admin"`
	// Upstreams are the services the local app may call.
	Upstreams []Upstream `yaml:"upstreams"`
	// TrustedProxies lists the CIDRs whose X-Forwarded-* headers are kept
	// and extended. From any other peer they are dropped and rewritten.
	// Default: none.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// DrainTimeout bounds how long SIGTERM waits for in-flight requests
	// and open connections before closing them. Default 15s.
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	// Concurrency is how many CPUs the process runs Go code on at once
	// (GOMAXPROCS; Envoy's --concurrency): its worker threads. 0 is
	// automatic: the Go runtime's choice, the host's CPUs within the
	// container's CPU limit (a cgroup quota; one under 2 CPUs counts as
	// 2), kept up to date as that limit changes, or the GOMAXPROCS
	// environment variable when it is set. Default
	// DefaultSidecarConcurrency (1) for a sidecar, unless GOMAXPROCS is
	// set; 0 for an edge gateway. One CPU costs a sidecar a quarter less
	// CPU per request than two at a thousand requests a second, and caps
	// it at about one core: raise it for a sidecar that must carry more.
	// Applied at start and on reload; it is the process's, so a process
	// running several configs gets the last one applied. At most
	// MaxConcurrency.
	Concurrency int `yaml:"concurrency"`
	// Discovery configures the discovery backends: Consul, gossip, both
	// or neither (static endpoints only).
	Discovery Discovery `yaml:"discovery"`
	// TLS turns on mutual TLS between sidecars. Nil means plain text.
	TLS *TLS `yaml:"tls"`
	// Policy says who may call the local service.
	Policy Policy `yaml:"policy"`
	// Log configures the process log.
	Log Log `yaml:"log"`
	// Telemetry configures tracing, OTLP metrics and the access log.
	Telemetry Telemetry `yaml:"telemetry"`
	// Edge, when set, makes this process an edge gateway (see Edge).
	Edge *Edge `yaml:"edge"`

	// file is the path the config was loaded from, positions maps field
	// paths ("upstreams[0].balancer") to where they were written. Both are
	// empty for a Config built in code.
	file      string
	positions map[string]Position
	// warnings are what Parse found questionable but not wrong.
	warnings ErrorList
}

// Service describes the local application.
type Service struct {
	// Name is the service name other sidecars use to reach it. Required.
	Name string `yaml:"name"`
	// Address is where the app listens. Default 127.0.0.1.
	Address string `yaml:"address"`
	// Port is where the app listens. Required, 1-65535.
	Port int `yaml:"port"`
	// Protocol the app speaks: http (HTTP/1.1, the default), http2 (h2c),
	// grpc (h2c) or tcp (raw bytes).
	Protocol string `yaml:"protocol"`
	// Weight is the share of traffic this instance asks for. Default 1.
	Weight int `yaml:"weight"`
	// ID identifies this instance in Consul and gossip. Default
	// "<name>-<advertise host>-<advertise port>".
	ID string `yaml:"id"`
	// Advertise is the "host:port" other sidecars reach the inbound
	// listener at. Default: the inbound listen address, with an
	// unspecified host (0.0.0.0, ::) replaced by this host's first
	// non-loopback address.
	Advertise string `yaml:"advertise"`
	// Tags and Meta are published with the instance.
	Tags []string          `yaml:"tags"`
	Meta map[string]string `yaml:"meta"`
	// Zone is the instance's locality, published with it.
	Zone string `yaml:"zone"`
	// Health checks the local app: Consul runs the check itself, gossip
	// publishes the instance as unhealthy while it fails.
	Health ServiceHealth `yaml:"health"`
}

// ServiceHealth configures the check of the local app. Without HTTP or
// TCP, gossip takes the app as healthy and Consul checks a TCP connect.
type ServiceHealth struct {
	// HTTP is a path to GET on the app; 2xx and 3xx pass.
	HTTP string `yaml:"http"`
	// TCP checks a TCP connect to the app instead.
	TCP bool `yaml:"tcp"`
	// Interval between checks. Default 10s.
	Interval time.Duration `yaml:"interval"`
	// Timeout bounds one check. Default 2s.
	Timeout time.Duration `yaml:"timeout"`
}

// Listener configures one server.
type Listener struct {
	// Listen is the "host:port" to bind.
	Listen string `yaml:"listen"`
	// ReadHeaderTimeout bounds reading a request's headers. Default 10s.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	// IdleTimeout closes keep-alive connections idle this long. Default 120s.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxHeaderBytes bounds the size of request headers. Default 65536.
	MaxHeaderBytes int `yaml:"max_header_bytes"`
	// BodyTimeout is the longest a request body may go without a byte
	// arriving; a body that stalls longer is answered 408 and its
	// connection closed. gRPC calls and WebSocket connections are exempt.
	// Default 30s; 0s disables.
	BodyTimeout time.Duration `yaml:"body_timeout"`
	// HeadersWithUnderscores says what happens to request headers whose
	// name has an underscore, which CGI and WSGI apps read as the same
	// header as its dashed twin: drop (the default), reject (400) or
	// allow.
	HeadersWithUnderscores string `yaml:"headers_with_underscores"`
	// OriginalDestination applies to the outbound listener only (an error
	// on inbound, ignored on edge listeners), with transparent
	// interception (sidemesh redirect): what happens to a
	// redirected request whose Host names no upstream and whose original
	// destination is no known instance of a service. passthrough (the
	// default; empty means passthrough) forwards it to that destination
	// unchanged; refuse answers 502.
	OriginalDestination string `yaml:"original_destination"`
}

// What Listener.OriginalDestination accepts.
const (
	OriginalDestinationPassthrough = "passthrough"
	OriginalDestinationRefuse      = "refuse"
)

// What Listener.HeadersWithUnderscores accepts.
const (
	UnderscoresDrop   = "drop"
	UnderscoresReject = "reject"
	UnderscoresAllow  = "allow"
)

// Upstream is a service the local app calls through the sidecar.
type Upstream struct {
	// implicit marks an upstream the file does not declare: a service an
	// edge route names, given the defaults and found by discovery.
	implicit bool
	// Service names the upstream; the local app reaches it with
	// "Host: <service>" or "Host: <service>.mesh". Required and unique.
	Service string `yaml:"service"`
	// Listen is an optional dedicated "host:port" that sends everything to
	// this upstream whatever the Host header. Required for protocol tcp.
	Listen string `yaml:"listen"`
	// Protocol spoken to the upstream's endpoints: http (HTTP/1.1, the
	// default), http2 or grpc (HTTP/2; h2c in plain text), or tcp.
	Protocol string `yaml:"protocol"`
	// Balancer names the load-balancing policy: round_robin (the
	// default), weighted_round_robin, random, least_connections,
	// least_response_time, ip_hash or consistent_hash.
	Balancer string `yaml:"balancer"`
	// HashOn is the key of consistent_hash: source_ip, header:NAME,
	// cookie:NAME or path. Default source_ip.
	HashOn string `yaml:"hash_on"`
	// Endpoints are static endpoints; an upstream needs them unless a
	// discovery source provides its endpoints.
	Endpoints []Endpoint `yaml:"endpoints"`
	// Source says where the endpoints come from: static, consul or
	// gossip. Default: static when endpoints are given, else every
	// discovery backend configured (their endpoints merged).
	Source string `yaml:"source"`
	// Consul refines Consul discovery for this upstream.
	Consul UpstreamConsul `yaml:"consul"`
	// MTLS, when tls is on, speaks mutual TLS to the endpoints and checks
	// they are this service. Turn it off for endpoints outside the mesh.
	// Default true.
	MTLS bool `yaml:"mtls"`
	// Timeout bounds the wait for a response's headers, over all tries.
	// Streaming bodies and upgraded connections are not cut by it.
	// Default 15s; 0 disables it.
	Timeout time.Duration `yaml:"timeout"`
	// ConnectTimeout bounds dialing one endpoint. Default 2s.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// IdleTimeout closes pooled connections idle this long, and for tcp
	// closes a proxied connection with no traffic either way for this long.
	// Default 90s for http; 1h for tcp.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxIdlePerEndpoint bounds pooled idle connections per endpoint.
	// Default 256 (Go's default of 2 starves a proxy).
	MaxIdlePerEndpoint int `yaml:"max_idle_per_endpoint"`
	// CircuitBreaker configures per-endpoint breakers (on by default).
	CircuitBreaker CircuitBreaker `yaml:"circuit_breaker"`
	// Outlier configures outlier ejection (on by default).
	Outlier Outlier `yaml:"outlier"`
	// HealthCheck configures active health checks (off by default).
	HealthCheck HealthCheck `yaml:"health_check"`
	// Retries configures retries (on by default for connect failures,
	// resets and 503, within a budget).
	Retries Retries `yaml:"retries"`
}

// Admin configures the admin API listener.
type Admin struct {
	// Listen is the "host:port" to bind; keep it on loopback. Default
	// 127.0.0.1:19000.
	Listen string `yaml:"listen"`
	// Profiling serves the Go runtime's profiles (net/http/pprof) under
	// /debug/pprof/: CPU, heap, allocations, goroutines, execution trace.
	// Default false: a profile shows the process's internals, and a CPU
	// profile or trace costs CPU while it runs. A reload turns it on or
	// off.
	Profiling bool `yaml:"profiling"`
}

// setDefaults fills an Admin section the file is about to overlay.
func (a *Admin) setDefaults() { *a = Admin{Listen: "127.0.0.1:19000"} }

// Endpoint is a static upstream endpoint.
type Endpoint struct {
	// Address is "host:port". Required.
	Address string `yaml:"address"`
	// Weight is the endpoint's relative share of traffic. Default 1.
	Weight int `yaml:"weight"`
	// Zone is the endpoint's locality, if any.
	Zone string `yaml:"zone"`
}

// Log configures the process log (log/slog).
type Log struct {
	// Level is debug, info (the default), warn or error.
	Level string `yaml:"level"`
	// Format is text (the default) or json.
	Format string `yaml:"format"`
}

// Protocols the data plane speaks.
const (
	ProtocolHTTP  = "http"
	ProtocolHTTP2 = "http2"
	ProtocolGRPC  = "grpc"
	ProtocolTCP   = "tcp"
)

// Defaults applied by Default and by Load to fields the file leaves unset.
const (
	DefaultInboundListen      = "0.0.0.0:21000"
	DefaultOutboundListen     = "127.0.0.1:15001"
	DefaultServiceAddress     = "127.0.0.1"
	DefaultReadHeaderTimeout  = 10 * time.Second
	DefaultIdleTimeout        = 120 * time.Second
	DefaultMaxHeaderBytes     = 64 << 10
	DefaultBodyTimeout        = 30 * time.Second
	DefaultUpstreamTimeout    = 15 * time.Second
	DefaultConnectTimeout     = 2 * time.Second
	DefaultPoolIdleTimeout    = 90 * time.Second
	DefaultTCPIdleTimeout     = time.Hour
	DefaultMaxIdlePerEndpoint = 256
	DefaultDrainTimeout       = 15 * time.Second
	DefaultDetectTimeout      = time.Second
	DefaultSidecarConcurrency = 1
)

// File returns the path the config was loaded from, or "" for a Config
// built in code.
func (c *Config) File() string { return c.file }

// OutboundEnabled reports whether the outbound listener runs: always for
// a sidecar; for an edge only when the file writes an outbound section
// (an edge has no local app to send through it).
func (c *Config) OutboundEnabled() bool {
	if c.Edge == nil {
		return true
	}
	_, written := c.positions["outbound"]
	return written
}

// Warnings returns what Parse found questionable but not wrong, each with
// its position and a message starting "warning: ": a listener that exposes
// the outbound proxy or the admin API beyond loopback, a config that does
// nothing.
func (c *Config) Warnings() ErrorList { return c.warnings }

// HTTP2 reports whether the protocol is carried over HTTP/2.
func HTTP2(protocol string) bool { return protocol == ProtocolHTTP2 || protocol == ProtocolGRPC }

// Position is a place in a config file, 1-based.
type Position struct {
	Line, Column int
}

// Default returns a Config with every default set and no service or
// upstreams.
func Default() *Config {
	return &Config{
		Inbound: defaultListener(DefaultInboundListen),
		Outbound: OutboundListener{
			Listener:      defaultListener(DefaultOutboundListen),
			DetectTimeout: DefaultDetectTimeout,
			OpaquePorts:   slices.Clone(DefaultOpaquePorts),
		},
		DrainTimeout: DefaultDrainTimeout,
		Log:          Log{Level: "info", Format: "text"},
		Telemetry:    Telemetry{AccessLog: AccessLogOff},
	}
}

func defaultListener(addr string) Listener {
	return Listener{
		Listen:            addr,
		ReadHeaderTimeout: DefaultReadHeaderTimeout,
		IdleTimeout:       DefaultIdleTimeout,
		MaxHeaderBytes:    DefaultMaxHeaderBytes,
		BodyTimeout:       DefaultBodyTimeout,

		HeadersWithUnderscores: UnderscoresDrop,
	}
}

// setDefaults fills a Service the file is about to overlay.
func (s *Service) setDefaults() {
	*s = Service{
		Address:  DefaultServiceAddress,
		Protocol: ProtocolHTTP,
		Weight:   1,
		Health:   ServiceHealth{Interval: 10 * time.Second, Timeout: 2 * time.Second},
	}
}

// setDefaults fills an Upstream the file is about to overlay. IdleTimeout
// is left zero here and resolved by protocol after decoding.
func (u *Upstream) setDefaults() {
	*u = Upstream{
		Protocol:           ProtocolHTTP,
		Balancer:           "round_robin",
		Timeout:            DefaultUpstreamTimeout,
		ConnectTimeout:     DefaultConnectTimeout,
		MaxIdlePerEndpoint: DefaultMaxIdlePerEndpoint,
		CircuitBreaker:     defaultCircuitBreaker(),
		Outlier:            defaultOutlier(),
		HealthCheck:        defaultHealthCheck(),
		Retries:            defaultRetries(),
		Consul:             UpstreamConsul{Mesh: true},
		MTLS:               true,
	}
}

// setDefaults fills an Endpoint the file is about to overlay.
func (e *Endpoint) setDefaults() { *e = Endpoint{Weight: 1} }
