package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// TestHandoverUnderLoad: SIGUSR2 starts a new sidemesh process on the
// same sockets; the old one drains and exits once the new one is ready.
// Clients keep sending, on kept-alive and fresh connections, GETs and
// POSTs: not one request fails, and afterwards the new process (named in
// the PID file) serves alone.
func TestHandoverUnderLoad(t *testing.T) {
	backend := startBackend(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "ok %s", b)
	})
	out, admin := meshtest.FreeAddr(t), meshtest.FreeAddr(t)
	pidFile := filepath.Join(t.TempDir(), "sidemesh.pid")
	p := startSidemeshArgs(t, fmt.Sprintf(`
outbound: { listen: %s }
admin: { listen: %s }
upstreams: [{ service: app, endpoints: [{ address: 127.0.0.1:%d }] }]
drain_timeout: 5s
`, out, admin, backend.port), "--pid-file", pidFile)
	oldPID := p.cmd.Process.Pid
	if got := readPID(t, pidFile); got != oldPID {
		t.Fatalf("PID file says %d, want %d", got, oldPID)
	}

	var sent, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var stopOnce sync.Once
	var wg sync.WaitGroup
	t.Cleanup(func() { // a failed test must not leave the clients running
		stopOnce.Do(func() { close(stop) })
		wg.Wait()
	})
	for w := range 4 {
		wg.Go(func() {
			keep := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
			fresh := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			defer keep.CloseIdleConnections()
			for i := 0; i < 5000; i++ { // bounded; stop ends it sooner
				select {
				case <-stop:
					return
				default:
				}
				c := keep
				if (w+i)%3 == 0 {
					c = fresh
				}
				body := fmt.Sprintf("%d-%d", w, i)
				req, _ := http.NewRequest("POST", "http://"+out+"/", strings.NewReader(body))
				req.Host = "app"
				if i%2 == 0 {
					req, _ = http.NewRequest("GET", "http://"+out+"/", nil)
					req.Host, body = "app", ""
				}
				sent.Add(1)
				resp, err := c.Do(req)
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 || string(b) != "ok "+body {
						err = fmt.Errorf("%d %q", resp.StatusCode, b)
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Errorf("%s fresh=%v at %v: %w", req.Method, c == fresh, time.Now().Format("15:04:05.000"), err))
				}
			}
		})
	}
	meshtest.WaitFor(t, 10*time.Second, "load before the handover", func() bool { return sent.Load() > 200 })
	begin := time.Now()
	p.signal(t, syscall.SIGUSR2)
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("the old process exited %d\n%s", code, p.log())
	}
	handedOver := time.Since(begin)
	newPID := readPID(t, pidFile)
	if newPID == oldPID {
		t.Fatalf("the PID file still names the old process")
	}
	t.Cleanup(func() { syscall.Kill(newPID, syscall.SIGKILL) })
	atHandover := sent.Load()
	meshtest.WaitFor(t, 10*time.Second, "load after the handover", func() bool { return sent.Load() > atHandover+200 })
	stopOnce.Do(func() { close(stop) })
	wg.Wait()
	t.Logf("handover in %v: %d requests sent, %d failed", handedOver.Round(time.Millisecond), sent.Load(), failed.Load())
	if n := failed.Load(); n != 0 {
		t.Errorf("%d requests failed across the handover; first: %v", n, firstErr.Load())
	}
	if err := get(newClient(), out, "app", "ok "); err != nil {
		t.Errorf("the new process: %v", err)
	}
	if !strings.Contains(p.log(), "handover: the new process serves") {
		t.Errorf("the old process did not log the handover:\n%s", p.log())
	}

	// The new process stops like any other.
	syscall.Kill(newPID, syscall.SIGTERM)
	meshtest.WaitFor(t, 15*time.Second, "the new process to exit", func() bool {
		return syscall.Kill(newPID, 0) != nil
	})
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	var pid int
	meshtest.Eventually(t, 10*time.Second, "a PID in "+path, func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err
	})
	return pid
}
