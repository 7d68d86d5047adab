package bench_test

import (
	"context"
	"testing"

	"github.com/vulcanhq/vulcan/internal/bench"
)

// BenchmarkK1ClusterForwarding is K1 (bench.ClusterExec): b.N execs (K1a) and b.N GETs
// (K1b) of one sandbox through a cluster node that does not own it vs through its owner.
func BenchmarkK1ClusterForwarding(b *testing.B) {
	rs, err := bench.ClusterExec(context.Background(), sandboxOptions(b, b.N))
	if err != nil {
		b.Fatal(err)
	}
	for _, r := range rs {
		r = bench.Checked(b, r, nil)
		b.ReportMetric(r.Value*1e6, r.ID+"-overhead-µs")
	}
}

// BenchmarkK2ClusterScaling is K2 (bench.ClusterScaling) with its quick total (300
// no-op workloads per cluster size, on the stub backend); b.N is not used.
func BenchmarkK2ClusterScaling(b *testing.B) {
	rs, err := bench.ClusterScaling(context.Background(), bench.Options{Quick: true})
	if err != nil {
		b.Fatal(err)
	}
	for _, r := range rs {
		r = bench.Checked(b, r, nil)
		b.ReportMetric(r.Value, r.ID+"-workloads/s")
	}
}
