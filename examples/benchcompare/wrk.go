//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// wrkScript is wrk's Lua hook for the end of a run: it prints what the
// harness reads, p99.9 included, which wrk's own --latency output lacks.
// It defines only done(), which wrk calls once after the run: without a
// request() or response() function wrk keeps its fast path, in which no
// Lua runs per request.
const wrkScript = `-- written by sidemesh's bench-compare; wrk calls done() once, after the run
done = function(summary, latency, requests)
  io.write(string.format("BENCH requests %d\n", summary.requests))
  io.write(string.format("BENCH duration_us %d\n", summary.duration))
  io.write(string.format("BENCH errors %d %d %d %d %d\n", summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout))
  for _, p in ipairs({50, 99, 99.9}) do
    io.write(string.format("BENCH latency_us %g %d\n", p, latency:percentile(p)))
  end
end
`

// wrkResult is what parseWrk reads of a wrk run.
type wrkResult struct {
	Requests int64         // every response, errors included
	Duration time.Duration // of the run
	// Errors: connect, read, write, non-2xx/3xx status, timeout.
	Connect, Read, Write, Status, Timeout int64
	// Latency percentiles: 50, 99, 99.9.
	P50, P99, P999 time.Duration
}

// errors returns the count of failed requests.
func (w wrkResult) errors() int64 { return w.Connect + w.Read + w.Write + w.Status + w.Timeout }

// parseWrk reads the BENCH lines wrkScript prints; wrk's own report
// around them is ignored.
func parseWrk(out []byte) (wrkResult, error) {
	var r wrkResult
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "BENCH" {
			continue
		}
		nums := make([]float64, len(f)-2)
		for i, s := range f[2:] {
			v, err := strconv.ParseFloat(s, 64)
			if err != nil || math.IsNaN(v) {
				return r, fmt.Errorf("wrk output: %q: %q is not a number", sc.Text(), s)
			}
			nums[i] = v
		}
		want := map[string]int{"requests": 1, "duration_us": 1, "errors": 5, "latency_us": 2}[f[1]]
		if want == 0 || len(nums) != want {
			return r, fmt.Errorf("wrk output: unexpected line %q", sc.Text())
		}
		switch f[1] {
		case "requests":
			r.Requests = int64(nums[0])
		case "duration_us":
			r.Duration = time.Duration(nums[0]) * time.Microsecond
		case "errors":
			r.Connect, r.Read, r.Write, r.Status, r.Timeout = int64(nums[0]), int64(nums[1]), int64(nums[2]), int64(nums[3]), int64(nums[4])
		case "latency_us":
			d := time.Duration(nums[1]) * time.Microsecond
			switch nums[0] {
			case 50:
				r.P50 = d
			case 99:
				r.P99 = d
			case 99.9:
				r.P999 = d
			default:
				return r, fmt.Errorf("wrk output: unexpected percentile in %q", sc.Text())
			}
			seen[fmt.Sprint("p", nums[0])] = true
			continue
		}
		seen[f[1]] = true
	}
	for _, k := range []string{"requests", "duration_us", "errors", "p50", "p99", "p99.9"} {
		if !seen[k] {
			return r, fmt.Errorf("wrk output: no %s line (was it run with the harness's script?)", k)
		}
	}
	if r.Duration <= 0 {
		return r, fmt.Errorf("wrk output: duration %v", r.Duration)
	}
	return r, nil
}

// wrkArgs returns wrk's command line for a run of d against t with conns
// connections over threads threads. wrk takes whole seconds.
func wrkArgs(t target, script string, conns, threads int, d time.Duration) []string {
	secs := max(1, int(math.Ceil(d.Seconds())))
	args := []string{"-t", strconv.Itoa(min(threads, conns)), "-c", strconv.Itoa(conns), "-d", strconv.Itoa(secs) + "s",
		"--timeout", "5s", "-s", script}
	if t.Host != "" {
		args = append(args, "-H", "Host: "+t.Host)
	}
	for k, vs := range t.Header {
		for _, v := range vs {
			args = append(args, "-H", k+": "+v)
		}
	}
	return append(args, t.URL)
}

// runWrk runs wrk against t (HTTP/1.1 keep-alive; https without
// checking the certificate, as wrk does).
func runWrk(ctx context.Context, wrk string, t target, script string, conns, threads int, d time.Duration) (wrkResult, error) {
	cmd := exec.CommandContext(ctx, wrk, wrkArgs(t, script, conns, threads, d)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk against %s: %w\n%s", t.URL, err, out)
	}
	r, err := parseWrk(out)
	if err != nil {
		return r, fmt.Errorf("wrk against %s: %w\n%s", t.URL, err, out)
	}
	return r, nil
}
