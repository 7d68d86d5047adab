package cell

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// SpecEnv carries the spec from the backend to the re-exec'd setup step.
const SpecEnv = "_VULCAN_CELL_SPEC"

// ProcName is the setup step's argv[0] (before it execs the VMM), as ps shows it.
const ProcName = "vulcan-cell"

// TAPFD is the fd number the VMM finds its TAP on when Spec.TAP is set.
const TAPFD = 3

// Spec is one VMM's cell: everything the setup step needs to build it.
type Spec struct {
	UID, GID int
	// Dir is the VM's state dir: bound read-only at its own path (the agent socket in it
	// is owned by UID; connecting needs no write access to the mount).
	Dir string
	// Writable files bound read-write at their own paths (the scratch disk).
	Writable []string
	// ReadOnly files or dirs bound read-only at their own paths (kernel, rootfs, and the
	// VMM binary when it is not under /usr).
	ReadOnly []string
	// Devices bound at their own paths (/dev/net/tun, /dev/kvm, ...).
	Devices []string
	// CgroupProcs are the cgroup.procs files the setup step writes its pid to, as root,
	// before anything else (v1: one per controller; v2: one).
	CgroupProcs []string
	// CgroupParent is the VM's cgroup v2 group, from the root, for a VMM launcher that
	// makes its own group (Firecracker's jailer nests it there, under the VM's limits).
	CgroupParent string
	// NetNS, when set, is the network namespace the VMM runs in.
	NetNS string
	// TAP, when set, is the TAP in NetNS opened for the VMM and passed as fd TAPFD.
	TAP string
	// Root is the mount point of the cell's tmpfs root (in Dir, root-only; in the host's
	// view it stays an empty dir and goes with Dir).
	Root string
	// ParentPID is the backend's pid: the VMM dies with it (the privilege drop clears
	// the parent-death signal; the setup step sets it again and checks the parent).
	ParentPID int
}

// DefaultDevices are the device nodes every VMM gets.
var DefaultDevices = []string{"/dev/null", "/dev/urandom"}

// Command returns the command that starts bin with args inside the cell. The caller sets
// Stdout/Stderr, Dir and SysProcAttr (see SysProcAttr) and starts it; its pid is the
// VMM's once the setup step has exec'd.
func (s *Spec) Command(bin string, args []string) (*exec.Cmd, error) {
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, err
	}
	if path, err = filepath.Abs(path); err != nil {
		return nil, err
	}
	if !strings.HasPrefix(path, "/usr/") {
		s.ReadOnly = append(s.ReadOnly, path)
	}
	b, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	// argv[1] names the VM dir, as the VMM's own command line does: the startup reclaim
	// finds a VMM by it, even one caught in its setup step.
	cmd := &exec.Cmd{
		Path: "/proc/self/exe",
		Args: append([]string{ProcName, s.Dir, "--", path}, args...),
		Env:  []string{SpecEnv + "=" + string(b)},
	}
	return cmd, nil
}

// PrepareDir makes the VM dir enterable by the VMM's group only (and root): its files
// stay the host's, read-only to the VMM.
func (s *Spec) PrepareDir() error {
	if err := os.Chown(s.Dir, 0, s.GID); err != nil {
		return err
	}
	return os.Chmod(s.Dir, 0o750)
}

// Own gives path to the VMM (its scratch disk, its agent socket).
func (s *Spec) Own(path string) error { return os.Chown(path, s.UID, s.GID) }

// specFromEnv returns the spec the setup step was started with, or nil.
func specFromEnv() (*Spec, []string, error) {
	v, ok := os.LookupEnv(SpecEnv)
	if !ok {
		return nil, nil, nil
	}
	var s Spec
	if err := json.Unmarshal([]byte(v), &s); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", SpecEnv, err)
	}
	args := os.Args
	if len(args) < 4 || args[0] != ProcName || args[2] != "--" {
		return nil, nil, fmt.Errorf("argv %q: want %s <dir> -- <vmm> [args]", args, ProcName)
	}
	return &s, args[3:], nil
}
