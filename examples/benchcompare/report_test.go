//go:build linux

package main

import (
	"math"
	"slices"
	"strings"
	"testing"
)

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{math.NaN(), 5, 1}, 3},
		{[]float64{7}, 7},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if got := median(nil); !math.IsNaN(got) {
		t.Errorf("median(nil) = %v, want NaN", got)
	}
}

func TestFormat(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{fmtCount(1234567.4), "1,234,567"},
		{fmtCount(999), "999"},
		{fmtCount(math.NaN()), "–"},
		{fmtRatio(0.8123), "0.81×"},
		{fmtRatio(math.Inf(1)), "–"},
		{fmtRate(5000), "5,000"},
		{fmtRate(2.5), "2.5"},
		{joinRates([]float64{1000, 5000, 10000}), "1,000, 5,000 and 10,000"},
		{fmtSigned(0.1234), "+0.123"},
		{fmtMB(20e6), "20.0"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

// fakeResults returns two rounds of the rows the targets read, with
// sidemesh at the given multiples of nginx.
func fakeResults(rpsRatio, cpuRatio float64, pairAddedP99 float64, rss int64) *results {
	res := &results{Settings: settings{Rounds: 2, Rates: []float64{1000}, H1Client: "wrk", Conns: 32, H2Conns: 4}}
	add := func(row string, round int, rps, cpuPerReqUS, p50, p99 float64, mem int64) {
		rr := &roundResult{Row: row, Round: round, Procs: 1, Idle: memory{RSS: mem, PSS: mem, MaxRSS: mem}, Tests: map[string]*testResult{}}
		for _, test := range []string{testClosedH1, testClosedH2, testOpen(1000)} {
			n := int64(rps * 10)
			cpu := -1.0
			if row != "direct" {
				cpu = cpuPerReqUS * float64(n) / 1e6
			}
			rr.Tests[test] = &testResult{Test: test, Requests: n, Seconds: 10, RPS: rps, CPUSeconds: cpu, P50: p50, P99: p99, P999: p99 * 2,
				Memory: memory{RSS: mem, PSS: mem, MaxRSS: mem}}
		}
		res.Rounds = append(res.Rounds, rr)
	}
	for round := 1; round <= 2; round++ {
		// Round 2 is a slower machine: everything at half speed. Ratios
		// within a round do not change.
		k := float64(round)
		add("direct", round, 30000/k, 0, 0.5*k, 1*k, 0)
		add("nginx", round, 20000/k, 30*k, 0.6*k, 1.2*k, 10e6)
		add("sidemesh", round, 20000*rpsRatio/k, 30*cpuRatio*k, 0.7*k, 1.5*k, rss)
		add("nginx-pair-mtls", round, 10000/k, 60*k, 0.7*k, 1.4*k, 20e6)
		add("sidemesh-pair-mtls", round, 8000/k, 60*cpuRatio*k, 0.5*k+0.2, 1*k+pairAddedP99, rss)
	}
	return res
}

func rowsNamed(names ...string) []rowSpec {
	var out []rowSpec
	for _, n := range names {
		r, _ := rowByName(n)
		out = append(out, r)
	}
	return out
}

func TestReportTargets(t *testing.T) {
	all := rowsNamed("direct", "nginx", "sidemesh", "nginx-pair-mtls", "sidemesh-pair-mtls")
	md := newReport(fakeResults(0.9, 1.2, 0.5, 15e6), all).markdown()
	for _, want := range []string{
		"| one hop (sidemesh vs nginx), HTTP/1.1 closed loop: req/s | 0.90× | ≥ 0.8× | met |",
		"| one hop (sidemesh vs nginx), HTTP/1.1 closed loop: CPU/request | 1.20× | ≤ 1.5× | met |",
		"| two sidecars with mTLS at 1,000 req/s: added latency p50 | 0.200 ms | ≤ 0.25 ms | met |",
		"| two sidecars with mTLS at 1,000 req/s: added latency p99 | 0.500 ms | ≤ 1.00 ms | met |",
		"| two sidecars with mTLS at 1,000 req/s: CPU/request vs the nginx pair | 1.20× | ≤ 1.5× | met |",
		"| sidemesh RSS, idle (largest sidemesh process of any sidemesh row) | 15.0 MB (sidemesh) | ≤ 20 MB | met |",
		"7 of 7 targets met.",
		"| sidemesh | 13,500 | 0.90× | 54.0 | 1.20× |", // medians of 18,000 and 9,000 req/s, of 36 and 72 µs
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}

	md = newReport(fakeResults(0.5, 2, 3, 25e6), all).markdown()
	for _, want := range []string{
		"| one hop (sidemesh vs nginx), HTTP/1.1 closed loop: req/s | 0.50× | ≥ 0.8× | **not met** |",
		"| two sidecars with mTLS at 1,000 req/s: added latency p99 | 3.000 ms | ≤ 1.00 ms | **not met** |",
		"| sidemesh RSS at 1,000 req/s (largest process, largest reading) | 25.0 MB (sidemesh) | ≤ 30 MB | met |",
		"2 of 7 targets met.",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}

	// Direct slower than the pair: the added latency is negative, which
	// says the machine was busy, not that the target was met.
	md = newReport(fakeResults(0.9, 1.2, -2, 15e6), all).markdown()
	if !strings.Contains(md, "| two sidecars with mTLS at 1,000 req/s: added latency p99 | -2.000 ms | ≤ 1.00 ms | unreliable: ") {
		t.Errorf("a negative added p99 is not flagged unreliable:\n%s", md)
	}

	// Without the nginx rows, the ratios are not measured rather than
	// wrong.
	res := fakeResults(0.9, 1.2, 0.5, 15e6)
	res.Rounds = slices.DeleteFunc(res.Rounds, func(rr *roundResult) bool { return strings.HasPrefix(rr.Row, "nginx") })
	md = newReport(res, rowsNamed("direct", "sidemesh", "sidemesh-pair-mtls")).markdown()
	if !strings.Contains(md, "| one hop (sidemesh vs nginx), HTTP/1.1 closed loop: req/s | – | ≥ 0.8× | not measured") {
		t.Errorf("without nginx, the req/s target is not 'not measured':\n%s", md)
	}
}
