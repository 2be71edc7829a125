// Command demo runs a small mesh on loopback and shows requests crossing
// it: two catalog instances and a frontend, each app beside its own
// sidemesh sidecar. It is what `make demo` runs:
//
//	go build -o bin/sidemesh ./cmd/sidemesh && go run ./examples/demo -sidemesh bin/sidemesh
//
// Every -interval it sends GET / to the frontend sidecar's inbound
// listener, as a mesh peer would, and prints which catalog instance
// answered. The frontend app calls http://catalog/items through its
// sidecar's outbound listener, which balances round robin over the two
// catalog sidecars. The sidecars find each other over an encrypted gossip
// pool (a key from `sidemesh keygen`): no server, no endpoint lists. On Ctrl-C, or after -duration, it stops every process
// it started and removes its temporary directory.
//
// Run it from inside the sidemesh module: it builds the example services
// with `go build`.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/template"
	"time"
)

const (
	// module is the import path the example services are built from.
	module = "github.com/sidemesh/sidemesh"
	// readyTimeout bounds the wait for every listener to accept connections.
	readyTimeout = 30 * time.Second
	// stopTimeout bounds the wait for children after SIGTERM; the rest are killed.
	stopTimeout = 10 * time.Second
	// requestTimeout bounds each request the demo sends.
	requestTimeout = 5 * time.Second
	// unknownService is the Host of the request that shows a 502.
	unknownService = "inventory"
)

// options are the demo's command-line flags.
type options struct {
	sidemesh string        // path to the sidemesh binary
	duration time.Duration // how long to send traffic; 0 means until interrupted
	interval time.Duration // time between requests
}

