//go:build linux

package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// The targets the issue set (see the report's Targets section).
const (
	targetRPSRatio     = 0.8  // one hop: req/s ≥ 0.8× nginx
	targetCPURatio     = 1.5  // one hop: CPU/request ≤ 1.5× nginx
	targetPairP50      = 0.25 // two sidecars at 1,000/s: added p50 ≤ 0.25 ms
	targetPairP99      = 1.0  // added p99 ≤ 1 ms
	targetPairCPURatio = 1.5  // CPU/request ≤ 1.5× the nginx pair
	targetRSSIdle      = 20e6 // bytes
	targetRSSLoaded    = 30e6 // bytes, at 1,000 req/s
	targetRate         = 1000 // the rate of the pair and memory targets
)

// report computes the tables of a run: medians over rounds, and ratios
// and differences taken within each round first (rows of one round ran
// minutes apart at most, under the same background load), then their
// median.
type report struct {
	res  *results
	rows []rowSpec
	// by row, then round: the round's result.
	by map[string]map[int]*roundResult
}

// newReport indexes res.
func newReport(res *results, rows []rowSpec) *report {
	rp := &report{res: res, rows: rows, by: map[string]map[int]*roundResult{}}
	for _, rr := range res.Rounds {
		if rp.by[rr.Row] == nil {
			rp.by[rr.Row] = map[int]*roundResult{}
		}
		rp.by[rr.Row][rr.Round] = rr
	}
	return rp
}

// metric reads one figure of a test; false when it has none.
type metric func(*testResult) (float64, bool)

// The metrics of the tables.
var (
	mRPS = func(t *testResult) (float64, bool) { return t.RPS, t.Requests > 0 }
	mCPU = func(t *testResult) (float64, bool) { return t.cpuPerRequest() }
	mP50 = func(t *testResult) (float64, bool) { return t.P50, t.Requests > 0 }
	mP99 = func(t *testResult) (float64, bool) { return t.P99, t.Requests > 0 }
	m999 = func(t *testResult) (float64, bool) { return t.P999, t.Requests > 0 }
	mLag = func(t *testResult) (float64, bool) { return t.LagP99, t.Requests > 0 }
)

// value returns f of row's test in round, NaN when missing.
func (rp *report) value(row, test string, round int, f metric) float64 {
	rr := rp.by[row][round]
	if rr == nil || rr.Tests[test] == nil {
		return math.NaN()
	}
	v, ok := f(rr.Tests[test])
	if !ok {
		return math.NaN()
	}
	return v
}

// perRound returns g(round) for every round, and their median.
func (rp *report) perRound(g func(round int) float64) float64 {
	var xs []float64
	for round := 1; round <= rp.res.Settings.Rounds; round++ {
		xs = append(xs, g(round))
	}
	return median(xs)
}

// med returns the median over rounds of f of row's test.
func (rp *report) med(row, test string, f metric) float64 {
	return rp.perRound(func(round int) float64 { return rp.value(row, test, round, f) })
}

// ratio returns the median over rounds of row's f divided by ref's f in
// the same round.
func (rp *report) ratio(row, ref, test string, f metric) float64 {
	if ref == "" {
		return math.NaN()
	}
	return rp.perRound(func(round int) float64 {
		return rp.value(row, test, round, f) / rp.value(ref, test, round, f)
	})
}

// added returns the median over rounds of row's f minus direct's f in
// the same round: the latency the row adds.
func (rp *report) added(row, test string, f metric) float64 {
	return rp.perRound(func(round int) float64 {
		return rp.value(row, test, round, f) - rp.value("direct", test, round, f)
	})
}

// errors returns the errors of row's test summed over rounds.
func (rp *report) errors(row, test string) int64 {
	var n int64
	for _, rr := range rp.by[row] {
		if t := rr.Tests[test]; t != nil {
			n += t.Errors
		}
	}
	return n
}

// memMed returns the median over rounds of f of row's memory.
func (rp *report) memMed(row string, f func(*roundResult) (int64, bool)) float64 {
	return rp.perRound(func(round int) float64 {
		rr := rp.by[row][round]
		if rr == nil || rr.Procs == 0 {
			return math.NaN()
		}
		v, ok := f(rr)
		if !ok {
			return math.NaN()
		}
		return float64(v)
	})
}

// memAt returns a reader of the largest memory during the test.
func memAt(test string, f func(memory) int64) func(*roundResult) (int64, bool) {
	return func(rr *roundResult) (int64, bool) {
		t := rr.Tests[test]
		if t == nil {
			return 0, false
		}
		return f(t.Memory), true
	}
}

