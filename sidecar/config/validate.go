package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sidemesh/sidemesh/sidecar/balancer"
)

// Limits enforced by Validate.
const (
	maxWeight      = 10000    // service and endpoint weights
	minHeaderBytes = 1 << 10  // Listener.MaxHeaderBytes
	maxHeaderBytes = 16 << 20 // Listener.MaxHeaderBytes
)

// MaxConcurrency bounds Config.Concurrency.
const MaxConcurrency = 1024

var (
	protocols  = []string{ProtocolHTTP, ProtocolHTTP2, ProtocolGRPC, ProtocolTCP}
	logLevels  = []string{"debug", "info", "warn", "error"}
	logFormats = []string{"text", "json"}
)

// Validate checks c and returns an ErrorList of every problem found, or
// nil. It works on a Config built in code too, whose errors then read
// "path: message" with no position; such a Config must set every field
// that Default and the file loader would (Protocol, Weight, Balancer...).
func (c *Config) Validate() error { return c.validate().err() }

// TrustedPrefixes returns TrustedProxies parsed, a bare IP address as a
// single-address prefix. It skips entries that do not parse, so call it
// on a validated Config.
func (c *Config) TrustedPrefixes() []netip.Prefix {
	prefixes := make([]netip.Prefix, 0, len(c.TrustedProxies))
	for _, s := range c.TrustedProxies {
		if p, err := parsePrefix(s); err == nil {
			prefixes = append(prefixes, p)
		}
	}
	return prefixes
}

// validator collects the problems of one Config.
type validator struct {
	c     *Config
	errs  ErrorList
	binds []bind
	// upstreams maps each upstream service name to its first index.
	upstreams map[string]int
}

// bind is a valid listen address and the field that holds it.
type bind struct {
	path, addr string
	ip         netip.Addr // zero for an empty host
	port       uint16
}

// validate returns every problem with c, in the order checked.
func (c *Config) validate() ErrorList {
	v := &validator{c: c, upstreams: make(map[string]int)}
	if c.Service != nil {
		v.service(c.Service)
	}
	v.listener("inbound", &c.Inbound, c.Service != nil)
	v.listener("outbound", &c.Outbound.Listener, c.OutboundEnabled())
	v.outboundDetection(&c.Outbound)
	if od := c.Outbound.OriginalDestination; od != "" {
		v.oneOf("outbound.original_destination", "action", od, []string{OriginalDestinationPassthrough, OriginalDestinationRefuse})
	}
	if c.Inbound.OriginalDestination != "" {
		v.errorf("inbound.original_destination", "only the outbound listener routes by original destination")
	}
	if c.Admin != nil {
		v.listen("admin.listen", c.Admin.Listen, true)
	}
	for i := range c.Upstreams {
		v.upstream(i, &c.Upstreams[i])
	}
	if c.Edge != nil {
		v.edge(c)
	}
	v.discovery(&c.Discovery)
	v.security(c)
	v.duplicateBinds()
	for i, s := range c.TrustedProxies {
		if _, err := parsePrefix(s); err != nil {
			v.errorf(fmt.Sprintf("trusted_proxies[%d]", i), "%v", err)
		}
	}
	v.nonNegative("drain_timeout", c.DrainTimeout)
	if c.Concurrency < 0 || c.Concurrency > MaxConcurrency {
		v.errorf("concurrency", "must be between 1 and %d CPUs, or 0 for automatic (the CPUs the container may use), got %d", MaxConcurrency, c.Concurrency)
	}
	v.oneOf("log.level", "log level", c.Log.Level, logLevels)
	v.oneOf("log.format", "log format", c.Log.Format, logFormats)
	v.telemetry(&c.Telemetry)
	v.warnExposure(c)
	return v.errs
}

// warnExposure notes listeners that are reachable beyond this host though
// they should not be, and a config that does nothing.
func (v *validator) warnExposure(c *Config) {
	if c.OutboundEnabled() && !loopbackListen(c.Outbound.Listen) {
		v.warnf("outbound.listen", "%s is reachable beyond this host: the outbound listener forwards into the mesh with this sidecar's identity, an open proxy to whoever reaches it; keep it on 127.0.0.1 (or protect the address)", c.Outbound.Listen)
	}
	if c.Admin != nil && !loopbackListen(c.Admin.Listen) {
		v.warnf("admin.listen", "%s is reachable beyond this host: the admin API shows the config and the mesh's endpoints; keep it on 127.0.0.1", c.Admin.Listen)
	}
	if c.Service == nil && len(c.Upstreams) == 0 && c.Edge == nil {
		v.warnf("", "this config does nothing: no service to front and no upstreams to call")
	}
}

