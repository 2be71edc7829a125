// Package redirect builds and applies the netfilter rules of transparent
// interception: inside an app's network namespace, the app's outbound TCP
// is redirected to the sidecar's outbound listener and inbound TCP for the
// app's ports to the sidecar's inbound listener, as Consul's
// `connect redirect-traffic` and linkerd's init container do.
//
// The rule set is data (Rules): IPTables and NFTables render it as the
// input of iptables-restore and nft, so the rules are testable without
// root; Apply and Remove exec those commands. Every rule lives in chains
// (iptables) or a table (nftables) of sidemesh's own, so applying again
// replaces them and removing deletes exactly what was added.
package redirect

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Chain and table names. Nothing outside them is changed but the two
// jumps from the nat table's PREROUTING and OUTPUT chains.
const (
	// ChainOutput holds the outbound rules; OUTPUT jumps here.
	ChainOutput = "SIDEMESH_OUTPUT"
	// ChainInbound holds the inbound rules; PREROUTING jumps here.
	ChainInbound = "SIDEMESH_PREROUTING"
	// ChainRedirect redirects to the outbound listener.
	ChainRedirect = "SIDEMESH_REDIRECT"
	// ChainInRedirect redirects to the inbound listener.
	ChainInRedirect = "SIDEMESH_IN_REDIRECT"
	// NFTTable is the nftables table used when iptables is missing: of
	// family ip, or inet with IPv6.
	NFTTable = "sidemesh"
)

// Default ports.
const (
	DefaultOutboundPort = 15001
	DefaultInboundPort  = 21000
)

// DefaultExcludedPorts are left alone in both directions unless the
// caller says otherwise: SSH, the admin API (19000), Consul's RPC and
// Serf (8300-8302), HTTP API, HTTPS and gRPC (8500-8502), and sidemesh's
// gossip (7946).
var DefaultExcludedPorts = []PortRange{{22, 22}, {19000, 19000}, {8300, 8302}, {8500, 8502}, {7946, 7946}}

// NoID marks ProxyUID or ProxyGID as unset.
const NoID = -1

// Rules says what to redirect. The zero value is not useful: start from
// Default.
type Rules struct {
	// OutboundPort is the outbound listener's port on loopback. Default
	// 15001.
	OutboundPort int
	// InboundPort is the inbound listener's port. Default 21000. Traffic
	// to it is never redirected.
	InboundPort int
	// AppPorts are the app's ports whose inbound TCP goes to the inbound
	// listener; empty means every inbound TCP port but InboundPort and
	// ExcludeInboundPorts. Inbound redirection is off when
	// InboundDisabled is set.
	AppPorts        []PortRange
	InboundDisabled bool
	// ProxyUID and ProxyGID identify the sidecar's own sockets, which are
	// never redirected (the sidecar would loop to itself). NoID (-1)
	// leaves one unset; at least one must be set.
	ProxyUID, ProxyGID int
	// ExcludeOutboundPorts and ExcludeInboundPorts are destination ports
	// left alone. Default DefaultExcludedPorts for both.
	ExcludeOutboundPorts, ExcludeInboundPorts []PortRange
	// LoopbackPorts are the loopback destination ports that are still
	// redirected; all other traffic over the loopback interface (to
	// 127.0.0.0/8, ::1 and the host's own addresses) is left alone.
	LoopbackPorts []PortRange
	// IPv6 redirects IPv6 too (ip6tables, or an nftables table of family
	// inet rather than ip). Off by default: redirected IPv6 connections
	// arrive on [::1], where an outbound listener bound to 127.0.0.1 does
	// not listen.
	IPv6 bool
}

// Default returns the rules with every default set and no proxy user.
func Default() Rules {
	return Rules{
		OutboundPort:         DefaultOutboundPort,
		InboundPort:          DefaultInboundPort,
		ProxyUID:             NoID,
		ProxyGID:             NoID,
		ExcludeOutboundPorts: slices.Clone(DefaultExcludedPorts),
		ExcludeInboundPorts:  slices.Clone(DefaultExcludedPorts),
	}
}

// PortRange is an inclusive range of TCP ports; a single port has
// From == To.
type PortRange struct{ From, To int }