// memIdle returns a reader of the idle memory.
func memIdle(f func(memory) int64) func(*roundResult) (int64, bool) {
	return func(rr *roundResult) (int64, bool) { return f(rr.Idle), true }
}

// memPeak returns a reader of the largest memory over every test.
func memPeak(f func(memory) int64) func(*roundResult) (int64, bool) {
	return func(rr *roundResult) (int64, bool) {
		var m memory
		for _, t := range rr.Tests {
			m = m.max(t.Memory)
		}
		return f(m), true
	}
}

func rssOf(m memory) int64    { return m.RSS }
func fileOf(m memory) int64   { return m.RSSFile }
func pssOf(m memory) int64    { return m.PSS }
func maxRSSOf(m memory) int64 { return m.MaxRSS }

// memRate returns the open-loop rate memory under load is read at: 1,000
// requests/s if it ran, else the lowest rate.
func (rp *report) memRate() (float64, bool) {
	rates := rp.res.Settings.Rates
	if len(rates) == 0 {
		return 0, false
	}
	low := rates[0]
	for _, r := range rates {
		if r == targetRate {
			return r, true
		}
		low = min(low, r)
	}
	return low, true
}

// markdown renders the report.
func (rp *report) markdown() string {
	var b strings.Builder
	res, s, m := rp.res, rp.res.Settings, rp.res.Machine
	fmt.Fprintf(&b, "# sidemesh bench-compare\n\n")
	fmt.Fprintf(&b, "Run %s, took %s, on %d CPUs (%s), Linux %s; load average %s at the start, %s at the end.\n",
		res.Started.Format("2006-01-02 15:04 MST"), res.Took, m.CPUs, orDash(m.CPUModel), orDash(m.Kernel), orDash(m.LoadStart), orDash(m.LoadEnd))
	var vs []string
	for _, k := range []string{"sidemesh", "nginx", "haproxy", "wrk"} {
		if v := m.Versions[k]; v != "" {
			vs = append(vs, v)
		}
	}
	fmt.Fprintf(&b, "Versions: %s; Go %s (the Go rows and the generators).\n\n", strings.Join(vs, "; "), m.Go)
	fmt.Fprintf(&b, "%d round(s); in each, every row is started, measured and stopped in turn, so that the rows of a round share "+
		"the machine's background load. Figures are medians over the rounds; ratios (×) and added latency are computed within "+
		"each round, then their median is shown. Absolute figures depend on the machine and on whatever else runs on it: read "+
		"the ratios.\n\n", s.Rounds)
	b.WriteString("How it measures (the choices that keep the numbers honest):\n\n")
	h1gen := "wrk (C) with 2 threads: a leaner client than a Go one, it leaves the proxies more of a small machine's CPUs; " +
		"a Lua done() hook prints its percentiles (p99.9 included) once at the end, and no Lua runs per request"
	if s.H1Client == "go" {
		h1gen = "the harness's Go generator (net/http), one connection per worker"
	}
	fmt.Fprintf(&b, "- One backend process serves 1 KiB responses (HTTP/1.1 and h2c); every proxy speaks HTTP/1.1 with keep-alive to it. "+
		"The backend and the load generators are separate from the proxies and their CPU is never counted.\n")
	h1warm := s.Warmup + " warm-up"
	if s.H1Client == "wrk" {
		h1warm = "no warm-up of its own (wrk runs whole seconds; the row has just served the open loops over HTTP/1.1)"
	}
	fmt.Fprintf(&b, "- Closed loop, HTTP/1.1 keep-alive: %s; %d connections, %s, %s measured.\n", h1gen, s.Conns, h1warm, s.Duration)
	fmt.Fprintf(&b, "- Closed loop, h2 (h2c, or h2 by ALPN on the TLS rows): the Go generator, %d streams in flight over %d connections, "+
		"%s warm-up, %s measured. nginx and HAProxy speak HTTP/1.1 to the backend here too.\n", s.Conns, s.H2Conns, s.Warmup, s.Duration)
	fmt.Fprintf(&b, "- Open loop at %s requests/s: the Go generator over %d HTTP/1.1 connections sends request i at start + i/rate "+
		"whatever the answers do, and measures each latency from the time the request was due, not from when it could be sent "+
		"(no coordinated omission: a stall is charged to every request it delays), into an HDR histogram "+
		"(github.com/HdrHistogram/hdrhistogram-go); %s warm-up, %s measured. \"Added\" is the row's percentile minus direct's "+
		"in the same round. \"Send lag\" is how late requests left (the generator's own lateness plus waiting for a free connection).\n",
		joinRates(s.Rates), s.Conns, s.Warmup, s.OpenDuration)
	b.WriteString("- CPU per request: utime + stime of every process of the row (nginx's master and workers, both sidecars of a " +
		"pair) from /proc/<pid>/stat, over the measured window, divided by the requests answered 200 in it. The unit is 10 ms " +
		"of CPU, so short runs are coarse.\n")
	b.WriteString("- Memory: VmRSS from /proc/<pid>/status summed over the row's processes (pages nginx's master and workers " +
		"share count in each), and PSS from smaps_rollup (shared pages divided among them: what the group costs). Idle: after " +
		"the row answered its first requests and rested; under load: the largest reading (every 250 ms) during the test.\n\n")

	rp.headline(&b)
	rp.targets(&b)
	rp.closedTable(&b, testClosedH1, "Closed loop, HTTP/1.1 keep-alive")
	rp.closedTable(&b, testClosedH2, "Closed loop, h2")
	for _, rate := range s.Rates {
		rp.openTable(&b, rate)
	}
	rp.memoryTable(&b)
	b.WriteString("## Rows\n\n| row | shape | × compares with | what runs |\n|---|---|---|---|\n")
	for _, r := range rp.rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.Name, r.Shape, orDash(r.Ref), r.What)
	}
	b.WriteString("\nPlots: latency-open-<rate>.png (the latency distribution of each row, open loop, all rounds merged), " +
		"cpu-per-request.png, throughput.png.\n")
	return b.String()
}

