//go:build unix

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sidemesh/sidemesh/internal/meshtest"
)

// demoTimeout bounds a whole run of the demo in a test: building the
// example apps and every phase take about half a minute.
const demoTimeout = 3 * time.Minute

// The binaries every test runs, built once.
var (
	buildOnce            sync.Once
	buildErr             error
	buildDir             string
	sidemeshBin, demoBin string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// binaries builds sidemesh and the demo once for every test.
func binaries(t *testing.T) (sidemesh, demo string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds binaries and runs a mesh")
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sidemesh-demo-test-")
		if err != nil {
			buildErr = err
			return
		}
		buildDir = dir
		sidemeshBin, demoBin = filepath.Join(dir, "sidemesh"), filepath.Join(dir, "demo")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		for pkg, out := range map[string]string{module + "/cmd/sidemesh": sidemeshBin, module + "/examples/demo": demoBin} {
			if b, err := exec.CommandContext(ctx, "go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
				buildErr = errors.New("go build " + pkg + ": " + err.Error() + "\n" + string(b))
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return sidemeshBin, demoBin
}

// TestDemo runs the whole demo, serving for a few seconds after the
// phases, and checks what each phase shows, that it exits 0 without a
// warning, that it keeps its folder, and that it leaves nothing running.
func TestDemo(t *testing.T) {
	t.Parallel()
	sidemesh, demo := binaries(t)
	ctx, cancel := context.WithTimeout(t.Context(), demoTimeout)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "run")

	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, demo, "-sidemesh", sidemesh, "-dir", dir, "-duration", "2s", "-interval", "200ms")
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	text := out.String()
	t.Logf("demo output:\n%s", text)
	if err != nil {
		t.Fatalf("demo: %v", err)
	}

	// Each phase in order, each saying what it is about.
	last := 0
	for _, want := range []string{
		"━━ 1/7 ", "the frontend's sidecar routes catalog to catalog-1, catalog-2 (source: gossip)",
		"━━ 2/7 ",
		"the frontend app got X-Sidemesh-Peer-Identity: spiffe://mesh.local/ns/default/svc/visitor",
		"'s app got  X-Sidemesh-Peer-Identity: spiffe://mesh.local/ns/default/svc/frontend",
		"with no certificate: 400",
		"━━ 3/7 ", "killed catalog-1's app", "catalog-1's circuit breaker: open", "catalog-1 ejected until", "restarted catalog-1's app",
		"catalog-1 serves again", "saw 0 errors",
		"━━ 4/7 ", "catalog-3 joined the pool", "round robin ", "least_response_time ",
		"━━ 5/7 ", "- { from: [frontend, visitor, edge], to: catalog, paths: [/admin/], action: deny }",
		"━━ 6/7 ", `sees catalog-3 as "left"`, "routes catalog to catalog-1, catalog-2\n",
		"━━ 7/7 ", "GET /items via edge-1  200  from catalog-", "edge-2 holds the session ", "GET /items via edge-2  200  from catalog-",
		"killed edge-1 (SIGKILL)", "GET /items via edge-2  200  from catalog-", "losing an edge lost no session",
		"keeps serving", "frontend -> catalog-",
		"stopped cleanly",
	} {
		i := strings.Index(text[last:], want)
		if i < 0 {
			t.Errorf("output lacks %q after what came before", want)
			continue
		}
		last += i + len(want)
	}
	phase1, _, _ := strings.Cut(text, "━━ 2/7 ")
	for _, m := range []string{"catalog-2", "frontend", "visitor"} {
		if !strings.Contains(phase1, m+" joined, from 127.0.0.1:") {
			t.Errorf("phase 1 does not show %s join the pool", m)
		}
	}
	_, phase7, _ := strings.Cut(text, "━━ 7/7 ")
	phase7, _, _ = strings.Cut(phase7, "━━ ")
	served := regexp.MustCompile(`GET /items via edge-\d  200  from (catalog-\d)`).FindAllStringSubmatch(phase7, -1)
	if len(served) != 6 {
		t.Errorf("phase 7 shows %d answers through the edges, want 6", len(served))
	}
	for _, m := range served {
		if m[1] != served[0][1] {
			t.Errorf("phase 7: the session went to %s and %s", served[0][1], m[1])
		}
	}
	if !regexp.MustCompile(`retried [1-9]\d* of them`).MatchString(text) {
		t.Error("phase 3 shows no retry")
	}
	if !regexp.MustCompile(`GET http://catalog/items +200 \(from catalog-\d\)`).MatchString(text) {
		t.Error("phase 5 shows no allowed request")
	}
	if !regexp.MustCompile(`GET http://catalog/admin/stats +403 +X-Sidemesh-Error: denied +"[^"]*policy\.rules\[1\]`).MatchString(text) {
		t.Error("phase 5 shows no denial by the policy rule")
	}

	// Round robin gives the slow catalog-3 its third; least_response_time
	// next to nothing.
	if s := share(t, text, "round robin", "catalog-3"); s < 20 || s > 45 {
		t.Errorf("round robin gave catalog-3 %d%%, want about a third", s)
	}
	if s := share(t, text, "least_response_time", "catalog-3"); s > 10 {
		t.Errorf("least_response_time gave the slow catalog-3 %d%%, want next to nothing", s)
	}

	if strings.Contains(text, "warning:") || strings.Contains(text, "WARN") {
		t.Error("a child did not stop cleanly or logged a warning while stopping")
	}
	for _, f := range []string{"certs/ca.pem", "certs/frontend.pem", "gossip.key", "frontend-sidecar.yaml", "frontend-sidecar.log", "catalog-3.log"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() == 0 {
			t.Errorf("the demo's folder lacks %s after it exited: %v", f, err)
		}
	}
	assertGone(t, text)
}

// share returns the share, in percent, that the line of balancer (the
// first line that starts with it once trimmed) gives instance.
func share(t *testing.T, text, balancer, instance string) int {
	t.Helper()
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, balancer+" ") {
			continue
		}
		m := regexp.MustCompile(regexp.QuoteMeta(instance) + ` (\d+)% \(\d+\)`).FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("%s line %q lacks %s's share", balancer, line, instance)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	t.Fatalf("no %s line in the output", balancer)
	return 0
}

