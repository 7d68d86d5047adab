package bench_test

import (
	"context"
	"os"
	"testing"

	"github.com/vulcanhq/vulcan/internal/bench"
	"github.com/vulcanhq/vulcan/internal/microvm/qemu"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

func sandboxOptions(b *testing.B, iterations int) bench.Options {
	testenv.RequiresBinary(b, "qemu-system-x86_64")
	imgs := testenv.RequiresImages(b, "python")
	accel := qemu.AccelTCG
	if os.Getenv("VULCAN_QEMU_ACCEL") == qemu.AccelKVM {
		accel = qemu.AccelKVM
	}
	return bench.Options{Iterations: iterations, ImagesDir: imgs, Accel: accel}
}

// BenchmarkS1SandboxExec is S1 (bench.SandboxExec): `true` via the API in a running
// sandbox vs the agent's spawn-to-exit, b.N execs.
func BenchmarkS1SandboxExec(b *testing.B) {
	r, err := bench.SandboxExec(context.Background(), sandboxOptions(b, b.N))
	r = bench.Checked(b, r, err)
	b.ReportMetric(r.Vulcan.Median*1e3, "api-ms/exec")
	b.ReportMetric(r.Baseline.Median*1e3, "agent-ms/exec")
	b.ReportMetric(r.Value*1e3, "overhead-ms")
}

// BenchmarkS2SandboxFiles is S2 (bench.SandboxFiles): 1 MiB and 64 MiB PUT+GET vs dd in
// the guest, b.N round trips of each.
func BenchmarkS2SandboxFiles(b *testing.B) {
	rs, err := bench.SandboxFiles(context.Background(), sandboxOptions(b, b.N))
	if err != nil {
		b.Fatal(err)
	}
	for _, r := range rs {
		r = bench.Checked(b, r, nil)
		b.ReportMetric(r.Value, r.ID+"-api/guest-ratio")
		b.ReportMetric(r.Details["api_mb_per_s"], r.ID+"-api-MB/s")
	}
}

// BenchmarkS3Density is S3 (bench.Density) with its default N (8, as --quick); b.N is
// the execs per sandbox at each step.
func BenchmarkS3Density(b *testing.B) {
	o := sandboxOptions(b, b.N)
	o.Quick = true
	r, err := bench.Density(context.Background(), o)
	r = bench.Checked(b, r, err)
	b.ReportMetric(r.Value, "sandboxes")
	b.ReportMetric(r.Details["exec_p99_seconds"]*1e3, "exec-p99-ms")
	b.ReportMetric(r.Details["rss_per_sandbox_bytes"]/(1<<20), "rss-MiB/sandbox")
}

// BenchmarkE1E2BCreate is E1 (bench.E2BCreate): create → first `true` through the
// official E2B SDK vs the native API, b.N of each.
func BenchmarkE1E2BCreate(b *testing.B) {
	r, err := bench.E2BCreate(context.Background(), sandboxOptions(b, b.N))
	r = bench.Checked(b, r, err)
	b.ReportMetric(r.Vulcan.Median*1e3, "sdk-ms")
	b.ReportMetric(r.Baseline.Median*1e3, "native-ms")
	b.ReportMetric(r.Value, "ratio")
}
