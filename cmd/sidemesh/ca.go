package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/sidemesh/sidemesh/policy/identity"
)

func newCACmd() *cobra.Command {
	ca := &cobra.Command{
		Use:   "ca",
		Short: "A development CA and SPIFFE leaf certificates, for tls.source: files",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cmd.SetOut(cmd.ErrOrStderr())
			cmd.Usage()
			return exitError(exitUsage)
		},
	}
	var dir, domain string
	var ttl time.Duration
	initCmd := &cobra.Command{
		Use:   "init --dir DIR --trust-domain DOMAIN",
		Short: "Write a development CA (ECDSA P-256) to DIR/ca.pem and DIR/ca-key.pem",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" || domain == "" {
				return usageError{fmt.Errorf("%s needs --dir and --trust-domain", cmd.CommandPath())}
			}
			if err := identity.InitCA(dir, domain, ttl); err != nil {
				return fmt.Errorf("ca init: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "CA for trust domain %s written to %s\n", domain, filepath.Join(dir, "ca.pem"))
			return nil
		},
	}
	initCmd.Flags().StringVar(&dir, "dir", "", "directory of the CA")
	initCmd.Flags().StringVar(&domain, "trust-domain", "", "SPIFFE trust domain, e.g. mesh.local")
	initCmd.Flags().DurationVar(&ttl, "ttl", 0, "validity (default 10 years)")

	var idir, service, namespace, owner string
	var ittl time.Duration
	issueCmd := &cobra.Command{
		Use:   "issue --dir DIR --service NAME",
		Short: "Write a leaf for spiffe://DOMAIN/ns/NS/svc/NAME to DIR/NAME.pem and DIR/NAME-key.pem",
		Long: `issue signs a leaf with the CA in DIR; run it again to rotate the leaf (a
running sidecar picks the new files up). The key is written with mode 0600
for the user running the command; --owner hands both files to another user,
such as the image's 65532 (nonroot), which must read them.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if idir == "" || service == "" {
				return usageError{fmt.Errorf("%s needs --dir and --service", cmd.CommandPath())}
			}
			uid, gid, err := parseOwner(owner)
			if err != nil {
				return usageError{err}
			}
			cert, key, err := identity.IssueLeaf(idir, service, namespace, ittl)
			if err != nil {
				return fmt.Errorf("ca issue: %w", err)
			}
			if owner != "" {
				for _, f := range []string{cert, key} {
					if err := os.Chown(f, uid, gid); err != nil {
						return fmt.Errorf("ca issue: --owner: %w", err)
					}
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "certificate %s\nkey         %s\n", cert, key)
			return nil
		},
	}
	issueCmd.Flags().StringVar(&idir, "dir", "", "directory of the CA")
	issueCmd.Flags().StringVar(&service, "service", "", "service name")
	issueCmd.Flags().StringVar(&namespace, "namespace", "default", "namespace")
	issueCmd.Flags().DurationVar(&ittl, "ttl", 0, "validity (default 90 days)")
	issueCmd.Flags().StringVar(&owner, "owner", "", "UID[:GID] to own the certificate and key (needs root), e.g. 65532 for the image")
	ca.AddCommand(initCmd, issueCmd)
	return ca
}

// parseOwner parses "UID" or "UID:GID"; -1 leaves the group as it is.
func parseOwner(s string) (uid, gid int, err error) {
	if s == "" {
		return -1, -1, nil
	}
	u, g, hasGroup := strings.Cut(s, ":")
	if uid, err = strconv.Atoi(u); err != nil || uid < 0 {
		return 0, 0, fmt.Errorf("--owner %q: want UID or UID:GID, numbers", s)
	}
	gid = -1
	if hasGroup {
		if gid, err = strconv.Atoi(g); err != nil || gid < 0 {
			return 0, 0, fmt.Errorf("--owner %q: want UID or UID:GID, numbers", s)
		}
	}
	return uid, gid, nil
}
