//go:build linux

package main

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// quickTimeout bounds the harness's quick run in TestQuickRun: four rows
// of one round of half-second tests take about 15 s (more under the race
// detector, which also slows the backend and Go proxy, re-executions of
// the test binary).
const quickTimeout = 60 * time.Second

// TestMain runs the test binary as the backend or the Go proxy when the
// harness re-executes it (see roleEnv), as the harness's own binary does.
func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(runRole(role, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// buildSidemesh builds the sidemesh binary into a temporary folder, as
// the demo's test does (same flags, so the build cache serves both).
func buildSidemesh(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sidemesh")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/sidemesh/sidemesh/cmd/sidemesh")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build of sidemesh: %v\n%s", err, out)
	}
	return bin
}

// TestQuickRun runs the harness in -quick mode over the rows that need
// nothing from Debian (direct, the Go ReverseProxy, a sidemesh sidecar,
// two sidecars with mutual TLS), with its Go generator for the HTTP/1.1
// closed loop instead of wrk, and checks that the report and the plots
// are written with those rows and sane figures. nginx, HAProxy and wrk
// are left out by -only and -h1-client, not skipped when missing: the
// test runs the same everywhere.
func TestQuickRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds sidemesh and runs proxies")
	}
	sidemesh := buildSidemesh(t)
	o := defaultOptions()
	o.quick()
	o.sidemesh, o.out, o.h1Client, o.install = sidemesh, t.TempDir(), "go", false
	o.only = regexp.MustCompile(`^(go-reverseproxy|sidemesh|sidemesh-pair-mtls)$`)
	ctx, cancel := context.WithTimeout(t.Context(), quickTimeout)
	defer cancel()
	var log bytes.Buffer
	start := time.Now()
	res, err := run(ctx, o, &log)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, log.String())
	}
	t.Logf("quick run took %v", time.Since(start).Round(time.Second))

	wantRows := []string{"direct", "go-reverseproxy", "sidemesh", "sidemesh-pair-mtls"}
	if strings.Join(res.Rows, ",") != strings.Join(wantRows, ",") {
		t.Errorf("rows %v, want %v", res.Rows, wantRows)
	}
	if len(res.Rounds) != len(wantRows) {
		t.Fatalf("%d row results, want %d (one round)", len(res.Rounds), len(wantRows))
	}
	wantTests := []string{testClosedH1, testClosedH2, testOpen(1000), testOpen(5000)}
	for _, rr := range res.Rounds {
		proxy := rr.Row != "direct"
		if proxy {
			if want := map[string]int{"sidemesh-pair-mtls": 2}[rr.Row]; rr.Procs != max(want, 1) {
				t.Errorf("%s: %d processes measured, want %d", rr.Row, rr.Procs, max(want, 1))
			}
			if rr.Idle.RSS <= 1e6 || rr.Idle.RSS > 1e9 {
				t.Errorf("%s: idle RSS %d bytes", rr.Row, rr.Idle.RSS)
			}
		}
		for _, name := range wantTests {
			tr := rr.Tests[name]
			if tr == nil {
				t.Errorf("%s: no %s", rr.Row, name)
				continue
			}
			if tr.Requests == 0 || tr.Errors != 0 {
				t.Errorf("%s %s: %d requests, %d errors (%s); want some and none", rr.Row, name, tr.Requests, tr.Errors, tr.FirstError)
			}
			if tr.P50 <= 0 || tr.P99 < tr.P50 || tr.P999 < tr.P99 || tr.P999 > 10_000 {
				t.Errorf("%s %s: p50 %v, p99 %v, p99.9 %v ms", rr.Row, name, tr.P50, tr.P99, tr.P999)
			}
			if proxy != (tr.CPUSeconds >= 0) || tr.CPUSeconds > 10 {
				t.Errorf("%s %s: CPU %v s", rr.Row, name, tr.CPUSeconds)
			}
			if proxy && tr.Memory.RSS <= 0 {
				t.Errorf("%s %s: no memory reading under load", rr.Row, name)
			}
		}
	}

	md, err := os.ReadFile(filepath.Join(o.out, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Targets", "## Headline: ratios to nginx", "| sidemesh-pair-mtls |", "| go-reverseproxy |",
		"two sidecars with mTLS at 1,000 req/s: added latency p50", "## Open loop, 5,000 requests/s"} {
		if !bytes.Contains(md, []byte(want)) {
			t.Errorf("results.md lacks %q", want)
		}
	}
	if !strings.Contains(log.String(), string(md)) {
		t.Error("the report was not printed")
	}
	for _, name := range []string{"latency-open-1000.png", "latency-open-5000.png", "cpu-per-request.png", "throughput.png"} {
		f, err := os.Open(filepath.Join(o.out, name))
		if err != nil {
			t.Error(err)
			continue
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Errorf("%s: %v", name, err)
		} else if b := img.Bounds(); b.Dx() < 300 || b.Dy() < 200 {
			t.Errorf("%s: %v pixels", name, b)
		}
	}
	if _, err := os.Stat(filepath.Join(o.out, "results.json")); err != nil {
		t.Error(err)
	}
}
