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
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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

	versionOnce sync.Once
	version     string
	romOnce     sync.Once
	rom         bool
}

// Snapshots: QEMU machines can be saved (Machine.Save) and restored (Config.Restore).
func (d *Driver) Snapshots() bool { return true }

// MapsSnapshotMemory reports whether this QEMU can map a snapshot's memory file
// read-only on disk yet writable to the guest (memory-backend-file's rom property, QEMU
// 8.0+). Without it (Debian 12's 7.2: readonly=on makes guest RAM a ROM), snapshots carry
// their RAM in the state and a restore loads it.
func (d *Driver) MapsSnapshotMemory() bool {
	d.romOnce.Do(func() {
		out, _ := exec.Command(d.Bin, "-object", "memory-backend-file,help").CombinedOutput()
		d.rom = strings.Contains(string(out), "rom=")
	})
	return d.rom
}

// Version is QEMU's version line, part of a snapshot's key: a state saved by one QEMU is
// not loaded by another.
func (d *Driver) Version() string {
	d.versionOnce.Do(func() {
		out, err := exec.Command(d.Bin, "--version").Output()
		if err != nil {
			d.version = "unknown"
			return
		}
		d.version, _, _ = strings.Cut(string(out), "\n")
	})
	return d.version
}

var (
	_ vmm.Driver      = (*Driver)(nil)
	_ vmm.Snapshotter = (*machine)(nil)
)

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
		// The IO-APIC timer check times the emulated 8254: under TCG on a busy host it
		// fails and the kernel panics (seen with 20 boots at once on 2 cores).
		"no_timer_check",
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
	// RAM is always a memory backend named "ram": a saved state names its RAM block,
	// and a VM restored from a snapshot's memory file and one booted cold must be able
	// to exchange states (a pause of a restored VM resumes with anonymous RAM).
	mem := strconv.Itoa(cfg.MemMB) + "M"
	ram := "memory-backend-ram,id=ram,size=" + mem
	if f := cfg.MemFile; f != nil {
		ram = "memory-backend-file,id=ram,size=" + mem + ",mem-path=" + f.Path
		if f.Shared {
			ram += ",share=on"
		} else {
			// Opened read-only (a confined QEMU must not be able to change what every
			// clone maps), mapped writable copy-on-write: rom=off, QEMU 8.0 and later
			// (MapsSnapshotMemory says whether this one can).
			ram += ",share=off,readonly=on,rom=off"
		}
	}
	args := []string{
		"-name", "vulcan-" + cfg.ID,
		"-object", ram,
		"-M", "microvm,acpi=off,memory-backend=ram",
		"-accel", accel,
		"-cpu", cpu,
		"-smp", strconv.Itoa(cfg.CPUs),
		"-m", mem,
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
		"-chardev", "socket,id=qmp,path=" + QMPSocket(cfg.Dir),
		"-mon", "chardev=qmp,mode=control",
	}
	if cfg.Restore != "" {
		// The state arrives on fd RestoreFD once QMP has set the migration capabilities.
		args = append(args, "-incoming", "defer")
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
		// QEMU connects to the agent and monitor sockets as the cell's uid.
		for _, p := range []string{sock, QMPSocket(cfg.Dir)} {
			if err := c.Own(p); err != nil {
				return nil, fmt.Errorf("socket: %w", err)
			}
			if err := os.Chmod(p, 0o600); err != nil {
				return nil, err
			}
		}
		if f := cfg.MemFile; f != nil {
			if f.Shared {
				c.Writable = append(c.Writable, f.Path)
				if err := c.Own(f.Path); err != nil {
					return nil, fmt.Errorf("memory file: %w", err)
				}
			} else {
				c.ReadOnly = append(c.ReadOnly, f.Path)
			}
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

// QMPSocket is where the driver listens for QEMU's monitor (QMP) chardev.
func QMPSocket(dir string) string { return filepath.Join(dir, "qmp.sock") }

// RestoreFD is the fd a restoring QEMU reads its saved state from.
const RestoreFD = 4

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

	qsock := QMPSocket(cfg.Dir)
	_ = os.Remove(qsock)
	qln, err := net.ListenUnix("unix", &net.UnixAddr{Name: qsock, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen for qmp: %w", err)
	}
	undo = append(undo, func() { qln.Close() })

	var state *os.File
	if cfg.Restore != "" {
		if state, err = os.Open(cfg.Restore); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		defer state.Close() // QEMU has its own copy once started
	}

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
	if state != nil {
		cmd.ExtraFiles = make([]*os.File, RestoreFD-2)
		cmd.ExtraFiles[RestoreFD-3] = state
	}
	proc, err := vmm.StartProcess(cmd)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", d.Bin, err)
	}
	if err := vmm.WritePIDFile(cfg.Dir, proc.PID()); err != nil {
		_ = proc.Stop(context.WithoutCancel(ctx), 0)
		return nil, err
	}
	m := &machine{proc: proc, ln: ln, qln: qln, console: console, dir: cfg.Dir, cell: cfg.Cell, memMB: cfg.MemMB}
	undo = append(undo, func() { _ = m.Stop(context.WithoutCancel(ctx)) })
	go func() {
		<-proc.Done()
		// Unblock pending Accepts once the VMM is gone.
		ln.Close()
		qln.Close()
	}()
	if state != nil {
		if err := m.restore(ctx); err != nil {
			return nil, fmt.Errorf("restore: %w; console: %s", err, vmm.Tail(ConsoleLog(cfg.Dir), 1024))
		}
	}
	return m, nil
}

// restore feeds the saved state on RestoreFD to a QEMU started with -incoming defer and
// waits until it has loaded, then runs the guest.
func (m *machine) restore(ctx context.Context) error {
	q, err := m.monitor(ctx)
	if err != nil {
		return err
	}
	if err := q.migrationSetup(ctx); err != nil {
		return err
	}
	if _, err := q.exec(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + strconv.Itoa(RestoreFD)}); err != nil {
		return err
	}
	if err := q.waitMigration(ctx); err != nil {
		return err
	}
	// The state was saved stopped (Save stops the vCPUs first), so QEMU keeps it so.
	_, err = q.exec(ctx, "cont", nil)
	return err
}

