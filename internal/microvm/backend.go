// Package microvm is the `microvm` isolation backend: every workload runs in its own
// virtual machine booted from Vulcan's kernel and the runtime's read-only rootfs, with the
// vulcan-guest agent as PID 1. The VMM is a driver (QEMU microvm or Firecracker, package
// vmm); everything around it — images, CIDs, the agent session, limits, cleanup, metrics
// and startup reclaim — lives here and is shared by both.
package microvm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/cleanup"
	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/microvm/vmm"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/nic"
	"github.com/vulcanhq/vulcan/internal/protocol"
)

// Config configures the backend.
type Config struct {
	ImagesDir string
	StateDir  string // per-VM state dirs live here; everything in it belongs to this backend
	// BootTimeout bounds VMM start → agent hello (the workload's own timeout also applies).
	BootTimeout time.Duration
	// TeardownTimeout bounds a VM's teardown when the caller set no deadline (the
	// engine's Cleanup brings its own); default 15s.
	TeardownTimeout time.Duration
	// ConsoleLimit caps each VM's console log.
	ConsoleLimit int64
	// ScratchMB sizes each VM's scratch disk, where the guest's writes go (sparse: it
	// costs what is written). 0 puts them in a tmpfs, i.e. in the VM's memory.
	ScratchMB int
	// Templates finds user templates' images (nil: only the built-ins in ImagesDir).
	Templates TemplateImages
	Limits    model.Limits
	Logger    *slog.Logger
	Metrics   prometheus.Registerer
	// Networker gives VMs with network policy host or egress a NIC. When nil, such
	// workloads fail with ErrUnavailable and NetworkUnavailable as the reason.
	Networker          Networker
	NetworkUnavailable error
	// Instance is this server's id (internal/instance): it names the VMs' cgroup parent
	// and picks their uid slice. Empty (tests): an id of this process's own.
	Instance string
	// Unconfined runs every VMM with vulcan's privileges. By default each VMM runs in a
	// cell (internal/cell) when vulcan is root; see cell.go.
	Unconfined bool
	// SnapshotDir holds the templates' snapshots (snapshot.go), outside StateDir: they
	// outlive a restart. Empty turns snapshots off (every VM boots cold).
	SnapshotDir string
	// Pool sizes each template's warm pool (pool.go); absent or Max 0: none.
	Pool map[model.Runtime]PoolSize
}

// Networker attaches a VM to the host's network under a policy and detaches it. Attach
// releases what it acquired when it fails; Detach is idempotent and must work with a
// cancelled context. (internal/network's Manager implements it.)
type Networker interface {
	Attach(ctx context.Context, vmID string, policy model.NetworkPolicy, rules *model.NetworkRules) (*nic.NIC, error)
	Detach(ctx context.Context, vmID string) error
}

// Backend runs workloads in microVMs.
type Backend struct {
	cfg     Config
	log     *slog.Logger
	drivers *driverSlot
	cids    *cidAllocator
	metrics *metrics

	mu  sync.Mutex
	vms map[string]*vm // by workload id

	cell cellState

	snaps *snapshots // nil: snapshots off
	pool  *pool
	// bg runs snapshot builds and pool refills under bgCtx, which Close cancels.
	bg       sync.WaitGroup
	bgCtx    context.Context
	bgCancel context.CancelFunc
	roomMu   sync.Mutex
	roomFn   func(memMB, cpus int) bool
}

var _ backend.Backend = (*Backend)(nil)

