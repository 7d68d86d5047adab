package microvm

import (
	"log/slog"

	"github.com/vulcanhq/vulcan/internal/microvm/firecracker"
	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
)

// The Firecracker driver is linked in here; ResolveDriver still decides whether it
// can run (KVM usable and the binary present).
func init() {
	firecrackerDriver = func(opts DriverOptions) vmm.Driver {
		return firecracker.New(firecracker.Options{Bin: opts.FirecrackerBin, Logger: slog.Default()})
	}
}
