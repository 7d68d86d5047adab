package firecracker

// What drives the VMM through the SDK, which (its CNI and netns helpers) builds only on
// Linux, where Firecracker runs.

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
	"syscall"
	"time"

	sdk "github.com/firecracker-microvm/firecracker-go-sdk"
	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"

	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
)

// jailIDs are the uid/gid the jailer drops to: the VM's own (its cell's) when the backend
// gave one, else the configured ones.
func (d *Driver) jailIDs(cfg vmm.Config) (int, int) {
	if c := cfg.Cell; c != nil && c.UID > 0 {
		return c.UID, c.GID
	}
	return d.opts.Jailer.UID, d.opts.Jailer.GID
}

// Available checks KVM and the binary (and the jailer when configured).
func (d *Driver) Available() error {
	if err := d.opts.KVMCheck(); err != nil {
		return fmt.Errorf("%w: firecracker needs KVM: %v", vmm.ErrNotAvailable, err)
	}
	if _, err := exec.LookPath(d.opts.Bin); err != nil {
		return fmt.Errorf("%w: %s not found; run `make download` on a host with internet, or set VULCAN_FIRECRACKER_BIN", vmm.ErrNotAvailable, d.opts.Bin)
	}
	if j := d.opts.Jailer; j != nil {
		if _, err := exec.LookPath(j.bin()); err != nil {
			return fmt.Errorf("%w: jailer %s not found", vmm.ErrNotAvailable, j.bin())
		}
	}
	return nil
}

// chrootRoot is where the jailer puts a VM's root: <base>/<exec name>/<id>/root.
func (d *Driver) chrootRoot(cfg vmm.Config) string {
	return filepath.Join(cfg.Dir, "jail", filepath.Base(d.opts.Bin), cfg.ID, "root")
}

// SDKConfig is the SDK configuration for cfg. Paths are host paths; under the jailer
// the SDK rewrites the socket path into the chroot.
func (d *Driver) SDKConfig(cfg vmm.Config) sdk.Config {
	c := sdk.Config{
		VMID:            cfg.ID,
		SocketPath:      APISocket(cfg.Dir),
		KernelImagePath: cfg.Kernel,
		KernelArgs:      BootArgs(cfg.Args),
		Drives: []models.Drive{{
			DriveID:      sdk.String("rootfs"),
			PathOnHost:   sdk.String(cfg.RootFS),
			IsRootDevice: sdk.Bool(true),
			IsReadOnly:   sdk.Bool(true),
		}},
		VsockDevices: []sdk.VsockDevice{{ID: "agent", Path: VsockSocket(cfg.Dir), CID: cfg.CID}},
		MachineCfg: models.MachineConfiguration{
			VcpuCount:  sdk.Int64(int64(cfg.CPUs)),
			MemSizeMib: sdk.Int64(int64(cfg.MemMB)),
		},
		// Never install signal handlers in the host process: vulcan's own SIGTERM
		// handling stops the VMs by escalation.
		ForwardSignals: []os.Signal{},
	}
	if cfg.Scratch != "" {
		c.Drives = append(c.Drives, models.Drive{
			DriveID:      sdk.String("scratch"),
			PathOnHost:   sdk.String(cfg.Scratch),
			IsRootDevice: sdk.Bool(false),
			IsReadOnly:   sdk.Bool(false),
		})
	}
	if cfg.Relocatable && d.opts.Jailer == nil {
		// Firecracker runs in the VM dir: relative names are the dir's own files, and a
		// snapshot records them so (a clone restored in its own dir opens its own).
		c.VsockDevices[0].Path = filepath.Base(VsockSocket(cfg.Dir))
		for i := range c.Drives {
			if p := sdk.StringValue(c.Drives[i].PathOnHost); filepath.Dir(p) == filepath.Clean(cfg.Dir) {
				c.Drives[i].PathOnHost = sdk.String(filepath.Base(p))
			}
		}
	}
	if cfg.Restore != "" {
		// Devices, drives and their paths come from the snapshot.
		c.Drives, c.VsockDevices, c.NetworkInterfaces = nil, nil, nil
	}
	if n := cfg.Network; n != nil {
		// The backend adds ip= to the kernel arguments itself; the SDK gets only the TAP.
		c.NetworkInterfaces = sdk.NetworkInterfaces{{
			StaticConfiguration: &sdk.StaticNetworkConfiguration{MacAddress: n.MAC, HostDevName: n.TAP},
		}}
		c.NetNS = n.NetNS
	}
	if j := d.opts.Jailer; j != nil {
		cg := j.CgroupVersion
		if cg == "" {
			cg = "2"
		}
		uid, gid := d.jailIDs(cfg)
		// Inside the chroot the sockets keep their host paths (under the chroot root),
		// so the VMM's command line still names the VM dir for the startup reclaim.
		c.JailerCfg = &sdk.JailerConfig{
			ID: cfg.ID, UID: sdk.Int(uid), GID: sdk.Int(gid), NumaNode: sdk.Int(j.NumaNode),
			ExecFile: d.opts.Bin, JailerBinary: j.bin(), ChrootBaseDir: filepath.Join(cfg.Dir, "jail"),
			ChrootStrategy: sdk.NewNaiveChrootStrategy(cfg.Kernel), CgroupVersion: cg,
		}
	}
	return c
}

