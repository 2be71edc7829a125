// Command demo runs a small mesh on loopback and narrates, in short
// phases, what sets sidemesh apart. It is what `make demo` runs:
//
//	make build && go run ./examples/demo -sidemesh bin/sidemesh
//
// The mesh: three catalog instances, a frontend that calls them,
// visitor, a client-only sidecar the demo itself sends its requests
// through, and two edge gateways; every app beside its own sidemesh
// sidecar. The phases:
//
//  1. the sidecars find each other over an encrypted gossip pool, with
//     no server and no endpoint lists;
//  2. every hop between sidecars is mutual TLS with SPIFFE identities,
//     and the callee's app learns who called;
//  3. an instance is killed and restored: retries hide it from the
//     client, its breaker opens, it is ejected, then it is back;
//  4. a slow instance joins: round robin, then (after a config reload)
//     least_response_time, with the share each instance gets;
//  5. the catalog's policy denies a path: 403, X-Sidemesh-Error: denied;
//  6. a member leaves the pool and the others drop it at once;
//  7. two edges in front of the catalogs share sticky sessions over the
//     pool: a session begun on one holds on the other, also after the
//     first is killed.
//
// Then it sends a request every -interval until Ctrl-C (or -duration).
// The configs, certificates and logs it generates stay in -dir after it
// exits; the next run empties that folder first.
//
// Run it from inside the sidemesh module: it builds the example services
// with `go build`.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// module is the import path the example services are built from.
const module = "github.com/sidemesh/sidemesh"

// options are the demo's command-line flags.
type options struct {
	sidemesh string        // path to the sidemesh binary
	dir      string        // the folder for configs, certificates and logs
	duration time.Duration // how long to serve after the phases; 0 means until interrupted
	interval time.Duration // time between requests after the phases
}

func main() {
	var o options
	flag.StringVar(&o.sidemesh, "sidemesh", "bin/sidemesh", "path to the sidemesh `binary`")
	flag.StringVar(&o.dir, "dir", "demo-run", "`folder` for the generated configs, certificates and logs (kept; emptied by the next run)")
	flag.DurationVar(&o.duration, "duration", 0, "after the phases, serve this long and exit; 0 serves until Ctrl-C")
	flag.DurationVar(&o.interval, "interval", time.Second, "after the phases, time between requests")
	flag.Parse()
	if o.interval <= 0 || o.duration < 0 || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "demo: -interval must be positive, -duration not negative, and there are no arguments")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first Ctrl-C, a second one kills the demo at once; the
	// children then die with it (see sysProcAttr).
	context.AfterFunc(ctx, stop)
	err := run(ctx, o, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// demo is one run of the demo.
type demo struct {
	o        options
	out      *printer
	l        *layout
	sidemesh string // absolute path of the sidemesh binary
	bin      string // folder of the built example apps
	client   *http.Client
	ps       *procs
}

// run sets the mesh up, runs every phase, then serves until ctx is done
// or o.duration has passed. It always stops every child before
// returning, and leaves the folder in place. Being interrupted is not an
// error.
func run(ctx context.Context, o options, w io.Writer) (err error) {
	out := &printer{w: w}
	sidemesh, err := exec.LookPath(o.sidemesh)
	if err == nil {
		sidemesh, err = filepath.Abs(sidemesh)
	}
	if err != nil {
		return fmt.Errorf("sidemesh binary: %w (build it with: make build)", err)
	}
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return fmt.Errorf("demo folder: %w", err)
	}
	if err := prepareDir(dir); err != nil {
		return err
	}
	l, err := newLayout(dir)
	if err != nil {
		return err
	}
	defer l.ports.freeAll()
	d := &demo{o: o, out: out, l: l, sidemesh: sidemesh, bin: filepath.Join(dir, "bin"), client: newClient(), ps: newProcs()}

	out.line("sidemesh demo: a small mesh on 127.0.0.1, shown in %d short phases; then it keeps serving until Ctrl-C.", len(phases))
	out.line("Its configs, certificates and logs go to %s/ and stay there after it exits.", dir)
	defer func() {
		out.line("")
		// An idle keep-alive connection of ours would hold visitor's
		// sidecar in its drain for a moment: close them first.
		d.client.CloseIdleConnections()
		d.ps.stopAll(out)
		out.line("configs, certificates and logs: %s/", dir)
	}()
	defer func() {
		if ctx.Err() != nil {
			out.line("\ninterrupted")
			err = nil // the user asked to stop
		}
	}()

	if err := d.setup(ctx); err != nil {
		return err
	}
	for i, ph := range phases {
		out.phase(fmt.Sprintf("%d/%d  %s", i+1, len(phases), ph.title))
		if err := ph.run(d, ctx); err != nil {
			return err
		}
	}
	return d.steady(ctx)
}

