//go:build !linux

package cell

import (
	"errors"
	"syscall"
)

var errNotLinux = errors.New("VMM cells need Linux")

// SysProcAttr: no cell outside Linux.
func SysProcAttr(a *syscall.SysProcAttr) *syscall.SysProcAttr { return a }

// Limits are one VM's cgroup limits.
type Limits struct {
	MemoryBytes int64
	CPUs        int
	Pids        int64
	IOWeight    uint16
}

// Cgroups is unusable outside Linux.
type Cgroups struct{}

// Group is one VM's cgroup.
type Group struct {
	Procs, Paths []string
	V2           string
}

func NewCgroups(string) *Cgroups                         { return &Cgroups{} }
func (c *Cgroups) Err() error                            { return errNotLinux }
func (c *Cgroups) Mode() string                          { return "" }
func (c *Cgroups) Parent() string                        { return "" }
func (c *Cgroups) IOWeight() bool                        { return false }
func (c *Cgroups) Create(string, Limits) (*Group, error) { return nil, errNotLinux }
func (c *Cgroups) Reclaim() (int, error)                 { return 0, nil }
func (c *Cgroups) RemoveParent() error                   { return nil }
func (g *Group) Delete() error                           { return nil }

// InstanceUIDBase is the start of instance's uid slice.
func InstanceUIDBase(string) int { return UIDBase }

// UIDBase is the bottom of the uid range VMMs run as.
const UIDBase = 1 << 30

// RootDirName is the mount point of a cell's root in the VM dir.
const RootDirName = ".cell"

// Probe: no cells outside Linux.
func Probe() error { return errNotLinux }