// New returns the backend using the driver that resolve produces. It reclaims what a
// crashed run left in the state dir before returning.
func New(cfg Config, resolve func() (vmm.Driver, error)) (*Backend, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("microvm: no state dir")
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 60 * time.Second
	}
	if cfg.TeardownTimeout == 0 {
		cfg.TeardownTimeout = 15 * time.Second
	}
	if cfg.ConsoleLimit == 0 {
		cfg.ConsoleLimit = 1 << 20
	}
	if cfg.Limits == (model.Limits{}) {
		cfg.Limits = model.DefaultLimits
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		return nil, fmt.Errorf("microvm: state dir: %w", err)
	}
	b := &Backend{
		cfg:     cfg,
		log:     cfg.Logger.With("backend", "microvm"),
		drivers: newDriverSlot(resolve),
		cids:    newCIDAllocator(3, 1<<16),
		metrics: newMetrics(cfg.Metrics),
		vms:     map[string]*vm{},
	}
	if n, err := Reclaim(cfg.StateDir, b.log); err != nil {
		b.log.Warn("startup reclaim incomplete", "err", err)
	} else if n > 0 {
		b.log.Info("reclaimed VMs left by an earlier run", "count", n)
	}
	b.initCell()
	b.bgCtx, b.bgCancel = context.WithCancel(context.Background())
	b.snaps = newSnapshots(b, cfg.SnapshotDir)
	b.pool = newPool(b, cfg.Pool)
	b.registerPoolGauges(cfg.Metrics)
	b.pool.start()
	return b, nil
}

// SetPoolRoom gives the pool its capacity budget: f says whether the pool may hold memMB
// and cpus in all (the sandbox service answers from what live sandboxes leave).
func (b *Backend) SetPoolRoom(f func(memMB, cpus int) bool) {
	b.roomMu.Lock()
	b.roomFn = f
	b.roomMu.Unlock()
}

func (b *Backend) poolRoom() func(memMB, cpus int) bool {
	b.roomMu.Lock()
	defer b.roomMu.Unlock()
	return b.roomFn
}

// PoolStats reports the warm pool's shelves.
func (b *Backend) PoolStats() []PoolStats { return b.pool.stats() }

// Close stops snapshot builds and pool refills and stops the pool's idle VMs. VMs handed
// out are their holders' to stop.
func (b *Backend) Close(ctx context.Context) error {
	b.bgCancel()
	b.pool.drain(ctx)
	done := make(chan struct{})
	go func() { b.bg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *Backend) registerPoolGauges(reg prometheus.Registerer) {
	if reg == nil {
		return
	}
	for _, t := range model.Templates {
		idle := func() float64 {
			n := 0
			for _, s := range b.pool.stats() {
				if s.Template == t {
					n += s.Idle
				}
			}
			return float64(n)
		}
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "vulcan_pool_idle_vms",
			Help:        "Warm-pool VMs ready to be taken, by template.",
			ConstLabels: prometheus.Labels{"template": string(t)},
		}, idle))
	}
}

// Name is the isolation this backend provides.
func (b *Backend) Name() string { return string(model.IsolationMicroVM) }

// Capabilities lists the runtimes whose images exist and the VMM in use.
func (b *Backend) Capabilities() backend.Capabilities {
	set := images.Load(b.cfg.ImagesDir)
	caps := backend.Capabilities{
		Isolation: model.IsolationMicroVM,
		Runtimes:  set.Runtimes(),
		Templates: set.Templates(),
		MaxCPUs:   b.cfg.Limits.MaxCPUs,
		MaxMemMB:  b.cfg.Limits.MaxMemMB,
		Details:   map[string]string{"images_dir": b.cfg.ImagesDir},
		Network:   b.cfg.Networker != nil,
	}
	if b.cfg.Networker == nil && b.cfg.NetworkUnavailable != nil {
		caps.Details["network_error"] = b.cfg.NetworkUnavailable.Error()
	}
	if d, err := b.drivers.peek(); d != nil {
		caps.Details["vmm"] = d.Name()
		caps.Details["accel"] = d.Accel()
	} else if err != nil {
		caps.Details["vmm_error"] = err.Error()
	} else {
		caps.Details["vmm"] = "probing"
	}
	b.cellDetails(caps.Details)
	caps.Pool = b.PoolStats()
	caps.Snapshots = b.Snapshots()
	if set.Kernel != nil {
		caps.Details["kernel"] = set.Kernel.Manifest.Version
	}
	for rt, r := range set.RootFS {
		caps.Details[string(rt)] = r.Manifest.RuntimeVersion
	}
	return caps
}

