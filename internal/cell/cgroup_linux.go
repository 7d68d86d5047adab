package cell

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// CgroupRoot is where the cgroup filesystems are mounted.
var CgroupRoot = "/sys/fs/cgroup"

// Limits are one VM's cgroup limits.
type Limits struct {
	MemoryBytes int64 // memory.max / memory.limit_in_bytes
	CPUs        int   // cpu.max = CPUs × period
	Pids        int64 // pids.max
	IOWeight    uint16
}

// CPUPeriod is the CFS period the CPU quota is a multiple of.
const CPUPeriod = 100_000 // µs

// Cgroups makes per-VM cgroups under a parent this server owns: on cgroup v2
// <root>/vulcan-<instance>.slice/<vm>; on v1 (hybrid hosts, whose controllers are bound
// to v1 hierarchies) vulcan-<instance>/<vm> under the server's own cgroup in each of
// memory, cpu, pids (and blkio) — a service nests what it starts under itself.
type Cgroups struct {
	mode   string // "v2" or "v1"; "" when unusable
	parent string // v2: group path from the root; v1: suffix under the server's own cgroups
	io     bool   // an io weight file exists
	err    error  // why cgroups are unusable
}

// v1Controllers are the v1 hierarchies a VM's cgroup spans; the first three are required.
var v1Controllers = []cgroup1.Name{cgroup1.Memory, cgroup1.Cpu, cgroup1.Pids, cgroup1.Blkio}

// NewCgroups detects the host's cgroups and makes this instance's parent. When they are
// unusable the result says why (Err) and Create fails; the backend then runs without.
func NewCgroups(instance string) *Cgroups {
	c := &Cgroups{}
	if os.Geteuid() != 0 {
		c.err = errors.New("vulcan is not root: it cannot create cgroups (run vulcan serve as root, or delegate a cgroup v2 subtree)")
		return c
	}
	name := "vulcan"
	if instance != "" {
		name += "-" + instance
	}
	switch cgroups.Mode() {
	case cgroups.Unified:
		c.mode, c.parent = "v2", "/"+name+".slice"
		ctrl, err := os.ReadFile(filepath.Join(CgroupRoot, "cgroup.controllers"))
		if err != nil {
			c.err = err
			break
		}
		have := strings.Fields(string(ctrl))
		for _, need := range []string{"memory", "cpu", "pids"} {
			if !slices.Contains(have, need) {
				c.err = fmt.Errorf("cgroup v2 without the %s controller (have %q)", need, have)
			}
		}
		if c.err == nil {
			_, c.err = cgroup2.NewManager(CgroupRoot, c.parent, &cgroup2.Resources{CPU: &cgroup2.CPU{}, Memory: &cgroup2.Memory{}, Pids: &cgroup2.Pids{}, IO: &cgroup2.IO{}})
			if c.err != nil { // io may be missing; the rest is what matters
				_, c.err = cgroup2.NewManager(CgroupRoot, c.parent, &cgroup2.Resources{CPU: &cgroup2.CPU{}, Memory: &cgroup2.Memory{}, Pids: &cgroup2.Pids{}})
			}
		}
		c.io = exists(filepath.Join(CgroupRoot, c.parent, "io.weight")) || exists(filepath.Join(CgroupRoot, c.parent, "io.bfq.weight"))
	case cgroups.Legacy, cgroups.Hybrid:
		c.mode, c.parent = "v1", name
		var why string
		if cgroups.Mode() == cgroups.Hybrid {
			why = " (hybrid host: the v2 mount at " + filepath.Join(CgroupRoot, "unified") + " has no controllers)"
		}
		if _, err := cgroup1.New(cgroup1.NestedPath(c.parent), &specs.LinuxResources{}, cgroup1.WithHierarchy(v1Hierarchy)); err != nil {
			c.err = fmt.Errorf("cgroup v1%s: %w", why, err)
			break
		}
		if subs, _ := v1Hierarchy(); len(subs) < 3 {
			c.err = fmt.Errorf("cgroup v1%s: need the memory, cpu and pids controllers", why)
		}
		c.io = exists(filepath.Join(CgroupRoot, "blkio", "blkio.weight"))
	default:
		c.err = errors.New("no cgroup filesystem mounted at " + CgroupRoot)
	}
	if c.err != nil {
		c.mode = ""
	}
	return c
}

func v1Hierarchy() ([]cgroup1.Subsystem, error) {
	all, err := cgroup1.Default()
	if err != nil {
		return nil, err
	}
	var out []cgroup1.Subsystem
	for _, s := range all {
		if slices.Contains(v1Controllers, s.Name()) {
			out = append(out, s)
		}
	}
	return out, nil
}

// Err says why cgroups are unusable; nil when VMs get them.
func (c *Cgroups) Err() error { return c.err }

// Mode is "v2", "v1" or "" (unusable).
func (c *Cgroups) Mode() string { return c.mode }

// Parent is the parent group: a path from the v2 root, or the v1 suffix.
func (c *Cgroups) Parent() string { return c.parent }

// IOWeight reports whether VMs get an io weight (the controller or its file exists).
func (c *Cgroups) IOWeight() bool { return c.io }

// Group is one VM's cgroup.
type Group struct {
	// Procs are the cgroup.procs files a process writes its pid to to join.
	Procs []string
	// Paths are the group's directories, for tests and messages.
	Paths []string
	// V2 is the group's path from the v2 root; "" on v1.
	V2  string
	del func() error
}

// Delete kills what is left in the group and removes it. Idempotent.
func (g *Group) Delete() error {
	if g == nil || g.del == nil {
		return nil
	}
	return g.del()
}

