// Package qemu drives `qemu-system-x86_64 -M microvm`: the same kernel, rootfs and agent
// as Firecracker, for hosts where Firecracker cannot run. KVM when usable, else TCG. The
// agent channel is a virtio-serial port named vulcan.agent whose chardev connects to a
// unix socket the driver listens on before QEMU starts (QEMU without vhost-vsock has no
// vsock), so the host end exists before the guest can write to it.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/vulcanhq/vulcan/internal/cell"
	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
)

// Accelerations.
const (
	AccelKVM = "kvm"
	AccelTCG = "tcg"
)

// AgentPortName is the virtio-serial port the agent listens on.
const AgentPortName = "vulcan.agent"

// Driver starts microvm-machine QEMU processes.
type Driver struct {
	Bin   string // qemu-system-x86_64
	accel string
	// NSEnter, when the VM has a network, runs QEMU inside the VM's netns.
	NSEnter string
}

var _ vmm.Driver = (*Driver)(nil)

// New returns a driver for bin with the given acceleration ("kvm" or "tcg").
func New(bin, accel string) *Driver {
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	return &Driver{Bin: bin, accel: accel, NSEnter: "nsenter"}
}

func (d *Driver) Name() string  { return "qemu" }
func (d *Driver) Accel() string { return d.accel }

// Available checks the QEMU binary can be found.
func (d *Driver) Available() error {
	if _, err := exec.LookPath(d.Bin); err != nil {
		return fmt.Errorf("%w: %s not found; install it with: apt-get install qemu-system-x86", vmm.ErrNotAvailable, d.Bin)
	}
	return nil
}

// BootArgs are the kernel arguments for a QEMU microvm guest: 8250 console, root on the
// first virtio-blk device read-only (the agent overlays a writable layer), the agent as
// init on the serial port, and reboot=t so the agent's reboot makes QEMU (-no-reboot) exit.
func BootArgs(extra []string) string {
	return vmm.KernelArgs([]string{
		"console=ttyS0", "reboot=t", "panic=-1", "quiet",
		"root=/dev/vda", "ro", "rootfstype=ext4",
		"init=/usr/local/bin/vulcan-guest",
		"random.trust_cpu=on", "i8042.noaux", "i8042.nokbd",
		"vulcan.listen=serial:" + AgentPortName,
	}, extra)
}

// Argv is the QEMU command line for cfg, without the binary.
func (d *Driver) Argv(cfg vmm.Config) []string {
	cpu, accel := "max", d.accel
	if d.accel == AccelKVM {
		cpu = "host"
	} else if d.accel == AccelTCG {
		// TCG's translation cache otherwise grows to 1 GiB on a large host: bounded, the
		// VMM's memory beyond guest RAM is bounded too (the cgroup's memory.max counts it).
		accel += ",tb-size=" + strconv.Itoa(TCGCacheMB)
	}
	args := []string{
		"-name", "vulcan-" + cfg.ID,
		"-M", "microvm,acpi=off",
		"-accel", accel,
		"-cpu", cpu,
		"-smp", strconv.Itoa(cfg.CPUs),
		"-m", strconv.Itoa(cfg.MemMB) + "M",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		// QEMU's own seccomp filter: no exec, no setuid/setgid, no scheduler or
		// resource changes, no obsolete syscalls.
		"-sandbox", Sandbox,
		"-serial", "stdio",
		"-kernel", cfg.Kernel,
		"-append", BootArgs(cfg.Args),
		"-drive", "id=root,file=" + cfg.RootFS + ",format=raw,if=none,readonly=on",
		"-device", "virtio-blk-device,drive=root",
		"-object", "rng-random,id=rng,filename=/dev/urandom",
		"-device", "virtio-rng-device,rng=rng",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path=" + AgentSocket(cfg.Dir),
		"-device", "virtserialport,chardev=agent,name=" + AgentPortName,
	}
	if cfg.Scratch != "" {
		args = append(args,
			"-drive", "id=scratch,file="+cfg.Scratch+",format=raw,if=none,discard=unmap",
			"-device", "virtio-blk-device,drive=scratch")
	}
	if n := cfg.Network; n != nil {
		netdev := "tap,id=net0,ifname=" + n.TAP + ",script=no,downscript=no"
		if cfg.Cell != nil {
			// An unprivileged QEMU cannot attach a root-owned TAP: the cell opens it.
			netdev = "tap,id=net0,fd=" + strconv.Itoa(cell.TAPFD)
		}
		args = append(args, "-netdev", netdev, "-device", "virtio-net-device,netdev=net0,mac="+n.MAC)
	}
	return args
}

// TCGCacheMB is the TCG translation cache size (MiB).
const TCGCacheMB = 256