// headline writes the ratios to nginx.
func (rp *report) headline(b *strings.Builder) {
	rates := rp.res.Settings.Rates
	b.WriteString("## Headline: ratios to nginx\n\n")
	b.WriteString("Each row divided by the nginx row of its shape (one hop: nginx; TLS termination: nginx-tls; two hops with " +
		"mutual TLS: nginx-pair-mtls). Throughput above 1× is better, CPU below 1× is better.\n\n")
	b.WriteString("| row | vs | req/s h1 | CPU/req h1 | req/s h2 | CPU/req h2 |")
	for _, r := range rates {
		fmt.Fprintf(b, " CPU/req @%s/s |", fmtRate(r))
	}
	b.WriteString("\n|---|---|---:|---:|---:|---:|" + strings.Repeat("---:|", len(rates)) + "\n")
	for _, r := range rp.rows {
		if r.Ref == "" {
			continue
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s |", r.Name, r.Ref,
			fmtRatio(rp.ratio(r.Name, r.Ref, testClosedH1, mRPS)), fmtRatio(rp.ratio(r.Name, r.Ref, testClosedH1, mCPU)),
			fmtRatio(rp.ratio(r.Name, r.Ref, testClosedH2, mRPS)), fmtRatio(rp.ratio(r.Name, r.Ref, testClosedH2, mCPU)))
		for _, rate := range rates {
			fmt.Fprintf(b, " %s |", fmtRatio(rp.ratio(r.Name, r.Ref, testOpen(rate), mCPU)))
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}

// targetLine is one line of the Targets section.
type targetLine struct {
	what, measured, limit string
	met                   bool
	measuredOK            bool
	// unreliable, when set, says why the figure cannot be judged; the
	// target then counts as not met.
	unreliable string
}

// targets writes whether each target was met in this run.
func (rp *report) targets(b *strings.Builder) {
	var ts []targetLine
	ratioTarget := func(what, row, ref, test string, f metric, limit float64, atLeast bool) {
		v := rp.ratio(row, ref, test, f)
		t := targetLine{what: what, limit: fmt.Sprintf("%s %.2g×", cmpSign(atLeast), limit), measuredOK: !math.IsNaN(v)}
		if t.measuredOK {
			t.measured = fmtRatio(v)
			t.met = (atLeast && v >= limit) || (!atLeast && v <= limit)
		}
		ts = append(ts, t)
	}
	open := testOpen(targetRate)
	ratioTarget("one hop (sidemesh vs nginx), HTTP/1.1 closed loop: req/s", "sidemesh", "nginx", testClosedH1, mRPS, targetRPSRatio, true)
	ratioTarget("one hop (sidemesh vs nginx), HTTP/1.1 closed loop: CPU/request", "sidemesh", "nginx", testClosedH1, mCPU, targetCPURatio, false)
	for _, a := range []struct {
		name  string
		f     metric
		limit float64
	}{{"p50", mP50, targetPairP50}, {"p99", mP99, targetPairP99}} {
		v := rp.added("sidemesh-pair-mtls", open, a.f)
		t := targetLine{what: fmt.Sprintf("two sidecars with mTLS at %s req/s: added latency %s", fmtRate(targetRate), a.name),
			limit: fmt.Sprintf("≤ %.2f ms", a.limit), measuredOK: !math.IsNaN(v)}
		if t.measuredOK {
			t.measured, t.met = fmt.Sprintf("%.3f ms", v), v <= a.limit
			if v < 0 {
				// Direct was slower than two proxy hops: a burst of
				// someone else's work hit direct's run, not a fast proxy.
				t.unreliable = "unreliable: direct was slower than the row (a busy machine); run more rounds"
			}
		}
		ts = append(ts, t)
	}
	ratioTarget(fmt.Sprintf("two sidecars with mTLS at %s req/s: CPU/request vs the nginx pair", fmtRate(targetRate)),
		"sidemesh-pair-mtls", "nginx-pair-mtls", open, mCPU, targetPairCPURatio, false)
	memTarget := func(what string, f func(*roundResult) (int64, bool), limit float64) {
		best, row := math.NaN(), ""
		for _, r := range rp.rows {
			if !r.Sidemesh {
				continue
			}
			if v := rp.memMed(r.Name, f); !math.IsNaN(v) && (math.IsNaN(best) || v > best) {
				best, row = v, r.Name
			}
		}
		t := targetLine{what: what, limit: fmt.Sprintf("≤ %.0f MB", limit/1e6), measuredOK: !math.IsNaN(best)}
		if t.measuredOK {
			t.measured, t.met = fmt.Sprintf("%.1f MB (%s)", best/1e6, row), best <= limit
		}
		ts = append(ts, t)
	}
	memTarget("sidemesh RSS, idle (largest sidemesh process of any sidemesh row)", memIdle(maxRSSOf), targetRSSIdle)
	memTarget(fmt.Sprintf("sidemesh RSS at %s req/s (largest process, largest reading)", fmtRate(targetRate)), memAt(open, maxRSSOf), targetRSSLoaded)

	b.WriteString("## Targets\n\n| target | this run | limit | |\n|---|---:|---:|---|\n")
	met := 0
	for _, t := range ts {
		verdict := "not measured (rows or rate not run)"
		switch {
		case t.unreliable != "":
			verdict = t.unreliable
		case t.measuredOK && t.met:
			verdict, met = "met", met+1
		case t.measuredOK:
			verdict = "**not met**"
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s |\n", t.what, orDash(t.measured), t.limit, verdict)
	}
	fmt.Fprintf(b, "\n%d of %d targets met.\n\n", met, len(ts))
}

// cmpSign returns ≥ or ≤.
func cmpSign(atLeast bool) string {
	if atLeast {
		return "≥"
	}
	return "≤"
}

// closedTable writes a closed-loop test's table.
func (rp *report) closedTable(b *strings.Builder, test, title string) {
	s := rp.res.Settings
	gen := fmt.Sprintf("Go generator, %d streams over %d connections", s.Conns, s.H2Conns)
	if test == testClosedH1 {
		gen = fmt.Sprintf("%s, %d connections", map[string]string{"wrk": "wrk", "go": "Go generator"}[s.H1Client], s.Conns)
	}
	fmt.Fprintf(b, "## %s (%s)\n\n", title, gen)
	b.WriteString("| row | req/s | ×nginx | CPU µs/req | ×nginx | p50 ms | p99 ms | p99.9 ms | errors |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rp.rows {
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s | %d |\n", r.Name,
			fmtCount(rp.med(r.Name, test, mRPS)), fmtRatio(rp.ratio(r.Name, r.Ref, test, mRPS)),
			fmtNum(rp.med(r.Name, test, mCPU), 1), fmtRatio(rp.ratio(r.Name, r.Ref, test, mCPU)),
			fmtNum(rp.med(r.Name, test, mP50), 3), fmtNum(rp.med(r.Name, test, mP99), 3), fmtNum(rp.med(r.Name, test, m999), 3),
			rp.errors(r.Name, test))
	}
	b.WriteString("\n")
}

// openTable writes an open-loop test's table.
func (rp *report) openTable(b *strings.Builder, rate float64) {
	test := testOpen(rate)
	fmt.Fprintf(b, "## Open loop, %s requests/s (HTTP/1.1, latency from the due time)\n\n", fmtRate(rate))
	saturated := false
	b.WriteString("| row | p50 ms | p99 ms | p99.9 ms | added p50 | added p99 | added p99.9 | CPU µs/req | ×nginx | send lag p99 ms | errors |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rp.rows {
		addedCell := func(f metric) string {
			if r.Name == "direct" {
				return "–"
			}
			return fmtSigned(rp.added(r.Name, test, f))
		}
		name := r.Name
		if rp.behind(r.Name, test, rate) {
			name += " †"
			saturated = true
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |\n", name,
			fmtNum(rp.med(r.Name, test, mP50), 3), fmtNum(rp.med(r.Name, test, mP99), 3), fmtNum(rp.med(r.Name, test, m999), 3),
			addedCell(mP50), addedCell(mP99), addedCell(m999),
			fmtNum(rp.med(r.Name, test, mCPU), 1), fmtRatio(rp.ratio(r.Name, r.Ref, test, mCPU)),
			fmtNum(rp.med(r.Name, test, mLag), 3), rp.errors(r.Name, test))
	}
	if saturated {
		fmt.Fprintf(b, "\n† did not keep up with %s requests/s in at least half the rounds (answered fewer than %.0f%% of "+
			"the rate over the window): its queue grew for the whole run, so its latency says how long the run was, "+
			"and its CPU per request is that of a saturated proxy.\n", fmtRate(rate), keptUp*100)
	}
	b.WriteString("\n")
}

// keptUp is the share of an open loop's rate a row must answer over the
// window not to be marked as having fallen behind.
const keptUp = 0.97

// behind reports whether row fell behind the open loop's rate in at
// least half the rounds.
func (rp *report) behind(row, test string, rate float64) bool {
	n, behind := 0, 0
	for _, rr := range rp.by[row] {
		t := rr.Tests[test]
		if t == nil {
			continue
		}
		n++
		if t.RPS < keptUp*rate {
			behind++
		}
	}
	return n > 0 && 2*behind >= n
}

// memoryTable writes the memory of every row but direct.
func (rp *report) memoryTable(b *strings.Builder) {
	rate, ok := rp.memRate()
	at := "–"
	if ok {
		at = fmtRate(rate) + "/s"
	}
	test := testOpen(rate)
	b.WriteString("## Memory (MB = 10⁶ bytes)\n\n")
	fmt.Fprintf(b, "| row | processes | RSS idle | of which file-backed | RSS @%s | RSS peak | PSS idle | PSS @%s | largest process @%s |\n", at, at, at)
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range rp.rows {
		if r.Name == "direct" {
			continue
		}
		procs := rp.memMed(r.Name, func(rr *roundResult) (int64, bool) { return int64(rr.Procs), true })
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.Name, fmtNum(procs, 0),
			fmtMB(rp.memMed(r.Name, memIdle(rssOf))), fmtMB(rp.memMed(r.Name, memIdle(fileOf))), fmtMB(rp.memMed(r.Name, memAt(test, rssOf))),
			fmtMB(rp.memMed(r.Name, memPeak(rssOf))),
			fmtMB(rp.memMed(r.Name, memIdle(pssOf))), fmtMB(rp.memMed(r.Name, memAt(test, pssOf))),
			fmtMB(rp.memMed(r.Name, memAt(test, maxRSSOf))))
	}
	b.WriteString("\nFile-backed: the pages of the executable (and libraries) that were touched, from RssFile; the rest is heap, " +
		"stacks and other anonymous memory. RSS peak: the largest reading during any test, the closed loops at full speed " +
		"included.\n\n")
}

// Formatting; "–" for a figure that was not measured.

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

func fmtRatio(x float64) string {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return "–"
	}
	return fmt.Sprintf("%.2f×", x)
}

func fmtNum(x float64, prec int) string {
	if math.IsNaN(x) {
		return "–"
	}
	return strconv.FormatFloat(x, 'f', prec, 64)
}

func fmtSigned(x float64) string {
	if math.IsNaN(x) {
		return "–"
	}
	return fmt.Sprintf("%+.3f", x)
}

func fmtMB(bytes float64) string {
	if math.IsNaN(bytes) || bytes == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f", bytes/1e6)
}

// fmtCount formats x as a whole number with thousands separators.
func fmtCount(x float64) string {
	if math.IsNaN(x) {
		return "–"
	}
	s := strconv.FormatInt(int64(math.Round(x)), 10)
	var out []byte
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// fmtRate formats a rate: 1,000.
func fmtRate(r float64) string {
	if r == math.Trunc(r) {
		return fmtCount(r)
	}
	return strconv.FormatFloat(r, 'f', -1, 64)
}

// joinRates formats rates as "1,000 and 5,000".
func joinRates(rates []float64) string {
	var s []string
	for _, r := range rates {
		s = append(s, fmtRate(r))
	}
	if len(s) <= 1 {
		return strings.Join(s, "")
	}
	return strings.Join(s[:len(s)-1], ", ") + " and " + s[len(s)-1]
}
