package guest_test

import (
	"context"
	"testing"

	"github.com/vulcanhq/vulcan/internal/bench"
)

// BenchmarkP2AgentOverhead is P2 (internal/bench.AgentOverhead, the code `vulcan bench`
// runs): `python3 -c pass` directly vs through an in-process agent over its unix socket,
// b.N interleaved pairs; agent/direct of the medians is the ratio (target ≤ 1.05).
func BenchmarkP2AgentOverhead(b *testing.B) {
	r, err := bench.AgentOverhead(context.Background(), bench.Options{Iterations: b.N})
	r = bench.Checked(b, r, err)
	b.ReportMetric(r.Baseline.Median*1e6, "direct-µs")
	b.ReportMetric(r.Vulcan.Median*1e6, "agent-µs")
	b.ReportMetric(r.Value, "ratio")
}
