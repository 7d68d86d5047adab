// Package firecracker drives Firecracker through firecracker-go-sdk: the same kernel,
// rootfs and agent as the QEMU driver, on hosts with KVM. The agent channel is
// Firecracker's hybrid vsock: the guest listens on AF_VSOCK port 1024 and the host
// connects through a unix socket in the VM dir with a `CONNECT 1024` handshake.
//
// The SDK logs with logrus; that stays inside this package, adapted to slog.
package firecracker

import (
	"log/slog"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
)

// AgentPort is the guest vsock port the agent listens on.
const AgentPort = 1024

// Options configure the driver.
type Options struct {
	// Bin is the firecracker binary (default "firecracker", looked up on PATH).
	Bin string
	// Jailer, when set, starts Firecracker through the jailer. Off by default.
	Jailer *Jailer
	// Logger receives the SDK's log (at debug level for its chatter); nil discards it.
	Logger *slog.Logger
	// KVMCheck reports whether KVM is usable; nil opens /dev/kvm read-write. The
	// simulator, which needs no KVM, replaces it in tests.
	KVMCheck func() error
}

// Jailer configures Firecracker's jailer. The chroot lives under the VM dir, so the
// VM's cleanup removes it; the kernel and rootfs are hard-linked into it (no copy), so
// the images and the state dir must be on one filesystem.
type Jailer struct {
	Bin           string // default "jailer"
	UID, GID      int
	NumaNode      int
	CgroupVersion string // "1" or "2" (default "2")
}

// Driver starts Firecracker microVMs.
type Driver struct {
	opts Options

	versionOnce sync.Once
	version     string
}

var _ vmm.Driver = (*Driver)(nil)

// New returns a driver.
func New(opts Options) *Driver {
	if opts.Bin == "" {
		opts.Bin = "firecracker"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.KVMCheck == nil {
		opts.KVMCheck = vmm.KVMUsable
	}
	return &Driver{opts: opts}
}

func (d *Driver) Name() string { return "firecracker" }

// MemSuffix names a snapshot's guest memory file beside its state.
const MemSuffix = ".mem"

// Snapshots: without the jailer, machines are saved with the SDK's CreateSnapshot and
// restored with its WithSnapshot (their own files relative to their dir, see
// vmm.Config.Relocatable). Under the jailer a restore would need the snapshot's files in
// the chroot; not done.
func (d *Driver) Snapshots() bool { return d.opts.Jailer == nil }

// Version is the binary's first --version line, part of a snapshot's key.
func (d *Driver) Version() string {
	d.versionOnce.Do(func() {
		out, err := exec.Command(d.opts.Bin, "--version").Output()
		if d.version = "unknown"; err == nil {
			d.version, _, _ = strings.Cut(string(out), "\n")
		}
	})
	return d.version
}

// Confines: only through the jailer; without it Firecracker keeps its seccomp filters and
// the VM's cgroup, but runs with vulcan's uid and sees the host's filesystem.
func (d *Driver) Confines() (bool, string) {
	if d.opts.Jailer != nil {
		return true, ""
	}
	return false, "firecracker runs without its jailer (none configured): no uid drop or chroot; its seccomp filters and the cgroup apply"
}

func (d *Driver) Accel() string { return "kvm" }

func (j *Jailer) bin() string {
	if j.Bin == "" {
		return "jailer"
	}
	return j.Bin
}

// BootArgs are the kernel arguments for a Firecracker guest: 8250 console, no PCI,
// root on the first virtio-blk device read-only (the agent overlays a writable layer),
// the agent as init listening on vsock, and reboot=k so the agent's reboot makes
// Firecracker exit.
func BootArgs(extra []string) string {
	return vmm.KernelArgs([]string{
		"console=ttyS0", "reboot=k", "panic=1", "pci=off",
		"root=/dev/vda", "ro", "rootfstype=ext4",
		"init=/usr/local/bin/vulcan-guest", "quiet",
		"random.trust_cpu=on",
		"vulcan.listen=vsock:" + strconv.Itoa(AgentPort),
	}, extra)
}

// Paths in the VM dir. Short names: unix socket paths are limited to 108 bytes.
func APISocket(dir string) string   { return filepath.Join(dir, "fc.sock") }
func VsockSocket(dir string) string { return filepath.Join(dir, "v.sock") }
func ConsoleLog(dir string) string  { return filepath.Join(dir, "console.log") }
