//go:build linux

package main

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"

	"github.com/HdrHistogram/hdrhistogram-go"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// plots writes the PNGs to dir and returns their names.
func (rp *report) plots(dir string) ([]string, error) {
	var names []string
	for _, rate := range rp.res.Settings.Rates {
		name := fmt.Sprintf("latency-open-%s.png", fmtRateFile(rate))
		if err := rp.latencyPlot(rate, filepath.Join(dir, name)); err != nil {
			return nil, fmt.Errorf("plot %s: %w", name, err)
		}
		names = append(names, name)
	}
	var tests []string
	for _, rate := range rp.res.Settings.Rates {
		tests = append(tests, testOpen(rate))
	}
	tests = append(tests, testClosedH1, testClosedH2)
	if err := rp.barPlot("CPU time of the proxy per request (µs; lower is better)", "µs of CPU per request", tests, mCPU, false,
		filepath.Join(dir, "cpu-per-request.png")); err != nil {
		return nil, fmt.Errorf("plot cpu-per-request.png: %w", err)
	}
	if err := rp.barPlot("Closed-loop throughput (requests/s; higher is better)", "requests per second", []string{testClosedH1, testClosedH2}, mRPS, true,
		filepath.Join(dir, "throughput.png")); err != nil {
		return nil, fmt.Errorf("plot throughput.png: %w", err)
	}
	return append(names, "cpu-per-request.png", "throughput.png"), nil
}

// fmtRateFile formats a rate for a file name.
func fmtRateFile(r float64) string {
	return fmt.Sprint(r)
}

// merged returns row's histogram of test merged over the rounds, nil if
// there is none.
func (rp *report) merged(row, test string) *hdrhistogram.Histogram {
	var h *hdrhistogram.Histogram
	for round := 1; round <= rp.res.Settings.Rounds; round++ {
		rr := rp.by[row][round]
		if rr == nil || rr.Tests[test] == nil || rr.Tests[test].hist == nil {
			continue
		}
		if h == nil {
			h = newHist()
		}
		h.Merge(rr.Tests[test].hist)
	}
	if h == nil || h.TotalCount() == 0 {
		return nil
	}
	return h
}

// percentileTicks are the x axis of a latency distribution: x is
// log10(1/(1-q)), so that each nine gets the same room.
var percentileTicks = plot.ConstantTicks{
	{Value: 0, Label: "0%"}, {Value: 1, Label: "90%"}, {Value: 2, Label: "99%"},
	{Value: 3, Label: "99.9%"}, {Value: 4, Label: "99.99%"}, {Value: 5, Label: "99.999%"},
}

// latencyPlot draws the latency distribution of every row at rate.
func (rp *report) latencyPlot(rate float64, path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Latency, open loop at %s requests/s (from the due time; all rounds)", fmtRate(rate))
	p.X.Label.Text = "percentile"
	p.Y.Label.Text = "latency (ms, log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.X.Tick.Marker = percentileTicks
	p.Legend.Top, p.Legend.Left = false, false // bottom right: below the tails
	p.Add(plotter.NewGrid())
	test := testOpen(rate)
	var lines []any
	maxX := 0.0
	for _, r := range rp.rows {
		h := rp.merged(r.Name, test)
		if h == nil {
			continue
		}
		// Up to the percentile of the largest sample: beyond it the
		// histogram has nothing to say.
		top := math.Log10(float64(h.TotalCount()))
		maxX = max(maxX, top)
		var xys plotter.XYs
		for x := 0.0; x <= top+1e-9; x += 0.02 {
			q := 100 * (1 - math.Pow(10, -x))
			ms := float64(h.ValueAtQuantile(q)) / 1000
			xys = append(xys, plotter.XY{X: x, Y: math.Max(ms, 0.001)})
		}
		lines = append(lines, r.Name, xys)
	}
	if len(lines) == 0 {
		return fmt.Errorf("no open-loop latency at %s requests/s", fmtRate(rate))
	}
	if err := plotutil.AddLines(p, lines...); err != nil {
		return err
	}
	p.X.Min, p.X.Max = 0, math.Ceil(maxX)
	return p.Save(10*vg.Inch, 6*vg.Inch, path)
}

// barPlot draws f of tests for every row (but direct with withDirect
// unset), as horizontal bars grouped by row, the first row on top.
func (rp *report) barPlot(title, xLabel string, tests []string, f metric, withDirect bool, path string) error {
	var names []string
	for _, r := range slices.Backward(rp.rows) {
		if r.Name != "direct" || withDirect {
			names = append(names, r.Name)
		}
	}
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = xLabel
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	barWidth := vg.Points(9)
	top := 0.0
	for i, test := range tests {
		vals := make(plotter.Values, len(names))
		for j, name := range names {
			v := rp.med(name, test, f)
			if math.IsNaN(v) {
				v = 0
			}
			vals[j] = v
			top = max(top, v)
		}
		bars, err := plotter.NewBarChart(vals, barWidth)
		if err != nil {
			return err
		}
		bars.Horizontal = true
		bars.LineStyle.Width = 0
		bars.Color = plotutil.Color(i)
		// The first test on top within each group, as in the legend.
		bars.Offset = barWidth * vg.Length(float64(len(tests)-1)/2-float64(i))
		p.Add(bars)
		p.Legend.Add(test, bars)
	}
	p.NominalY(names...)
	// Room on the right for the legend.
	p.X.Min, p.X.Max = 0, top*1.3
	height := vg.Length(len(names)) * barWidth * (vg.Length(len(tests)) + 1.5)
	return p.Save(10*vg.Inch, max(4*vg.Inch, height+1.5*vg.Inch), path)
}
