package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/client"
	"github.com/vulcanhq/vulcan/internal/cluster"
	"github.com/vulcanhq/vulcan/internal/engine"
	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/microvm"
	"github.com/vulcanhq/vulcan/internal/microvm/qemu"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/sandbox"
	"github.com/vulcanhq/vulcan/internal/server"
	"github.com/vulcanhq/vulcan/internal/store"
)

// sandboxPrereq says why sandboxes cannot boot here ("" when they can): the QEMU binary,
// the kernel and the python rootfs, as P4 needs them.
func sandboxPrereq(o Options) string {
	bin := o.QEMUBin
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	if _, err := exec.LookPath(bin); err != nil {
		return bin + " not found; install it with: apt-get install qemu-system-x86"
	}
	for _, f := range []string{images.KernelFile, "rootfs-python.ext4"} {
		if _, err := os.Stat(filepath.Join(o.ImagesDir, f)); err != nil {
			return fmt.Sprintf("no %s in %s; run `make images`", f, o.ImagesDir)
		}
	}
	return ""
}

// sandboxStack is the server as `vulcan serve` wires it for sandboxes: the SQLite store,
// the real microVM backend (QEMU), the engine, the sandbox service on that backend and
// the API, served on a loopback port; c is a client of it.
type sandboxStack struct {
	URL      string
	c        *client.Client
	stateDir string // the backend's VM state dir: empty once every sandbox has stopped
	sbx      *sandbox.Service
	vms      *microvm.Backend
	close    func()
}

// fastStart turns on the fast-start paths in a stack (all off by default, as S1–S3
// measure the cold path).
type fastStart struct {
	pool      map[model.Runtime]microvm.PoolSize
	snapshots bool
	pause     bool
	cluster   *cluster.Config // join a cluster (its Advertise is set here)
}

// benchSandbox is what S1–S3 boot: the python template, 1 vCPU, 256 MiB, no network.
var benchSandbox = model.SandboxSpec{Template: model.RuntimePython,
	Resources: model.Resources{CPUs: 1, MemMB: 256}, Network: model.NetworkNone, TimeoutS: 3600}

// startSandboxStack serves up to maxSandboxes sandboxes. The service's vCPU budget is
// raised to maxSandboxes (serve's default is 4 per host CPU) so S3 can ask for more.
func startSandboxStack(ctx context.Context, o Options, maxSandboxes int, fast ...fastStart) (_ *sandboxStack, err error) {
	var fs fastStart
	if len(fast) > 0 {
		fs = fast[0]
	}
	var undo []func()
	cleanup := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	defer func() {
		if err != nil {
			cleanup()
		}
	}()
	dir, err := os.MkdirTemp(o.TempDir, "vsb-") // short: the VMs' unix socket paths are limited
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { os.RemoveAll(dir) })
	st, err := store.Open(ctx, filepath.Join(dir, "vulcan.db"))
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { st.Close() })
	// The server's warnings and errors (a boot that failed says why only there) go to
	// the progress lines.
	quiet := slog.New(slog.NewTextHandler(logfWriter(o), &slog.HandlerOptions{Level: slog.LevelWarn}))
	metrics := prometheus.NewRegistry()
	accel := o.Accel
	if accel == "" {
		accel = qemu.AccelTCG
	}
	stateDir := filepath.Join(dir, "vms")
	mc := microvm.Config{ImagesDir: o.ImagesDir, StateDir: stateDir, ScratchMB: 2048,
		BootTimeout: bootTimeout, Logger: quiet, Metrics: metrics, Pool: fs.pool}
	if fs.snapshots {
		mc.SnapshotDir = filepath.Join(dir, "snapshots")
	}
	pausedDir := ""
	if fs.pause {
		pausedDir = filepath.Join(dir, "paused")
	}
	vms, err := microvm.New(mc,
		microvm.ResolveDriver(microvm.DriverOptions{VMM: "qemu", QEMUBin: o.QEMUBin, QEMUAccel: accel,
			Kernel: filepath.Join(o.ImagesDir, images.KernelFile)}))
	if err != nil {
		return nil, err
	}
	reg := backend.NewRegistry()
	reg.Register(vms)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	undo = append(undo, func() { ln.Close() })
	var cc *cluster.Config
	if fs.cluster != nil {
		c := *fs.cluster
		c.Advertise, c.Logger = "http://"+ln.Addr().String(), quiet
		cc = &c
	}
	vs, err := server.New(ctx, server.Options{Store: st, Registry: reg, Logger: quiet, Metrics: metrics, Cluster: cc, ImagesDir: o.ImagesDir,
		Engine: engine.Config{MaxConcurrent: 4, QueueSize: 16},
		Sandbox: sandbox.Config{MaxSandboxes: maxSandboxes, CPUBudget: maxSandboxes, PausedDir: pausedDir,
			BootTimeout: bootTimeout, Limits: model.Limits{DefaultCPUs: 1, MaxCPUs: 8, DefaultMemMB: 256,
				MinMemMB: 128, MaxMemMB: 8192, DefaultTimeoutS: 60, MaxTimeoutS: 3600}},
		Launcher: microvm.Launcher{B: vms}, VMs: vms})
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() {
		done, cancel := context.WithCancel(context.Background())
		cancel()
		vs.Shutdown(done)
	})
	sbx, srv := vs.Sandboxes, vs.Handler()
	hs := &http.Server{Handler: srv}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	undo = append(undo, func() {
		hs.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			slog.Debug("bench server", "err", err)
		}
	})
	url := "http://" + ln.Addr().String()
	return &sandboxStack{URL: url, c: client.New(url, ""), stateDir: stateDir, sbx: sbx, vms: vms, close: cleanup}, nil
}

// Close kills what is left (the service's Shutdown) and removes everything.
func (s *sandboxStack) Close() { s.close() }

// stopAll kills the sandboxes ids through the API and checks that their VMs left nothing
// in the backend's state dir.
func (s *sandboxStack) stopAll(ctx context.Context, ids []string) error {
	var errs []error
	for _, id := range ids {
		if _, err := s.c.KillSandbox(context.WithoutCancel(ctx), id); err != nil {
			errs = append(errs, fmt.Errorf("kill %s: %w", id, err))
		}
	}
	left, err := os.ReadDir(s.stateDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if len(left) > 0 {
		errs = append(errs, fmt.Errorf("%d VM state dirs left in %s after stopping every sandbox", len(left), s.stateDir))
	}
	return errors.Join(errs...)
}

// logfWriter turns the server's log lines into progress lines.
type logfWriter Options

func (w logfWriter) Write(p []byte) (int, error) {
	Options(w).logf("server: %s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