func main() {
	var o options
	flag.StringVar(&o.sidemesh, "sidemesh", "bin/sidemesh", "path to the sidemesh `binary`")
	flag.DurationVar(&o.duration, "duration", 0, "stop after sending traffic this long; 0 runs until Ctrl-C")
	flag.DurationVar(&o.interval, "interval", 500*time.Millisecond, "time between requests")
	flag.Parse()
	if o.interval <= 0 || o.duration < 0 {
		fmt.Fprintln(os.Stderr, "demo: -interval must be positive and -duration not negative")
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

// run builds and starts the mesh, sends traffic until ctx is done or
// o.duration has passed, and always stops every child and removes the
// temporary directory before returning. Being interrupted is not an error.
func run(ctx context.Context, o options, out io.Writer) error {
	sidemesh, err := exec.LookPath(o.sidemesh)
	if err == nil {
		sidemesh, err = filepath.Abs(sidemesh)
	}
	if err != nil {
		return fmt.Errorf("sidemesh binary: %w (build it with: go build -o bin/sidemesh ./cmd/sidemesh)", err)
	}
	dir, err := os.MkdirTemp("", "sidemesh-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	fmt.Fprintln(out, "building the example services...")
	bin, err := buildServices(ctx, dir)
	if err != nil {
		return interrupted(ctx, err)
	}
	mesh, err := newMesh()
	if err != nil {
		return err
	}
	// The sidecars find each other over an encrypted gossip pool: no
	// server, no static endpoint lists.
	key, err := exec.CommandContext(ctx, sidemesh, "keygen").Output()
	if err != nil {
		return interrupted(ctx, fmt.Errorf("sidemesh keygen: %w", err))
	}
	keyFile := filepath.Join(dir, "gossip.key")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		return err
	}
	for _, in := range mesh {
		in.keyFile = keyFile
	}

	exited := make(chan *proc, 2*len(mesh))
	var procs []*proc
	defer func() { stopAll(procs, out) }()
	fmt.Fprintf(out, "mesh on loopback; configs and logs in %s\n", dir)
	for _, in := range mesh {
		app, side, err := in.start(dir, bin, sidemesh, exited)
		procs = append(procs, app, side)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "  %-10s app %s (pid %d, %s)  sidecar inbound %s outbound %s (pid %d, %s)\n",
			in.name, addr(in.app), app.cmd.Process.Pid, filepath.Base(app.log),
			addr(in.inbound), addr(in.outbound), side.cmd.Process.Pid, filepath.Base(side.log))
	}

	start := time.Now()
	if err := waitReady(ctx, mesh.addrs(), exited); err != nil {
		return interrupted(ctx, err)
	}
	fmt.Fprintf(out, "all %d listeners up in %v\n", len(mesh.addrs()), time.Since(start).Round(time.Millisecond))

	client := &http.Client{Timeout: requestTimeout, Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	fe := mesh[len(mesh)-1]
	fmt.Fprintf(out, "dashboard of the frontend's sidecar: http://%s/ (metrics at /metrics)\n", addr(fe.admin))
	showUnknown(ctx, client, addr(fe.outbound), out)
	fmt.Fprintf(out, "GET / to the frontend sidecar inbound %s every %v (Ctrl-C to stop)\n", addr(fe.inbound), o.interval)
	return sendTraffic(ctx, o, client, "http://"+addr(fe.inbound)+"/", exited, out)
}

// interrupted returns nil when ctx was cancelled, since the user asked to
// stop, and err otherwise.
func interrupted(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// addr returns the loopback address of port.
func addr(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

// buildServices builds the catalog and frontend commands into dir/bin and
// returns that directory. Built binaries, unlike `go run`, are the very
// processes the demo signals.
func buildServices(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "bin")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin+string(filepath.Separator),
		module+"/examples/catalog", module+"/examples/frontend")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build of the example services (run the demo from inside the sidemesh module): %w\n%s", err, out)
	}
	return bin, nil
}

// instance is one app of the demo mesh and its sidecar, all on loopback.
type instance struct {
	name     string // instance name, used for log and config files: "catalog-1"
	service  string // mesh service name: "catalog"
	app      int    // port the app listens on
	inbound  int    // port of the sidecar's inbound listener
	outbound int    // port of the sidecar's outbound listener
	gossip   int    // port of the sidecar's gossip member
	admin    int    // port of the sidecar's admin API and dashboard
	seed     int    // gossip port to join (catalog-1's); 0 for catalog-1 itself
	calls    string // the upstream service the app calls, if any
	keyFile  string // the pool's encryption key
}

// mesh is every instance of the demo, the frontend last.
type mesh []*instance

// newMesh lays out catalog-1, catalog-2 and the frontend on free ports.
func newMesh() (mesh, error) {
	p, err := freePorts(15)
	if err != nil {
		return nil, err
	}
	return mesh{
		{name: "catalog-1", service: "catalog", app: p[0], inbound: p[1], outbound: p[2], gossip: p[3], admin: p[12]},
		{name: "catalog-2", service: "catalog", app: p[4], inbound: p[5], outbound: p[6], gossip: p[7], admin: p[13], seed: p[3]},
		{name: "frontend", service: "frontend", app: p[8], inbound: p[9], outbound: p[10], gossip: p[11], admin: p[14], seed: p[3], calls: "catalog"},
	}, nil
}

// addrs returns every listener of the mesh.
func (m mesh) addrs() []string {
	var a []string
	for _, in := range m {
		a = append(a, addr(in.app), addr(in.inbound), addr(in.outbound), addr(in.gossip), addr(in.admin))
	}
	return a
}

// freePorts returns n distinct loopback ports that were free a moment ago.
// All n listeners stay open until every port is chosen, so none repeats.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick a free port: %w", err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// sidecarConfig is the template of a sidecar's config file.
var sidecarConfig = template.Must(template.New("sidecar").Parse(`# {{.Name}}'s sidecar, written by the sidemesh demo
service: { name: {{.Service}}, address: 127.0.0.1, port: {{.App}}, protocol: http }
inbound: { listen: 127.0.0.1:{{.Inbound}} }
outbound: { listen: 127.0.0.1:{{.Outbound}} }
admin: { listen: 127.0.0.1:{{.Admin}} }   # dashboard at /, Prometheus metrics at /metrics
drain_timeout: 2s
discovery:
  gossip:
    bind: 127.0.0.1:{{.Gossip}}
    join: [{{if .Seed}}127.0.0.1:{{.Seed}}{{end}}]
    key_file: {{.KeyFile}}
    profile: local
{{- if .Calls}}
upstreams:
  - service: {{.Calls}}        # endpoints come from the gossip pool
    balancer: round_robin
    timeout: 5s
{{- end}}
`))

// templateData returns what sidecarConfig needs to write in's sidecar config.
func (in *instance) templateData() map[string]any {
	return map[string]any{
		"Name": in.name, "Service": in.service, "App": in.app,
		"Inbound": in.inbound, "Outbound": in.outbound,
		"Gossip": in.gossip, "Admin": in.admin, "Seed": in.seed, "Calls": in.calls, "KeyFile": in.keyFile,
	}
}

// start writes the sidecar's config to dir and starts the app from bin and
// its sidecar. Either returned proc may be non-nil along with an error;
// the caller stops those.
func (in *instance) start(dir, bin, sidemesh string, exited chan<- *proc) (app, side *proc, err error) {
	var args []string
	switch in.service {
	case "catalog":
		args = []string{"-listen", addr(in.app), "-instance", in.name}
	default:
		args = []string{"-listen", addr(in.app), "-outbound", addr(in.outbound), "-name", in.name}
	}
	app, err = startProc(in.name, filepath.Join(dir, in.name+".log"), exited, filepath.Join(bin, in.service), args...)
	if err != nil {
		return nil, nil, err
	}

	var cfg strings.Builder
	if err := sidecarConfig.Execute(&cfg, in.templateData()); err != nil {
		return app, nil, err
	}
	path := filepath.Join(dir, in.name+"-sidecar.yaml")
	if err := os.WriteFile(path, []byte(cfg.String()), 0o644); err != nil {
		return app, nil, err
	}
	side, err = startProc(in.name+"-sidecar", filepath.Join(dir, in.name+"-sidecar.log"), exited, sidemesh, "run", "-c", path)
	return app, side, err
}

// proc is one child process of the demo.
type proc struct {
	name string
	log  string // the file that gets its stdout and stderr
	cmd  *exec.Cmd
	done chan struct{} // closed once it has exited and been reaped
	err  error         // cmd.Wait's result; read it only after done is closed
}

// startProc starts exe with args, its output going to the file logPath, in
// its own process group and set to die with the demo. Once it exits, it is
// sent on exited, which must have room for every proc.
func startProc(name, logPath string, exited chan<- *proc, exe string, args ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own copy
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
		exited <- p
	}()
	return p, nil
}