// Available says whether a VM can boot here, and if not, what to run to fix it.
func (b *Backend) Available(ctx context.Context) error {
	if err := images.Load(b.cfg.ImagesDir).Usable(); err != nil {
		return err
	}
	if _, err := b.drivers.peek(); err != nil {
		return err
	}
	return nil
}

// Cleanup stops a workload's VM, if it still has one, and releases all it held.
func (b *Backend) Cleanup(ctx context.Context, workloadID string) error {
	b.mu.Lock()
	v := b.vms[workloadID]
	b.mu.Unlock()
	if v == nil {
		return nil
	}
	return v.teardown(ctx)
}

// Execute boots a VM for the job, runs it through the agent and tears the VM down.
func (b *Backend) Execute(ctx context.Context, job backend.Job, sink backend.Sink) (res backend.Result, err error) {
	spec := job.Spec
	driver, err := b.drivers.get(ctx)
	if err != nil {
		return res, fmt.Errorf("%w: %v", backend.ErrUnavailable, err)
	}
	set := images.Load(b.cfg.ImagesDir)
	if err := set.Usable(); err != nil {
		return res, fmt.Errorf("%w: %v", backend.ErrUnavailable, err)
	}
	rootfs := set.RootFS[spec.Runtime]
	if rootfs == nil {
		return res, fmt.Errorf("%w: no %s image; run `make rootfs RUNTIME=%s`", backend.ErrUnavailable, spec.Runtime, spec.Runtime)
	}
	vmmName := driver.Name()
	outcome := "error"
	defer func() {
		b.metrics.workloads.WithLabelValues(vmmName, string(spec.Runtime), outcome).Inc()
	}()

	// A workload is a sandbox's VM that runs one exec over its session, then goes: one
	// VM lifecycle and one teardown path for both.
	v, err := b.acquire(ctx, driver, job, set.Kernel, rootfs)
	if v != nil {
		defer func() {
			// Not ctx itself: it may be the workload's expired timeout. WithoutCancel
			// drops its deadline too, so the backend's own teardown bound applies.
			if terr := v.teardown(context.WithoutCancel(ctx)); terr != nil {
				b.log.Warn("vm teardown", "vm", v.id, "err", terr)
			}
		}()
		res.Metadata = v.metadata()
	}
	if err != nil {
		return res, err
	}

	ex := execFor(job)
	sent := time.Now()
	exit, err := v.session.Exec(ctx, ex, protocol.CancelGrace, func(o *protocol.Output) {
		stream := model.Stdout
		if o.Stream == "stderr" {
			stream = model.Stderr
		}
		if o.Partial {
			sink.Partial(stream, o.Data)
		} else {
			sink.Line(stream, o.Data)
		}
	})
	if err != nil {
		if ctx.Err() != nil {
			outcome = "cancelled"
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				outcome = "timeout"
			}
		}
		return res, fmt.Errorf("agent: %w", err)
	}
	if overhead := time.Since(sent) - time.Duration(exit.DurationMS)*time.Millisecond; overhead > 0 {
		b.metrics.roundtrip.WithLabelValues(vmmName).Observe(overhead.Seconds())
	}
	res.ExitCode, res.Signal, res.Truncated, res.Error = exit.Code, exit.Signal, exit.Truncated || exit.OutputCut, exit.Error
	if exit.OutputCut {
		res.TruncatedReason = "output cut: a process the program left running kept stdout or stderr open after it exited; what it wrote after the drain was lost"
	}
	switch {
	case exit.TimedOut:
		outcome = "timeout"
	case exit.Cancelled:
		outcome = "cancelled"
	case exit.Code == 0 && exit.Error == "":
		outcome = "completed"
	default:
		outcome = "failed"
	}
	return res, nil
}