// command builds the VMM process: its own process group (the stop kills the group),
// SIGKILL when vulcan dies, output to the console log. life is the VM's lifetime
// context: cancelling it kills the group.
func (d *Driver) command(life context.Context, cfg vmm.Config, console *vmm.ConsoleFile) *exec.Cmd {
	var cmd *exec.Cmd
	if j := d.opts.Jailer; j != nil {
		uid, gid := d.jailIDs(cfg)
		cmd = sdk.NewJailerCommandBuilder().
			WithBin(j.bin()).WithID(cfg.ID).WithUID(uid).WithGID(gid).WithNumaNode(j.NumaNode).
			WithExecFile(d.opts.Bin).WithChrootBaseDir(filepath.Join(cfg.Dir, "jail")).
			WithCgroupVersion(d.SDKConfig(cfg).JailerCfg.CgroupVersion).
			WithFirecrackerArgs("--api-sock", APISocket(cfg.Dir)).
			WithStdout(console).WithStderr(console).
			Build(life)
		var pre []string
		if cfg.Network != nil && cfg.Network.NetNS != "" {
			pre = append(pre, "--netns", cfg.Network.NetNS)
		}
		if c := cfg.Cell; c != nil && c.CgroupParent != "" {
			// The jailer's cgroup nests in the VM's, under its limits.
			pre = append(pre, "--parent-cgroup", c.CgroupParent)
		}
		cmd.Args = append(cmd.Args[:1], append(pre, cmd.Args[1:]...)...)
	} else {
		cmd = sdk.VMCommandBuilder{}.
			WithBin(d.opts.Bin).
			WithSocketPath(APISocket(cfg.Dir)).
			AddArgs("--id", cfg.ID).
			WithStdout(console).WithStderr(console).
			Build(life)
	}
	cmd.Dir = cfg.Dir
	cmd.SysProcAttr = vmm.ProcAttr()
	cmd.Cancel = func() error { return killGroup(cmd) }
	return cmd
}

