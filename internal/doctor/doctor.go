// Package doctor checks what the microVM backend needs on this host and says, for each
// missing piece, the exact command that fixes it. `vulcan doctor` prints its report.
package doctor

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/vulcanhq/vulcan/internal/cell"
	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/microvm/qemu"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/protocol"
)

// Options say where to look. Zero fields take the host's defaults; tests point them at
// fake roots.
type Options struct {
	ImagesDir      string
	StateDir       string
	DevKVM         string // default /dev/kvm
	FirecrackerBin string // default "firecracker"
	QEMUBin        string // default "qemu-system-x86_64"
	CNIBinDir      string // where the CNI plugins are built; empty skips the check
	// LookPath and Output are exec.LookPath and a command runner; tests replace them.
	LookPath func(string) (string, error)
	Output   func(ctx context.Context, name string, args ...string) (string, error)
	// ProbeKVM, when set, is asked whether KVM can really run a guest (a test boot).
	ProbeKVM func(ctx context.Context) (ok bool, reason string)
	// ProbeCell builds a VMM cell and runs a no-op in it (uid drop, mount namespace);
	// default cell.Probe. Cgroups says which cgroups VMs get (mode, parent) or why none;
	// default: detect as a server would. Tests replace both.
	ProbeCell func() error
	Cgroups   func() (mode, parent string, ioWeight bool, err error)
}

// Check is one line of the report.
type Check struct {
	Name     string `json:"name"`
	OK       bool   `json:"ok"`
	Detail   string `json:"detail"`
	Fix      string `json:"fix,omitempty"`
	Required bool   `json:"required"` // the microvm backend cannot run without it
}

// Report is every check plus the verdict.
type Report struct {
	Checks []Check `json:"checks"`
	// MicroVM is true when the microvm backend can run with what is here.
	MicroVM bool   `json:"microvm_available"`
	VMM     string `json:"vmm,omitempty"` // the VMM auto selection would pick
}