// exitError describes a process that exited when it should not have,
// with the end of its log.
func (p *proc) exitError() error {
	status := "exit status 0"
	if p.err != nil {
		status = p.err.Error()
	}
	return fmt.Errorf("%s exited early (%s); the end of its log:\n%s", p.name, status, tail(p.log, 20))
}

// tail returns the last n lines of the file at path, indented.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "    (" + err.Error() + ")"
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return "    (empty)"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	lines = lines[max(0, len(lines)-n):]
	return "    " + strings.Join(lines, "\n    ")
}

// waitReady polls until every address accepts a connection, failing when
// a child exits first, when readyTimeout passes or when ctx is done.
func waitReady(ctx context.Context, addrs []string, exited <-chan *proc) error {
	deadline := time.NewTimer(readyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	pending := slices.Clone(addrs)
	for {
		pending = slices.DeleteFunc(pending, func(a string) bool {
			c, err := net.DialTimeout("tcp", a, 250*time.Millisecond)
			if err != nil {
				return false
			}
			c.Close()
			return true
		})
		if len(pending) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case p := <-exited:
			return p.exitError()
		case <-deadline.C:
			return fmt.Errorf("not accepting connections after %v: %s", readyTimeout, strings.Join(pending, ", "))
		case <-tick.C:
		}
	}
}

// showUnknown sends one request for a service nobody configured through
// the frontend sidecar's outbound listener, as the frontend app would, and
// prints the sidecar's answer.
func showUnknown(ctx context.Context, client *http.Client, outbound string, out io.Writer) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+outbound+"/", nil)
	if err != nil {
		fmt.Fprintf(out, "unknown service %q: %v\n", unknownService, err)
		return
	}
	req.Host = unknownService
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintf(out, "unknown service %q via outbound %s: %v\n", unknownService, outbound, err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	fmt.Fprintf(out, "unknown service %q via outbound %s: %d %s\n",
		unknownService, outbound, resp.StatusCode, strings.TrimSpace(string(body)))
}

// page is what the frontend answers to GET /.
type page struct {
	Frontend       string `json:"frontend"`
	RequestID      string `json:"request_id"`
	UpstreamStatus int    `json:"upstream_status"`
	Catalog        struct {
		Instance  string   `json:"instance"`
		Items     []string `json:"items"`
		RequestID string   `json:"request_id"`
	} `json:"catalog"`
}

