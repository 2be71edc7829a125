//go:build unix

package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDemo builds sidemesh and the demo, runs the demo for a few seconds
// and checks that traffic reached both catalog instances, that an unknown
// service got a 502, that it exited 0 and that it left nothing running.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries and runs a mesh")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	dir := t.TempDir()
	sidemesh, demo := filepath.Join(dir, "sidemesh"), filepath.Join(dir, "demo")
	goBuild(ctx, t, sidemesh, module+"/cmd/sidemesh")
	goBuild(ctx, t, demo, module+"/examples/demo")

	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, demo, "-sidemesh", sidemesh, "-duration", "4s", "-interval", "200ms")
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		t.Fatalf("demo: %v", err)
	}

	text := out.String()
	for _, want := range []string{"frontend -> catalog-1 ", "frontend -> catalog-2 "} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if !regexp.MustCompile(`(?m)^unknown service "inventory" via outbound \S+: 502 \S`).MatchString(text) {
		t.Error("output lacks the 502 for the unknown service")
	}
	if strings.Contains(text, "warning:") {
		t.Error("a child did not stop cleanly")
	}
	assertGone(ctx, t, text)
}

// goBuild builds pkg into the file out.
func goBuild(ctx context.Context, t *testing.T, out, pkg string) {
	t.Helper()
	if b, err := exec.CommandContext(ctx, "go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
}

// assertGone polls until every pid the demo printed has exited and every
// loopback port it printed can be bound again.
func assertGone(ctx context.Context, t *testing.T, text string) {
	t.Helper()
	var pids []int
	for _, m := range regexp.MustCompile(`\(pid (\d+),`).FindAllStringSubmatch(text, -1) {
		pid, _ := strconv.Atoi(m[1])
		pids = append(pids, pid)
	}
	addrs := regexp.MustCompile(`127\.0\.0\.1:\d+`).FindAllString(text, -1)
	if len(pids) != 6 || len(addrs) < 9 {
		t.Fatalf("found %d pids and %d addresses in the output, want 6 and at least 9", len(pids), len(addrs))
	}

	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		left := running(pids, addrs)
		if len(left) == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("still running after the demo exited: %s", strings.Join(left, ", "))
		case <-tick.C:
		}
	}
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
