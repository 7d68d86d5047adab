package bench

import (
	"context"
	"strings"
	"testing"
)

// P1 and P5 need nothing from the machine: run them small and check the rows are whole.
// Nothing here asserts a timing.
func TestControlPlaneAndLogStreamingRun(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the API stack")
	}
	o := Options{Iterations: 3, TempDir: t.TempDir()}
	var logged []string
	o.Logf = func(format string, args ...any) { logged = append(logged, format) }
	rs := Run(context.Background(), o, []Benchmark{All[0], All[4]})
	want := []struct {
		id   string
		kind Kind
		unit string
	}{{"P1a", Overhead, "s"}, {"P1b", Rate, "workloads/s"}, {"P5a", Latency, "s"}, {"P5b", Rate, "lines/s"}}
	if len(rs) != len(want) {
		t.Fatalf("results %+v", rs)
	}
	for i, w := range want {
		r := rs[i]
		if r.ID != w.id || r.Kind != w.kind || r.Unit != w.unit || r.Title == "" || r.Measures == "" || r.Target.Op == "" {
			t.Errorf("row %d: %+v", i, r)
		}
		if r.Verdict != Pass && r.Verdict != Miss {
			t.Errorf("%s: verdict %s (%s)", r.ID, r.Verdict, r.Note)
		}
		if r.Kind != Overhead && r.Value <= 0 {
			t.Errorf("%s: value %v", r.ID, r.Value)
		}
	}
	if p1 := rs[0]; p1.Baseline == nil || p1.Vulcan == nil || p1.Baseline.Samples != 3 || p1.Vulcan.Samples != 3 || p1.Vulcan.Median <= 0 {
		t.Errorf("P1a sides %+v %+v", p1.Baseline, p1.Vulcan)
	}
	if p5 := rs[2]; p5.Vulcan == nil || p5.Vulcan.Samples != 3 || !strings.Contains(p5.Note, "p99") {
		t.Errorf("P5a %+v", p5)
	}
	if len(logged) != 4 {
		t.Errorf("progress lines %q", logged)
	}
}
