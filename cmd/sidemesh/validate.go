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
		Use:   "validate -c FILE",
		Short: "Check a config; report every problem as file:line:col: message",
		Long: `validate checks a config file the way run would, files it names included
(certificates, keys, the gossip key, the Consul token), and reports every
problem at once as file:line:col: message. Warnings (a listener that exposes
the outbound proxy beyond loopback, say) are printed too, but do not fail.
With --print it prints the config as run would use it, every default filled
in.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, err := configPath(cmd, path)
			if err != nil {
				return err
			}
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
				return exitError(exitFailure)
			}
			for _, w := range cfg.Warnings() {
				fmt.Fprintln(cmd.ErrOrStderr(), w)
			}
			if print {
				out, err := cfg.EffectiveYAML()
				if err != nil {
					return err
				}
				fmt.Fprint(cmd.OutOrStdout(), out)
				if cfg.Edge != nil {
					printRoutes(cmd.OutOrStdout(), cfg.Edge)
				}
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", path)
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "config file (YAML); default $"+envConfig)
	cmd.Flags().BoolVar(&print, "print", false, "print the resolved config, every default filled in")
	return cmd
}
