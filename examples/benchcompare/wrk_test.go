//go:build linux

package main

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// wrkOutput is what wrk 4.1 prints with the harness's script.
const wrkOutput = `Running 10s test @ http://127.0.0.1:38123/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.30ms    1.10ms  30.50ms   91.20%
    Req/Sec    12.40k     1.10k   14.90k    70.00%
  246912 requests in 10.00s, 287.50MB read
  Non-2xx or 3xx responses: 3
Requests/sec:  24688.31
Transfer/sec:     28.75MB
BENCH requests 246912
BENCH duration_us 10001234
BENCH errors 0 1 0 3 2
BENCH latency_us 50 1006
BENCH latency_us 99 4889
BENCH latency_us 99.9 10115
`

func TestParseWrk(t *testing.T) {
	r, err := parseWrk([]byte(wrkOutput))
	if err != nil {
		t.Fatal(err)
	}
	want := wrkResult{Requests: 246912, Duration: 10001234 * time.Microsecond, Read: 1, Status: 3, Timeout: 2,
		P50: 1006 * time.Microsecond, P99: 4889 * time.Microsecond, P999: 10115 * time.Microsecond}
	if r != want {
		t.Errorf("parseWrk = %+v, want %+v", r, want)
	}
	if r.errors() != 6 {
		t.Errorf("errors() = %d, want 6", r.errors())
	}

	for name, out := range map[string]string{
		"without the script":    "Running 10s test @ http://x/\nRequests/sec: 1\n",
		"no p99.9":              strings.Replace(wrkOutput, "BENCH latency_us 99.9 10115\n", "", 1),
		"a garbled line":        strings.Replace(wrkOutput, "BENCH requests 246912", "BENCH requests lots", 1),
		"an unexpected line":    wrkOutput + "BENCH surprise 1\n",
		"an unknown percentile": wrkOutput + "BENCH latency_us 75 1200\n",
	} {
		if _, err := parseWrk([]byte(out)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestWrkArgs(t *testing.T) {
	tg := target{URL: "https://127.0.0.1:1/", Host: "edge", Header: http.Header{"Authorization": {"Bearer x"}}}
	got := wrkArgs(tg, "/tmp/s.lua", 32, 2, 1500*time.Millisecond)
	want := []string{"-t", "2", "-c", "32", "-d", "2s", "--timeout", "5s", "-s", "/tmp/s.lua",
		"-H", "Host: edge", "-H", "Authorization: Bearer x", "https://127.0.0.1:1/"}
	if !slices.Equal(got, want) {
		t.Errorf("wrkArgs = %q,\nwant %q", got, want)
	}
	if got := wrkArgs(target{URL: "http://x/"}, "s", 1, 2, 0); got[1] != "1" || got[5] != "1s" {
		t.Errorf("one connection, no duration: %q; want one thread and wrk's shortest run, 1s", got)
	}
}