// Create makes the VM's cgroup with its limits.
func (c *Cgroups) Create(id string, l Limits) (*Group, error) {
	if c.err != nil {
		return nil, c.err
	}
	_ = c.remove(id) // delete before create: a crashed run may have left it
	if c.mode == "v2" {
		return c.createV2(id, l)
	}
	return c.createV1(id, l)
}

func (c *Cgroups) createV2(id string, l Limits) (*Group, error) {
	quota, period := int64(l.CPUs)*CPUPeriod, uint64(CPUPeriod)
	res := &cgroup2.Resources{
		CPU:    &cgroup2.CPU{Max: cgroup2.NewCPUMax(&quota, &period)},
		Memory: &cgroup2.Memory{Max: &l.MemoryBytes},
		Pids:   &cgroup2.Pids{Max: l.Pids},
	}
	group := c.parent + "/" + id
	m, err := cgroup2.NewManager(CgroupRoot, group, res)
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", group, err)
	}
	dir := filepath.Join(CgroupRoot, group)
	if c.io && l.IOWeight > 0 {
		w := strconv.Itoa(int(l.IOWeight))
		if err := os.WriteFile(filepath.Join(dir, "io.weight"), []byte("default "+w), 0); err != nil {
			_ = os.WriteFile(filepath.Join(dir, "io.bfq.weight"), []byte(w), 0)
		}
	}
	return &Group{
		Procs: []string{filepath.Join(dir, "cgroup.procs")},
		Paths: []string{dir},
		V2:    strings.TrimPrefix(group, "/"),
		del:   func() error { return deleteV2(m, dir) },
	}, nil
}

// deleteV2 kills the group's processes and removes it with any group nested in it (the
// jailer's).
func deleteV2(m *cgroup2.Manager, dir string) error {
	_ = m.Kill()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() {
			sub := filepath.Join(dir, e.Name())
			_ = retry(func() error { return os.Remove(sub) })
		}
	}
	return retry(m.Delete)
}

func (c *Cgroups) createV1(id string, l Limits) (*Group, error) {
	quota, period := int64(l.CPUs)*CPUPeriod, uint64(CPUPeriod)
	res := &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &l.MemoryBytes},
		CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
		Pids:   &specs.LinuxPids{Limit: &l.Pids},
	}
	if c.io && l.IOWeight > 0 {
		res.BlockIO = &specs.LinuxBlockIO{Weight: &l.IOWeight}
	}
	path := cgroup1.NestedPath(c.parent + "/" + id)
	cg, err := cgroup1.New(path, res, cgroup1.WithHierarchy(v1Hierarchy))
	if err != nil {
		return nil, fmt.Errorf("cgroup %s/%s: %w", c.parent, id, err)
	}
	g := &Group{del: func() error { return deleteV1(cg) }}
	for _, s := range cg.Subsystems() {
		p, ok := s.(interface{ Path(string) string })
		if !ok {
			continue
		}
		rel, err := path(s.Name())
		if err != nil {
			continue
		}
		dir := p.Path(rel)
		g.Paths = append(g.Paths, dir)
		g.Procs = append(g.Procs, filepath.Join(dir, "cgroup.procs"))
	}
	return g, nil
}

func deleteV1(cg cgroup1.Cgroup) error {
	if procs, err := cg.Processes(cgroup1.Memory, true); err == nil {
		for _, p := range procs {
			_ = syscall.Kill(p.Pid, syscall.SIGKILL)
		}
	}
	return retry(func() error {
		err := cg.Delete()
		if errors.Is(err, cgroup1.ErrCgroupDeleted) {
			return nil
		}
		return err
	})
}

// retry gives the kernel a moment: a group whose last process was just reaped may still
// count it.
func retry(f func() error) error {
	var err error
	for i := 0; i < 50; i++ {
		if err = f(); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

// remove deletes the VM's cgroup if it exists (killing what is in it).
func (c *Cgroups) remove(id string) error {
	switch c.mode {
	case "v2":
		m, err := cgroup2.Load(c.parent + "/" + id)
		if err != nil || !exists(filepath.Join(CgroupRoot, c.parent, id)) {
			return nil
		}
		return deleteV2(m, filepath.Join(CgroupRoot, c.parent, id))
	case "v1":
		cg, err := cgroup1.Load(cgroup1.NestedPath(c.parent+"/"+id), cgroup1.WithHierarchy(v1Hierarchy))
		if err != nil {
			return nil
		}
		return deleteV1(cg)
	}
	return nil
}

// Reclaim removes every VM cgroup under this instance's parent, killing what is in them:
// it runs before the backend accepts work, so all of them are a crashed run's. Another
// instance's parent is never touched. It returns how many it removed.
func (c *Cgroups) Reclaim() (int, error) {
	var dir string
	switch c.mode {
	case "v2":
		dir = filepath.Join(CgroupRoot, c.parent)
	case "v1":
		paths, err := cgroup1.ParseCgroupFile("/proc/self/cgroup")
		if err != nil {
			return 0, err
		}
		dir = filepath.Join(CgroupRoot, "memory", paths["memory"], c.parent)
	default:
		return 0, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		return 0, err
	}
	var errs []error
	n := 0
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if err := c.remove(e.Name()); err != nil {
			errs = append(errs, fmt.Errorf("cgroup %s: %w", e.Name(), err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// RemoveParent removes this instance's (empty) parent group; tests use it, a server keeps
// its parent across restarts.
func (c *Cgroups) RemoveParent() error {
	switch c.mode {
	case "v2":
		return os.Remove(filepath.Join(CgroupRoot, c.parent))
	case "v1":
		cg, err := cgroup1.Load(cgroup1.NestedPath(c.parent), cgroup1.WithHierarchy(v1Hierarchy))
		if err != nil {
			return nil
		}
		return cg.Delete()
	}
	return nil
}
