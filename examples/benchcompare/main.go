//go:build linux

// Command benchcompare measures sidemesh side by side with nginx, HAProxy
// and Go's httputil.ReverseProxy on one machine, and writes a Markdown
// report and PNG plots. It is what `make bench-compare` runs:
//
//	make build && go run ./examples/benchcompare -sidemesh bin/sidemesh -out bench-results
//
// One backend process serves 1 KiB over HTTP/1.1 and h2c. Each row of the
// report is a way of reaching it: directly, through nginx, HAProxy, a
// tuned ReverseProxy, a sidemesh sidecar (one hop), two sidecars with
// mutual TLS (and an nginx pair doing the same mutual TLS with the same
// certificates), and the sidemesh edge terminating TLS (alone, and with
// JWT authentication and a rate limit; nginx terminating TLS beside them).
// For each round, each row is started, measured and stopped in turn, so
// that the rows share the machine's noise:
//
//   - memory when idle;
//   - open loop at each -rates (constant rate, latency measured from the
//     time each request was due, so a stall is charged to every request
//     it delayed): the latency each row adds over direct, CPU per request,
//     memory under that load;
//   - closed loop at full speed, HTTP/1.1 keep-alive and h2: requests per
//     second, CPU per request, latency percentiles.
//
// CPU is that of the proxy's own processes only (from /proc: nginx's
// master and workers, both sidecars of a pair), never the backend's or
// the load generator's. Figures are medians over the rounds; ratios to
// the nginx row of the same shape are the headline, since absolute
// figures depend on the machine.
//
// nginx, HAProxy and wrk are installed from Debian's packages when a
// selected row needs them and they are missing (apt-get; sudo when not
// root). They run as foreground children with their configs in a
// temporary folder, on free loopback ports.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	sidemesh     string         // path of the sidemesh binary
	out          string         // folder of the report and plots
	rounds       int            // interleaved rounds; figures are medians over them
	duration     time.Duration  // measured time of each closed-loop run
	openDuration time.Duration  // measured time of each open-loop run
	warmup       time.Duration  // load before each measured run, not recorded
	idle         time.Duration  // wait after a row is ready, before its idle memory is read
	rates        []float64      // open-loop rates, requests per second
	only         *regexp.Regexp // rows to run; nil: all
	conns        int            // connections (HTTP/1.1) or concurrent streams (h2) of the closed loop, and the open loop's connections
	h2Conns      int            // connections the h2 closed loop spreads its streams over
	h1Client     string         // "wrk" or "go": the HTTP/1.1 closed-loop generator
	keep         bool           // keep the work folder (configs, certificates, logs)
	install      bool           // install missing Debian packages
}

// defaultOptions are the flags' defaults.
func defaultOptions() options {
	return options{
		sidemesh:     "bin/sidemesh",
		out:          "bench-results",
		rounds:       3,
		duration:     10 * time.Second,
		openDuration: 4 * time.Second,
		warmup:       500 * time.Millisecond,
		idle:         500 * time.Millisecond,
		rates:        []float64{1000, 5000},
		conns:        32,
		h2Conns:      4,
		h1Client:     "wrk",
		install:      true,
	}
}

// quick shortens every run for a smoke test: one round of half-second runs.
func (o *options) quick() {
	o.rounds = 1
	o.duration = 500 * time.Millisecond
	o.openDuration = 500 * time.Millisecond
	o.warmup = 200 * time.Millisecond
	o.idle = 200 * time.Millisecond
}

func main() {
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(runRole(role, os.Args[1:]))
	}
	o, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchcompare:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop) // a second Ctrl-C kills at once; the children die with us
	_, err = run(ctx, o, os.Stdout)
	stop()
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "benchcompare: interrupted; no report written")
		os.Exit(1)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchcompare:", err)
		os.Exit(1)
	}
}

// parseFlags parses the command line into options.
func parseFlags(args []string) (options, error) {
	o := defaultOptions()
	fs := flag.NewFlagSet("benchcompare", flag.ContinueOnError)
	fs.StringVar(&o.sidemesh, "sidemesh", o.sidemesh, "path of the sidemesh `binary` (make build)")
	fs.StringVar(&o.out, "out", o.out, "`folder` for the report (results.md, results.json) and the plots; created if missing")
	fs.IntVar(&o.rounds, "rounds", o.rounds, "interleaved `rounds`; every figure is the median over them")
	fs.DurationVar(&o.duration, "duration", o.duration, "measured time of each closed-loop run")
	fs.DurationVar(&o.openDuration, "open-duration", o.openDuration, "measured time of each open-loop run")
	fs.DurationVar(&o.warmup, "warmup", o.warmup, "load sent before each measured run and not recorded")
	rates := fs.String("rates", "1000,5000", "open-loop `rates` in requests per second, comma-separated")
	only := fs.String("only", "", "run only the rows whose name matches this `regexp` (direct always runs: added latency is measured against it)")
	quick := fs.Bool("quick", false, "very short runs, one round: a smoke test of every row, not a measurement")
	fs.IntVar(&o.conns, "conns", o.conns, "closed loop: HTTP/1.1 connections, or h2 streams in flight; open loop: connections")
	fs.IntVar(&o.h2Conns, "h2-conns", o.h2Conns, "closed loop h2: connections the streams are spread over")
	fs.StringVar(&o.h1Client, "h1-client", o.h1Client, "HTTP/1.1 closed-loop generator: wrk (C, leaves the proxies more of the CPU) or go")
	fs.BoolVar(&o.keep, "keep", false, "keep the work folder (configs, certificates, logs) and print where it is")
	noInstall := fs.Bool("no-install", false, "fail instead of installing missing Debian packages")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	o.install = !*noInstall
	if *quick {
		o.quick()
		// Explicit flags still win over -quick's values.
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "rounds":
				o.rounds, _ = strconv.Atoi(f.Value.String())
			case "duration":
				o.duration, _ = time.ParseDuration(f.Value.String())
			case "open-duration":
				o.openDuration, _ = time.ParseDuration(f.Value.String())
			case "warmup":
				o.warmup, _ = time.ParseDuration(f.Value.String())
			}
		})
	}
	var err error
	if o.rates, err = parseRates(*rates); err != nil {
		return o, err
	}
	if *only != "" {
		if o.only, err = regexp.Compile(*only); err != nil {
			return o, fmt.Errorf("-only: %w", err)
		}
	}
	switch {
	case o.rounds < 1:
		return o, fmt.Errorf("-rounds %d: want at least 1", o.rounds)
	case o.duration <= 0 || o.openDuration <= 0 || o.warmup < 0:
		return o, fmt.Errorf("-duration and -open-duration must be positive, -warmup not negative")
	case o.conns < 1 || o.h2Conns < 1 || o.h2Conns > o.conns:
		return o, fmt.Errorf("-conns %d, -h2-conns %d: want 1 ≤ h2-conns ≤ conns", o.conns, o.h2Conns)
	case o.h1Client != "wrk" && o.h1Client != "go":
		return o, fmt.Errorf("-h1-client %q: want wrk or go", o.h1Client)
	}
	return o, nil
}

// parseRates parses "1000,5000".
func parseRates(s string) ([]float64, error) {
	var out []float64
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		r, err := strconv.ParseFloat(f, 64)
		if err != nil || r <= 0 || r > 1e6 {
			return nil, fmt.Errorf("-rates: %q is not a rate between 0 and 1,000,000 requests per second", f)
		}
		out = append(out, r)
	}
	return out, nil
}
