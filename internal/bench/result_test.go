package bench

import (
	"errors"
	"testing"
	"time"
)

func sample(label string, median time.Duration) Sample {
	return Sample{Label: label, Median: median.Seconds(), Samples: 5}
}

func TestCompare(t *testing.T) {
	row := Row{ID: "X", Title: "t", Measures: "m"}
	ms := time.Millisecond
	for _, tc := range []struct {
		name          string
		kind          Kind
		base, vulcan  time.Duration
		target        Target
		value         float64
		unit          string
		verdict       Verdict
		cell, tgtCell string
	}{
		{"ratio within", Ratio, 10 * ms, 10500 * time.Microsecond, AtMost(1.05), 1.05, "x", Pass, "1.05×", "≤ 1.05×"},
		{"ratio over", Ratio, 10 * ms, 11 * ms, AtMost(1.05), 1.1, "x", Miss, "1.10×", "≤ 1.05×"},
		{"speedup", Speedup, 3 * time.Second, 600 * time.Microsecond, AtLeast(100), 5000, "x", Pass, "5,000×", "≥ 100×"},
		{"speedup short", Speedup, 50 * ms, ms, AtLeast(100), 50, "x", Miss, "50.0×", "≥ 100×"},
		{"overhead", Overhead, 200 * time.Nanosecond, 465200 * time.Nanosecond, AtMost(0.001), 0.000465, "s", Pass, "+465µs", "≤ 1.00ms"},
		{"overhead over", Overhead, 0, 2 * ms, AtMost(0.001), 0.002, "s", Miss, "+2.00ms", "≤ 1.00ms"},
		{"zero baseline", Ratio, 0, ms, AtMost(1.05), 0, "x", Error, "—", "≤ 1.05×"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := row.Compare(tc.kind, sample("b", tc.base), sample("v", tc.vulcan), tc.target)
			if r.Verdict != tc.verdict || r.Unit != tc.unit || r.Kind != tc.kind {
				t.Fatalf("got %+v", r)
			}
			if d := r.Value - tc.value; d > 1e-9 || d < -1e-9 {
				t.Errorf("value %v, want %v", r.Value, tc.value)
			}
			if got := r.FormatValue(); got != tc.cell {
				t.Errorf("cell %q, want %q", got, tc.cell)
			}
			if got := r.FormatTarget(); got != tc.tgtCell {
				t.Errorf("target %q, want %q", got, tc.tgtCell)
			}
			if r.Baseline.Label != "b" || r.Vulcan.Label != "v" || r.ID != "X" || r.Measures != "m" {
				t.Errorf("identity lost: %+v", r)
			}
		})
	}
}

func TestRateAndLatency(t *testing.T) {
	row := Row{ID: "R", Title: "rate"}
	r := row.Rate(4000, 1250*time.Millisecond, "workloads/s", AtLeast(2000))
	if r.Value != 3200 || r.Verdict != Pass || r.Kind != Rate || r.Baseline != nil || r.Vulcan != nil {
		t.Fatalf("rate %+v", r)
	}
	if r.FormatValue() != "3,200 workloads/s" || r.FormatTarget() != "≥ 2,000 workloads/s" {
		t.Errorf("cells %q %q", r.FormatValue(), r.FormatTarget())
	}
	if r := row.Rate(10, 0, "lines/s", AtLeast(1)); r.Verdict != Miss || r.Value != 0 {
		t.Errorf("zero duration: %+v", r)
	}
	l := row.Latency(sample("sink → SSE", 12*time.Millisecond), AtMost(0.010))
	if l.Verdict != Miss || l.FormatValue() != "12.0ms" || l.FormatTarget() != "≤ 10.0ms" || l.Baseline != nil {
		t.Errorf("latency %+v %q %q", l, l.FormatValue(), l.FormatTarget())
	}
}

func TestSkippedAndFailed(t *testing.T) {
	row := Row{ID: "P4", Title: "boot"}
	s := row.Skipped("no vmlinux")
	f := row.Failed(errors.New("qemu died"))
	if s.Verdict != Skip || s.Note != "no vmlinux" || s.FormatValue() != "—" || s.FormatTarget() != "—" {
		t.Errorf("skipped %+v", s)
	}
	if f.Verdict != Error || f.Note != "qemu died" || f.FormatValue() != "—" {
		t.Errorf("failed %+v", f)
	}
}

func TestMedianAndPercentile(t *testing.T) {
	ds := []time.Duration{5, 1, 4, 2, 3}
	if Median(ds) != 3 || Percentile(ds, 99) != 5 || Percentile(ds, 20) != 1 {
		t.Errorf("median %v p99 %v p20 %v", Median(ds), Percentile(ds, 99), Percentile(ds, 20))
	}
	if ds[0] != 5 {
		t.Error("Median sorted its input")
	}
	if Median([]time.Duration{1, 2, 3, 4}) != 3 || Median(nil) != 0 || Percentile(nil, 99) != 0 {
		t.Error("even count or empty")
	}
}

func TestFormatSeconds(t *testing.T) {
	for s, want := range map[float64]string{
		0: "0s", 1.88e-7: "188ns", 4.652e-4: "465µs", 1.86e-5: "18.6µs", 0.0123: "12.3ms",
		4.213: "4.21s", 1234.4: "1,234s", -2e-3: "-2.00ms",
	} {
		if got := formatSeconds(s); got != want {
			t.Errorf("formatSeconds(%v) = %q, want %q", s, got, want)
		}
	}
	if got := thousands(1234567); got != "1,234,567" {
		t.Errorf("thousands %q", got)
	}
}