// execFor is the agent's exec message for a job.
func execFor(job backend.Job) *protocol.Exec {
	spec := job.Spec
	return &protocol.Exec{
		ProtocolVersion: protocol.Version,
		ID:              job.WorkloadID,
		Runtime:         string(spec.Runtime),
		Code:            spec.Code,
		Archive:         spec.Archive,
		Entrypoint:      spec.Entrypoint,
		Stdin:           spec.Stdin(),
		Env:             spec.Env,
		TimeoutMS:       int64(spec.Resources.TimeoutS) * 1000,
		OutputLimit:     int64(job.OutputLimit),
		LineLimit:       int64(job.LineLimit),
	}
}

// boot acquires everything a VM needs, each undo registered right after its acquire, and
// waits for the agent's hello. The returned vm (even with an error) must be torn down.
// The VM stays up until torn down, and its agent connection becomes a multiplexed session
// (v.session): a workload runs one exec over it, a sandbox many processes and file
// operations.
func (b *Backend) boot(ctx context.Context, driver vmm.Driver, job backend.Job, kernel *images.Kernel, rootfs *images.RootFS, plan bootPlan) (*vm, error) {
	id := job.WorkloadID
	v := &vm{b: b, id: id, key: id, driver: driver, kernel: kernel, rootfs: rootfs, source: "boot",
		cpus: job.Spec.Resources.CPUs, memMB: job.Spec.Resources.MemMB}
	if plan.restore != "" {
		v.source = "snapshot"
	}
	b.mu.Lock()
	if b.vms[id] != nil {
		b.mu.Unlock()
		return nil, fmt.Errorf("workload %s already has a VM", id)
	}
	b.vms[id] = v
	b.mu.Unlock()
	v.cleanup.Add("forget vm", func(context.Context) error {
		b.mu.Lock()
		if b.vms[v.key] == v {
			delete(b.vms, v.key)
		}
		b.mu.Unlock()
		return nil
	})

	v.dir = filepath.Join(b.cfg.StateDir, id)
	_ = os.RemoveAll(v.dir) // delete before create
	if err := os.MkdirAll(v.dir, 0o750); err != nil {
		return v, fmt.Errorf("vm dir: %w", err)
	}
	v.cleanup.Add("remove vm dir", func(context.Context) error { return os.RemoveAll(v.dir) })

	cid, err := b.cids.acquire()
	if err != nil {
		return v, err
	}
	v.cid = cid
	v.cleanup.Add("release cid", func(context.Context) error { b.cids.release(cid); return nil })

	spec, err := b.confine(v, job, kernel, rootfs)
	if err != nil {
		return v, err
	}

	var network *nic.NIC
	if p := job.Spec.Network; p != "" && p != model.NetworkNone {
		if network, err = b.attachNetwork(ctx, v, p, job.Spec.NetworkRules); err != nil {
			return v, err
		}
	}

	cfg := vmm.Config{
		ID:           id,
		Dir:          v.dir,
		Kernel:       kernel.Path,
		RootFS:       rootfs.Path,
		CPUs:         job.Spec.Resources.CPUs,
		MemMB:        job.Spec.Resources.MemMB,
		CID:          cid,
		Args:         bootArgs(network),
		Network:      network,
		ConsoleLimit: b.cfg.ConsoleLimit,
		Cell:         spec,
	}
	if plan.memFile != nil {
		cfg.MemFile = plan.memFile
	}
	// Any VM may be saved (a snapshot's, a paused sandbox's, a pooled one's), and its
	// copy restored in another dir.
	cfg.Relocatable = true
	cfg.Restore = plan.restore
	if b.cfg.ScratchMB > 0 || plan.scratch != "" {
		// In the VM dir: its removal (registered above) releases it.
		cfg.Scratch = filepath.Join(v.dir, "scratch.ext4")
		if plan.scratch != "" {
			if err := copySparse(ctx, plan.scratch, cfg.Scratch); err != nil {
				return v, err
			}
		} else if err := CreateScratch(ctx, cfg.Scratch, b.cfg.ScratchMB); err != nil {
			return v, err
		}
		if spec != nil {
			spec.Writable = append(spec.Writable, cfg.Scratch)
			if err := spec.Own(cfg.Scratch); err != nil {
				return v, fmt.Errorf("scratch disk: %w", err)
			}
		}
	}
	bootCtx, cancel := context.WithTimeout(ctx, b.cfg.BootTimeout)
	defer cancel()
	v.started = time.Now()
	m, err := driver.Start(bootCtx, cfg)
	if err != nil {
		return v, fmt.Errorf("start %s: %w", driver.Name(), err)
	}
	v.machine = m
	// The guest never powers itself off (vulcan.oneshot=0): the host stops it, which is
	// safe as its root is read-only and its scratch disk goes with it.
	v.cleanup.Add("stop vmm", func(ctx context.Context) error { return m.Stop(ctx) })
	b.metrics.active.WithLabelValues(driver.Name()).Inc()
	v.cleanup.Add("active gauge", func(context.Context) error {
		b.metrics.active.WithLabelValues(driver.Name()).Dec()
		return nil
	})

	conn, err := m.DialAgent(bootCtx)
	if err != nil {
		return v, v.bootError(ctx, err)
	}
	v.cleanup.Add("close agent channel", func(context.Context) error {
		if err := conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			return err // a sandbox's session has closed it already
		}
		return nil
	})
	hello, err := v.greet(bootCtx, conn, plan.wake)
	if err != nil {
		return v, v.bootError(ctx, err)
	}
	v.bootTime = time.Since(v.started)
	v.hello = hello
	b.metrics.boot.WithLabelValues(driver.Name()).Observe(v.bootTime.Seconds())
	b.log.Debug("vm booted", "vm", id, "vmm", driver.Name(), "boot", v.bootTime, "cid", cid)
	return v, nil
}

