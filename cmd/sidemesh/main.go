// Command sidemesh is a service-mesh sidecar.
//
//	sidemesh run -c sidemesh.yaml        # serve, as the config says
//	sidemesh validate -c sidemesh.yaml   # check a config and exit
//	sidemesh ca init|issue ...           # a development CA and SPIFFE leaf certificates
//	sidemesh keygen                      # print a new gossip encryption key
//	sidemesh redirect --proxy-uid UID    # transparent interception: netfilter rules in the app's namespace
//	sidemesh completion bash|zsh|fish    # shell completion
//	sidemesh version
//
// Exit codes: 0 success, 1 a bad config or a runtime failure, 2 bad usage.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"

	"github.com/spf13/cobra"
	// Mozilla's root certificates, used only where the host has none (the
	// image FROM scratch): OTLP collectors and Consul servers reached
	// over TLS must verify without the operator mounting a bundle.
	_ "golang.org/x/crypto/x509roots/fallback"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/sidecar/buildinfo"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// envConfig names the environment variable that stands for -c/--config.
const envConfig = "SIDEMESH_CONFIG"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// usageError is a command line sidemesh cannot make sense of: exit 2.
type usageError struct{ error }

// exitError carries a command's exit code when it is not 0 and the
// command already said why.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit %d", int(e)) }

// run is main without os.Exit, for tests.
func run(args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	err := root.Execute()
	var ee exitError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ee):
		return int(ee)
	default:
		fmt.Fprintln(stderr, "sidemesh:", err)
		var ue usageError
		if errors.As(err, &ue) || isCobraUsage(err) {
			fmt.Fprintln(stderr, "Run 'sidemesh --help' for usage.")
			return exitUsage
		}
		return exitFailure
	}
}

// isCobraUsage reports whether err is cobra's own complaint about the
// command line (an unknown command or subcommand).
func isCobraUsage(err error) bool {
	msg := err.Error()
	return len(msg) > 16 && msg[:16] == "unknown command "
}

// newRoot builds the command tree.
func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "sidemesh",
		Short: "A service-mesh sidecar in one static binary",
		Long: `sidemesh runs beside each service instance: the app sends plain HTTP to its
sidecar, which picks an instance of the destination, forwards the request
over mutual TLS to that instance's sidecar, which hands it to its app.`,
		Version:       versionLine(),
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(cmd *cobra.Command, args []string) error {
			cmd.SetOut(stderr)
			cmd.Usage()
			return exitError(exitUsage)
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(newRunCmd(stderr), newValidateCmd(), newCACmd(), newKeygenCmd(), newVersionCmd())
	root.AddCommand(newRedirectCmd())
	return root
}

// noArgs refuses positional arguments as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("%s takes no arguments, got %q", cmd.CommandPath(), args)}
	}
	return nil
}

// configPath returns the -c/--config flag, or SIDEMESH_CONFIG.
func configPath(cmd *cobra.Command, flag string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if env := os.Getenv(envConfig); env != "" {
		return env, nil
	}
	return "", usageError{fmt.Errorf("%s needs a config file: -c FILE, --config FILE or %s", cmd.CommandPath(), envConfig)}
}

func newKeygenCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "keygen",
		Short: "Print a new gossip encryption key (save it to the gossip key_file)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			key, err := gossip.GenerateKey()
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), key)
			return nil
		},
	}
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit, Go version and platform",
		Args:  noArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), versionLine())
		},
	}
}

// versionLine is what `sidemesh version` and `sidemesh --version` print.
func versionLine() string {
	commit := buildinfo.Commit()
	if commit == "" {
		commit = "unknown"
	}
	return fmt.Sprintf("sidemesh %s (commit %s, %s, %s/%s)", buildinfo.Version(), commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