// Sandbox is QEMU's -sandbox setting.
const Sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// Confines: QEMU always runs in the cell it is given.
func (d *Driver) Confines() (bool, string) { return true, "" }

// command is the VMM process: in its cell when cfg has one (the cell joins the netns and
// opens the TAP), else QEMU itself, through nsenter for a netns.
func (d *Driver) command(cfg vmm.Config, sock string) (*exec.Cmd, error) {
	if c := cfg.Cell; c != nil {
		if d.accel == AccelKVM {
			c.Devices = append(c.Devices, "/dev/kvm")
		}
		if n := cfg.Network; n != nil {
			c.NetNS, c.TAP = n.NetNS, n.TAP
		}
		// QEMU connects to the agent socket as the cell's uid.
		if err := c.Own(sock); err != nil {
			return nil, fmt.Errorf("agent socket: %w", err)
		}
		if err := os.Chmod(sock, 0o600); err != nil {
			return nil, err
		}
		cmd, err := c.Command(d.Bin, d.Argv(cfg))
		if err != nil {
			return nil, fmt.Errorf("cell: %w", err)
		}
		cmd.SysProcAttr = cell.SysProcAttr(vmm.ProcAttr())
		return cmd, nil
	}
	argv := append([]string{d.Bin}, d.Argv(cfg)...)
	if cfg.Network != nil && cfg.Network.NetNS != "" {
		argv = append([]string{d.NSEnter, "--net=" + cfg.Network.NetNS, "--"}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = vmm.ProcAttr()
	return cmd, nil
}

// AgentSocket is where the driver listens for QEMU's agent chardev.
func AgentSocket(dir string) string { return filepath.Join(dir, "agent.sock") }

// ConsoleLog is the per-VM serial console capture.
func ConsoleLog(dir string) string { return filepath.Join(dir, "console.log") }

// Start boots a VM. On error everything it acquired is released.
func (d *Driver) Start(ctx context.Context, cfg vmm.Config) (_ vmm.Machine, err error) {
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	sock := AgentSocket(cfg.Dir)
	_ = os.Remove(sock) // delete before create: a crashed run may have left it
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen for agent: %w", err)
	}
	undo = append(undo, func() { ln.Close() })

	console, err := vmm.CreateConsoleFile(ConsoleLog(cfg.Dir), cfg.ConsoleLimit)
	if err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	undo = append(undo, func() { console.Close() })

	cmd, err := d.command(cfg, sock)
	if err != nil {
		return nil, err
	}
	cmd.Dir = cfg.Dir
	cmd.Stdout, cmd.Stderr = console, console
	proc, err := vmm.StartProcess(cmd)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", d.Bin, err)
	}
	if err := vmm.WritePIDFile(cfg.Dir, proc.PID()); err != nil {
		_ = proc.Stop(context.WithoutCancel(ctx), 0)
		return nil, err
	}
	m := &machine{proc: proc, ln: ln, console: console, dir: cfg.Dir}
	go func() {
		<-proc.Done()
		// Unblock a pending Accept once the VMM is gone.
		ln.Close()
	}()
	return m, nil
}

type machine struct {
	proc    *vmm.Process
	ln      *net.UnixListener
	console *vmm.ConsoleFile
	dir     string

	mu       sync.Mutex
	accepted bool
	stopOnce sync.Once
	stopErr  error
}

func (m *machine) PID() int              { return m.proc.PID() }
func (m *machine) Done() <-chan struct{} { return m.proc.Done() }

// DialAgent accepts QEMU's connection to the agent socket. QEMU connects once, at start.
func (m *machine) DialAgent(ctx context.Context) (net.Conn, error) {
	m.mu.Lock()
	if m.accepted {
		m.mu.Unlock()
		return nil, errors.New("qemu: agent channel already taken")
	}
	m.accepted = true
	m.mu.Unlock()

	if dl, ok := ctx.Deadline(); ok {
		_ = m.ln.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = m.ln.SetDeadline(time.Now()) })
	defer stop()
	conn, err := m.ln.Accept()
	if err != nil {
		select {
		case <-m.proc.Done():
			return nil, fmt.Errorf("qemu exited before the agent channel opened (%v); console: %s", m.proc.Err(), vmm.Tail(ConsoleLog(m.dir), 2048))
		default:
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("agent channel: %w", ctx.Err())
		}
		return nil, fmt.Errorf("agent channel: %w", err)
	}
	return conn, nil
}

// Stop: SIGTERM (QEMU exits cleanly on it), 2 s, then SIGKILL.
func (m *machine) Stop(ctx context.Context) error {
	m.stopOnce.Do(func() {
		m.stopErr = m.proc.Stop(ctx, 2*time.Second)
		m.ln.Close()
		m.console.Close()
	})
	return m.stopErr
}