// TestDemoInterrupt sends the demo SIGINT, as Ctrl-C does, while it
// serves after the phases and in the middle of a phase, and checks that
// the whole demo exits 0 within the sidecars' drain_timeout + 1s, with no
// warning from any child, leaving nothing running.
func TestDemoInterrupt(t *testing.T) {
	t.Parallel()
	sidemesh, demo := binaries(t)
	for _, tt := range []struct {
		name  string
		after *regexp.Regexp // the line after which to interrupt
	}{
		{"serving", regexp.MustCompile(`^\s+#2 `)},
		{"mid-phase", regexp.MustCompile(`killed catalog-1's app`)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), demoTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, demo, "-sidemesh", sidemesh, "-dir", filepath.Join(t.TempDir(), "run"), "-interval", "200ms")
			cmd.Stderr = cmd.Stdout
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			cmd.WaitDelay = 5 * time.Second
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var out strings.Builder
			reached, read := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(read)
				sc := bufio.NewScanner(stdout)
				seen := false
				for sc.Scan() {
					mu.Lock()
					out.WriteString(sc.Text() + "\n")
					mu.Unlock()
					if !seen && tt.after.MatchString(sc.Text()) {
						seen = true
						close(reached)
					}
				}
			}()
			output := func() string {
				mu.Lock()
				defer mu.Unlock()
				return out.String()
			}

			select {
			case <-reached:
			case <-read:
				cmd.Wait()
				t.Fatalf("the demo ended before %q:\n%s", tt.after, output())
			case <-ctx.Done():
				t.Fatalf("no %q within %v:\n%s", tt.after, demoTimeout, output())
			}
			start := time.Now()
			if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			<-read
			err = cmd.Wait()
			took := time.Since(start)
			text := output()
			t.Logf("demo output:\n%s", text)
			t.Logf("exited %v after SIGINT", took)
			if err != nil {
				t.Errorf("demo: %v", err)
			}
			if limit := drainTimeout + time.Second; took > limit {
				t.Errorf("the demo took %v to exit after SIGINT, want at most %v (drain_timeout + 1s)", took, limit)
			}
			if strings.Contains(text, "WARN") || strings.Contains(text, "warning:") {
				t.Error("a child logged a warning while stopping, or did not stop cleanly")
			}
			if !strings.Contains(text, "interrupted") || !strings.Contains(text, "stopped cleanly") {
				t.Error("the output does not say it was interrupted and stopped cleanly")
			}
			assertGone(t, text)
		})
	}
}

// assertGone waits (bounded) until every pid the demo printed has exited
// and every loopback port it printed for them can be bound again.
func assertGone(t *testing.T, text string) {
	t.Helper()
	var pids []int
	var addrs []string
	for line := range strings.Lines(text) {
		if !strings.Contains(line, "(pid ") {
			continue
		}
		for _, m := range regexp.MustCompile(`\(pid (\d+)\)`).FindAllStringSubmatch(line, -1) {
			pid, _ := strconv.Atoi(m[1])
			pids = append(pids, pid)
		}
		for _, m := range regexp.MustCompile(`:(\d+)\b`).FindAllStringSubmatch(line, -1) {
			addrs = append(addrs, "127.0.0.1:"+m[1])
		}
	}
	if len(pids) < 7 || len(addrs) < 18 {
		t.Fatalf("found %d pids and %d addresses in the output, want at least 7 and 18", len(pids), len(addrs))
	}
	meshtest.Eventually(t, 10*time.Second, "every child to exit and free its ports", func() error {
		if left := running(pids, addrs); len(left) > 0 {
			return errors.New("still running: " + strings.Join(left, ", "))
		}
		return nil
	})
}

// running returns the pids that still exist and the addresses still bound.
func running(pids []int, addrs []string) []string {
	var left []string
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			left = append(left, "pid "+strconv.Itoa(pid))
		}
	}
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			left = append(left, a)
			continue
		}
		ln.Close()
	}
	return left
}
