package cell

import (
	"bufio"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// UIDBase is the bottom of the uid range VMMs run as. Each server instance takes a
// 65,536-wide slice of [UIDBase, 2^31) chosen by its id, and a VM's uid (and gid) is the
// slice's start plus its CID, so no two VMs of a server share one. No passwd entry is
// needed: nothing resolves these ids by name.
const UIDBase = 1 << 30

// RootDirName is the mount point of a cell's root in the VM dir.
const RootDirName = ".cell"

// InstanceUIDBase is the start of instance's uid slice.
func InstanceUIDBase(instance string) int {
	h := fnv.New32a()
	h.Write([]byte(instance))
	return UIDBase + int(h.Sum32()%16384)*65536
}

// Status is what /proc/<pid>/status says of a process's privileges.
type Status struct {
	UID, GID                               [4]int // real, effective, saved, filesystem
	CapInh, CapPrm, CapEff, CapBnd, CapAmb uint64
	NoNewPrivs, Seccomp                    int
}

// ReadStatus parses /proc/<pid>/status.
func ReadStatus(pid int) (Status, error) {
	var st Status
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return st, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		hex := func() uint64 { n, _ := strconv.ParseUint(fs[0], 16, 64); return n }
		switch k {
		case "Uid", "Gid":
			ids := &st.UID
			if k == "Gid" {
				ids = &st.GID
			}
			for i := 0; i < 4 && i < len(fs); i++ {
				ids[i], _ = strconv.Atoi(fs[i])
			}
		case "CapInh":
			st.CapInh = hex()
		case "CapPrm":
			st.CapPrm = hex()
		case "CapEff":
			st.CapEff = hex()
		case "CapBnd":
			st.CapBnd = hex()
		case "CapAmb":
			st.CapAmb = hex()
		case "NoNewPrivs":
			st.NoNewPrivs, _ = strconv.Atoi(fs[0])
		case "Seccomp":
			st.Seccomp, _ = strconv.Atoi(fs[0])
		}
	}
	return st, sc.Err()
}

// Confined says what, if anything, is wrong with a cell process's privileges: every uid
// and gid non-zero, no capability in any set, no_new_privs.
func (st Status) Confined() error {
	var errs []error
	for i := 0; i < 4; i++ {
		if st.UID[i] == 0 || st.GID[i] == 0 {
			errs = append(errs, fmt.Errorf("uid %v gid %v: root", st.UID, st.GID))
			break
		}
	}
	if st.CapInh|st.CapPrm|st.CapEff|st.CapBnd|st.CapAmb != 0 {
		errs = append(errs, fmt.Errorf("capabilities inh %x prm %x eff %x bnd %x amb %x", st.CapInh, st.CapPrm, st.CapEff, st.CapBnd, st.CapAmb))
	}
	if st.NoNewPrivs != 1 {
		errs = append(errs, errors.New("no_new_privs not set"))
	}
	return errors.Join(errs...)
}

// ReadMounts returns the mount points of pid's mount namespace, as it sees them.
func ReadMounts(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		fs := strings.Fields(l)
		if len(fs) > 4 {
			out = append(out, unescape(fs[4]))
		}
	}
	return out, nil
}

func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Needed lists the mount points the cell has: its root, /usr, the linker cache, the VM
// dir and the files and devices of the spec.
func (s *Spec) Needed() []string {
	out := []string{"/", "/usr", "/etc/ld.so.cache", s.Dir}
	for _, l := range []string{"/lib", "/lib64", "/bin", "/sbin"} {
		if _, err := os.Readlink(l); err != nil {
			out = append(out, l)
		}
	}
	for _, p := range s.ReadOnly {
		if !strings.HasPrefix(p, "/usr/") {
			out = append(out, p)
		}
	}
	out = append(out, s.Writable...)
	out = append(out, DefaultDevices...)
	return append(out, s.Devices...)
}

// OnlyNeeded fails when mounts (a cell process's, from ReadMounts) hold any mount point
// the cell does not need.
func (s *Spec) OnlyNeeded(mounts []string) error {
	need := s.Needed()
	var extra []string
	for _, m := range mounts {
		if !slices.Contains(need, filepath.Clean(m)) {
			extra = append(extra, m)
		}
	}
	if len(extra) > 0 {
		return fmt.Errorf("mounts beyond what the VMM needs: %q", extra)
	}
	if !slices.Contains(mounts, s.Dir) {
		return fmt.Errorf("the VM dir %s is not mounted: not a cell's namespace?", s.Dir)
	}
	return nil
}

// InGroup reports whether pid is in g in every hierarchy g spans.
func InGroup(pid int, g *Group) (bool, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return false, err
	}
	var paths []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if parts := strings.SplitN(l, ":", 3); len(parts) == 3 && parts[2] != "/" {
			paths = append(paths, parts[2])
		}
	}
	for _, dir := range g.Paths {
		found := false
		for _, p := range paths {
			if strings.HasSuffix(dir, p) {
				found = true
			}
		}
		if !found {
			return false, nil
		}
	}
	return len(g.Paths) > 0, nil
}

// ReadLimits reads a group's limits back from the cgroup files (v2 or v1).
func ReadLimits(g *Group) (Limits, error) {
	var l Limits
	read := func(name string) (string, bool) {
		for _, d := range g.Paths {
			if b, err := os.ReadFile(filepath.Join(d, name)); err == nil {
				return strings.TrimSpace(string(b)), true
			}
		}
		return "", false
	}
	num := func(s string) int64 { n, _ := strconv.ParseInt(s, 10, 64); return n }
	if v, ok := read("memory.max"); ok {
		l.MemoryBytes = num(v)
	} else if v, ok := read("memory.limit_in_bytes"); ok {
		l.MemoryBytes = num(v)
	} else {
		return l, errors.New("no memory limit file")
	}
	if v, ok := read("cpu.max"); ok {
		if q, p, ok := strings.Cut(v, " "); ok && num(p) > 0 {
			l.CPUs = int(num(q) / num(p))
		}
	} else if q, ok := read("cpu.cfs_quota_us"); ok {
		if p, _ := read("cpu.cfs_period_us"); num(p) > 0 {
			l.CPUs = int(num(q) / num(p))
		}
	}
	if v, ok := read("pids.max"); ok {
		l.Pids = num(v)
	}
	if v, ok := read("io.weight"); ok {
		l.IOWeight = uint16(num(strings.TrimPrefix(v, "default ")))
	} else if v, ok := read("blkio.weight"); ok {
		l.IOWeight = uint16(num(v))
	}
	return l, nil
}
