//go:build !linux

package firecracker

import (
	"context"
	"fmt"
	"runtime"

	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
)

// Firecracker runs on Linux with KVM only; elsewhere the driver says so.

// Available reports that Firecracker cannot run on this OS.
func (d *Driver) Available() error {
	return fmt.Errorf("%w: firecracker needs Linux with KVM, not %s", vmm.ErrNotAvailable, runtime.GOOS)
}

// Start fails: Firecracker cannot run on this OS.
func (d *Driver) Start(context.Context, vmm.Config) (vmm.Machine, error) {
	return nil, d.Available()
}