// ParsePorts parses a comma-separated list of ports and ranges such as
// "22,8300-8302". The empty string is an empty list.
func ParsePorts(s string) ([]PortRange, error) {
	var out []PortRange
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(f, "-")
		from, err := parsePort(lo)
		if err != nil {
			return nil, fmt.Errorf("port %q: %w", f, err)
		}
		to := from
		if isRange {
			if to, err = parsePort(hi); err != nil {
				return nil, fmt.Errorf("port range %q: %w", f, err)
			}
			if to < from {
				return nil, fmt.Errorf("port range %q: end before start", f)
			}
		}
		out = append(out, PortRange{from, to})
	}
	return out, nil
}

func parsePort(s string) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("not a port number (1-65535)")
	}
	return p, nil
}

// String renders r as "22" or "8300-8302".
func (r PortRange) String() string {
	if r.From == r.To {
		return strconv.Itoa(r.From)
	}
	return fmt.Sprintf("%d-%d", r.From, r.To)
}

// iptables renders r as iptables' --dport argument, "22" or "8300:8302".
func (r PortRange) iptables() string { return strings.Replace(r.String(), "-", ":", 1) }

// Validate reports every problem with r at once.
func (r Rules) Validate() error {
	var errs []string
	if r.ProxyUID == NoID && r.ProxyGID == NoID {
		errs = append(errs, "the sidecar's user or group is needed (--proxy-uid or --proxy-gid): without it its own connections would be redirected to itself")
	}
	if r.ProxyUID < NoID || r.ProxyGID < NoID {
		errs = append(errs, "proxy uid and gid must not be negative")
	}
	for _, p := range []struct {
		name string
		port int
	}{{"outbound port", r.OutboundPort}, {"inbound port", r.InboundPort}} {
		if p.port < 1 || p.port > 65535 {
			errs = append(errs, fmt.Sprintf("%s %d is not a port number (1-65535)", p.name, p.port))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("redirect: %s", strings.Join(errs, "; "))
	}
	return nil
}

// IPTables returns the input of iptables-restore --noflush (the same for
// ip6tables-restore) that creates or replaces sidemesh's chains in the nat
// table. It does not add the jumps from PREROUTING and OUTPUT, which
// iptables-restore cannot add idempotently: see Jumps.
func (r Rules) IPTables() string {
	var b strings.Builder
	add := func(chain string, args ...string) {
		fmt.Fprintf(&b, "-A %s %s\n", chain, strings.Join(args, " "))
	}
	b.WriteString("*nat\n")
	for _, c := range []string{ChainInbound, ChainInRedirect, ChainOutput, ChainRedirect} {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c) // declaring a chain flushes it
	}
	add(ChainRedirect, "-p tcp -j REDIRECT --to-ports", strconv.Itoa(r.OutboundPort))
	add(ChainInRedirect, "-p tcp -j REDIRECT --to-ports", strconv.Itoa(r.InboundPort))

	if !r.InboundDisabled {
		add(ChainInbound, "-p tcp --dport", strconv.Itoa(r.InboundPort), "-j RETURN")
		for _, p := range r.ExcludeInboundPorts {
			add(ChainInbound, "-p tcp --dport", p.iptables(), "-j RETURN")
		}
		if len(r.AppPorts) == 0 {
			add(ChainInbound, "-p tcp -j", ChainInRedirect)
		}
		for _, p := range r.AppPorts {
			add(ChainInbound, "-p tcp --dport", p.iptables(), "-j", ChainInRedirect)
		}
	}

	if r.ProxyUID != NoID {
		add(ChainOutput, "-m owner --uid-owner", strconv.Itoa(r.ProxyUID), "-j RETURN")
	}
	if r.ProxyGID != NoID {
		add(ChainOutput, "-m owner --gid-owner", strconv.Itoa(r.ProxyGID), "-j RETURN")
	}
	for _, p := range r.ExcludeOutboundPorts {
		add(ChainOutput, "-p tcp --dport", p.iptables(), "-j RETURN")
	}
	for _, p := range r.LoopbackPorts {
		add(ChainOutput, "-o lo -p tcp --dport", p.iptables(), "-j", ChainRedirect)
	}
	add(ChainOutput, "-o lo -j RETURN")
	add(ChainOutput, "-p tcp -j", ChainRedirect)
	b.WriteString("COMMIT\n")
	return b.String()
}

