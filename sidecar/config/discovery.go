package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
)

// Discovery configures the discovery backends.
type Discovery struct {
	// Consul, when set, registers the service with the local Consul agent
	// and watches upstreams through it.
	Consul *Consul `yaml:"consul"`
	// Gossip, when set, joins a gossip pool that needs no server.
	Gossip *Gossip `yaml:"gossip"`
}

// Consul says how to reach the local Consul agent. Empty fields fall back
// to the standard CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN(_FILE), CONSUL_CACERT,
// CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY and CONSUL_TLS_SERVER_NAME
// environment variables, then to http://127.0.0.1:8500.
type Consul struct {
	// Address is the agent's HTTP API: "http://127.0.0.1:8500",
	// "https://...", or "host:port".
	Address string `yaml:"address"`
	// TokenFile holds the ACL token. The token is never logged.
	TokenFile string `yaml:"token_file"`
	// Datacenter to query; default the agent's.
	Datacenter string `yaml:"datacenter"`
	// CAFile, CertFile and KeyFile configure TLS to the agent.
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// TLSServerName is the name expected in the agent's certificate.
	TLSServerName string `yaml:"tls_server_name"`
	// Register publishes the service and its sidecar. Default true.
	Register bool `yaml:"register"`
}

// Gossip configures the gossip pool (hashicorp/memberlist).
type Gossip struct {
	// Bind is the "host:port" gossip listens on (TCP and UDP). Default
	// 0.0.0.0:7946.
	Bind string `yaml:"bind"`
	// Advertise is the "host:port" other members reach this one at.
	// Default: chosen by memberlist from Bind.
	Advertise string `yaml:"advertise"`
	// Join lists seed members ("host:port", host names allowed), joined
	// in the background until one answers.
	Join []string `yaml:"join"`
	// KeyFile holds the pool's encryption key (from `sidemesh keygen`).
	// Required unless Insecure.
	KeyFile string `yaml:"key_file"`
	// Insecure runs the pool without encryption; it must be written out.
	Insecure bool `yaml:"insecure"`
	// NodeName names this member. Default: the service ID, or the host
	// name and a random suffix.
	NodeName string `yaml:"node_name"`
	// Profile tunes failure detection: lan (the default) or local, which
	// detects failures in about a second, for a single host.
	Profile string `yaml:"profile"`
}

// UpstreamConsul refines Consul discovery for one upstream.
type UpstreamConsul struct {
	// Mesh watches the service's sidecars (/v1/health/connect); false
	// watches plain instances without sidecars (/v1/health/service).
	// Default true.
	Mesh bool `yaml:"mesh"`
	// Tags keeps only instances carrying every one of these tags.
	Tags []string `yaml:"tags"`
	// Datacenter to watch in; default the agent's.
	Datacenter string `yaml:"datacenter"`
}

// Endpoint sources.
const (
	SourceStatic = "static"
	SourceConsul = "consul"
	SourceGossip = "gossip"
)

// DefaultGossipBind is where gossip listens by default.
const DefaultGossipBind = "0.0.0.0:7946"

// setDefaults fills a Consul section the file is about to overlay.
func (c *Consul) setDefaults() { *c = Consul{Register: true} }

// setDefaults fills a Gossip section the file is about to overlay.
func (g *Gossip) setDefaults() { *g = Gossip{Bind: DefaultGossipBind, Profile: "lan"} }

// Sources returns where the upstream's endpoints come from, resolving the
// default: static when it has endpoints, else every configured backend.
func (c *Config) Sources(u *Upstream) []string {
	switch {
	case u.Source != "":
		return []string{u.Source}
	case len(u.Endpoints) > 0:
		return []string{SourceStatic}
	}
	var s []string
	if c.Discovery.Consul != nil {
		s = append(s, SourceConsul)
	}
	if c.Discovery.Gossip != nil {
		s = append(s, SourceGossip)
	}
	return s
}

// AdvertiseAddr returns the "host:port" mesh peers reach the inbound
// listener at (see Service.Advertise); call it on a validated config
// with a service.
func (c *Config) AdvertiseAddr() string {
	if c.Service.Advertise != "" {
		return c.Service.Advertise
	}
	host, port, _ := net.SplitHostPort(c.Inbound.Listen)
	if ip, err := netip.ParseAddr(host); host == "" || err == nil && ip.IsUnspecified() {
		host = firstHostIP()
	}
	return net.JoinHostPort(host, port)
}

