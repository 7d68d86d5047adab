package main

import (
	"context"
	"log/slog"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vulcanhq/vulcan/internal/backend"
	"github.com/vulcanhq/vulcan/internal/config"
	"github.com/vulcanhq/vulcan/internal/images"
	"github.com/vulcanhq/vulcan/internal/microvm"
)

// registerBackends is the one place backends are wired into the server. It registers each
// backend this build can offer (or records with reg.Missing why it cannot) and returns a
// cleanup that serve runs after the engine has shut down. It must never register a fake.
func registerBackends(ctx context.Context, cfg *config.Config, reg *backend.Registry, metrics prometheus.Registerer, log *slog.Logger) (cleanup func(), err error) {
	b, err := microvm.New(microvm.Config{
		ImagesDir: cfg.ImagesDir,
		StateDir:  vmStateDir(cfg),
		Logger:    log,
		Metrics:   metrics,
	}, microvm.ResolveDriver(driverOptions(cfg)))
	if err != nil {
		// The server still serves (history, logs, the reason) without a VM backend.
		reg.Missing("microvm", err.Error())
		return func() {}, nil
	}
	reg.Register(b)
	return func() {}, nil
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
