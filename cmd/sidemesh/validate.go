package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/sidecar/edge"
)

// printRoutes writes, as YAML comments, the edge's compiled route table
// in precedence order, and which listeners route by it.
func printRoutes(w io.Writer, e *config.Edge) {
	fmt.Fprintln(w, "# The edge's route table, compiled:")
	for _, l := range e.Listeners {
		switch {
		case l.RedirectToHTTPS:
			fmt.Fprintf(w, "#   listener %s redirects every request to https\n", l.Listen)
		case l.TLS != nil:
			fmt.Fprintf(w, "#   listener %s (TLS) routes by this table\n", l.Listen)
		default:
			fmt.Fprintf(w, "#   listener %s routes by this table\n", l.Listen)
		}
	}
	for line := range strings.Lines(edge.Compile(e.Routes).Describe()) {
		fmt.Fprint(w, "# ", line)
	}
}

func newValidateCmd() *cobra.Command {
	var path string
	var print bool
	cmd := &cobra.Command{
		Use:   "validate [-c FILE | FILE...]",
		Short: "Check configs; report every problem as file:line:col: message",
		Long: `validate checks a config file the way run would, files it names included
(certificates, keys, the gossip key, the Consul token), and reports every
problem at once as file:line:col: message. Warnings (a listener that exposes
the outbound proxy beyond loopback, say) are printed too, but do not fail.
Several files may be given as arguments (sidemesh validate deploy/*.yaml);
each is checked, and the exit code is 1 if any fails. With --print it
prints the config as run would use it, every default filled in (one file).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			files := args
			if path != "" || len(args) == 0 {
				p, err := configPath(cmd, path)
				if err != nil {
					return err
				}
				files = append([]string{p}, args...)
			}
			if print && len(files) > 1 {
				return usageError{fmt.Errorf("%s --print takes one config, got %d", cmd.CommandPath(), len(files))}
			}
			failed := false
			for _, f := range files {
				if !validateFile(cmd, f, print) {
					failed = true
				}
			}
			if failed {
				return exitError(exitFailure)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "config file (YAML); default $"+envConfig)
	cmd.Flags().BoolVar(&print, "print", false, "print the resolved config, every default filled in")
	return cmd
}

// validateFile checks one config and reports on it: its problems and
// warnings on stderr, then "FILE: ok" or, with print, the effective
// config on stdout. It returns whether the config is valid.
func validateFile(cmd *cobra.Command, path string, print bool) bool {
	cfg, err := config.Load(path)
	if err != nil {
		var list config.ErrorList
		if errors.As(err, &list) {
			for _, e := range list {
				fmt.Fprintln(cmd.ErrOrStderr(), e)
			}
		} else {
			fmt.Fprintln(cmd.ErrOrStderr(), err)
		}
		return false
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintln(cmd.ErrOrStderr(), w)
	}
	if !print {
		fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", path)
		return true
	}
	out, err := cfg.EffectiveYAML()
	if err != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "%s: %v\n", path, err)
		return false
	}
	fmt.Fprint(cmd.OutOrStdout(), out)
	if cfg.Edge != nil {
		printRoutes(cmd.OutOrStdout(), cfg.Edge)
	}
	return true
}
