package microvm_test

import (
	"context"
	"os"
	"testing"

	"github.com/vulcanhq/vulcan/internal/bench"
	"github.com/vulcanhq/vulcan/internal/microvm/qemu"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// BenchmarkP3RootfsProvisioning is P3 (internal/bench.RootfsProvisioning, the code
// `vulcan bench` runs): a VM's root filesystem as the backend provisions it vs a private
// copy of a 1 GiB image, b.N interleaved pairs.
func BenchmarkP3RootfsProvisioning(b *testing.B) {
	r, err := bench.RootfsProvisioning(context.Background(), bench.Options{Iterations: b.N, TempDir: b.TempDir()})
	r = bench.Checked(b, r, err)
	b.ReportMetric(r.Vulcan.Median*1e6, "shared-µs/vm")
	b.ReportMetric(r.Baseline.Median*1e3, "copy-ms/vm")
	b.ReportMetric(r.Value, "copy/shared-ratio")
}

// BenchmarkP4BootToHello is P4 (internal/bench.BootToHello): a cold boot to the agent's
// hello vs a bare QEMU boot of the same kernel and rootfs to init, b.N interleaved pairs.
func BenchmarkP4BootToHello(b *testing.B) {
	testenv.RequiresBinary(b, "qemu-system-x86_64")
	imgs := testenv.RequiresImages(b, "python")
	accel := qemu.AccelTCG
	if os.Getenv("VULCAN_QEMU_ACCEL") == qemu.AccelKVM {
		accel = qemu.AccelKVM
	}
	r, err := bench.BootToHello(context.Background(), bench.Options{Iterations: b.N, ImagesDir: imgs, Accel: accel})
	r = bench.Checked(b, r, err)
	b.ReportMetric(r.Vulcan.Median*1e3, "agent-hello-ms")
	b.ReportMetric(r.Baseline.Median*1e3, "bare-init-ms")
	b.ReportMetric(r.Value, "hello/bare-ratio")
}
