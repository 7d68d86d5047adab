package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/config"
	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/instance"
	"github.com/vulcanhq/vulcan/internal/microvm"
	"github.com/vulcanhq/vulcan/internal/model"
	"github.com/vulcanhq/vulcan/internal/network"
)

// registerBackends is the one place backends are wired into the server. It registers each
// backend this build can offer (or records with reg.Missing why it cannot) and returns a
// cleanup that serve runs after the engine has shut down. It must never register a fake.
// It also returns the microVM backend (nil when it cannot run), which boots sandboxes.
func registerBackends(ctx context.Context, cfg *config.Config, reg *backend.Registry, templates microvm.TemplateImages, metrics prometheus.Registerer, log *slog.Logger) (vms *microvm.Backend, cleanup func(), err error) {
	pool, err := poolSizes(cfg.Pool)
	if err != nil {
		return nil, nil, err
	}
	mcfg := microvm.Config{
		ImagesDir: cfg.ImagesDir,
		StateDir:  vmStateDir(cfg),
		ScratchMB: cfg.ScratchMB,
		Templates: templates,
		Pool:      pool,
		Logger:    log,
		Metrics:   metrics,
	}
	if cfg.Snapshots {
		mcfg.SnapshotDir = filepath.Join(cfg.DataDir, "snapshots")
	}
	// The instance id names what this server makes on the host (its VM namespaces,
	// bridge, nft tables), so its startup reclaim never takes another server's.
	inst, created, err := instance.Load(cfg.DataDir)
	if err != nil {
		return nil, nil, err
	}
	log.Info("server instance", "id", inst, "new", created)
	mcfg.Instance = inst // names the VMs' cgroup parent and picks their uid slice
	// Without networking VMs still run; workloads asking for a network get the reason.
	services, err := network.ParseServices(cfg.NetworkServices)
	if err != nil {
		return nil, nil, err
	}
	nm, nerr := network.New(ctx, network.Config{
		StateDir: filepath.Join(cfg.DataDir, "cni"),
		BinDir:   cniBinDir(cfg),
		Subnet:   cfg.NetworkSubnet,
		Instance: inst,
		DNS:      guestDNS(cfg.NetworkDNS),
		Services: services,
		Logger:   log,
	})
	if nerr != nil {
		log.Warn("VM networking unavailable: workloads with network host or egress will fail", "err", nerr)
		mcfg.NetworkUnavailable = nerr
	} else {
		mcfg.Networker = nm
	}
	cleanup = func() {
		if nm != nil {
			if err := nm.Close(context.Background()); err != nil {
				log.Warn("network shutdown", "err", err)
			}
		}
	}
	b, err := microvm.New(mcfg, microvm.ResolveDriver(driverOptions(cfg)))
	if err != nil {
		// The server still serves (history, logs, the reason) without a VM backend.
		reg.Missing("microvm", err.Error())
		return nil, cleanup, nil
	}
	reg.Register(b)
	return b, cleanup, nil
}

// poolSizes reads VULCAN_POOL into the backend's per-template sizes.
func poolSizes(v string) (map[model.Runtime]microvm.PoolSize, error) {
	parsed, err := config.ParsePool(v)
	if err != nil {
		return nil, err
	}
	out := map[model.Runtime]microvm.PoolSize{}
	for name, s := range parsed {
		t := model.Runtime(name)
		if !t.ValidTemplate() {
			return nil, fmt.Errorf("pool: unknown template %q", name)
		}
		out[t] = microvm.PoolSize{Min: s.Min, Max: s.Max}
	}
	return out, nil
}

// cniBinDir is where the CNI plugins are: VULCAN_CNI_BIN_DIR, else cni/ next to the
// vulcan binary (where `make` puts them).
func cniBinDir(cfg *config.Config) string {
	if cfg.CNIBinDir != "" {
		return cfg.CNIBinDir
	}
	exe, err := os.Executable()
	if err != nil {
		return "cni"
	}
	return filepath.Join(filepath.Dir(exe), "cni")
}

// vmStateDir is where per-VM state lives; the startup reclaim owns everything in it.
func vmStateDir(cfg *config.Config) string { return filepath.Join(cfg.DataDir, "vms") }

func driverOptions(cfg *config.Config) microvm.DriverOptions {
	return microvm.DriverOptions{
		VMM:            cfg.VMM,
		QEMUBin:        cfg.QEMUBin,
		QEMUAccel:      cfg.QEMUAccel,
		FirecrackerBin: cfg.FirecrackerBin,
		Kernel:         filepath.Join(cfg.ImagesDir, images.KernelFile),
		ProbeCache:     microvm.DefaultProbeCache(),
	}
}

// guestDNS resolves the VULCAN_NETWORK_DNS setting (already validated by config).
func guestDNS(setting string) []net.IP {
	switch setting {
	case "none":
		return nil
	case "", "host":
		return network.HostDNS("/etc/resolv.conf")
	}
	var out []net.IP
	for _, s := range strings.Split(setting, ",") {
		if ip := net.ParseIP(strings.TrimSpace(s)); ip != nil {
			out = append(out, ip.To4())
		}
	}
	return out
}
