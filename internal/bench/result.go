package bench

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Kind says how a Result's Value is derived and which way is better.
type Kind string

const (
	// Ratio is vulcan/baseline: the cost of Vulcan's path relative to the bare one.
	Ratio Kind = "ratio"
	// Speedup is baseline/vulcan: how many times cheaper Vulcan's path is.
	Speedup Kind = "speedup"
	// Overhead is vulcan − baseline, in seconds.
	Overhead Kind = "overhead"
	// Rate is events per second (Unit names the events).
	Rate Kind = "rate"
	// Latency is the Vulcan side's median, in seconds; there is no baseline.
	Latency Kind = "latency"
	// Count is how many of something (Unit names them) were reached, e.g. sandboxes.
	Count Kind = "count"
)

// Verdict is a Result's outcome against its target.
type Verdict string

const (
	Pass  Verdict = "pass"
	Miss  Verdict = "miss"
	Skip  Verdict = "skip"  // a prerequisite is missing; Note says which
	Error Verdict = "error" // the measurement failed; Note says how
)

// Sample is one side of a comparison: what was timed and its median.
type Sample struct {
	Label   string  `json:"label"`
	Median  float64 `json:"median_seconds"`
	Samples int     `json:"samples"`
}

// NewSample takes the median of ds.
func NewSample(label string, ds []time.Duration) Sample {
	return Sample{Label: label, Median: Median(ds).Seconds(), Samples: len(ds)}
}

// Target is the bound a Value must meet: Op is "<=" or ">=".
type Target struct {
	Op    string  `json:"op"`
	Value float64 `json:"value"`
}

// Met reports whether v satisfies the target.
func (t Target) Met(v float64) bool {
	switch t.Op {
	case "<=":
		return v <= t.Value
	case ">=":
		return v >= t.Value
	}
	return false
}

// AtMost and AtLeast build targets.
func AtMost(v float64) Target  { return Target{Op: "<=", Value: v} }
func AtLeast(v float64) Target { return Target{Op: ">=", Value: v} }

// Result is one row of the report.
type Result struct {
	ID       string  `json:"id"`       // "P1a"
	Title    string  `json:"title"`    // "control-plane overhead"
	Measures string  `json:"measures"` // what was compared, in a few words
	Kind     Kind    `json:"kind"`
	Baseline *Sample `json:"baseline,omitempty"`
	Vulcan   *Sample `json:"vulcan,omitempty"`
	// Value is the ratio, the speedup, the overhead or latency in seconds, or the rate.
	Value   float64 `json:"value"`
	Unit    string  `json:"unit"` // "x", "s", "workloads/s", "lines/s"
	Target  Target  `json:"target"`
	Verdict Verdict `json:"verdict"`
	Note    string  `json:"note,omitempty"`
	// Details are further figures of the row for tracking (S2's MB/s, S3's RSS and p99).
	Details map[string]float64 `json:"details,omitempty"`
}

// Row identifies a result before it is measured.
type Row struct{ ID, Title, Measures string }

// Compare derives Value from the two medians according to kind and judges it.
func (r Row) Compare(kind Kind, baseline, vulcan Sample, target Target) Result {
	res := Result{ID: r.ID, Title: r.Title, Measures: r.Measures, Kind: kind,
		Baseline: &baseline, Vulcan: &vulcan, Target: target}
	switch kind {
	case Ratio:
		res.Value, res.Unit = vulcan.Median/baseline.Median, "x"
	case Speedup:
		res.Value, res.Unit = baseline.Median/vulcan.Median, "x"
	case Overhead:
		res.Value, res.Unit = vulcan.Median-baseline.Median, "s"
	default:
		panic("bench: Compare needs ratio, speedup or overhead, got " + string(kind))
	}
	return res.judged()
}

// Rate judges count events over d.
func (r Row) Rate(count int, d time.Duration, unit string, target Target) Result {
	res := Result{ID: r.ID, Title: r.Title, Measures: r.Measures, Kind: Rate, Unit: unit, Target: target}
	if d > 0 {
		res.Value = float64(count) / d.Seconds()
	}
	return res.judged()
}

// Latency judges vulcan's median.
func (r Row) Latency(vulcan Sample, target Target) Result {
	res := Result{ID: r.ID, Title: r.Title, Measures: r.Measures, Kind: Latency,
		Vulcan: &vulcan, Value: vulcan.Median, Unit: "s", Target: target}
	return res.judged()
}

// Skipped is a row whose prerequisite is missing.
func (r Row) Skipped(reason string) Result {
	return Result{ID: r.ID, Title: r.Title, Measures: r.Measures, Verdict: Skip, Note: reason}
}

// Failed is a row whose measurement failed.
func (r Row) Failed(err error) Result {
	return Result{ID: r.ID, Title: r.Title, Measures: r.Measures, Verdict: Error, Note: err.Error()}
}

func (r Result) judged() Result {
	switch {
	case math.IsNaN(r.Value) || math.IsInf(r.Value, 0):
		// A zero median (a clock too coarse for the baseline) makes the ratio meaningless.
		r.Verdict, r.Note = Error, "no usable value: a median was zero"
		r.Value = 0
	case r.Target.Met(r.Value):
		r.Verdict = Pass
	default:
		r.Verdict = Miss
	}
	return r
}

// Median is the middle of ds (the upper middle for an even count); 0 when empty.
func Median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// Percentile is the nearest-rank p-th percentile of ds; 0 when empty.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// formatSeconds prints a duration with three significant digits: 465µs, 12.3ms, 4.21s.
func formatSeconds(s float64) string {
	sign := ""
	if s < 0 {
		sign, s = "-", -s
	}
	var v float64
	var unit string
	switch {
	case s == 0:
		return "0s"
	case s < 1e-6:
		v, unit = s*1e9, "ns"
	case s < 1e-3:
		v, unit = s*1e6, "µs"
	case s < 1:
		v, unit = s*1e3, "ms"
	default:
		v, unit = s, "s"
	}
	return sign + sig3(v) + unit
}

// sig3 prints v with three significant digits, and thousands separators above 1000.
func sig3(v float64) string {
	switch {
	case v >= 1000:
		return thousands(int64(math.Round(v)))
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// formatValue prints v in the unit of kind.
func formatValue(kind Kind, v float64, unit string) string {
	switch kind {
	case Ratio, Speedup:
		return sig3(v) + "×"
	case Overhead:
		if v >= 0 {
			return "+" + formatSeconds(v)
		}
		return formatSeconds(v)
	case Latency:
		return formatSeconds(v)
	case Rate:
		return sig3(v) + " " + unit
	case Count:
		return thousands(int64(math.Round(v))) + " " + unit
	}
	return fmt.Sprint(v)
}

// FormatValue is the "ratio or rate" cell; empty for skipped and failed rows.
func (r Result) FormatValue() string {
	if r.Verdict == Skip || r.Verdict == Error {
		return "—"
	}
	return formatValue(r.Kind, r.Value, r.Unit)
}

// FormatTarget is the target cell, e.g. "≤ 1.05×", "≥ 2,000 workloads/s".
func (r Result) FormatTarget() string {
	if r.Target.Op == "" {
		return "—"
	}
	op := map[string]string{"<=": "≤ ", ">=": "≥ "}[r.Target.Op]
	v := formatValue(r.Kind, r.Target.Value, r.Unit)
	return op + strings.TrimPrefix(v, "+")
}

func (s *Sample) cell() string {
	if s == nil {
		return "—"
	}
	return formatSeconds(s.Median) + " " + s.Label
}
