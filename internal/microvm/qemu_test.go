package microvm

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/testenv"
)

// TestConformanceQEMU boots real VMs with QEMU microvm (TCG here, KVM where usable).
func TestConformanceQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("boots VMs")
	}
	testenv.RequiresBinary(t, "qemu-system-x86_64")
	dir := testenv.RequiresImages(t, "python")
	if testenv.InCI() { // CI builds every image: none may be skipped there
		testenv.RequiresImages(t, "python", "node", "go")
	}
	var runtimes []model.Runtime
	for _, rt := range model.Runtimes {
		if _, err := os.Stat(filepath.Join(dir, "rootfs-"+string(rt)+".ext4")); err == nil {
			runtimes = append(runtimes, rt)
		}
	}
	h := newHarness(t, dir, ResolveDriver(DriverOptions{VMM: "qemu", Kernel: filepath.Join(dir, "vmlinux"), ProbeCache: DefaultProbeCache()}))
	runConformance(t, h, runtimes)
}
