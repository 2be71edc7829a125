package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// binary is the sidemesh executable built once for these tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sidemesh-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "sidemesh")
	out, err := exec.Command("go", "build", "-race", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building sidemesh: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "good.yaml", "upstreams: [{ service: a, endpoints: [{ address: 127.0.0.1:1 }] }]\n")
	bad := writeFile(t, dir, "bad.yaml", "upstreams:\n  - service: a\n    balancer: fastest\n    endpoints: [{ address: 127.0.0.1:1 }]\n")
	tests := []struct {
		args       []string
		code       int
		wantOutput string
	}{
		{nil, exitUsage, "Usage:\n  sidemesh [flags]\n  sidemesh [command]"},
		{[]string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{[]string{"validate"}, exitUsage, "sidemesh validate needs a config file: -c FILE, --config FILE or SIDEMESH_CONFIG"},
		{[]string{"validate", "-x"}, exitUsage, "unknown shorthand flag: 'x' in -x"},
		{[]string{"run", "-c", good, "extra"}, exitUsage, `sidemesh run takes no arguments, got ["extra"]`},
		{[]string{"ca"}, exitUsage, "Available Commands:\n  init"},
		{[]string{"ca", "issue", "--dir", dir}, exitUsage, "sidemesh ca issue needs --dir and --service"},
		{[]string{"validate", "-c", good}, exitOK, "good.yaml: ok"},
		{[]string{"validate", "-c", bad}, exitFailure, "bad.yaml:3:15: "},
		{[]string{"validate", "-c", filepath.Join(dir, "missing.yaml")}, exitFailure, "missing.yaml"},
		// Several files, as a shell glob gives them: each is reported.
		{[]string{"validate", good, bad}, exitFailure, "good.yaml: ok\n" + bad + ":3:15: "},
		{[]string{"validate", "-c", good, good}, exitOK, "good.yaml: ok\n" + good + ": ok"},
		{[]string{"validate", "--print", good, bad}, exitUsage, "sidemesh validate --print takes one config, got 2"},
		{[]string{"run", "-c", bad}, exitFailure, `unknown balancer "fastest"`},
		{[]string{"version"}, exitOK, "sidemesh "},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, binary, tt.args...).CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tt.code {
				t.Errorf("exit code = %d, want %d; output:\n%s", code, tt.code, out)
			}
			if !strings.Contains(string(out), tt.wantOutput) {
				t.Errorf("output does not contain %q:\n%s", tt.wantOutput, out)
			}
		})
	}
}

