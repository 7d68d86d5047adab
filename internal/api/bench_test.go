package api_test

import (
	"context"
	"testing"

	"github.com/vulcanhq/vulcan/internal/bench"
)

// reportRows reports each row's sides and value as benchmark metrics, under the names
// these benchmarks have always used.
func reportRows(b *testing.B, rs []bench.Result, names map[string][3]string) {
	b.Helper()
	for _, r := range rs {
		n, ok := names[r.ID]
		if !ok {
			continue
		}
		if r.Baseline != nil && n[0] != "" {
			b.ReportMetric(r.Baseline.Median*1e6, n[0])
		}
		if r.Vulcan != nil && n[1] != "" {
			b.ReportMetric(r.Vulcan.Median*1e6, n[1])
		}
		v := r.Value
		if r.Unit == "s" {
			v *= 1e6
		}
		b.ReportMetric(v, n[2])
	}
}

// BenchmarkControlPlane is P1 (internal/bench.ControlPlane, the code `vulcan bench` runs):
// a no-op workload's sync round trip through the real HTTP server, engine and SQLite
// store vs a direct call of the same backend, and the sustained no-op rate.
func BenchmarkControlPlane(b *testing.B) {
	for range b.N {
		rs, err := bench.ControlPlane(context.Background(), bench.Options{TempDir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		reportRows(b, rs, map[string][3]string{
			"P1a": {"direct-p50-µs", "api-p50-µs", "overhead-p50-µs"},
			"P1b": {"", "", "workloads/s"},
		})
	}
}

// BenchmarkP5LogStreaming is P5 (internal/bench.LogStreaming): one line's latency from a
// backend's sink to an SSE client of the API, and lines/s with the backend writing flat out.
func BenchmarkP5LogStreaming(b *testing.B) {
	for range b.N {
		rs, err := bench.LogStreaming(context.Background(), bench.Options{TempDir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		reportRows(b, rs, map[string][3]string{
			"P5a": {"", "", "latency-p50-µs"},
			"P5b": {"", "", "lines/s"},
		})
	}
}