// setup builds the example apps, makes the CA, a leaf per service and the
// gossip key with the sidemesh binary, and writes every sidecar's config.
func (d *demo) setup(ctx context.Context) error {
	start := time.Now()
	d.out.line("\nbuilding the example apps (go build ./examples/catalog ./examples/frontend)...")
	build := exec.CommandContext(ctx, "go", "build", "-o", d.bin+string(filepath.Separator),
		module+"/examples/catalog", module+"/examples/frontend")
	if b, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build of the example apps (run the demo from inside the sidemesh module): %w\n%s", err, b)
	}
	if err := d.sm(ctx, "ca", "init", "--dir", d.l.certs, "--trust-domain", trustDomain); err != nil {
		return err
	}
	for _, svc := range []string{"catalog", "frontend", "visitor", "edge"} {
		if err := d.sm(ctx, "ca", "issue", "--dir", d.l.certs, "--service", svc); err != nil {
			return err
		}
	}
	for _, f := range []struct{ path, what string }{{d.l.keyFile, "the gossip key"}, {d.l.stickyKey, "the sticky session key"}} {
		key, err := exec.CommandContext(ctx, d.sidemesh, "keygen").Output()
		if err != nil {
			return fmt.Errorf("sidemesh keygen: %w", err)
		}
		if err := os.WriteFile(f.path, key, 0o600); err != nil {
			return fmt.Errorf("write %s: %w", f.what, err)
		}
	}
	for _, name := range d.l.order {
		if err := d.l.writeConfig(d.l.get(name)); err != nil {
			return err
		}
	}
	d.out.say("certificates  %s/  sidemesh ca init --trust-domain %s; ca issue --service catalog|frontend|visitor|edge",
		d.rel(d.l.certs), trustDomain)
	d.out.say("keys          %s, %s  sidemesh keygen", d.rel(d.l.keyFile), d.rel(d.l.stickyKey))
	d.out.say("configs       %s/*-sidecar.yaml, logs %s/*.log", d.rel(d.l.dir), d.rel(d.l.dir))
	d.out.say("ready in %v", time.Since(start).Round(100*time.Millisecond))
	return nil
}

// sm runs the sidemesh binary with args and fails with its output.
func (d *demo) sm(ctx context.Context, args ...string) error {
	if b, err := exec.CommandContext(ctx, d.sidemesh, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("sidemesh %s: %w\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// rel returns path relative to the working directory when it is inside
// it, else path.
func (d *demo) rel(path string) string {
	wd, err := os.Getwd()
	if err != nil {
		return path
	}
	r, err := filepath.Rel(wd, path)
	if err != nil || strings.HasPrefix(r, "..") {
		return path
	}
	return r
}

// startApp starts in's app on its port, which it stops holding.
func (d *demo) startApp(in *instance) error {
	d.l.ports.free(in.app)
	args := []string{"-listen", in.appAddr()}
	switch in.service {
	case "catalog":
		args = append(args, "-instance", in.name, "-latency", in.latency.String())
	case "frontend":
		args = append(args, "-outbound", in.outboundAddr(), "-name", in.name)
	}
	p, err := d.ps.start(in.name, filepath.Join(d.l.dir, in.name+".log"), filepath.Join(d.bin, in.service), args...)
	in.appProc = p
	return err
}

// startSidecar starts in's sidecar on its ports, which it stops holding.
func (d *demo) startSidecar(in *instance) error {
	d.l.ports.free(in.inbound, in.outbound, in.admin, in.gossip)
	if in.edge {
		d.l.ports.free(in.app) // the edge's client-facing listener
	}
	p, err := d.ps.start(in.name+"-sidecar", filepath.Join(d.l.dir, in.name+"-sidecar.log"), d.sidemesh, "run", "-c", in.configPath(d.l.dir))
	in.sideProc = p
	return err
}

// start starts in's app (unless it is client-only or an edge) and its
// sidecar, and lists where they listen.
func (d *demo) start(in *instance) error {
	if !in.client && !in.edge {
		if err := d.startApp(in); err != nil {
			return err
		}
	}
	if err := d.startSidecar(in); err != nil {
		return err
	}
	app := "(the demo is its app)"
	side := fmt.Sprintf("outbound :%d admin :%d gossip :%d", in.outbound, in.admin, in.gossip)
	switch {
	case in.edge:
		app = "(an edge: no app)"
		side = fmt.Sprintf("edge :%d admin :%d gossip :%d", in.app, in.admin, in.gossip)
	case !in.client:
		app = fmt.Sprintf("app :%d (pid %d)", in.app, in.appProc.cmd.Process.Pid)
		side = fmt.Sprintf("inbound :%d ", in.inbound) + side
	}
	d.out.say("%-10s %-20s sidecar %s (pid %d)", in.name, app, side, in.sideProc.cmd.Process.Pid)
	return nil
}

// sleep waits for d, failing early if ctx ends or a child exits when it
// should not have.
func (d *demo) sleep(ctx context.Context, dur time.Duration) error {
	t := time.NewTimer(dur)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case p := <-d.ps.failed:
		return p.exitError()
	case <-t.C:
		return nil
	}
}

// waitFor calls cond every 50ms until it reports true, failing with what
// and cond's last error after timeout, or early if ctx ends or a child
// exits when it should not have.
func (d *demo) waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("waited %v for %s: %w", timeout, what, err)
			}
			return fmt.Errorf("waited %v for %s", timeout, what)
		}
		if err := d.sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// printer writes the demo's narration; it is safe for concurrent use.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

// line prints a line as it is.
func (p *printer) line(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

// say prints an indented line.
func (p *printer) say(format string, args ...any) { p.line("  "+format, args...) }

// at prints an indented line stamped with the time since t0.
func (p *printer) at(t0 time.Time, format string, args ...any) {
	p.line(fmt.Sprintf("  %6s  ", fmt.Sprintf("+%.1fs", time.Since(t0).Seconds()))+format, args...)
}

// notice prints what the user should take from a phase.
func (p *printer) notice(format string, args ...any) { p.line("  ▸ "+format, args...) }

// phase prints a phase's heading.
func (p *printer) phase(title string) { p.line("\n━━ %s ━━", title) }