// loopbackListen reports whether a listen address binds loopback only.
func loopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return true // reported as an error elsewhere
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

func (v *validator) warnf(path, format string, args ...any) {
	pos, msg := v.c.pos(path), fmt.Sprintf(format, args...)
	if path == "" {
		pos = Position{Line: 1, Column: 1}
	} else {
		msg = path + ": " + msg
	}
	v.c.warnings = append(v.c.warnings, &Error{File: v.c.file, Pos: pos, Msg: "warning: " + msg})
}

func (v *validator) errorf(path, format string, args ...any) {
	v.errs = append(v.errs, &Error{
		File: v.c.file,
		Pos:  v.c.pos(path),
		Path: path,
		Msg:  fmt.Sprintf(format, args...),
	})
}

// where describes where the field at path was written, for "(first at
// ...)": its line, or the path itself in a Config built in code.
func (v *validator) where(path string) string {
	if pos := v.c.pos(path); pos.Line > 0 {
		return "line " + strconv.Itoa(pos.Line)
	}
	return path
}

func (v *validator) service(s *Service) {
	v.name("service.name", s.Name)
	if s.Address == "" {
		v.errorf("service.address", "required")
	}
	if s.Port < 1 || s.Port > 65535 {
		v.errorf("service.port", "port must be between 1 and 65535, got %d", s.Port)
	}
	v.oneOf("service.protocol", "protocol", s.Protocol, protocols)
	v.weight("service.weight", s.Weight)
	v.serviceDiscovery(s)
}

// listener checks l; binds says whether its address is in use, to be
// checked against the others.
func (v *validator) listener(path string, l *Listener, binds bool) {
	v.listen(path+".listen", l.Listen, binds)
	v.nonNegative(path+".read_header_timeout", l.ReadHeaderTimeout)
	v.nonNegative(path+".idle_timeout", l.IdleTimeout)
	v.nonNegative(path+".body_timeout", l.BodyTimeout)
	v.oneOf(path+".headers_with_underscores", "action", l.HeadersWithUnderscores, []string{UnderscoresDrop, UnderscoresReject, UnderscoresAllow})
	if l.MaxHeaderBytes < minHeaderBytes || l.MaxHeaderBytes > maxHeaderBytes {
		v.errorf(path+".max_header_bytes", "must be between %d and %d, got %d", minHeaderBytes, maxHeaderBytes, l.MaxHeaderBytes)
	}
}

// listen checks addr, an address to listen on: its host must be empty
// (all interfaces), an IP address or "localhost".
func (v *validator) listen(path, addr string, binds bool) {
	host, port, err := splitAddr(addr)
	if err != nil {
		v.errorf(path, "%v", err)
		return
	}
	var ip netip.Addr
	switch host {
	case "":
	case "localhost":
		ip = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	default:
		if ip, err = netip.ParseAddr(host); err != nil {
			v.errorf(path, "invalid listen address %s: host must be an IP address, \"localhost\" or empty", quote(addr))
			return
		}
		ip = ip.Unmap()
	}
	if binds {
		v.binds = append(v.binds, bind{path: path, addr: addr, ip: ip, port: port})
	}
}

// duplicateBinds reports each listen address that clashes with one
// written before it. An unspecified host (all interfaces) clashes with
// every host on the same port.
func (v *validator) duplicateBinds() {
	// Compare in file order; defaults the file left unwritten come first.
	slices.SortStableFunc(v.binds, func(a, b bind) int { return v.c.pos(a.path).compare(v.c.pos(b.path)) })
	onPort := make(map[uint16]bind)        // first bind on each port
	allOnPort := make(map[uint16]bind)     // first all-interfaces bind on each port
	exact := make(map[netip.AddrPort]bind) // first bind on each address
	for _, b := range v.binds {
		all := !b.ip.IsValid() || b.ip.IsUnspecified()
		ap := netip.AddrPortFrom(b.ip, b.port)
		prev, clash := onPort[b.port]
		if !all {
			if prev, clash = exact[ap]; !clash {
				prev, clash = allOnPort[b.port]
			}
		}
		if clash {
			v.errorf(b.path, "duplicate listen address %s (also used by %s)", b.addr, prev.path)
		}
		if _, ok := onPort[b.port]; !ok {
			onPort[b.port] = b
		}
		if _, ok := allOnPort[b.port]; !ok && all {
			allOnPort[b.port] = b
		}
		if _, ok := exact[ap]; !ok {
			exact[ap] = b
		}
	}
}

