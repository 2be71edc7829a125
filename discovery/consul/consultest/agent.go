// Package consultest runs a real Consul agent in dev mode for tests.
//
// The consul binary is the one `make consul` builds from the pinned tools
// module into .cache/bin/consul at the root of the sidemesh module; the
// SIDEMESH_CONSUL environment variable overrides the path. A missing binary
// fails the test: these tests must run in CI, never skip.
package consultest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// BinaryEnv names the environment variable that overrides the path of the
// consul binary.
const BinaryEnv = "SIDEMESH_CONSUL"

const (
	modulePath   = "github.com/sidemesh/sidemesh"
	binaryPath   = ".cache/bin/consul" // relative to the module root
	readyTimeout = 30 * time.Second
	stopTimeout  = 5 * time.Second
	startTries   = 3 // a free port may be taken between choosing it and binding it
)

var nodeSeq atomic.Int64

// Agent is a running `consul agent -dev` bound to loopback ports of its
// own. Its state is in memory: Restart brings back an empty agent on the
// same ports, like a real agent that lost its state. Methods are safe for
// concurrent use.
type Agent struct {
	t      testing.TB
	binary string
	node   string
	args   []string
	dir    string // working directory of the process
	http   int

	client *api.Client
	tr     *http.Transport

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has exited
	output  *lockedBuffer // stdout and stderr of every run
	stopped bool
}

// Start runs a dev agent on free loopback ports, waits (up to 30s) until
// its HTTP API answers and it has elected itself leader and registered its
// node, and arranges for t.Cleanup to stop it. The agent's output goes to
// the test log if the test fails. Start fails the test (t.Fatalf) when the
// binary is missing or the agent does not come up.
func Start(t testing.TB) *Agent {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatalf("consultest: %v", err)
	}
	a := &Agent{
		t:      t,
		binary: bin,
		node:   fmt.Sprintf("sidemesh-test-%d-%d", os.Getpid(), nodeSeq.Add(1)),
		dir:    t.TempDir(),
		output: &lockedBuffer{},
	}
	t.Cleanup(func() {
		a.Stop()
		if a.tr != nil {
			a.tr.CloseIdleConnections()
		}
		if t.Failed() {
			t.Logf("consultest: output of agent %s:\n%s", a.node, a.output.String())
		}
	})

	var lastErr error
	for range startTries {
		ports, err := freePorts(4)
		if err != nil {
			t.Fatalf("consultest: %v", err)
		}
		a.http = ports[0]
		a.args = []string{
			"agent", "-dev",
			"-bind", "127.0.0.1", "-client", "127.0.0.1",
			"-node", a.node,
			"-log-level", "warn",
			"-hcl", fmt.Sprintf("ports { http = %d, https = -1, dns = -1, grpc = -1, grpc_tls = -1, serf_lan = %d, serf_wan = %d, server = %d }",
				ports[0], ports[1], ports[2], ports[3]),
			"-hcl", "disable_update_check = true",
		}
		if lastErr = a.start(); lastErr == nil {
			break
		}
		a.Stop()
		a.mu.Lock()
		a.stopped = false
		a.mu.Unlock()
	}
	if lastErr != nil {
		t.Fatalf("consultest: start agent: %v\n%s", lastErr, a.output.String())
	}

	a.tr = &http.Transport{Proxy: nil, DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext, MaxIdleConnsPerHost: 16}
	a.client, err = api.NewClient(&api.Config{
		Address:    a.Addr(),
		Scheme:     "http",
		HttpClient: &http.Client{Transport: a.tr},
	})
	if err != nil {
		t.Fatalf("consultest: client: %v", err)
	}
	return a
}

// Binary returns the path of the consul binary: $SIDEMESH_CONSUL if set,
// else .cache/bin/consul under the root of the sidemesh module, found by
// walking up from the working directory.
func Binary() (string, error) {
	if p := os.Getenv(BinaryEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", BinaryEnv, p, err)
		}
		return p, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, binaryPath)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no consul binary at %s: run `make consul` first (or set %s)", p, BinaryEnv)
	}
	return p, nil
}

// moduleRoot walks up from the working directory to the directory whose
// go.mod declares the sidemesh module.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if f, err := os.Open(filepath.Join(dir, "go.mod")); err == nil {
			mod := modulePathOf(f)
			f.Close()
			if mod == modulePath {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of module %s above the working directory: run `make consul` first and run the tests inside the module", modulePath)
		}
		dir = parent
	}
}

