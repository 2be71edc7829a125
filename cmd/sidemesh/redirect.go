package main

import (
	"fmt"
	"os/exec"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sidemesh/sidemesh/sidecar/redirect"
)

// newRedirectCmd builds `sidemesh redirect`: transparent interception's
// netfilter rules, installed in (or removed from) the network namespace
// the command runs in.
func newRedirectCmd() *cobra.Command {
	r := redirect.Default()
	var backend, appPorts, loopback, exclOut, exclIn string
	var remove bool
	defaults := portList(redirect.DefaultExcludedPorts)
	cmd := &cobra.Command{
		Use:   "redirect --proxy-uid UID | --proxy-gid GID [flags]",
		Short: "Install the netfilter rules that send the app's TCP through its sidecar (--remove undoes them)",
		Long: `redirect runs in the app's network namespace (an init container with
NET_ADMIN, or ip netns exec) and needs root. It sends the app's outbound TCP
to the outbound listener (--outbound-port) and inbound TCP for the app's
ports (--inbound-ports; all ports when empty) to the inbound listener
(--inbound-port). Left alone: the sidecar's own traffic (its user,
--proxy-uid, or group, --proxy-gid: run the sidecar as that user or group),
traffic over the loopback interface except to --loopback-ports, and the
excluded ports (default ` + defaults + `: SSH, the admin API, Consul
and gossip). The outbound listener routes redirected HTTP by its Host
header, and any other TCP by the address the app dialled (see
outbound.original_destination, outbound.detect_timeout and
outbound.opaque_ports in the config).

IPv4 only unless --ipv6. The rules live in chains of their own
(SIDEMESH_PREROUTING, SIDEMESH_OUTPUT, SIDEMESH_REDIRECT, SIDEMESH_IN_REDIRECT
in the nat table, of ip6tables too with --ipv6), or in the nftables table
"ip sidemesh" ("inet sidemesh" with --ipv6) when iptables is missing:
running redirect again replaces them, --remove deletes exactly them.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := redirect.Resolve(backend)
			if err != nil {
				return err
			}
			var done []string
			if remove {
				done, err = redirect.Remove(cmd.Context(), b)
			} else {
				for _, f := range []struct {
					flag, val string
					dst       *[]redirect.PortRange
				}{
					{"--inbound-ports", appPorts, &r.AppPorts},
					{"--loopback-ports", loopback, &r.LoopbackPorts},
					{"--exclude-outbound-ports", exclOut, &r.ExcludeOutboundPorts},
					{"--exclude-inbound-ports", exclIn, &r.ExcludeInboundPorts},
				} {
					if *f.dst, err = redirect.ParsePorts(f.val); err != nil {
						return usageError{fmt.Errorf("%s: %w", f.flag, err)}
					}
				}
				if err := r.Validate(); err != nil {
					return usageError{err}
				}
				if r.IPv6 && b == redirect.BackendIPTables && !hasCommand("ip6tables-restore") {
					return fmt.Errorf("redirect: --ipv6 needs ip6tables-restore, which is not installed")
				}
				done, err = redirect.Apply(cmd.Context(), b, r)
			}
			if err == nil && len(done) == 0 {
				done = []string{b + ": no rules of sidemesh's were installed"}
			}
			for _, line := range done {
				fmt.Fprintln(cmd.OutOrStdout(), line)
			}
			return err
		},
	}
	f := cmd.Flags()
	f.IntVar(&r.ProxyUID, "proxy-uid", redirect.NoID, "user the sidecar runs as: its connections are not redirected")
	f.IntVar(&r.ProxyGID, "proxy-gid", redirect.NoID, "group the sidecar runs as: its connections are not redirected")
	f.IntVar(&r.OutboundPort, "outbound-port", redirect.DefaultOutboundPort, "port of the outbound listener")
	f.IntVar(&r.InboundPort, "inbound-port", redirect.DefaultInboundPort, "port of the inbound listener (never redirected)")
	f.StringVar(&appPorts, "inbound-ports", "", "the app's ports whose inbound TCP goes to the inbound listener, e.g. 8080,9000-9010 (default all)")
	f.BoolVar(&r.InboundDisabled, "no-inbound", false, "redirect outbound traffic only")
	f.StringVar(&loopback, "loopback-ports", "", "loopback destination ports still redirected (default none)")
	f.StringVar(&exclOut, "exclude-outbound-ports", defaults, "destination ports of outbound TCP left alone")
	f.StringVar(&exclIn, "exclude-inbound-ports", defaults, "destination ports of inbound TCP left alone")
	f.StringVar(&backend, "backend", redirect.BackendAuto, "auto (iptables if installed, else nftables), iptables or nftables")
	f.BoolVar(&r.IPv6, "ipv6", false, "redirect IPv6 too: the outbound listener must then accept on [::1], e.g. outbound.listen [::]:15001")
	f.BoolVar(&remove, "remove", false, "delete the rules a previous redirect installed")
	return cmd
}

// portList renders ports as the flags take them.
func portList(ports []redirect.PortRange) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// hasCommand reports whether name is on PATH.
func hasCommand(name string) bool {
	_, err := exec.LookPath(name)
	return err == nil
}
