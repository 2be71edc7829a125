package consultest

import (
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// proxyReadyLine is what `consul connect proxy` logs once it has its
// certificate and config and starts its listeners.
const proxyReadyLine = "Proxy loaded config and ready to serve"

// Proxy is a running `consul connect proxy`, Consul's built-in mTLS proxy,
// from the same binary as the agent. Methods are safe for concurrent use.
type Proxy struct {
	cmd    *exec.Cmd
	exited chan struct{}
	output *lockedBuffer
}

// ConnectProxy starts `consul connect proxy -http-addr <agent> <args>`
// (for example "-service", "web", "-upstream", "cart:9191"), waits (up to
// 30s) until it logs that it is ready to serve, and arranges for t.Cleanup
// to stop it. Its listeners start right after that line: dial them with a
// deadline. Its output goes to the test log if the test fails.
// ConnectProxy fails the test if the proxy exits or is not ready in time.
func (a *Agent) ConnectProxy(t testing.TB, args ...string) *Proxy {
	t.Helper()
	argv := append([]string{"connect", "proxy", "-http-addr", a.Addr(), "-log-level", "debug"}, args...)
	p := &Proxy{
		cmd:    exec.Command(a.binary, argv...),
		exited: make(chan struct{}),
		output: &lockedBuffer{},
	}
	p.cmd.Dir = a.dir
	p.cmd.Stdout = p.output
	p.cmd.Stderr = p.output
	fmt.Fprintf(p.output, "==> consultest: %s %s\n", a.binary, strings.Join(argv, " "))
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("consultest: start connect proxy: %v", err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("consultest: output of connect proxy:\n%s", p.Output())
		}
	})

	deadline := time.NewTimer(readyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(p.output.String(), proxyReadyLine) {
		select {
		case <-p.exited:
			t.Fatalf("consultest: connect proxy exited before it was ready:\n%s", p.Output())
		case <-deadline.C:
			t.Fatalf("consultest: connect proxy not ready after %v:\n%s", readyTimeout, p.Output())
		case <-tick.C:
		}
	}
	return p
}

// Output returns what the proxy has written to stdout and stderr so far.
func (p *Proxy) Output() string { return p.output.String() }

// Stop stops the proxy: SIGTERM, then SIGKILL if it has not exited within
// a few seconds. Stopping a stopped proxy does nothing.
func (p *Proxy) Stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}
