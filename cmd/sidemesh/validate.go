package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sidemesh/sidemesh/sidecar/config"
)

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
