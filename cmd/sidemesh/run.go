package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/sidemesh/sidemesh/sidecar"
	"github.com/sidemesh/sidemesh/sidecar/buildinfo"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/telemetry"
)

func newRunCmd(stderr io.Writer) *cobra.Command {
	var path, pidFile string
	cmd := &cobra.Command{
		Use:   "run -c FILE",
		Short: "Run the sidecar a config describes",
		Long: `run serves until SIGTERM or SIGINT, then drains for the config's
drain_timeout. SIGHUP reloads the config file (an invalid one is refused and
the running config keeps serving); SIGUSR2 hands the listening sockets over
to a new process started from the same binary path, which is how an upgrade
rolls out without refusing a connection.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, err := configPath(cmd, path)
			if err != nil {
				return err
			}
			if code := serve(path, pidFile, stderr); code != exitOK {
				return exitError(code)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "config file (YAML); default $"+envConfig)
	cmd.Flags().StringVar(&pidFile, "pid-file", "", "write the PID here (again after a handover), for a supervisor")
	return cmd
}

// serve runs the sidecar the config at path describes until SIGTERM or
// SIGINT, reloading on SIGHUP and handing over to a new process on
// SIGUSR2.
func serve(path, pidFile string, stderr io.Writer) int {
	cfg, err := config.Load(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitFailure
	}
	log, err := telemetry.NewLogger(cfg.Log.Level, cfg.Log.Format, stderr)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitFailure
	}
	for _, w := range cfg.Warnings() {
		log.Warn("config", "warning", w.Error())
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(usr2)

	lns, ready, err := inherited()
	if err != nil {
		log.Error("cannot start", "err", err)
		return exitFailure
	}
	sc := sidecar.New(cfg, log, sidecar.WithListeners(lns...))
	if err := sc.Start(ctx); err != nil {
		log.Error("cannot start", "err", err)
		return exitFailure
	}
	if pidFile != "" {
		if err := writePIDFile(pidFile); err != nil {
			log.Error("cannot write the PID file", "path", pidFile, "err", err)
		}
	}
	ready()
	log.Info("sidemesh running", "config", path, "version", buildinfo.Version(), "pid", os.Getpid(), "inherited_listeners", len(lns))
	for {
		select {
		case <-hup:
			reload(ctx, sc, path, log)
		case <-usr2:
			if !handover(sc, log) {
				continue
			}
			stop()
			sc.HandedOver()
			drain := sc.Config().DrainTimeout
			sctx, cancel := context.WithTimeout(context.Background(), drain)
			sc.Shutdown(sctx)
			cancel()
			log.Info("handed over; exiting")
			return exitOK
		case <-ctx.Done():
			stop() // a second signal now kills the process the default way
			drain := sc.Config().DrainTimeout
			sctx, cancel := context.WithTimeout(context.Background(), drain)
			log.Info("draining", "deadline", drain)
			sc.Shutdown(sctx)
			cancel()
			return exitOK
		}
	}
}

// reload applies the config file again. A config that does not load, or
// cannot be applied, is logged with every problem and the running config
// keeps serving.
func reload(ctx context.Context, sc *sidecar.Sidecar, path string, log *slog.Logger) {
	cfg, err := config.Load(path)
	if err != nil {
		var list config.ErrorList
		if errors.As(err, &list) {
			for _, e := range list {
				log.Error("reload rejected; keeping the running config", "problem", e.Error())
			}
		} else {
			log.Error("reload rejected; keeping the running config", "err", err)
		}
		sc.RecordReload(err)
		return
	}
	if err := sc.Reload(ctx, cfg); err != nil {
		log.Error("reload failed; keeping the running config", "err", err)
	}
}