// attachNetwork gives the VM a NIC under policy, registering the detach right after.
func (b *Backend) attachNetwork(ctx context.Context, v *vm, policy model.NetworkPolicy, rules *model.NetworkRules) (*nic.NIC, error) {
	if b.cfg.Networker == nil {
		reason := b.cfg.NetworkUnavailable
		if reason == nil {
			reason = errors.New("no network manager configured")
		}
		return nil, fmt.Errorf("%w: network %q requested but VM networking is unavailable: %v", backend.ErrUnavailable, policy, reason)
	}
	n, err := b.cfg.Networker.Attach(ctx, v.id, policy, rules)
	if err != nil {
		return nil, fmt.Errorf("network %s: %w", policy, err)
	}
	v.cleanup.Add("detach network", func(ctx context.Context) error { return b.cfg.Networker.Detach(ctx, v.id) })
	v.network = n
	return n, nil
}

// bootPlan says how a VM starts: cold (the zero plan), as a snapshot's template VM
// (memFile shared), or restored (restore, with the snapshot's private memFile or a
// paused sandbox's RAM in its state, and the disk to copy as its scratch).
type bootPlan struct {
	memFile *vmm.MemFile
	restore string
	scratch string
	wake    string // the parked agent's nonce (restores)
}

// vm is one workload's machine and everything it holds.
type vm struct {
	b        *Backend
	id       string // names its dir; a pooled VM keeps its own
	cpus     int
	memMB    int
	key      string // its entry in b.vms: the workload or sandbox holding it (b.mu)
	source   string // pool, snapshot or boot
	driver   vmm.Driver
	kernel   *images.Kernel
	rootfs   *images.RootFS
	dir      string
	cid      uint32
	network  *nic.NIC // nil: no NIC
	machine  vmm.Machine
	session  *protocol.Session // the agent connection
	hello    *protocol.Hello
	started  time.Time
	bootTime time.Duration
	// startTime is acquire → ready with its identity, what the caller waited.
	startTime time.Duration
	cleanup   cleanup.Stack
}