// Jump is a rule in a built-in chain of the nat table that sends TCP to
// one of sidemesh's chains.
type Jump struct {
	Chain  string // PREROUTING or OUTPUT
	Target string
}

// Args returns the rule's arguments after -A, -C or -D and the chain.
func (j Jump) Args() []string { return []string{"-p", "tcp", "-j", j.Target} }

// Jumps returns the jumps Apply adds once each after IPTables' chains.
func Jumps() []Jump {
	return []Jump{{"PREROUTING", ChainInbound}, {"OUTPUT", ChainOutput}}
}

// Chains returns sidemesh's iptables chains, in an order they can be
// deleted in (a chain after every chain that jumps to it).
func Chains() []string {
	return []string{ChainInbound, ChainOutput, ChainInRedirect, ChainRedirect}
}

// NFTables returns the nft script that creates or replaces sidemesh's
// table: family ip, or inet (IPv4 and IPv6 together) with IPv6. Running
// it again replaces the table: it starts with NFTablesRemove.
func (r Rules) NFTables() string {
	var b strings.Builder
	b.WriteString(NFTablesRemove())
	fmt.Fprintf(&b, "table %s %s {\n", r.nftFamily(), NFTTable)
	out, in := ":"+strconv.Itoa(r.OutboundPort), ":"+strconv.Itoa(r.InboundPort)

	b.WriteString("\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n")
	if !r.InboundDisabled {
		fmt.Fprintf(&b, "\t\ttcp dport %d return\n", r.InboundPort)
		if len(r.ExcludeInboundPorts) > 0 {
			fmt.Fprintf(&b, "\t\ttcp dport %s return\n", nftSet(r.ExcludeInboundPorts))
		}
		if len(r.AppPorts) == 0 {
			fmt.Fprintf(&b, "\t\tmeta l4proto tcp redirect to %s\n", in)
		} else {
			fmt.Fprintf(&b, "\t\ttcp dport %s redirect to %s\n", nftSet(r.AppPorts), in)
		}
	}
	b.WriteString("\t}\n")

	b.WriteString("\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n")
	if r.ProxyUID != NoID {
		fmt.Fprintf(&b, "\t\tmeta skuid %d return\n", r.ProxyUID)
	}
	if r.ProxyGID != NoID {
		fmt.Fprintf(&b, "\t\tmeta skgid %d return\n", r.ProxyGID)
	}
	if len(r.ExcludeOutboundPorts) > 0 {
		fmt.Fprintf(&b, "\t\ttcp dport %s return\n", nftSet(r.ExcludeOutboundPorts))
	}
	if len(r.LoopbackPorts) > 0 {
		fmt.Fprintf(&b, "\t\toifname \"lo\" tcp dport %s redirect to %s\n", nftSet(r.LoopbackPorts), out)
	}
	b.WriteString("\t\toifname \"lo\" return\n")
	fmt.Fprintf(&b, "\t\tmeta l4proto tcp redirect to %s\n", out)
	b.WriteString("\t}\n}\n")
	return b.String()
}

// NFTablesRemove returns the nft script that deletes sidemesh's tables
// of both families, whether or not they exist (adding a table that
// exists is a no-op).
func NFTablesRemove() string {
	var b strings.Builder
	for _, family := range []string{"ip", "inet"} {
		fmt.Fprintf(&b, "add table %s %s\ndelete table %s %s\n", family, NFTTable, family, NFTTable)
	}
	return b.String()
}

func (r Rules) nftFamily() string {
	if r.IPv6 {
		return "inet"
	}
	return "ip"
}

// nftSet renders ports as an nft anonymous set, "{ 22, 8300-8302 }",
// sorted and with overlapping ranges merged (nft refuses overlaps in an
// interval set).
func nftSet(ports []PortRange) string {
	sorted := slices.Clone(ports)
	slices.SortFunc(sorted, func(a, b PortRange) int { return a.From - b.From })
	var merged []PortRange
	for _, p := range sorted {
		if n := len(merged); n > 0 && p.From <= merged[n-1].To+1 {
			merged[n-1].To = max(merged[n-1].To, p.To)
			continue
		}
		merged = append(merged, p)
	}
	s := make([]string, len(merged))
	for i, p := range merged {
		s[i] = p.String()
	}
	return "{ " + strings.Join(s, ", ") + " }"
}
