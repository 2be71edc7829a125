//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Test names: the closed loops, and one open loop per rate.
const (
	testClosedH1 = "closed-h1"
	testClosedH2 = "closed-h2"
)

// testOpen names the open-loop test at rate.
func testOpen(rate float64) string { return "open-" + strconv.FormatFloat(rate, 'f', -1, 64) }

// memSampleInterval is how often memory is read during a test.
const memSampleInterval = 250 * time.Millisecond

// readyTimeout bounds the wait for a row to answer through its whole path.
const readyTimeout = 20 * time.Second

// testResult is one test of one row in one round.
type testResult struct {
	Test      string  `json:"test"`
	Generator string  `json:"generator"`
	Requests  int64   `json:"requests"` // answered 200 in the window
	Errors    int64   `json:"errors"`
	Seconds   float64 `json:"seconds"` // the measured window
	RPS       float64 `json:"rps"`
	// CPUSeconds is the proxy processes' CPU time over the window; -1 for
	// direct, which has none.
	CPUSeconds float64 `json:"cpu_seconds"`
	P50        float64 `json:"p50_ms"`
	P99        float64 `json:"p99_ms"`
	P999       float64 `json:"p999_ms"`
	LagP99     float64 `json:"send_lag_p99_ms,omitempty"` // open loop
	FirstError string  `json:"first_error,omitempty"`
	Memory     memory  `json:"memory_max"` // the largest reading during the test

	hist *hdrhistogram.Histogram // open loop, for the plots
}

// cpuPerRequest returns the proxy's CPU time per answered request in
// microseconds, and false when there is none to report.
func (t *testResult) cpuPerRequest() (float64, bool) {
	if t == nil || t.CPUSeconds < 0 || t.Requests == 0 {
		return 0, false
	}
	return t.CPUSeconds * 1e6 / float64(t.Requests), true
}

// roundResult is one row in one round.
type roundResult struct {
	Row   string                 `json:"row"`
	Round int                    `json:"round"`
	Procs int                    `json:"processes"`
	Idle  memory                 `json:"memory_idle"`
	Tests map[string]*testResult `json:"tests"`
}

// results is a whole run: what results.json holds.
type results struct {
	Started  time.Time      `json:"started"`
	Took     string         `json:"took"`
	Machine  machineInfo    `json:"machine"`
	Settings settings       `json:"settings"`
	Rows     []string       `json:"rows"`
	Rounds   []*roundResult `json:"rounds"`
}

// settings are the options as the report states them.
type settings struct {
	Rounds       int       `json:"rounds"`
	Duration     string    `json:"closed_loop_duration"`
	OpenDuration string    `json:"open_loop_duration"`
	Warmup       string    `json:"warmup"`
	Rates        []float64 `json:"rates"`
	Conns        int       `json:"conns"`
	H2Conns      int       `json:"h2_conns"`
	H1Client     string    `json:"h1_client"`
}

// harness is one run.
type harness struct {
	o   options
	b   *bench
	out io.Writer
}

