// Command sidemesh is a service-mesh sidecar and edge gateway.
//
//	sidemesh run -c sidemesh.yaml        # serve, as the config says
//	sidemesh validate -c sidemesh.yaml   # check a config and exit
//	sidemesh ca init|issue ...           # a development CA and SPIFFE leaf certificates
//	sidemesh keygen                      # print a new gossip encryption key
//	sidemesh version
//
// Exit codes: 0 success, 1 a bad config or a runtime failure, 2 bad usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	// Mozilla's root certificates, used only where the host has none (the
	// image FROM scratch): OTLP collectors and Consul servers reached
	// over TLS must verify without the operator mounting a bundle.
	_ "golang.org/x/crypto/x509roots/fallback"

	"github.com/sidemesh/sidemesh/discovery/gossip"
	"github.com/sidemesh/sidemesh/sidecar"
	"github.com/sidemesh/sidemesh/sidecar/buildinfo"
	"github.com/sidemesh/sidemesh/sidecar/config"
	"github.com/sidemesh/sidemesh/telemetry"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: sidemesh <command> [flags]

commands:
  run -c FILE        run the sidecar described by FILE
  validate -c FILE   check FILE and report every problem as file:line:col: message
  ca init|issue      a development CA and SPIFFE leaf certificates (sidemesh ca for help)
  keygen             print a new gossip encryption key (save it to the key_file)
  version            print the version
`

// run is main without os.Exit, for tests.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stderr)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "ca":
		return cmdCA(args[1:], stdout, stderr)
	case "keygen":
		if len(args) > 1 {
			fmt.Fprintln(stderr, "usage: sidemesh keygen")
			return exitUsage
		}
		key, err := gossip.GenerateKey()
		if err != nil {
			fmt.Fprintln(stderr, "sidemesh:", err)
			return exitFailure
		}
		fmt.Fprintln(stdout, key)
		return exitOK
	case "version":
		fmt.Fprintln(stdout, "sidemesh", buildinfo.Version())
		return exitOK
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "sidemesh: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
}

// configFlag parses the -c flag shared by run and validate.
func configFlag(name string, args []string, stderr io.Writer) (string, bool) {
	fs := flag.NewFlagSet("sidemesh "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", "", "config file (YAML)")
	if err := fs.Parse(args); err != nil {
		return "", false
	}
	if *path == "" || fs.NArg() > 0 {
		fmt.Fprintf(stderr, "usage: sidemesh %s -c FILE\n", name)
		return "", false
	}
	return *path, true
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	path, ok := configFlag("validate", args, stderr)
	if !ok {
		return exitUsage
	}
	if _, err := config.Load(path); err != nil {
		fmt.Fprintln(stderr, err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "%s: ok\n", path)
	return exitOK
}

func cmdRun(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("sidemesh run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("c", "", "config file (YAML)")
	pidFile := fs.String("pid-file", "", "write the PID here (again after a handover), for a supervisor")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *path == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: sidemesh run -c FILE [-pid-file FILE]")
		return exitUsage
	}
	return serve(*path, *pidFile, stderr)
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
		return
	}
	if err := sc.Reload(ctx, cfg); err != nil {
		log.Error("reload failed; keeping the running config", "err", err)
	}
}