// Run performs every check.
func Run(ctx context.Context, o Options) Report {
	o.defaults()
	var r Report

	kvmErr := kvmAccess(o.DevKVM)
	kvm := Check{Name: "kvm", OK: kvmErr == nil, Detail: o.DevKVM + " is usable"}
	if kvmErr != nil {
		kvm.Detail = kvmErr.Error()
		kvm.Fix = "run on a host with hardware virtualization (bare metal or nested KVM) and give this user rw access to /dev/kvm (e.g. usermod -aG kvm $USER); without it Vulcan uses QEMU with TCG"
	} else if o.ProbeKVM != nil {
		if ok, reason := o.ProbeKVM(ctx); !ok {
			kvmErr = fmt.Errorf("%s", reason)
			kvm.OK, kvm.Detail = false, reason
			kvm.Fix = "KVM here cannot run guests; Vulcan falls back to QEMU with TCG (slower but isolated)"
		}
	}
	r.Checks = append(r.Checks, kvm)

	fc := Check{Name: "firecracker"}
	if p, err := o.LookPath(o.FirecrackerBin); err != nil {
		fc.Detail = o.FirecrackerBin + " not found"
		fc.Fix = "make download (needs internet), or set VULCAN_FIRECRACKER_BIN to a firecracker binary"
	} else {
		out, err := o.Output(ctx, p, "--version")
		fc.OK = err == nil
		fc.Detail = p + ": " + firstLine(out)
		if err != nil {
			fc.Detail = fmt.Sprintf("%s --version failed: %v", p, err)
			fc.Fix = "reinstall firecracker (make download)"
		}
	}
	r.Checks = append(r.Checks, fc)

	qm := Check{Name: "qemu"}
	if p, err := o.LookPath(o.QEMUBin); err != nil {
		qm.Detail = o.QEMUBin + " not found"
		qm.Fix = "apt-get install qemu-system-x86"
	} else {
		out, err := o.Output(ctx, p, "--version")
		qm.OK = err == nil
		qm.Detail = p + ": " + firstLine(out)
		if err != nil {
			qm.Fix = "apt-get install --reinstall qemu-system-x86"
		}
	}
	r.Checks = append(r.Checks, qm)

	vmmOK := (fc.OK && kvmErr == nil) || qm.OK
	switch {
	case fc.OK && kvmErr == nil:
		r.VMM = "firecracker"
	case qm.OK:
		r.VMM = "qemu"
	}
	vmmCheck := Check{Name: "vmm", OK: vmmOK, Required: true, Detail: "auto selects " + r.VMM}
	if !vmmOK {
		vmmCheck.Detail = "no VMM can run: firecracker needs its binary and KVM, qemu needs qemu-system-x86_64"
		vmmCheck.Fix = "apt-get install qemu-system-x86"
	}
	r.Checks = append(r.Checks, vmmCheck)

	set := images.Load(o.ImagesDir)
	kc := Check{Name: "kernel", Required: true}
	if set.Kernel == nil {
		kc.Detail = "no " + filepath.Join(o.ImagesDir, images.KernelFile)
		kc.Fix = "make kernel  (≈5-15 min; needs: apt-get install linux-source-6.1 flex bison bc libelf-dev)"
	} else {
		kc.OK = true
		kc.Detail = fmt.Sprintf("%s (linux %s, %s)", set.Kernel.Path, set.Kernel.Manifest.Version, mib(set.Kernel.Manifest.SizeBytes))
	}
	r.Checks = append(r.Checks, kc)

	images := 0
	for _, rt := range model.Runtimes {
		c := Check{Name: "rootfs-" + string(rt)}
		fs := set.RootFS[rt]
		switch {
		case fs == nil:
			c.Detail = "no usable image in " + o.ImagesDir
			c.Fix = "make rootfs RUNTIME=" + string(rt)
		case agentProtocol(fs.Manifest.AgentVersion) != protocol.Version:
			c.Detail = fmt.Sprintf("%s has agent %q; this vulcan speaks protocol %d", fs.Path, fs.Manifest.AgentVersion, protocol.Version)
			c.Fix = "make rootfs RUNTIME=" + string(rt) + "  (rebuilds with the current agent in seconds)"
		default:
			c.OK = true
			images++
			c.Detail = fmt.Sprintf("%s (%s %s, %s, agent %s)", fs.Path, rt, fs.Manifest.RuntimeVersion, mib(fs.Manifest.SizeBytes), fs.Manifest.AgentVersion)
		}
		r.Checks = append(r.Checks, c)
	}
	ic := Check{Name: "runtime images", OK: images > 0, Required: true, Detail: fmt.Sprintf("%d of %d runtimes usable", images, len(model.Runtimes))}
	if images == 0 {
		ic.Fix = "make images"
	}
	r.Checks = append(r.Checks, ic)

	sc := Check{Name: "state dir", Required: true}
	if err := writable(o.StateDir); err != nil {
		sc.Detail = err.Error()
		sc.Fix = "mkdir -p " + o.StateDir + " and make it writable, or set VULCAN_DATA_DIR"
	} else {
		sc.OK, sc.Detail = true, o.StateDir+" is writable"
	}
	r.Checks = append(r.Checks, sc)

	r.Checks = append(r.Checks, o.networkChecks(ctx)...)
	r.Checks = append(r.Checks, o.cellChecks(ctx, qm.OK)...)

	r.MicroVM = true
	for _, c := range r.Checks {
		if c.Required && !c.OK {
			r.MicroVM = false
		}
	}
	return r
}

// networkChecks cover what per-VM networking needs. They are not required: without them
// workloads still run with network "none".
func (o *Options) networkChecks(ctx context.Context) []Check {
	var out []Check
	ip := Check{Name: "netns"}
	if p, err := o.LookPath("ip"); err != nil {
		ip.Detail, ip.Fix = "ip (iproute2) not found", "apt-get install iproute2"
	} else if os.Geteuid() != 0 {
		ip.Detail, ip.Fix = p+" found, but network namespaces need root", "run vulcan serve as root for per-VM networking"
	} else {
		ip.OK, ip.Detail = true, p+" found, running as root"
	}
	out = append(out, ip)
	nft := Check{Name: "nftables"}
	if p, err := o.LookPath("nft"); err != nil {
		nft.Detail, nft.Fix = "nft not found", "apt-get install nftables"
	} else {
		nft.OK, nft.Detail = true, p+" found"
	}
	out = append(out, nft)
	if o.CNIBinDir != "" {
		c := Check{Name: "cni plugins", OK: true, Detail: "bridge, host-local, vulcan-cni-tap in " + o.CNIBinDir}
		for _, p := range []string{"bridge", "host-local", "vulcan-cni-tap"} {
			if st, err := os.Stat(filepath.Join(o.CNIBinDir, p)); err != nil || st.Mode()&0o111 == 0 {
				c.OK, c.Detail, c.Fix = false, "missing "+filepath.Join(o.CNIBinDir, p), "make build"
				break
			}
		}
		out = append(out, c)
	}
	return out
}