// TestSIGTERMDrainsInFlightRequests sends SIGTERM while requests are
// waiting on the backend: every one of them must complete with 200, and
// the process must exit 0.
func TestSIGTERMDrainsInFlightRequests(t *testing.T) {
	release := make(chan struct{})
	var inflight atomic.Int32
	backend := startBackend(t, func(w http.ResponseWriter, r *http.Request) {
		inflight.Add(1)
		<-release
		io.WriteString(w, "done")
	})
	out, in := meshtest.FreeAddr(t), meshtest.FreeAddr(t)
	cfg := fmt.Sprintf(`
service: { name: app, port: %d }
inbound: { listen: %s }
outbound: { listen: %s }
upstreams: [{ service: app, endpoints: [{ address: %s }] }]
drain_timeout: 20s
`, backend.port, in, out, in)
	p := startSidemesh(t, cfg)

	const n = 20
	results := make(chan error, n)
	client := newClient()
	for range n {
		go func() { results <- get(client, out, "app", "done") }()
	}
	meshtest.WaitFor(t, 10*time.Second, "all requests reach the backend", func() bool { return inflight.Load() == n })

	p.signal(t, syscall.SIGTERM)
	// New connections are refused once draining starts.
	meshtest.WaitFor(t, 10*time.Second, "outbound listener closes", func() bool {
		c, err := net.DialTimeout("tcp", out, 100*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	close(release)
	for range n {
		if err := <-results; err != nil {
			t.Errorf("in-flight request failed during drain: %v", err)
		}
	}
	if code := p.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0\n%s", code, p.log())
	}
}

// TestSIGHUPReload reloads a valid config while a long request is in
// flight (it completes, and the new routes take effect), then an invalid
// one (rejected with its position; the running config keeps serving).
func TestSIGHUPReload(t *testing.T) {
	release := make(chan struct{})
	var slowStarted atomic.Bool
	one := startBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			slowStarted.Store(true)
			<-release
		}
		io.WriteString(w, "one")
	})
	two := startBackend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "two") })
	out := meshtest.FreeAddr(t)
	cfgA := fmt.Sprintf(`
outbound: { listen: %s }
upstreams: [{ service: cat, endpoints: [{ address: 127.0.0.1:%d }] }]
`, out, one.port)
	// B moves cat to backend two, adds an upstream, and changes the
	// outbound listener's settings, which puts a new server behind the
	// socket while the old one drains the slow request.
	cfgB := fmt.Sprintf(`
outbound: { listen: %s, idle_timeout: 30s }
upstreams:
  - { service: cat, endpoints: [{ address: 127.0.0.1:%d }] }
  - { service: dog, endpoints: [{ address: 127.0.0.1:%d }] }
`, out, two.port, one.port)
	p := startSidemesh(t, cfgA)
	client := newClient()
	if err := get(client, out, "cat", "one"); err != nil {
		t.Fatal(err)
	}

	slow := make(chan error, 1)
	go func() { slow <- getPath(client, out, "cat", "/slow", "one") }()
	meshtest.WaitFor(t, 10*time.Second, "slow request reaches backend", slowStarted.Load)

	p.rewrite(t, cfgB)
	p.signal(t, syscall.SIGHUP)
	meshtest.WaitFor(t, 10*time.Second, "reload takes effect", func() bool {
		return get(newClient(), out, "cat", "two") == nil && get(newClient(), out, "dog", "one") == nil
	})
	close(release)
	if err := <-slow; err != nil {
		t.Fatalf("request in flight across the reload failed: %v", err)
	}

	p.rewrite(t, cfgB+"bogus_key: 1\n")
	p.signal(t, syscall.SIGHUP)
	meshtest.WaitFor(t, 10*time.Second, "invalid reload is logged", func() bool {
		return strings.Contains(p.log(), "reload rejected") && strings.Contains(p.log(), `unknown key \"bogus_key\"`)
	})
	if !strings.Contains(p.log(), "sidemesh.yaml:6:1") {
		t.Errorf("rejection does not name file:line:col:\n%s", p.log())
	}
	for range 20 {
		if err := get(client, out, "cat", "two"); err != nil {
			t.Fatalf("after invalid reload: %v", err)
		}
	}

	// A file caught empty (truncated before it is rewritten) is refused
	// too: applied, it would drop every upstream.
	p.rewrite(t, "")
	p.signal(t, syscall.SIGHUP)
	meshtest.WaitFor(t, 10*time.Second, "empty reload is logged", func() bool {
		return strings.Contains(p.log(), "the file is empty")
	})
	for range 20 {
		if err := get(client, out, "dog", "one"); err != nil {
			t.Fatalf("after an empty reload: %v", err)
		}
	}

	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t, 20*time.Second); code != 0 {
		t.Fatalf("exit code = %d\n%s", code, p.log())
	}
}

// --- helpers ---

type backend struct{ port int }

func startBackend(t *testing.T, h http.HandlerFunc) backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return backend{port: ln.Addr().(*net.TCPAddr).Port}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// process is a running `sidemesh run`. Its stderr goes to a file, not a
// pipe: a process it starts (a handover) inherits stderr, and a pipe
// would keep Wait from returning until that one exits too.
type process struct {
	cmd     *exec.Cmd
	config  string
	logFile string
	done    chan struct{}
}

func (p *process) log() string {
	b, _ := os.ReadFile(p.logFile)
	return string(b)
}

// startSidemesh runs sidemesh with cfg and waits until it logs that it runs.
func startSidemesh(t *testing.T, cfg string) *process {
	t.Helper()
	return startSidemeshArgs(t, cfg)
}