// run installs what the selected rows need, runs every round and writes
// the report, the JSON and the plots to o.out. It prints progress and,
// at the end, the report to w.
func run(ctx context.Context, o options, w io.Writer) (*results, error) {
	start := time.Now()
	selected := selectRows(o.only)
	var needs []string
	for _, r := range selected {
		needs = append(needs, r.Needs...)
	}
	if o.h1Client == "wrk" {
		needs = append(needs, "wrk")
	}
	tools, err := ensureCommands(ctx, needs, o.install, w)
	if err != nil {
		return nil, err
	}
	sidemesh, err := exec.LookPath(o.sidemesh)
	if err == nil {
		sidemesh, err = filepath.Abs(sidemesh)
	}
	if err != nil {
		return nil, fmt.Errorf("sidemesh binary: %w (build it with: make build)", err)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return nil, fmt.Errorf("output folder: %w", err)
	}
	dir, err := os.MkdirTemp("", "sidemesh-bench-")
	if err != nil {
		return nil, fmt.Errorf("work folder: %w", err)
	}
	if o.keep {
		fmt.Fprintf(w, "work folder (configs, certificates, logs; kept): %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	b, err := newBench(ctx, dir, sidemesh, tools)
	if err != nil {
		return nil, err
	}
	defer b.close()
	if o.h1Client == "wrk" {
		if err := os.WriteFile(filepath.Join(dir, "wrk-done.lua"), []byte(wrkScript), 0o644); err != nil {
			return nil, fmt.Errorf("wrk script: %w", err)
		}
	}

	res := &results{Started: start, Machine: readMachine(ctx, tools, sidemesh), Settings: settings{
		Rounds: o.rounds, Duration: o.duration.String(), OpenDuration: o.openDuration.String(), Warmup: o.warmup.String(),
		Rates: o.rates, Conns: o.conns, H2Conns: o.h2Conns, H1Client: o.h1Client,
	}}
	for _, r := range selected {
		res.Rows = append(res.Rows, r.Name)
	}
	h := &harness{o: o, b: b, out: w}
	fmt.Fprintf(w, "%d rows × %d rounds; each round runs every row in turn (%s)\n", len(selected), o.rounds, strings.Join(res.Rows, ", "))
	for round := 1; round <= o.rounds; round++ {
		for _, spec := range selected {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			rr, err := h.runRow(ctx, spec, round)
			if err != nil {
				return nil, err
			}
			res.Rounds = append(res.Rounds, rr)
		}
	}
	if err := b.close(); err != nil {
		return nil, fmt.Errorf("the backend: %w", err)
	}
	res.Machine.LoadEnd = readLoad()
	res.Took = time.Since(start).Round(time.Second).String()

	rep := newReport(res, selected)
	md := rep.markdown()
	if err := os.WriteFile(filepath.Join(o.out, "results.md"), []byte(md), 0o644); err != nil {
		return nil, fmt.Errorf("write the report: %w", err)
	}
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("results.json: %w", err)
	}
	if err := os.WriteFile(filepath.Join(o.out, "results.json"), append(js, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("write results.json: %w", err)
	}
	plots, err := rep.plots(o.out)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(w, "\n%s\nwritten to %s: results.md, results.json, %s\n", md, o.out, strings.Join(plots, ", "))
	return res, nil
}

// selectRows returns the rows only matches, direct always first.
func selectRows(only *regexp.Regexp) []rowSpec {
	var out []rowSpec
	for _, r := range rows {
		if r.Name == "direct" || only == nil || only.MatchString(r.Name) {
			out = append(out, r)
		}
	}
	return out
}

// runRow starts spec's processes, measures idle memory, runs the open
// loops and then the closed loops, and stops them.
func (h *harness) runRow(ctx context.Context, spec rowSpec, round int) (*roundResult, error) {
	dir := filepath.Join(h.b.dir, fmt.Sprintf("round%d-%s", round, spec.Name))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("row %s: %w", spec.Name, err)
	}
	r := &rowRun{spec: spec, round: round, dir: dir}
	if err := spec.start(h.b, r); err != nil {
		r.stop()
		return nil, fmt.Errorf("row %s: %w", spec.Name, err)
	}
	stopped := false
	defer func() {
		if !stopped {
			r.stop()
		}
	}()
	if err := r.waitReady(ctx, readyTimeout); err != nil {
		return nil, err
	}
	roots := pids(r.procs)
	res := &roundResult{Row: spec.Name, Round: round, Tests: map[string]*testResult{}}
	if len(roots) > 0 {
		sleepCtx(ctx, h.o.idle)
		tree, err := processTree(roots)
		if err != nil {
			return nil, err
		}
		res.Procs = len(tree)
		if res.Idle, err = memoryOf(roots); err != nil {
			return nil, fmt.Errorf("row %s: idle memory: %w", spec.Name, err)
		}
	}
	line := []string{fmt.Sprintf("round %d/%d %-19s", round, h.o.rounds, spec.Name)}
	for _, rate := range h.o.rates {
		t, err := h.openTest(ctx, r, roots, rate)
		if err != nil {
			return nil, err
		}
		res.Tests[t.Test] = t
		line = append(line, fmt.Sprintf("%g/s p99 %.3f ms", rate, t.P99)+errNote(t))
	}
	for _, tg := range []target{r.h1, r.h2} {
		t, err := h.closedTest(ctx, r, roots, tg)
		if err != nil {
			return nil, err
		}
		res.Tests[t.Test] = t
		line = append(line, fmt.Sprintf("%s %.0f req/s", tg.Proto, t.RPS)+errNote(t))
	}
	if cpu, ok := res.Tests[testClosedH1].cpuPerRequest(); ok {
		line = append(line, fmt.Sprintf("%.1f µs CPU/req", cpu))
	}
	stopped = true
	if err := r.stop(); err != nil {
		return nil, err // a proxy exited by itself during the tests
	}
	fmt.Fprintln(h.out, strings.Join(line, "  "))
	return res, nil
}

// errNote returns " [N errors, first: …]" for a test with errors, "" for one without.
func errNote(t *testResult) string {
	if t.Errors == 0 {
		return ""
	}
	return fmt.Sprintf(" [%d errors, first: %s]", t.Errors, t.FirstError)
}

// meter reads the proxy's CPU time at the window's edges and samples its
// memory meanwhile.
type meter struct {
	roots      []int
	cpu0, cpu1 time.Duration
	err        error
	mu         sync.Mutex
	mem        memory
	stop       chan struct{}
	done       chan struct{}
}

// newMeter starts sampling the memory of the trees at roots.
func newMeter(roots []int) *meter {
	m := &meter{roots: roots, stop: make(chan struct{}), done: make(chan struct{})}
	if len(roots) == 0 {
		close(m.done)
		return m
	}
	go func() {
		defer close(m.done)
		t := time.NewTicker(memSampleInterval)
		defer t.Stop()
		for {
			if mem, err := memoryOf(m.roots); err == nil {
				m.mu.Lock()
				m.mem = m.mem.max(mem)
				m.mu.Unlock()
			}
			select {
			case <-m.stop:
				return
			case <-t.C:
			}
		}
	}()
	return m
}

// hooks returns the hooks that read the CPU time.
func (m *meter) hooks() hooks {
	read := func(into *time.Duration) func() {
		return func() {
			if len(m.roots) == 0 {
				return
			}
			d, err := cpuTime(m.roots)
			if err != nil && m.err == nil {
				m.err = err
			}
			*into = d
		}
	}
	return hooks{start: read(&m.cpu0), end: read(&m.cpu1)}
}

// finish stops the sampling and fills t's CPU and memory.
func (m *meter) finish(t *testResult) error {
	if len(m.roots) > 0 {
		close(m.stop)
	}
	<-m.done
	t.CPUSeconds = -1
	if len(m.roots) > 0 {
		t.CPUSeconds = (m.cpu1 - m.cpu0).Seconds()
	}
	t.Memory = m.mem
	return m.err
}

// fill copies a generator's result into t.
func (t *testResult) fill(r loadResult) {
	t.Generator, t.Requests, t.Errors, t.Seconds = r.Generator, r.Requests, r.Errors, r.Window.Seconds()
	if t.Seconds > 0 {
		t.RPS = float64(r.Requests) / t.Seconds
	}
	if r.Latency != nil && r.Latency.TotalCount() > 0 {
		t.P50, t.P99, t.P999 = usToMS(r.Latency.ValueAtQuantile(50)), usToMS(r.Latency.ValueAtQuantile(99)), usToMS(r.Latency.ValueAtQuantile(99.9))
	}
	if r.Lag != nil && r.Lag.TotalCount() > 0 {
		t.LagP99 = usToMS(r.Lag.ValueAtQuantile(99))
	}
	if r.FirstErr != nil {
		t.FirstError = truncate(r.FirstErr.Error(), 200)
	}
}

// usToMS converts microseconds to milliseconds.
func usToMS(us int64) float64 { return float64(us) / 1000 }

// openTest runs the open loop at rate against r's HTTP/1.1 target.
func (h *harness) openTest(ctx context.Context, r *rowRun, roots []int, rate float64) (*testResult, error) {
	s, err := newSender(ctx, r.h1, h.o.conns, 1)
	if err != nil {
		return nil, err
	}
	defer s.close()
	m := newMeter(roots)
	ol := &openLoop{Rate: rate, Warmup: h.o.warmup, Duration: h.o.openDuration, Workers: h.o.conns, Send: s.send, Hooks: m.hooks()}
	lr := ol.run(ctx)
	t := &testResult{Test: testOpen(rate), hist: lr.Latency}
	t.fill(lr)
	if err := m.finish(t); err != nil {
		return nil, fmt.Errorf("row %s, %s: %w", r.spec.Name, t.Test, err)
	}
	return t, ctx.Err()
}

// closedTest runs the closed loop against tg: wrk for HTTP/1.1 unless
// -h1-client go, the Go generator for h2.
func (h *harness) closedTest(ctx context.Context, r *rowRun, roots []int, tg target) (*testResult, error) {
	t := &testResult{Test: testClosedH1}
	if tg.Proto == protoH2 {
		t.Test = testClosedH2
	}
	m := newMeter(roots)
	if tg.Proto == protoH1 && h.o.h1Client == "wrk" {
		// No warm-up run: wrk takes whole seconds, and the row has just
		// served the open loops over HTTP/1.1, which warmed it.
		script := filepath.Join(h.b.dir, "wrk-done.lua")
		threads := runtime.NumCPU()
		hk := m.hooks()
		hk.onStart()
		wr, err := runWrk(ctx, h.b.tools["wrk"], tg, script, h.o.conns, threads, h.o.duration)
		hk.onEnd()
		if err != nil {
			m.finish(t)
			return nil, fmt.Errorf("row %s: %w", r.spec.Name, err)
		}
		t.Generator, t.Seconds = "wrk", wr.Duration.Seconds()
		t.Requests, t.Errors = wr.Requests-wr.Status, wr.errors()
		t.RPS = float64(t.Requests) / t.Seconds
		t.P50, t.P99, t.P999 = wr.P50.Seconds()*1e3, wr.P99.Seconds()*1e3, wr.P999.Seconds()*1e3
		if t.Errors > 0 {
			t.FirstError = fmt.Sprintf("wrk: connect %d, read %d, write %d, status %d, timeout %d", wr.Connect, wr.Read, wr.Write, wr.Status, wr.Timeout)
		}
	} else {
		groups := 1
		if tg.Proto == protoH2 {
			groups = h.o.h2Conns
		}
		s, err := newSender(ctx, tg, h.o.conns, groups)
		if err != nil {
			m.finish(t)
			return nil, err
		}
		lr := closedLoop(ctx, h.o.conns, h.o.warmup, h.o.duration, s.send, m.hooks())
		s.close()
		t.fill(lr)
	}
	if err := m.finish(t); err != nil {
		return nil, fmt.Errorf("row %s, %s: %w", r.spec.Name, t.Test, err)
	}
	return t, ctx.Err()
}

// machineInfo describes where the run ran, for the report's header.
type machineInfo struct {
	CPUs      int               `json:"cpus"`
	CPUModel  string            `json:"cpu_model"`
	Kernel    string            `json:"kernel"`
	Go        string            `json:"go"`
	Versions  map[string]string `json:"versions"`
	LoadStart string            `json:"loadavg_start"`
	LoadEnd   string            `json:"loadavg_end"`
}

// readMachine reads the machine's description and the tools' versions.
func readMachine(ctx context.Context, tools map[string]string, sidemesh string) machineInfo {
	m := machineInfo{CPUs: runtime.NumCPU(), Go: runtime.Version(), Versions: map[string]string{}, LoadStart: readLoad()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	version := func(name, exe string, args ...string) {
		out, _ := exec.CommandContext(ctx, exe, args...).CombinedOutput() // wrk -v exits 1
		first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		m.Versions[name] = strings.TrimSpace(first)
	}
	version("sidemesh", sidemesh, "version")
	for name, exe := range tools {
		switch name {
		case "nginx", "haproxy", "wrk":
			version(name, exe, "-v")
		}
	}
	return m
}

// readLoad returns /proc/loadavg's three load averages: how busy the
// machine was with others' work too.
func readLoad() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// median returns the median of xs, NaN for none.
func median(xs []float64) float64 {
	xs = slices.DeleteFunc(slices.Clone(xs), math.IsNaN)
	if len(xs) == 0 {
		return math.NaN()
	}
	slices.Sort(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}