func killGroup(cmd *exec.Cmd) error {
	if cmd.Process == nil {
		return nil
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	return cmd.Process.Kill()
}

// Start boots a VM. ctx bounds only the start: the VM runs with its own lifetime
// context, cancelled by Stop. On error everything acquired is released.
func (d *Driver) Start(ctx context.Context, cfg vmm.Config) (_ vmm.Machine, err error) {
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	if cfg.CPUs < 1 || cfg.MemMB < 1 {
		return nil, fmt.Errorf("firecracker: need at least 1 vCPU and 1 MiB (got %d, %d)", cfg.CPUs, cfg.MemMB)
	}

	vsockPath := VsockSocket(cfg.Dir)
	if d.opts.Jailer != nil {
		root := d.chrootRoot(cfg)
		if err := os.MkdirAll(filepath.Join(root, cfg.Dir), 0o750); err != nil {
			return nil, fmt.Errorf("jailer chroot: %w", err)
		}
		vsockPath = filepath.Join(root, vsockPath)
	}
	// Delete before create: a crashed run may have left them.
	_ = os.Remove(APISocket(cfg.Dir))
	_ = os.Remove(vsockPath)

	console, err := vmm.CreateConsoleFile(ConsoleLog(cfg.Dir), cfg.ConsoleLimit)
	if err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	undo = append(undo, func() { console.Close() })

	life, cancelLife := context.WithCancel(context.Background())
	undo = append(undo, cancelLife)

	cmd := d.command(life, cfg, console)
	opts := []sdk.Opt{sdk.WithProcessRunner(cmd),
		sdk.WithLogger(newLogrusEntry(d.opts.Logger.With("vmm", "firecracker", "vm", cfg.ID)))}
	if cfg.Restore != "" {
		if d.opts.Jailer != nil {
			return nil, errors.New("firecracker: restoring a snapshot under the jailer is not supported")
		}
		opts = append(opts, sdk.WithSnapshot(cfg.Restore+MemSuffix, cfg.Restore, func(c *sdk.SnapshotConfig) { c.ResumeVM = true }))
	}
	fc, err := sdk.NewMachine(life, d.SDKConfig(cfg), opts...)
	if err != nil {
		return nil, fmt.Errorf("firecracker config: %w", err)
	}
	if cfg.Restore != "" {
		// The SDK's load sequence PUTs the vsock after the load, which Firecracker
		// refuses (pre-boot only); the snapshot restores the device itself.
		fc.Handlers.FcInit = fc.Handlers.FcInit.Remove(sdk.AddVsocksHandlerName)
	}
	// The SDK would rewrite the kernel command line through a map (reordering it and
	// dropping repeated keys); it only needs that for its own ip= handling, unused here.
	fc.Handlers.FcInit = fc.Handlers.FcInit.Remove(sdk.SetupKernelArgsHandlerName)
	// Record the pid as soon as the process exists, before the API calls, so the startup
	// reclaim finds a VMM whose start was interrupted by a crash.
	fc.Handlers.FcInit = fc.Handlers.FcInit.AppendAfter(sdk.StartVMMHandlerName, sdk.Handler{
		Name: "vulcan.WritePIDFile",
		Fn: func(context.Context, *sdk.Machine) error {
			if err := vmm.WritePIDFile(cfg.Dir, cmd.Process.Pid); err != nil {
				return err
			}
			// Unless the jailer nests its cgroup in the VM's (v2), the VMM joins the
			// VM's cgroup here: before the API calls, so before the guest runs.
			if c := cfg.Cell; c != nil && (d.opts.Jailer == nil || c.CgroupParent == "") {
				for _, p := range c.CgroupProcs {
					if err := os.WriteFile(p, []byte(strconv.Itoa(cmd.Process.Pid)), 0); err != nil {
						return fmt.Errorf("join cgroup: %w", err)
					}
				}
			}
			return nil
		},
	})

	done := make(chan struct{})
	undo = append(undo, func() {
		// The process may or may not have started; if it did, make sure it is gone.
		cancelLife()
		_ = killGroup(cmd)
		if cmd.Process != nil {
			wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = fc.Wait(wctx)
		}
	})

	// The SDK ties the VMM to the context given to Start for its whole life, so it gets
	// the lifetime context; ctx only interrupts the start.
	interrupt := context.AfterFunc(ctx, cancelLife)
	err = fc.Start(life)
	if !interrupt() {
		if err == nil {
			err = errors.New("vm started after the deadline")
		}
		return nil, fmt.Errorf("start firecracker: %w (%v)", ctx.Err(), err)
	}
	if err != nil {
		return nil, fmt.Errorf("start firecracker: %w; console: %s", err, vmm.Tail(ConsoleLog(cfg.Dir), 2048))
	}
	go func() {
		_ = fc.Wait(context.Background())
		close(done)
	}()
	return &machine{fc: fc, cmd: cmd, cancel: cancelLife, done: done, vsock: vsockPath, console: console, dir: cfg.Dir}, nil
}

type machine struct {
	fc      *sdk.Machine
	cmd     *exec.Cmd
	cancel  context.CancelFunc
	done    chan struct{}
	vsock   string
	console *vmm.ConsoleFile
	dir     string

	stopOnce sync.Once
	stopErr  error
}

func (m *machine) PID() int                                 { return m.cmd.Process.Pid }
func (m *machine) AwaitConsole(line string) <-chan struct{} { return m.console.Await(line) }

// Save pauses the vCPUs and writes a full snapshot: the state at path, guest memory at
// path+MemSuffix (which a restore maps copy-on-write). The VM stays paused.
func (m *machine) Save(ctx context.Context, path string) error {
	if err := m.fc.PauseVM(ctx); err != nil {
		return fmt.Errorf("pause: %w", err)
	}
	if err := m.fc.CreateSnapshot(ctx, path+MemSuffix, path); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}
func (m *machine) Done() <-chan struct{} { return m.done }

// Escalation deadlines.
var (
	politeWait = 1 * time.Second
	termWait   = 2 * time.Second
)

// Stop: Ctrl-Alt-Del through the API (the guest may power off), 1 s; SIGTERM
// (StopVMM), 2 s; SIGKILL to the process group. A VMM already gone is success.
func (m *machine) Stop(ctx context.Context) error {
	m.stopOnce.Do(func() {
		m.stopErr = m.stop(ctx)
		m.console.Close()
	})
	return m.stopErr
}

func (m *machine) stop(ctx context.Context) error {
	defer m.cancel()
	if m.exited() {
		return nil
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), politeWait)
	_ = m.fc.Shutdown(actx) // fails when the API is already gone; the escalation follows
	cancel()
	if m.wait(ctx, politeWait) {
		return nil
	}
	_ = m.fc.StopVMM()
	if m.wait(ctx, termWait) {
		return nil
	}
	_ = killGroup(m.cmd)
	select {
	case <-m.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("firecracker %d did not exit after SIGKILL: %w", m.PID(), ctx.Err())
	}
}

func (m *machine) exited() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// wait reports whether the VMM exited within d (or before ctx ended).
func (m *machine) wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-m.done:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return m.exited()
}

// DialAgent connects to the agent through the hybrid vsock, retrying with backoff
// until ctx is done or the VMM exits.
func (m *machine) DialAgent(ctx context.Context) (net.Conn, error) {
	backoff := 20 * time.Millisecond
	var last error
	for {
		conn, err := DialVsock(ctx, m.vsock, AgentPort)
		if err == nil {
			return conn, nil
		}
		last = err
		t := time.NewTimer(backoff)
		select {
		case <-m.done:
			t.Stop()
			return nil, fmt.Errorf("firecracker exited before the agent answered (%v); console: %s", last, vmm.Tail(ConsoleLog(m.dir), 2048))
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("agent vsock: %w (last attempt: %v)", ctx.Err(), last)
		case <-t.C:
		}
		backoff = min(backoff*2, 500*time.Millisecond)
	}
}