// sendTraffic sends GET url at once and then every o.interval, printing a
// line per request and a tally every 10, until ctx is done, o.duration
// has passed or a child exits.
func sendTraffic(ctx context.Context, o options, client *http.Client, url string, exited <-chan *proc, out io.Writer) error {
	var stop <-chan time.Time
	if o.duration > 0 {
		t := time.NewTimer(o.duration)
		defer t.Stop()
		stop = t.C
	}
	tick := time.NewTicker(o.interval)
	defer tick.Stop()
	tally := map[string]int{}
	for n := 1; ; n++ {
		line, instance := probe(ctx, client, url)
		if ctx.Err() != nil {
			return nil
		}
		fmt.Fprintf(out, "#%-3d %s\n", n, line)
		tally[instance]++
		if n%10 == 0 {
			fmt.Fprintf(out, "     after %d requests: %s\n", n, formatTally(tally))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-stop:
			if n%10 != 0 {
				fmt.Fprintf(out, "     after %d requests: %s\n", n, formatTally(tally))
			}
			return nil
		case p := <-exited:
			return p.exitError()
		case <-tick.C:
		}
	}
}

// probe sends one GET url and describes the answer in one line. It also
// returns the catalog instance that answered, or "failed".
func probe(ctx context.Context, client *http.Client, url string) (line, instance string) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "error  " + err.Error(), "failed"
	}
	resp, err := client.Do(req)
	if err != nil {
		return "error  " + err.Error(), "failed"
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	elapsed := fmt.Sprintf("%.1fms", float64(time.Since(start).Microseconds())/1000)
	if err != nil {
		return fmt.Sprintf("%d  error reading the answer: %v  %s", resp.StatusCode, err, elapsed), "failed"
	}
	var p page
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &p) != nil {
		return fmt.Sprintf("%d  %s  %s", resp.StatusCode, oneLine(body), elapsed), "failed"
	}
	id := short(p.Catalog.RequestID)
	if p.Catalog.RequestID != p.RequestID {
		id += fmt.Sprintf(" (frontend got %q)", short(p.RequestID))
	}
	return fmt.Sprintf("%d  %s -> %s  items=%d  req=%s  %s",
		resp.StatusCode, p.Frontend, p.Catalog.Instance, len(p.Catalog.Items), id, elapsed), p.Catalog.Instance
}

// short abbreviates a request ID to its first 8 characters.
func short(id string) string {
	switch {
	case id == "":
		return "(none)"
	case len(id) > 8:
		return id[:8] + "…"
	}
	return id
}

// oneLine returns the start of b on a single line.
func oneLine(b []byte) string {
	s := strings.Join(strings.Fields(string(b)), " ")
	if len(s) > 120 {
		s = s[:120] + "…"
	}
	return s
}

// formatTally lists how many requests each instance served, by name.
func formatTally(tally map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(tally)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, tally[k]))
	}
	return strings.Join(parts, "  ")
}

// stopAll sends SIGTERM to every running proc, waits up to stopTimeout for
// them all to exit, kills any that remain, and reports how each one ended.
// A child that did not exit 0 after SIGTERM is reported with "warning:"
// and the end of its log; one that had already exited is only named.
func stopAll(procs []*proc, out io.Writer) {
	procs = slices.DeleteFunc(procs, func(p *proc) bool {
		if p == nil {
			return true
		}
		select {
		case <-p.done:
			fmt.Fprintf(out, "already exited: %s (%v)\n", p.name, p.err)
			return true
		default:
			return false
		}
	})
	if len(procs) == 0 {
		return
	}
	fmt.Fprintf(out, "stopping %d processes...\n", len(procs))
	for _, p := range procs {
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			p.cmd.Process.Kill()
		}
	}
	kill := time.After(stopTimeout)
	var killed bool
	for _, p := range procs {
		select {
		case <-p.done:
		case <-kill:
			killed = true
			for _, q := range procs {
				q.cmd.Process.Kill() // an error means it has already exited
			}
			<-p.done
		}
	}
	var clean []string
	for _, p := range procs {
		if p.err == nil {
			clean = append(clean, p.name)
			continue
		}
		fmt.Fprintf(out, "warning: %s did not exit cleanly: %v; end of its log:\n%s\n", p.name, p.err, tail(p.log, 10))
	}
	if killed {
		fmt.Fprintf(out, "warning: killed what was still running after %v\n", stopTimeout)
	}
	fmt.Fprintf(out, "stopped cleanly: %s\n", strings.Join(clean, ", "))
}
