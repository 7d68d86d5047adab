package microvm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/cell"
	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/microvm/qemu"
	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
	"github.com/vulcanhq/vulcan/internal/model"
)

// VMMOverheadMB is what a VMM may use beyond its guest's memory, added to memory.max:
// QEMU under TCG measured 90-100 MiB of RSS beyond guest RAM with the guest's memory all
// touched (README, Confinement), its translation cache included; the cache is bounded at
// qemu.TCGCacheMB, which this allows in full, plus a margin.
const VMMOverheadMB = qemu.TCGCacheMB + 128

// cellState is the backend's confinement: whether VMMs run in cells, and the cgroups.
type cellState struct {
	off      error // why VMMs run unconfined; nil: in cells
	uidBase  int
	cgroups  *cell.Cgroups
	instance string
	// ephemeral: the instance id is this process's own (no server instance), so the
	// cgroup parent is removed when it empties.
	ephemeral bool

	mu     sync.Mutex
	groups map[string]*cell.Group // by VM id, while the VM lives
	// parentMu orders creating a VM's group with removing an ephemeral parent: a
	// removal between the parent's mkdir and the group's (one per v1 hierarchy) would
	// leave the group missing from a hierarchy.
	parentMu sync.Mutex
}

// initCell decides the confinement and reclaims this instance's cgroups a crashed run
// left (their VMMs were killed by Reclaim already; anything left in them dies here).
func (b *Backend) initCell() {
	c := &b.cell
	c.groups = map[string]*cell.Group{}
	c.instance = b.cfg.Instance
	if c.instance == "" {
		c.instance, c.ephemeral = "p"+strconv.Itoa(os.Getpid()), true
	}
	switch {
	case b.cfg.Unconfined:
		c.off = errors.New("disabled by configuration")
	case os.Geteuid() != 0:
		c.off = errors.New("vulcan is not root: VMMs run as its own user (run vulcan serve as root for per-VM uids and mount namespaces)")
	}
	c.uidBase = cell.InstanceUIDBase(c.instance)
	c.cgroups = cell.NewCgroups(c.instance)
	if err := c.cgroups.Err(); err != nil {
		b.log.Warn("VMs run without cgroup limits", "reason", err)
		return
	}
	if n, err := c.cgroups.Reclaim(); err != nil {
		b.log.Warn("cgroup reclaim incomplete", "err", err)
	} else if n > 0 {
		b.log.Info("reclaimed VM cgroups left by an earlier run", "count", n)
	}
}

// cellLimits are a VM's cgroup limits: its vCPUs' worth of CPU time, its memory plus the
// VMM's overhead, and room for QEMU's threads (vCPUs, I/O workers, RCU, main loop).
func cellLimits(r model.Resources) cell.Limits {
	return cell.Limits{
		MemoryBytes: int64(r.MemMB+VMMOverheadMB) << 20,
		CPUs:        r.CPUs,
		Pids:        int64(64 + 2*r.CPUs),
		IOWeight:    100,
	}
}

// confine prepares the VM's cell (nil when VMMs run unconfined) and its cgroup, each
// undo registered right after its acquire.
func (b *Backend) confine(v *vm, job backend.Job, kernel *images.Kernel, rootfs *images.RootFS) (*cell.Spec, error) {
	c := &b.cell
	var spec *cell.Spec
	if c.off == nil {
		id := c.uidBase + int(v.cid)
		spec = &cell.Spec{
			UID: id, GID: id, Dir: v.dir, Root: filepath.Join(v.dir, cell.RootDirName),
			ReadOnly: []string{kernel.Path, rootfs.Path}, ParentPID: os.Getpid(),
		}
		if err := spec.PrepareDir(); err != nil {
			return nil, fmt.Errorf("cell: %w", err)
		}
	}
	if c.cgroups.Err() != nil {
		return spec, nil
	}
	c.parentMu.Lock()
	g, err := c.cgroups.Create(v.id, cellLimits(job.Spec.Resources))
	c.parentMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	c.mu.Lock()
	c.groups[v.id] = g
	c.mu.Unlock()
	v.cleanup.Add("remove cgroup", func(context.Context) error {
		c.mu.Lock()
		delete(c.groups, v.id)
		c.mu.Unlock()
		c.parentMu.Lock()
		defer c.parentMu.Unlock()
		err := g.Delete()
		if c.ephemeral {
			_ = c.cgroups.RemoveParent() // fails while another VM of ours has a group
		}
		return err
	})
	if spec == nil {
		// No cell, but the cgroup still applies: the driver joins the VMM to it.
		spec = &cell.Spec{Dir: v.dir}
	}
	spec.CgroupProcs, spec.CgroupParent = g.Procs, g.V2
	return spec, nil
}

// group is a live VM's cgroup (tests read its limits).
func (b *Backend) group(vmID string) *cell.Group {
	b.cell.mu.Lock()
	defer b.cell.mu.Unlock()
	return b.cell.groups[vmID]
}

// cellDetails reports each layer of the VMM's confinement as "active …" or "off: why".
func (b *Backend) cellDetails(d map[string]string) {
	c := &b.cell
	confined, why := c.off == nil, ""
	if c.off != nil {
		why = c.off.Error()
	} else if drv, _ := b.drivers.peek(); drv != nil {
		if cf, ok := drv.(vmm.Confiner); ok {
			confined, why = cf.Confines()
		}
	}
	if confined {
		d["cell_uid"] = fmt.Sprintf("active: each VMM runs as uid/gid %d+CID, no capabilities, no_new_privs", c.uidBase)
		d["cell_mount_ns"] = "active: own mount namespace, minimal read-only root"
	} else {
		d["cell_uid"] = "off: " + why
		d["cell_mount_ns"] = "off: " + why
	}
	d["cell_seccomp"] = "active: the VMM's own filter (QEMU -sandbox " + "on,…; Firecracker built-in)"
	if err := c.cgroups.Err(); err != nil {
		d["cell_cgroup"] = "off: " + err.Error()
	} else {
		io := "io weight"
		if !c.cgroups.IOWeight() {
			io = "no io weight (no io controller file here)"
		}
		d["cell_cgroup"] = fmt.Sprintf("active: cgroup %s under %s: memory = guest + %d MiB, cpu quota = vCPUs, pids, %s", c.cgroups.Mode(), c.cgroups.Parent(), VMMOverheadMB, io)
	}
}
