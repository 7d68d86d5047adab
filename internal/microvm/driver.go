package microvm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/vulcanhq/vulcan/internal/microvm/qemu"
	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
)

// DriverOptions choose and configure the VMM.
type DriverOptions struct {
	VMM            string // auto | firecracker | qemu
	QEMUBin        string
	QEMUAccel      string // auto | kvm | tcg
	FirecrackerBin string
	Kernel         string // used by the KVM probe
	// ProbeCache remembers the KVM probe's verdict (see qemu.ProbeAccelCached).
	ProbeCache string
}

// firecrackerDriver builds the Firecracker driver; set by the firecracker wiring
// (firecracker_wiring.go) so that the SDK stays behind one seam.
var firecrackerDriver func(opts DriverOptions) vmm.Driver

// ResolveDriver returns the function New uses to pick the driver: for auto, Firecracker
// when /dev/kvm and its binary are usable (and, where QEMU can check, KVM really runs a
// guest), else QEMU when present, else an error naming what is missing for both.
func ResolveDriver(opts DriverOptions) func() (vmm.Driver, error) {
	return func() (vmm.Driver, error) {
		if opts.FirecrackerBin == "" {
			opts.FirecrackerBin = "firecracker"
		}
		if opts.QEMUBin == "" {
			opts.QEMUBin = "qemu-system-x86_64"
		}
		fcReason := func() error {
			if firecrackerDriver == nil {
				return fmt.Errorf("%w: firecracker driver not built into this binary", vmm.ErrNotAvailable)
			}
			if err := vmm.KVMUsable(); err != nil {
				return fmt.Errorf("%w: firecracker needs KVM: %v", vmm.ErrNotAvailable, err)
			}
			if _, err := exec.LookPath(opts.FirecrackerBin); err != nil {
				return fmt.Errorf("%w: %s not found; run `make download` on a host with internet, or set VULCAN_FIRECRACKER_BIN", vmm.ErrNotAvailable, opts.FirecrackerBin)
			}
			return nil
		}
		qemuDriver := func() (vmm.Driver, error) {
			if _, err := exec.LookPath(opts.QEMUBin); err != nil {
				return nil, fmt.Errorf("%w: %s not found; install it with: apt-get install qemu-system-x86", vmm.ErrNotAvailable, opts.QEMUBin)
			}
			accel := opts.QEMUAccel
			if accel == "" || accel == "auto" {
				accel, _ = qemu.ProbeAccelCached(context.Background(), opts.QEMUBin, opts.Kernel, opts.ProbeCache)
			}
			return qemu.New(opts.QEMUBin, accel), nil
		}
		switch opts.VMM {
		case "firecracker":
			if err := fcReason(); err != nil {
				return nil, err
			}
			return firecrackerDriver(opts), nil
		case "qemu":
			return qemuDriver()
		case "", "auto":
			fcErr := fcReason()
			if fcErr == nil {
				// /dev/kvm opening is not proof that KVM runs guests (nested hosts without
				// full CPU support fail at the first instruction they cannot emulate). When
				// QEMU is here too, its cached test boot decides.
				if _, err := exec.LookPath(opts.QEMUBin); err == nil {
					if accel, reason := qemu.ProbeAccelCached(context.Background(), opts.QEMUBin, opts.Kernel, opts.ProbeCache); accel != qemu.AccelKVM {
						fcErr = fmt.Errorf("%w: firecracker needs a working KVM: %s", vmm.ErrNotAvailable, reason)
					}
				}
			}
			if fcErr == nil {
				return firecrackerDriver(opts), nil
			}
			d, qErr := qemuDriver()
			if qErr != nil {
				return nil, fmt.Errorf("no VMM can run here: firecracker: %v; qemu: %v", fcErr, qErr)
			}
			return d, nil
		default:
			return nil, fmt.Errorf("%w: unknown VMM %q (want auto, firecracker or qemu)", vmm.ErrNotAvailable, opts.VMM)
		}
	}
}

// DefaultProbeCache is where the KVM probe's verdict is kept: a property of the host, the
// QEMU binary and the kernel (all part of the cached key), so it lives in the user's cache
// dir, shared by every server and test on the machine. "" when there is none.
func DefaultProbeCache() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	dir = filepath.Join(dir, "vulcan")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return ""
	}
	return filepath.Join(dir, "accel-probe.json")
}
