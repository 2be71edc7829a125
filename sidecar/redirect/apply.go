package redirect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Backend names, for Apply, Remove and the --backend flag.
const (
	BackendAuto     = "auto"
	BackendIPTables = "iptables"
	BackendNFTables = "nftables"
)

// Family is an iptables tool set: iptables for IPv4, ip6tables for IPv6.
type Family struct {
	Name    string // "ipv4" or "ipv6", for errors
	Command string // iptables or ip6tables
	Restore string // iptables-restore or ip6tables-restore
}

// Families are IPv4, then IPv6.
var Families = []Family{
	{"ipv4", "iptables", "iptables-restore"},
	{"ipv6", "ip6tables", "ip6tables-restore"},
}

// lookPath finds a command; tests replace it.
var lookPath = exec.LookPath

// Resolve turns BackendAuto into iptables when iptables-restore exists
// and nftables when only nft does, and checks that the chosen backend's
// commands exist.
func Resolve(backend string) (string, error) {
	has := func(cmd string) bool { _, err := lookPath(cmd); return err == nil }
	switch backend {
	case BackendAuto, "":
		switch {
		case has("iptables-restore") && has("iptables"):
			return BackendIPTables, nil
		case has("nft"):
			return BackendNFTables, nil
		}
		return "", errors.New("redirect: neither iptables-restore nor nft is installed")
	case BackendIPTables:
		if !has("iptables-restore") || !has("iptables") {
			return "", errors.New("redirect: iptables and iptables-restore are not both installed")
		}
	case BackendNFTables:
		if !has("nft") {
			return "", errors.New("redirect: nft is not installed")
		}
	default:
		return "", fmt.Errorf("redirect: unknown backend %q (want auto, iptables or nftables)", backend)
	}
	return backend, nil
}

// Apply installs r with backend (iptables or nftables, as Resolve
// returns), first removing whatever sidemesh installed before (Remove).
// With iptables, IPv6 (r.IPv6) needs ip6tables. It returns what it did,
// one line per family.
func Apply(ctx context.Context, backend string, r Rules) ([]string, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	if _, err := Remove(ctx, backend); err != nil {
		return nil, err
	}
	if backend == BackendNFTables {
		if err := run(ctx, r.NFTables(), "nft", "-f", "-"); err != nil {
			return nil, fmt.Errorf("redirect: nftables: %w", err)
		}
		return []string{fmt.Sprintf("nftables: table %s %s installed", r.nftFamily(), NFTTable)}, nil
	}
	fams := Families[:1]
	if r.IPv6 {
		fams = Families
	}
	var done []string
	for _, f := range fams {
		if err := run(ctx, r.IPTables(), f.Restore, "--noflush"); err != nil {
			return done, fmt.Errorf("redirect: %s: %s: %w", f.Name, f.Restore, err)
		}
		for _, j := range Jumps() {
			args := append([]string{"-t", "nat", "-I", j.Chain, "1"}, j.Args()...)
			if err := run(ctx, "", f.Command, args...); err != nil {
				return done, fmt.Errorf("redirect: %s: jump from %s: %w", f.Name, j.Chain, err)
			}
		}
		done = append(done, fmt.Sprintf("%s: chains %s installed in the nat table", f.Command, strings.Join(Chains(), ", ")))
	}
	return done, nil
}

// Remove deletes what Apply installed with backend: the jumps and the
// chains of both families (IPv6 when ip6tables is installed), or the
// nftables tables. What is already gone is not an error.
func Remove(ctx context.Context, backend string) ([]string, error) {
	if backend == BackendNFTables {
		if err := run(ctx, NFTablesRemove(), "nft", "-f", "-"); err != nil {
			return nil, fmt.Errorf("redirect: nftables: %w", err)
		}
		return []string{"nftables: table " + NFTTable + " removed"}, nil
	}
	var done []string
	for _, f := range Families {
		if _, err := lookPath(f.Command); err != nil {
			continue // no ip6tables: nothing of IPv6 was installed
		}
		removeJumps(ctx, f)
		removed := 0
		for _, c := range Chains() {
			if !chainExists(ctx, f, c) {
				continue
			}
			if err := run(ctx, "", f.Command, "-t", "nat", "-F", c); err != nil {
				return done, fmt.Errorf("redirect: %s: flush %s: %w", f.Name, c, err)
			}
			if err := run(ctx, "", f.Command, "-t", "nat", "-X", c); err != nil {
				return done, fmt.Errorf("redirect: %s: delete %s: %w", f.Name, c, err)
			}
			removed++
		}
		if removed > 0 {
			done = append(done, fmt.Sprintf("%s: sidemesh's chains removed from the nat table", f.Command))
		}
	}
	return done, nil
}

// removeJumps deletes every copy of sidemesh's jumps (a run killed
// half-way may have left two).
func removeJumps(ctx context.Context, f Family) {
	for _, j := range Jumps() {
		args := append([]string{"-t", "nat", "-D", j.Chain}, j.Args()...)
		for range 16 { // bounded: -D fails once no copy is left
			if run(ctx, "", f.Command, args...) != nil {
				break
			}
		}
	}
}

func chainExists(ctx context.Context, f Family, chain string) bool {
	return run(ctx, "", f.Command, "-t", "nat", "-n", "-L", chain) == nil
}

// run runs name with args, stdin as its input, and returns an error
// carrying its output when it fails.
func run(ctx context.Context, stdin, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}
