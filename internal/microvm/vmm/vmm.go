// Package vmm is the contract between the microVM backend and the virtual machine
// monitors it drives (QEMU, Firecracker). A driver turns a Config into a running Machine;
// everything else — images, CIDs, the agent session, cleanup, metrics — is the backend's.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/vulcanhq/vulcan/internal/cell"
	"github.com/vulcanhq/vulcan/internal/nic"
)

// ErrNotAvailable wraps a driver's explanation of why it cannot run here.
var ErrNotAvailable = errors.New("vmm not available")

// Config is one VM to boot.
type Config struct {
	ID     string // VM id, unique per host; also names the state dir
	Dir    string // per-VM state dir, owned by the backend: sockets, logs, pid file
	Kernel string // uncompressed ELF vmlinux
	RootFS string // ext4 image, attached read-only and shared by every VM
	// Scratch, when set, is the VM's own empty ext4 image (sparse, in Dir), attached
	// read-write: the agent puts the writable layer over the read-only root on it.
	Scratch string
	CPUs    int
	MemMB   int
	CID     uint32   // guest vsock context id
	Args    []string // kernel arguments the backend adds (vulcan.*, ip=...)
	Network *nic.NIC // nil: no NIC
	// ConsoleLimit caps the bytes of guest console kept in Dir/console.log.
	ConsoleLimit int64
	// Cell, when set, confines the VMM (internal/cell): the backend fills in the uid,
	// cgroup and files; the driver adds what only it knows (devices, the TAP) and starts
	// the VMM through it. Nil: the VMM runs with vulcan's privileges.
	Cell *cell.Spec
	// MemFile, when set, backs guest RAM with a file instead of anonymous memory.
	MemFile *MemFile
	// Relocatable names the VM's own files (agent socket, scratch disk) relative to Dir
	// where the VMM would otherwise record absolute paths in a saved state (Firecracker
	// keeps the vsock socket's and the drives' paths), so a copy restored in another dir
	// uses its own.
	Relocatable bool
	// Restore, when set, starts the VM from a state Machine.Save wrote instead of booting
	// the kernel: the machine shape, devices and disks (their contents as they were at the
	// save) must be those of the saved VM. With a private MemFile, RAM is the snapshot's
	// memory file mapped copy-on-write and the state holds only the devices.
	Restore string
}

// MemFile is guest RAM backed by a file.
type MemFile struct {
	Path string
	// Shared maps the file shared: the guest's RAM is the file, which a snapshot keeps
	// (and Save leaves out of its state). Otherwise it is mapped private, copy-on-write,
	// read-only on disk: many VMs restored from one snapshot share its pages.
	Shared bool
}

// ConsoleAwaiter is a Machine whose guest console can be watched for a line.
type ConsoleAwaiter interface {
	// AwaitConsole returns a channel closed once the guest writes line on its console.
	AwaitConsole(line string) <-chan struct{}
}

// Snapshotter is a Machine that can save its state for a later Restore.
type Snapshotter interface {
	// Save stops the guest's vCPUs and writes the VM's state to path: devices, and RAM
	// unless it is a shared MemFile (then the file holds it). The VM stays stopped; the
	// caller stops the VMM after. Disks must be copied after Save returns.
	Save(ctx context.Context, path string) error
}

// Confiner is implemented by drivers that can say whether they apply Config.Cell, and if
// not, why (Firecracker without a jailer cannot drop its own privileges).
type Confiner interface {
	Confines() (bool, string)
}

// Driver starts VMs with one VMM.
type Driver interface {
	// Name is the VMM: "qemu" or "firecracker".
	Name() string
	// Accel is the acceleration VMs get: "kvm" or "tcg".
	Accel() string
	// Available returns nil when VMs can start, else an error (wrapping ErrNotAvailable)
	// that tells a user what is missing and the command that fixes it.
	Available() error
	// Start boots a VM. ctx bounds only the start itself; the VM lives until Stop, or
	// until the guest powers off.
	Start(ctx context.Context, cfg Config) (Machine, error)
}

// Machine is a running VM.
type Machine interface {
	// PID is the VMM process id.
	PID() int
	// DialAgent returns a stream to the guest agent. It may be called again after a
	// failed attempt; drivers retry internally until ctx is done.
	DialAgent(ctx context.Context) (net.Conn, error)
	// Done is closed when the VMM process has exited.
	Done() <-chan struct{}
	// Stop stops the VM by escalation (polite, deadline, SIGKILL) and waits for the VMM
	// to exit. A VM already gone is success. Safe to call more than once.
	Stop(ctx context.Context) error
}

// KernelArgs joins kernel command-line arguments, dropping empty ones.
func KernelArgs(parts ...[]string) string {
	var out []string
	for _, p := range parts {
		for _, a := range p {
			if a = strings.TrimSpace(a); a != "" {
				out = append(out, a)
			}
		}
	}
	return strings.Join(out, " ")
}

// KVMUsable reports whether /dev/kvm can be opened for VMs, and if not, why. (Whether KVM
// can really run a guest is the QEMU driver's test boot's question.)
func KVMUsable() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("/dev/kvm: %w", err)
	}
	return f.Close()
}