// monitor returns the QMP connection, accepting it on first use (QEMU connected at its
// start).
func (m *machine) monitor(ctx context.Context) (*qmp, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.qmp != nil {
		return m.qmp, nil
	}
	stop := context.AfterFunc(ctx, func() { _ = m.qln.SetDeadline(time.Now()) })
	conn, err := m.qln.Accept()
	stop()
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", errors.Join(err, ctx.Err()))
	}
	q, err := newQMP(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	m.qmp = q
	return q, nil
}

// Save stops the vCPUs and streams the VM's state into path through a unix socket QEMU
// connects to (its seccomp filter forbids the exec: transport, and 7.2 has no file:).
// The stream is capped at the VM's RAM plus room for devices: QEMU is not trusted to
// bound it.
func (m *machine) Save(ctx context.Context, path string) (err error) {
	q, err := m.monitor(ctx)
	if err != nil {
		return err
	}
	if _, err := q.exec(ctx, "stop", nil); err != nil {
		return err
	}
	if err := q.migrationSetup(ctx); err != nil {
		return err
	}
	sock := filepath.Join(m.dir, "migrate.sock")
	_ = os.Remove(sock)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return fmt.Errorf("listen for migration: %w", err)
	}
	defer os.Remove(sock)
	defer ln.Close()
	if c := m.cell; c != nil {
		if err := c.Own(sock); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	limit := int64(m.memMB)<<20 + 256<<20
	copied := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			copied <- err
			return
		}
		defer conn.Close()
		stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
		defer stop()
		n, err := io.Copy(f, io.LimitReader(conn, limit+1))
		if err == nil && n > limit {
			err = fmt.Errorf("state stream passed its %d byte cap", limit)
		}
		copied <- err
	}()
	if _, err := q.exec(ctx, "migrate", map[string]any{"uri": "unix:" + sock}); err != nil {
		ln.Close()
		<-copied
		return err
	}
	if err := q.waitMigration(ctx); err != nil {
		ln.Close()
		<-copied
		return err
	}
	if err := <-copied; err != nil {
		return fmt.Errorf("state stream: %w", err)
	}
	return f.Sync()
}

type machine struct {
	proc    *vmm.Process
	ln      *net.UnixListener
	qln     *net.UnixListener
	console *vmm.ConsoleFile
	dir     string
	cell    *cell.Spec
	memMB   int

	mu       sync.Mutex
	qmp      *qmp
	accepted bool
	stopOnce sync.Once
	stopErr  error
}

func (m *machine) PID() int                                 { return m.proc.PID() }
func (m *machine) AwaitConsole(line string) <-chan struct{} { return m.console.Await(line) }
func (m *machine) Done() <-chan struct{}                    { return m.proc.Done() }

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
		m.qln.Close()
		m.mu.Lock()
		if m.qmp != nil {
			m.qmp.close()
		}
		m.mu.Unlock()
		m.console.Close()
	})
	return m.stopErr
}