// teardown runs the VM's cleanup stack once; later calls return its first result.
func (v *vm) teardown(ctx context.Context) error {
	start := time.Now()
	ran, err := v.cleanup.Run(ctx, v.b.cfg.TeardownTimeout)
	if ran { // a kill's Cleanup and the run's own teardown race; count the teardown once
		v.b.metrics.cleanup.WithLabelValues(v.driver.Name()).Observe(time.Since(start).Seconds())
	}
	return err
}

func (v *vm) bootError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("boot interrupted: %w", ctx.Err())
	}
	return fmt.Errorf("vm %s did not boot: %w%s", v.id, err, v.consoleTail())
}

// consoleTail is "; console: " and the end of the guest's console log, or "" when it is
// empty: for errors that the guest's own words may explain.
func (v *vm) consoleTail() string {
	if c := vmm.Tail(filepath.Join(v.dir, "console.log"), 1024); c != "" {
		return "; console: " + c
	}
	return ""
}

func (v *vm) metadata() map[string]string {
	md := map[string]string{
		"vm_id":          v.id,
		"vmm":            v.driver.Name(),
		"accel":          v.driver.Accel(),
		"cid":            strconv.FormatUint(uint64(v.cid), 10),
		"kernel_version": v.kernel.Manifest.Version,
		"image_runtime":  v.rootfs.Manifest.Runtime + " " + v.rootfs.Manifest.RuntimeVersion,
		"image_sha256":   short(v.rootfs.Manifest.SHA256),
		"start":          v.source,
	}
	if v.startTime > 0 {
		md["start_ms"] = strconv.FormatFloat(float64(v.startTime.Microseconds())/1000, 'f', 1, 64)
	}
	if v.machine != nil {
		md["vmm_pid"] = strconv.Itoa(v.machine.PID())
	}
	if n := v.network; n != nil {
		md["guest_ip"] = n.GuestIP.IP.String()
		md["tap"] = n.TAP
	}
	if v.hello != nil {
		md["boot_ms"] = strconv.FormatInt(v.bootTime.Milliseconds(), 10)
		md["agent_version"] = v.hello.AgentVersion
	}
	return md
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// driverSlot resolves the driver once, in the background: choosing QEMU's acceleration
// may take a test boot, which must not delay the server's start.
type driverSlot struct {
	ready  chan struct{}
	driver vmm.Driver
	err    error
}

func newDriverSlot(resolve func() (vmm.Driver, error)) *driverSlot {
	s := &driverSlot{ready: make(chan struct{})}
	go func() {
		defer close(s.ready)
		s.driver, s.err = resolve()
		if s.err == nil {
			s.err = s.driver.Available()
		}
	}()
	return s
}

func (s *driverSlot) get(ctx context.Context) (vmm.Driver, error) {
	select {
	case <-s.ready:
		if s.err != nil {
			return nil, s.err
		}
		return s.driver, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// peek returns the driver or its error without waiting; both nil while still resolving.
func (s *driverSlot) peek() (vmm.Driver, error) {
	select {
	case <-s.ready:
		if s.err != nil {
			return nil, s.err
		}
		return s.driver, nil
	default:
		return nil, nil
	}
}

// TemplateImages finds the images of templates that are not built-ins.
type TemplateImages interface {
	// Image is a template's current image, nil when there is none.
	Image(name model.Runtime) *images.RootFS
	// ImageBySHA is a stored image by content (a paused VM's, whose template may have
	// been rebuilt since), nil when it is gone.
	ImageBySHA(sha string) *images.RootFS
}

// rootfsFor is a template's image: a built-in's from the images dir, else a user
// template's.
func (b *Backend) rootfsFor(set *images.Set, name model.Runtime) *images.RootFS {
	if r := set.RootFS[name]; r != nil {
		return r
	}
	if b.cfg.Templates != nil && !name.ValidTemplate() {
		return b.cfg.Templates.Image(name)
	}
	return nil
}
