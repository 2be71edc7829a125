package main

import (
	"flag"
	"fmt"
	"io"
	"path/filepath"

	"github.com/sidemesh/sidemesh/policy/identity"
)

const caUsage = `usage:
  sidemesh ca init  --dir DIR --trust-domain DOMAIN [--ttl DURATION]
  sidemesh ca issue --dir DIR --service NAME [--namespace NS] [--ttl DURATION]

init writes a development CA to DIR/ca.pem and DIR/ca-key.pem (ECDSA P-256).
issue writes a leaf for spiffe://DOMAIN/ns/NS/svc/NAME to DIR/NAME.pem and
DIR/NAME-key.pem, signed by the CA in DIR; run it again to rotate the leaf.
`

// cmdCA runs `sidemesh ca init|issue`: a development CA for the files
// certificate source.
func cmdCA(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, caUsage)
		return exitUsage
	}
	fs := flag.NewFlagSet("sidemesh ca "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, caUsage) }
	dir := fs.String("dir", "", "directory of the CA")
	ttl := fs.Duration("ttl", 0, "validity (default 10 years for a CA, 90 days for a leaf)")
	switch args[0] {
	case "init":
		domain := fs.String("trust-domain", "", "SPIFFE trust domain, e.g. mesh.local")
		if fs.Parse(args[1:]) != nil || *dir == "" || *domain == "" || fs.NArg() > 0 {
			fmt.Fprint(stderr, caUsage)
			return exitUsage
		}
		if err := identity.InitCA(*dir, *domain, *ttl); err != nil {
			fmt.Fprintln(stderr, "sidemesh ca init:", err)
			return exitFailure
		}
		fmt.Fprintf(stdout, "CA for trust domain %s written to %s\n", *domain, filepath.Join(*dir, "ca.pem"))
	case "issue":
		service := fs.String("service", "", "service name")
		namespace := fs.String("namespace", "default", "namespace")
		if fs.Parse(args[1:]) != nil || *dir == "" || *service == "" || fs.NArg() > 0 {
			fmt.Fprint(stderr, caUsage)
			return exitUsage
		}
		cert, key, err := identity.IssueLeaf(*dir, *service, *namespace, *ttl)
		if err != nil {
			fmt.Fprintln(stderr, "sidemesh ca issue:", err)
			return exitFailure
		}
		fmt.Fprintf(stdout, "certificate %s\nkey         %s\n", cert, key)
	default:
		fmt.Fprintf(stderr, "sidemesh ca: unknown command %q\n\n%s", args[0], caUsage)
		return exitUsage
	}
	return exitOK
}