// startSidemeshArgs is startSidemesh with more arguments to run.
func startSidemeshArgs(t *testing.T, cfg string, args ...string) *process {
	t.Helper()
	dir := t.TempDir()
	p := &process{config: writeFile(t, dir, "sidemesh.yaml", cfg), logFile: filepath.Join(dir, "stderr.log"), done: make(chan struct{})}
	logf, err := os.Create(p.logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close() // the process has its own descriptor
	p.cmd = exec.Command(binary, append([]string{"run", "-c", p.config}, args...)...)
	p.cmd.Stderr = logf
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("sidemesh log:\n%s", p.log())
		}
	})
	meshtest.WaitFor(t, 20*time.Second, "sidemesh starts", func() bool {
		select {
		case <-p.done:
			t.Fatalf("sidemesh exited early:\n%s", p.log())
		default:
		}
		return strings.Contains(p.log(), "sidemesh running")
	})
	return p
}

func (p *process) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

func (p *process) rewrite(t *testing.T, cfg string) {
	t.Helper()
	if err := os.WriteFile(p.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (p *process) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(d):
		t.Fatalf("sidemesh did not exit within %v", d)
		return -1
	}
}

func newClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
}

func get(c *http.Client, addr, host, want string) error {
	return getPath(c, addr, host, "/", want)
}

func getPath(c *http.Client, addr, host, path, want string) error {
	req, err := http.NewRequest("GET", "http://"+addr+path, nil)
	if err != nil {
		return err
	}
	req.Host = host
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 || string(body) != want {
		return fmt.Errorf("GET %s (Host %s): %d %q, want 200 %q", path, host, resp.StatusCode, body, want)
	}
	return nil
}

// TestHelpEverywhere: --help on every command and subcommand prints its
// usage on stdout and exits 0; --version prints the version line; the
// config can come from --config or SIDEMESH_CONFIG; completion scripts
// exist for bash, zsh and fish.
func TestHelpEverywhere(t *testing.T) {
	dir := t.TempDir()
	good := writeFile(t, dir, "good.yaml", "upstreams: [{ service: a, endpoints: [{ address: 127.0.0.1:1 }] }]\n")
	for _, tc := range []struct {
		args []string
		env  string
		want string
	}{
		{args: []string{"--help"}, want: "Available Commands:"},
		{args: []string{"run", "--help"}, want: "sidemesh run -c FILE [flags]"},
		{args: []string{"validate", "--help"}, want: "--print"},
		{args: []string{"ca", "--help"}, want: "issue"},
		{args: []string{"ca", "init", "--help"}, want: "--trust-domain"},
		{args: []string{"ca", "issue", "--help"}, want: "--owner"},
		{args: []string{"keygen", "--help"}, want: "gossip encryption key"},
		{args: []string{"version", "--help"}, want: "Print the version"},
		{args: []string{"completion", "bash"}, want: "bash completion"},
		{args: []string{"completion", "zsh"}, want: "#compdef sidemesh"},
		{args: []string{"completion", "fish"}, want: "complete -c sidemesh"},
		{args: []string{"--version"}, want: "sidemesh "},
		{args: []string{"validate", "--config", good}, want: "good.yaml: ok"},
		{args: []string{"validate"}, env: good, want: "good.yaml: ok"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			cmd := exec.Command(binary, tc.args...)
			cmd.Env = append(os.Environ(), "SIDEMESH_CONFIG="+tc.env)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("%v\nstderr: %s", err, stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.want) {
				t.Errorf("stdout lacks %q:\n%s", tc.want, stdout.String())
			}
		})
	}
	out, _ := exec.Command(binary, "version").Output()
	if v := string(out); !strings.Contains(v, "commit ") || !strings.Contains(v, runtime.Version()) || !strings.Contains(v, runtime.GOOS+"/"+runtime.GOARCH) {
		t.Errorf("version = %q, want version, commit, Go version and platform", v)
	}
}
