// Package discovery defines how a sidecar learns where the instances of a
// service are: the Endpoint and Snapshot types, the Source interface every
// discovery backend implements (static configuration, Consul, gossip), and
// the Instance a backend publishes for the local service.
//
// Every Source emits full snapshots, never deltas: a consumer can always
// replace what it had with the latest value it received.
package discovery

import (
	"context"
	"net"
	"strconv"
)

// Endpoint is one instance of a service that can receive traffic.
// Endpoints are values: a Source never mutates one after sending it.
type Endpoint struct {
	// ID identifies the instance across snapshots. Per-endpoint state in a
	// balancer (in-flight requests, latency, breaker) is keyed by it. Static
	// endpoints use their "host:port" address.
	ID string
	// Service is the logical service name the endpoint belongs to.
	Service string
	// Address is an IP address or host name, without port.
	Address string
	// Port is the TCP port of the endpoint (for mesh traffic: the inbound
	// listener of the sidecar in front of the instance).
	Port int
	// Weight is the relative share of traffic the endpoint should get; 1 when
	// the source has no opinion. Balancers treat a weight below 1 as 1.
	Weight int
	// Tags and Meta carry through what the source knows about the instance.
	Tags []string
	Meta map[string]string
	// Zone is the locality (availability zone) of the instance, if known.
	Zone string
}

// HostPort returns the endpoint's dialable "host:port" address.
func (e Endpoint) HostPort() string {
	return net.JoinHostPort(e.Address, strconv.Itoa(e.Port))
}

// Snapshot is the complete set of endpoints of one service at one moment.
type Snapshot struct {
	Service   string
	Endpoints []Endpoint
}

// Source watches services. Implementations must be safe for concurrent use.
type Source interface {
	// Watch starts watching service and returns a channel that delivers a
	// full Snapshot whenever the set of endpoints changes, starting with the
	// current one as soon as it is known. A slow reader never blocks the
	// source: only the newest snapshot matters, so sources may drop stale
	// ones. The channel is closed after ctx is cancelled.
	Watch(ctx context.Context, service string) (<-chan Snapshot, error)
}

// Instance describes the local service instance a sidecar publishes to a
// registry.
type Instance struct {
	ID      string
	Service string
	// Address and Port are where mesh peers reach the instance: the address
	// of the sidecar's inbound listener.
	Address string
	Port    int
	Weight  int
	Tags    []string
	Meta    map[string]string
	Zone    string
}