// cellChecks report each layer of the VMM's confinement (internal/cell) as active or why
// not. They are not required: without them VMs still run, less confined.
func (o *Options) cellChecks(ctx context.Context, haveQEMU bool) []Check {
	cellErr := o.ProbeCell()
	uid := Check{Name: "cell: uid drop", OK: cellErr == nil,
		Detail: fmt.Sprintf("each VMM runs as its own uid/gid (from %d + instance slice + CID), no capabilities, no_new_privs", cell.UIDBase)}
	mnt := Check{Name: "cell: mount ns", OK: cellErr == nil,
		Detail: "each VMM has its own mount namespace: a read-only root with /usr, its kernel, rootfs, VM dir and devices"}
	if cellErr != nil {
		uid.Detail, mnt.Detail = "off: "+cellErr.Error(), "off: "+cellErr.Error()
		uid.Fix = "run vulcan serve as root"
		mnt.Fix = uid.Fix
	}
	sc := Check{Name: "cell: seccomp", Detail: "QEMU runs with -sandbox " + qemu.Sandbox + "; Firecracker with its built-in filters"}
	if b, err := os.ReadFile("/proc/self/status"); err != nil || !strings.Contains(string(b), "Seccomp:") {
		sc.Detail, sc.Fix = "off: this kernel has no seccomp (CONFIG_SECCOMP_FILTER)", "use a kernel with seccomp filters"
	} else if !haveQEMU {
		sc.OK, sc.Detail = true, "Firecracker's built-in filters (no QEMU here)"
	} else if p, err := o.LookPath(o.QEMUBin); err == nil {
		if out, err := o.Output(ctx, p, "--help"); err == nil && strings.Contains(out, "elevateprivileges") {
			sc.OK = true
		} else {
			sc.Detail = "off: " + o.QEMUBin + " was built without seccomp (-sandbox)"
			sc.Fix = "install Debian's qemu-system-x86 (built with libseccomp)"
		}
	}
	cg := Check{Name: "cell: cgroup"}
	if mode, parent, io, err := o.Cgroups(); err != nil {
		cg.Detail, cg.Fix = "off: "+err.Error()+"; VMs run without memory/CPU/pids limits", "run as root on a host with cgroup v2 (memory, cpu, pids controllers) or v1"
	} else {
		cg.OK = true
		cg.Detail = fmt.Sprintf("cgroup %s under %s: memory.max = guest + VMM overhead, cpu.max = vCPUs, pids.max", mode, parent)
		if io {
			cg.Detail += ", io weight"
		} else {
			cg.Detail += "; no io weight (no io/blkio weight file on this host)"
		}
	}
	return []Check{uid, mnt, sc, cg}
}

// Print writes the report for people.
func (r Report) Print(w io.Writer) {
	for _, c := range r.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "MISS"
			if !c.Required {
				mark = "warn"
			}
		}
		fmt.Fprintf(w, "[%s] %-15s %s\n", mark, c.Name, c.Detail)
		if !c.OK && c.Fix != "" {
			fmt.Fprintf(w, "       %-15s fix: %s\n", "", c.Fix)
		}
	}
	if r.MicroVM {
		fmt.Fprintf(w, "\nmicrovm backend: available (vmm %s)\n", r.VMM)
	} else {
		fmt.Fprintf(w, "\nmicrovm backend: NOT available — fix the [MISS] lines above\n")
	}
}

func (o *Options) defaults() {
	if o.DevKVM == "" {
		o.DevKVM = "/dev/kvm"
	}
	if o.FirecrackerBin == "" {
		o.FirecrackerBin = "firecracker"
	}
	if o.QEMUBin == "" {
		o.QEMUBin = "qemu-system-x86_64"
	}
	if o.LookPath == nil {
		o.LookPath = exec.LookPath
	}
	if o.ProbeCell == nil {
		o.ProbeCell = cell.Probe
	}
	if o.Cgroups == nil {
		o.Cgroups = func() (string, string, bool, error) {
			c := cell.NewCgroups("doctor")
			if err := c.Err(); err != nil {
				return "", "", false, err
			}
			defer c.RemoveParent()
			return c.Mode(), c.Parent(), c.IOWeight(), nil
		}
	}
	if o.Output == nil {
		o.Output = func(ctx context.Context, name string, args ...string) (string, error) {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			b, err := exec.CommandContext(ctx, name, args...).Output()
			return string(b), err
		}
	}
}

func kvmAccess(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("%s not usable: %v", path, err)
	}
	return f.Close()
}

func writable(dir string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".doctor-*")
	if err != nil {
		return err
	}
	name := f.Name()
	f.Close()
	return os.Remove(name)
}

var protoRe = regexp.MustCompile(`protocol (\d+)`)

// agentProtocol extracts N from an agent version line "vulcan-guest X protocol N".
func agentProtocol(v string) int {
	m := protoRe.FindStringSubmatch(v)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

func mib(n int64) string { return fmt.Sprintf("%d MiB", n>>20) }