func (v *validator) upstream(i int, u *Upstream) {
	path := fmt.Sprintf("upstreams[%d]", i)
	if v.name(path+".service", u.Service) {
		if j, dup := v.upstreams[u.Service]; dup {
			v.errorf(path+".service", "upstream %s is declared twice (first at %s)",
				quote(u.Service), v.where(fmt.Sprintf("upstreams[%d].service", j)))
		} else {
			v.upstreams[u.Service] = i
		}
	}
	if u.Listen != "" {
		v.listen(path+".listen", u.Listen, true)
	}
	v.oneOf(path+".protocol", "protocol", u.Protocol, protocols)
	if u.Protocol == ProtocolTCP && u.Listen == "" {
		v.errorf(path+".protocol", "protocol tcp requires a listen address")
	}
	v.oneOf(path+".balancer", "balancer", u.Balancer, balancer.Names())
	v.upstreamSource(path, u)
	seen := make(map[string]string, len(u.Endpoints))
	for j, e := range u.Endpoints {
		ep := fmt.Sprintf("%s.endpoints[%d]", path, j)
		if host, _, err := splitAddr(e.Address); err != nil {
			v.errorf(ep+".address", "%v", err)
		} else if host == "" {
			v.errorf(ep+".address", "invalid address %s: host is empty", quote(e.Address))
		} else if prev, dup := seen[e.Address]; dup {
			v.errorf(ep+".address", "duplicate endpoint %s (first at %s)", quote(e.Address), v.where(prev))
		} else {
			seen[e.Address] = ep + ".address"
		}
		v.weight(ep+".weight", e.Weight)
	}
	v.nonNegative(path+".timeout", u.Timeout)
	if u.ConnectTimeout <= 0 {
		v.errorf(path+".connect_timeout", "must be positive, got %v", u.ConnectTimeout)
	}
	v.nonNegative(path+".idle_timeout", u.IdleTimeout)
	if u.MaxIdlePerEndpoint < 0 {
		v.errorf(path+".max_idle_per_endpoint", "must not be negative, got %d", u.MaxIdlePerEndpoint)
	}
	v.resilience(path, u)
}

// name checks a service name and reports whether it is valid.
func (v *validator) name(path, name string) bool {
	switch {
	case name == "":
		v.errorf(path, "required")
	case !validName(name):
		v.errorf(path, "invalid name %s: want lowercase letters, digits, '-' and '_', "+
			"in dot-separated labels of 1 to 63 characters", quote(name))
	default:
		return true
	}
	return false
}

// validName reports whether name is made of dot-separated labels of 1 to
// 63 lowercase letters, digits, '-' and '_'.
func validName(name string) bool {
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range []byte(label) {
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

func (v *validator) oneOf(path, what, value string, allowed []string) {
	if !slices.Contains(allowed, value) {
		v.errorf(path, "unknown %s %s (want one of: %s)", what, quote(value), strings.Join(allowed, ", "))
	}
}

func (v *validator) weight(path string, w int) {
	if w < 1 || w > maxWeight {
		v.errorf(path, "weight must be between 1 and %d, got %d", maxWeight, w)
	}
}

func (v *validator) nonNegative(path string, d time.Duration) {
	if d < 0 {
		v.errorf(path, "must not be negative, got %v", d)
	}
}

// splitAddr splits a "host:port" address; the port must be 1-65535.
func splitAddr(addr string) (host string, port uint16, err error) {
	if addr == "" {
		return "", 0, errors.New("required")
	}
	host, ps, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("invalid address %s: want host:port", quote(addr))
	}
	p, err := strconv.ParseUint(ps, 10, 16)
	switch {
	case err != nil:
		return "", 0, fmt.Errorf("invalid address %s: port must be a number between 1 and 65535", quote(addr))
	case p == 0:
		return "", 0, fmt.Errorf("invalid address %s: port 0 is not allowed in config", quote(addr))
	}
	return host, uint16(p), nil
}

// parsePrefix parses a CIDR prefix, or an IP address standing for itself
// alone.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		if p, err := netip.ParsePrefix(s); err == nil {
			return p.Masked(), nil
		}
	} else if ip, err := netip.ParseAddr(s); err == nil && ip.Zone() == "" {
		return netip.PrefixFrom(ip, ip.BitLen()), nil
	}
	return netip.Prefix{}, fmt.Errorf("invalid trusted proxy %s: want a CIDR such as 10.0.0.0/8, or an IP address", quote(s))
}