// ServiceID returns the instance ID (see Service.ID); call it on a
// validated config with a service.
func (c *Config) ServiceID() string {
	if c.Service.ID != "" {
		return c.Service.ID
	}
	host, port, _ := net.SplitHostPort(c.AdvertiseAddr())
	return c.Service.Name + "-" + strings.NewReplacer(":", "-", ".", "-").Replace(host) + "-" + port
}

// firstHostIP returns the first non-loopback unicast address of this
// host, or 127.0.0.1 when there is none.
func firstHostIP() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				if ip := p.Addr(); !ip.IsLoopback() && !ip.IsLinkLocalUnicast() && ip.Is4() {
					return ip.String()
				}
			}
		}
	}
	return "127.0.0.1"
}

var sources = []string{SourceStatic, SourceConsul, SourceGossip}

func (v *validator) discovery(d *Discovery) {
	if c := d.Consul; c != nil && c.Address != "" {
		if strings.Contains(c.Address, "://") {
			u, err := url.Parse(c.Address)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				v.errorf("discovery.consul.address", "invalid address %s: want http://host:port, https://host:port or host:port", quote(c.Address))
			}
		} else if _, _, err := splitAddr(c.Address); err != nil {
			v.errorf("discovery.consul.address", "%v", err)
		}
	}
	if g := d.Gossip; g != nil {
		v.listen("discovery.gossip.bind", g.Bind, true)
		if g.Advertise != "" {
			if _, _, err := splitAddr(g.Advertise); err != nil {
				v.errorf("discovery.gossip.advertise", "%v", err)
			}
		}
		for i, j := range g.Join {
			if host, _, err := splitAddr(j); err != nil {
				v.errorf(fmt.Sprintf("discovery.gossip.join[%d]", i), "%v", err)
			} else if host == "" {
				v.errorf(fmt.Sprintf("discovery.gossip.join[%d]", i), "invalid address %s: host is empty", quote(j))
			}
		}
		switch {
		case g.KeyFile == "" && !g.Insecure:
			v.errorf("discovery.gossip", "gossip is encrypted: set key_file (create one with `sidemesh keygen`), or write insecure: true")
		case g.KeyFile != "" && g.Insecure:
			v.errorf("discovery.gossip.insecure", "insecure: true contradicts key_file")
		}
		v.oneOf("discovery.gossip.profile", "profile", g.Profile, []string{"lan", "local"})
	}
}

func (v *validator) serviceDiscovery(s *Service) {
	if s.Advertise != "" {
		if host, _, err := splitAddr(s.Advertise); err != nil {
			v.errorf("service.advertise", "%v", err)
		} else if ip, err := netip.ParseAddr(host); host == "" || err == nil && ip.IsUnspecified() {
			v.errorf("service.advertise", "must name an address peers can reach, got %s", quote(s.Advertise))
		}
	}
	h := s.Health
	if h.HTTP != "" && h.TCP {
		v.errorf("service.health.tcp", "choose one of http and tcp")
	}
	if h.HTTP != "" && !strings.HasPrefix(h.HTTP, "/") {
		v.errorf("service.health.http", "must be a path starting with /, got %s", quote(h.HTTP))
	}
	if h.HTTP != "" || h.TCP {
		v.positive("service.health.interval", h.Interval)
		v.positive("service.health.timeout", h.Timeout)
	}
}

// upstreamSource checks where upstream i's endpoints come from.
func (v *validator) upstreamSource(path string, u *Upstream) {
	if u.Source != "" {
		v.oneOf(path+".source", "source", u.Source, sources)
	}
	switch u.Source {
	case SourceConsul:
		if v.c.Discovery.Consul == nil {
			v.errorf(path+".source", "source consul needs a discovery.consul section")
		}
	case SourceGossip:
		if v.c.Discovery.Gossip == nil {
			v.errorf(path+".source", "source gossip needs a discovery.gossip section")
		}
	}
	if len(u.Endpoints) > 0 && (u.Source == SourceConsul || u.Source == SourceGossip) {
		v.errorf(path+".endpoints", "static endpoints are not used with source %s", u.Source)
	}
	// An implicit upstream (a route's service) has no entry to point at:
	// the route's backend says what is missing instead.
	if !u.implicit && (len(v.c.Sources(u)) == 0 || u.Source == SourceStatic && len(u.Endpoints) == 0) {
		v.errorf(path+".endpoints", "upstream %s has no endpoints and no discovery source", quote(u.Service))
	}
}
