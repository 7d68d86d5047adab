package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/vulcanhq/vulcan/internal/microvm/qemu"
	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
	"github.com/vulcanhq/vulcan/internal/protocol"
)

var rowP4 = Row{"P4", "boot vs bare VMM", "cold boot through the backend's QEMU path (VMM start to the agent's hello) vs a bare QEMU boot of the same kernel and rootfs to init=/bin/true (VMM start to exit), medians"}

// BootMaxRatio is P4's target.
const BootMaxRatio = 1.10

// bootTimeout bounds one boot; TCG on a busy host takes seconds, not minutes.
const bootTimeout = 2 * time.Minute

// BootToHello is P4: the agent's cost on top of kernel boot, both boots on the same
// machine model, devices, kernel and rootfs; only init differs.
func BootToHello(ctx context.Context, o Options) (Result, error) {
	bin := o.QEMUBin
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	if _, err := exec.LookPath(bin); err != nil {
		return rowP4.Skipped(bin + " not found; install it with: apt-get install qemu-system-x86"), nil
	}
	kernel := filepath.Join(o.ImagesDir, "vmlinux")
	rootfs := filepath.Join(o.ImagesDir, "rootfs-python.ext4")
	for _, f := range []string{kernel, rootfs} {
		if _, err := os.Stat(f); err != nil {
			return rowP4.Skipped(fmt.Sprintf("no %s in %s; run `make images`", filepath.Base(f), o.ImagesDir)), nil
		}
	}
	accel := o.Accel
	if accel == "" {
		accel = qemu.AccelTCG
	}
	d := qemu.New(bin, accel)
	n := o.n(10, 2)
	agent, bare := make([]time.Duration, n), make([]time.Duration, n)
	for i := range n {
		var err error
		if agent[i], err = bootToHello(ctx, d, kernel, rootfs); err != nil {
			return Result{}, err
		}
		if bare[i], err = bareBoot(ctx, d, kernel, rootfs); err != nil {
			return Result{}, err
		}
		o.logf("P4: boot %d/%d: hello %s, bare %s", i+1, n, agent[i].Round(time.Millisecond), bare[i].Round(time.Millisecond))
	}
	r := rowP4.Compare(Ratio, NewSample("bare to init", bare), NewSample("to hello", agent), AtMost(BootMaxRatio))
	r.Note = "accel " + accel
	return r, nil
}

func bootConfig(dir, kernel, rootfs string) vmm.Config {
	return vmm.Config{ID: "bench", Dir: dir, Kernel: kernel, RootFS: rootfs, CPUs: 1, MemMB: 256, CID: 3}
}

func bootToHello(ctx context.Context, d *qemu.Driver, kernel, rootfs string) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "vulcan-p4-") // short: unix socket paths are limited
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	start := time.Now()
	m, err := d.Start(ctx, bootConfig(dir, kernel, rootfs))
	if err != nil {
		return 0, err
	}
	defer m.Stop(context.WithoutCancel(ctx))
	conn, err := m.DialAgent(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if _, err := protocol.NewConn(conn).ReadHello(ctx); err != nil {
		return 0, fmt.Errorf("agent hello: %w", err)
	}
	return time.Since(start), nil
}

func bareBoot(ctx context.Context, d *qemu.Driver, kernel, rootfs string) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "vulcan-p4-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	args := d.Argv(bootConfig(dir, kernel, rootfs))
	// init exits at once, the kernel panics, and panic=-1 with -no-reboot ends QEMU.
	for i, a := range args {
		if strings.HasPrefix(a, "console=") {
			args[i] = strings.Replace(a, "init=/usr/local/bin/vulcan-guest", "init=/bin/true", 1)
		}
	}
	// The agent chardev needs its socket: listen on it without ever accepting.
	ln, err := net.Listen("unix", qemu.AgentSocket(dir))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.Bin, args...)
	cmd.SysProcAttr = vmm.ProcAttr()
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("bare boot: %w: %s", err, lastLines(string(out), 5))
	}
	return time.Since(start), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