func modulePathOf(r io.Reader) string {
	s := bufio.NewScanner(r)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(s.Text()), "module"); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// Addr returns the "127.0.0.1:port" address of the agent's HTTP API.
func (a *Agent) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(a.http)) }

// URL returns the base URL of the agent's HTTP API.
func (a *Agent) URL() string { return "http://" + a.Addr() }

// Node returns the agent's node name.
func (a *Agent) Node() string { return a.node }

// Client returns a client of the agent, shared by all callers. Its address
// and transport are the agent's whatever CONSUL_HTTP_ADDR says (api.NewClient
// still picks up CONSUL_HTTP_TOKEN or _TOKEN_FILE, which a dev agent without
// ACLs ignores); its idle connections are closed when the agent stops.
func (a *Agent) Client() *api.Client { return a.client }

// Stop stops the agent: SIGTERM, then SIGKILL if it has not exited within
// a few seconds. Stopping a stopped agent does nothing.
func (a *Agent) Stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil || a.stopped {
		return
	}
	a.stopped = true
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
	case <-time.After(stopTimeout):
		_ = a.cmd.Process.Kill()
		<-a.exited
	}
	if a.tr != nil {
		a.tr.CloseIdleConnections()
	}
}

// Restart stops the agent if it runs and starts it again on the same
// ports. The new agent has none of the old one's state (dev agents keep it
// in memory), as after a crash of an agent without a data dir. Restart
// waits until the agent is ready, and fails the test if it is not.
func (a *Agent) Restart() {
	a.t.Helper()
	a.Stop()
	a.mu.Lock()
	a.stopped = false
	a.mu.Unlock()
	var err error
	// The ports were just released; another process may grab one, which
	// this cannot fix, but a socket in TIME_WAIT clears up after a retry.
	for range startTries {
		if err = a.start(); err == nil {
			return
		}
		a.Stop()
		a.mu.Lock()
		a.stopped = false
		a.mu.Unlock()
		time.Sleep(500 * time.Millisecond)
	}
	a.t.Fatalf("consultest: restart agent: %v\n%s", err, a.output.String())
}

// start runs the process and waits until it is ready.
func (a *Agent) start() error {
	cmd := exec.Command(a.binary, a.args...)
	cmd.Dir = a.dir
	cmd.Stdout = a.output
	cmd.Stderr = a.output
	fmt.Fprintf(a.output, "==> consultest: %s %s\n", a.binary, strings.Join(a.args, " "))
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	a.mu.Lock()
	a.cmd, a.exited = cmd, exited
	a.mu.Unlock()
	return a.waitReady(exited)
}

// waitReady polls the agent until it has a leader and its node is in the
// catalog, it exits, or readyTimeout passes.
func (a *Agent) waitReady(exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	var last error
	for {
		if last = a.ready(ctx, hc); last == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("agent exited before it was ready (last probe: %v)", last)
		case <-ctx.Done():
			return fmt.Errorf("agent not ready after %v: %v", readyTimeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (a *Agent) ready(ctx context.Context, hc *http.Client) error {
	var leader string
	if err := getJSON(ctx, hc, a.URL()+"/v1/status/leader", &leader); err != nil {
		return err
	}
	if leader == "" {
		return errors.New("no leader yet")
	}
	var node *struct{ Node struct{ Node string } }
	if err := getJSON(ctx, hc, a.URL()+"/v1/catalog/node/"+a.node, &node); err != nil {
		return err
	}
	if node == nil || node.Node.Node != a.node {
		return errors.New("node not in the catalog yet")
	}
	return nil
}

func getJSON(ctx context.Context, hc *http.Client, url string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	return json.Unmarshal(body, out)
}

// freePorts returns n distinct loopback ports that are free for TCP and
// UDP (serf uses both) at the time of the call.
func freePorts(n int) ([]int, error) {
	var ports []int
	var held []io.Closer
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for tries := 0; len(ports) < n; tries++ {
		if tries > 100 {
			return nil, errors.New("cannot find free loopback ports")
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			l.Close()
			continue
		}
		// Hold both until all are chosen so that the ports are distinct.
		held = append(held, l, u)
		ports = append(ports, port)
	}
	return ports, nil
}

// lockedBuffer is an io.Writer safe for the concurrent writes of a
// process's stdout and stderr copiers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
